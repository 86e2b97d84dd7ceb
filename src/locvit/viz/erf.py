"""Effective receptive field (ERF, Luo et al. 2016): how much each input pixel moves the centre output of a stage.

For a stage's output map ``F`` (``forward_intermediates``, NCHW), the ERF is ``|d (u . F[:, h/2, w/2]) / d x|``
summed over the colour channels and averaged over a few random sign vectors ``u``: a map of the input's pixels.
(Luo et al. back-propagate ``u = 1``; many stage outputs here end in a LayerNorm, whose channel sum -- and norm --
is constant at initialisation, so a plain sum would have no gradient at all.) A model with local mechanisms
concentrates it around the centre; global attention spreads it over the image from the first block on.
``radius_of_mass`` condenses a map into one number: the radius (pixels, around the centre) holding a share of the
gradient's mass.

Isotropic models (DeiT/LocalViT, T2T, TNT: one feature entry per block) are shown at four evenly spaced blocks,
pyramids at their four stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from locvit.viz import draw


@dataclass
class ERF:
    """One ERF map: ``grad`` (``H x W``, absolute gradient summed over colour channels), what it belongs to."""

    label: str
    grad: np.ndarray
    reduction: float
    center: tuple[float, float]  # pixel centre of the output position, (row, col)

    def normalised(self) -> np.ndarray:
        m = float(self.grad.max())
        return self.grad / m if m > 0 else self.grad

    def radius(self, share: float = 0.5) -> float:
        return radius_of_mass(self.grad, share, self.center)

    def pooled(self, cell: int) -> np.ndarray:
        """Gradient mass per ``cell x cell`` block of pixels (e.g. per patch), a ``ceil(H / cell) x ceil(W / cell)``
        array."""
        H, W = self.grad.shape
        h, w = -(-H // cell), -(-W // cell)
        g = np.zeros((h * cell, w * cell))
        g[:H, :W] = self.grad
        return g.reshape(h, cell, w, cell).sum((1, 3))

    def outside_share(self, cell: int) -> float:
        """Share of the gradient mass outside the ``cell x cell`` block that holds the output position (for a
        patch model with ``cell`` = patch size: what the token takes from *other* patches)."""
        p = self.pooled(cell)
        total = p.sum()
        own = p[int(self.center[0] // cell), int(self.center[1] // cell)]
        return float(1 - own / total) if total > 0 else float("nan")


def radius_of_mass(grad: np.ndarray, share: float = 0.5, center: tuple[float, float] | None = None) -> float:
    """Smallest radius (pixels) of a disc around ``center`` (default: the image centre) holding ``share`` of
    ``grad``'s total."""
    H, W = grad.shape
    cy, cx = center if center is not None else (H / 2, W / 2)
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx).ravel()
    order = np.argsort(r, kind="stable")
    mass = np.cumsum(grad.ravel()[order])
    if mass[-1] <= 0:
        return float("nan")
    return float(r[order][np.searchsorted(mass, share * mass[-1])])


def stage_indices(model: nn.Module, count: int = 4) -> list[int]:
    """Feature indices to show: every stage of a pyramid, or ``count`` evenly spaced blocks of an isotropic model."""
    n = len(model.feature_info)
    if n <= count:
        return list(range(n))
    return sorted({round(n * (i + 1) / count) - 1 for i in range(count)})


def _labels(model: nn.Module, indices: list[int]) -> list[str]:
    info = model.feature_info
    reductions = {i["reduction"] for i in info}
    if len(reductions) == 1:  # isotropic: name the block
        return [f"block {i} of {len(info)}" for i in indices]
    return [f"stage {i} (stride {info[i]['reduction']})" for i in indices]


def effective_receptive_fields(model: nn.Module, x: Tensor, indices: list[int] | None = None,
                               directions: int = 4, seed: int = 0) -> list[ERF]:
    """ERF of the centre position of each chosen feature map (default :func:`stage_indices`) for the input ``x``
    (``1 x 3 x H x W``), averaged over ``directions`` random channel sign vectors (run as one batch). The model is
    put in eval mode; its parameters get no gradient."""
    model.eval()
    indices = stage_indices(model) if indices is None else list(indices)
    x = x[:1].detach().expand(directions, -1, -1, -1).clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            feats = model.forward_intermediates(x, indices=indices, stop_early=True, intermediates_only=True)
            out = []
            for k, (f, label) in enumerate(zip(feats, _labels(model, indices))):
                h, w = f.shape[-2:]
                u = torch.randint(0, 2, (directions, f.shape[1]), generator=gen).to(f) * 2 - 1
                target = (f[:, :, h // 2, w // 2] * u).sum()
                (g,) = torch.autograd.grad(target, x, retain_graph=k < len(feats) - 1)
                sy, sx = x.shape[-2] / h, x.shape[-1] / w
                out.append(ERF(label, g.abs().sum(1).mean(0).double().numpy(), sy,
                               ((h // 2 + 0.5) * sy, (w // 2 + 0.5) * sx)))
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
    return out


def plot_erf_grid(rows: list[tuple[str, list[ERF]]], path: str | Path, note: str, image: np.ndarray | None = None,
                  title: str = "") -> Path:
    """One row per model, one column per stage: the normalised ERF (square-root scale, so the tails show), with the
    radius holding half of the gradient mass."""
    plt = draw.plt()
    cols = max(len(e) for _, e in rows)
    fig, axes = plt.subplots(len(rows), cols + (image is not None), figsize=(3.1 * (cols + (image is not None)),
                                                                            3.3 * len(rows)), squeeze=False)
    for r, (name, erfs) in enumerate(rows):
        c0 = 0
        if image is not None:
            draw.show_image(axes[r, 0], image, "input" if r == 0 else "")
            axes[r, 0].set_ylabel(name, fontsize=10)
            c0 = 1
        for c in range(cols):
            ax = axes[r, c0 + c]
            if c >= len(erfs):
                ax.axis("off")
                continue
            e = erfs[c]
            H, W = e.grad.shape
            ax.imshow(np.sqrt(e.normalised()), cmap="magma", vmin=0, vmax=1, extent=(0, W, H, 0))
            r50 = e.radius(0.5)
            circle = plt.Circle((e.center[1], e.center[0]), r50, fill=False, color="cyan", lw=1, ls="--")
            ax.add_patch(circle)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{e.label}\nhalf the mass within r={r50:.0f} px", fontsize=8)
            if c == 0 and image is None:
                ax.set_ylabel(name, fontsize=10)
    fig.suptitle(title or f"effective receptive field of the centre output, |d out / d input| (sqrt scale; {note})",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return draw.save(fig, path)
