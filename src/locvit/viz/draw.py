"""Drawing helpers shared by the figures: heat maps laid over the photo, markers, atomic PNG writes.

matplotlib runs on its ``Agg`` backend (no display needed). A heat map given on a token grid is drawn with an
``extent`` in pixels, so every grid (stage maps, pooled maps, regional grids) lands on the pixels it covers.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from locvit.files import atomic_write

HEAT = "inferno"


def plt():
    """``matplotlib.pyplot`` on the Agg backend."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - tools extra missing
        raise ValueError("figures need matplotlib (pip install 'locvit[tools]')") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def weights_note(checkpoint: str | None) -> str:
    """What the figure's weights are, for titles: the pictures of a random-init model show the architecture's prior,
    not what a trained model learned."""
    return f"weights: {Path(checkpoint).name}" if checkpoint else "random-init weights (no checkpoint given)"


def where(stage: int, block: int) -> str:
    """``'stage S block B'`` in the 0-based indices ``--stage``/``--block`` take."""
    return f"stage {stage} block {block}"


def show_image(ax: Any, image: np.ndarray, title: str = "", dim: float = 1.0) -> None:
    ax.imshow(np.clip(image * dim, 0, 1), extent=(0, image.shape[1], image.shape[0], 0))
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def overlay(ax: Any, image: np.ndarray, heat: np.ndarray, extent: tuple[float, float, float, float],
            title: str = "", alpha: float = 0.65, vmax: float | None = None, cmap: str = HEAT,
            colorbar: bool = True, vmin: float = 0.0, contours: int = 0) -> Any:
    """The photo (dimmed), then ``heat`` (a grid) stretched over ``extent = (left, right, bottom, top)`` pixels.

    Cells at or below ``vmin`` are left transparent (keys a query never sees); ``contours`` draws that many
    iso-lines."""
    show_image(ax, image, title, dim=0.55)
    masked = np.ma.masked_where(heat <= vmin, heat) if vmin == 0 else heat
    im = ax.imshow(masked, extent=extent, cmap=cmap, alpha=alpha, interpolation="nearest", vmin=vmin,
                   vmax=vmax if vmax is not None else (float(heat.max()) or 1.0))
    if contours:
        h, w = heat.shape
        xs = np.linspace(extent[0], extent[1], w, endpoint=False) + (extent[1] - extent[0]) / (2 * w)
        ys = np.linspace(extent[3], extent[2], h, endpoint=False) + (extent[2] - extent[3]) / (2 * h)
        cs = ax.contour(xs, ys, heat, levels=contours, colors="white", linewidths=0.7, alpha=0.8)
        ax.clabel(cs, fontsize=6, fmt="%.2f")
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    return im


def mark(ax: Any, point: tuple[float, float], label: str | None = None, color: str = "cyan") -> None:
    """A cross at ``(row, col)`` pixels."""
    ax.plot([point[1]], [point[0]], marker="+", color=color, markersize=14, markeredgewidth=2.5)
    if label:
        ax.annotate(label, (point[1], point[0]), xytext=(6, -6), textcoords="offset points", color=color,
                    fontsize=8, fontweight="bold")


def box(ax: Any, top: float, left: float, height: float, width: float, color: str = "cyan", lw: float = 1.5,
        ls: str = "-") -> None:
    """A rectangle outline in pixels."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((left, top), width, height, fill=False, edgecolor=color, linewidth=lw, linestyle=ls))


def save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (a killed run never leaves a truncated picture) and close it."""
    pyplot = plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
