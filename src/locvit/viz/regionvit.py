"""RegionViT: what a regional token and a local token attend to in one R2L block.

An R2L block runs its attention twice with the same weights (:class:`~locvit.models.regionvit.R2LAttention`):
first over all regional tokens of the image (global), then inside every window over ``[its regional token, its
ws x ws local tokens]``. :func:`regionvit_attention` records both calls on the explicit attention path
(:func:`~locvit.layers.attention.record_attention`, same outputs as the fused path) and reads out, for a query
pixel,

* the regional attention of the region containing it (a distribution over the ``Hr x Wr`` regions), and
* the local attention of its local token (a distribution over the window's regional token and local tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from locvit.layers.attention import record_attention
from locvit.viz import draw
from locvit.viz.probe import capture, pick_block


@dataclass
class R2LMaps:
    """Attention of one R2L block for one query (heads averaged).

    Attributes:
        regional: ``Hr x Wr``: the query's region attending over all regions (sums to one).
        local: ``ws x ws``: the query's local token attending over its window's local tokens.
        regional_weight: the same token's weight on its window's regional token (``local.sum() + regional_weight``
            is one).
        region: ``(row, col)`` of the query's region (= its window) on the regional grid.
        token: ``(row, col)`` of the query's local token on the stage's local grid.
        window_size: ``ws``.
        stride: pixels per local token at this stage.
        stage, block: which block.
    """

    regional: np.ndarray
    local: np.ndarray
    regional_weight: float
    region: tuple[int, int]
    token: tuple[int, int]
    window_size: int
    stride: float
    stage: int
    block: int


@torch.no_grad()
def regionvit_attention(model: nn.Module, x: Tensor, query: tuple[int, int], stage: int = 0,
                        block: int = 0) -> R2LMaps:
    """Regional and local attention of the R2L block ``(stage, block)`` for the query pixel ``(row, col)`` of ``x``
    (``1 x 3 x H x W``)."""
    st, blk = pick_block(model, stage, block)
    stage_idx = stage % len(model.stages)
    with capture(st.downsample, outputs=True) as maps, record_attention() as rec:
        model.forward_intermediates(x, indices=[stage_idx], stop_early=True, intermediates_only=True)
    calls = rec.get(blk.attn, [])
    if len(calls) != 2:
        raise RuntimeError(f"expected the regional and the local attention call of the block, got {len(calls)}")
    heads = blk.attn.num_heads
    # windows x heads (a padded map's windows are folded into the head axis: the same order)
    regional, local = calls[0].float().mean(1)[0], calls[1].float().reshape(-1, heads, *calls[1].shape[-2:]).mean(1)
    region_map, local_map = maps[0], maps[1]
    Hr, Wr = region_map.shape[-2:]
    h, _ = local_map.shape[-2:]
    ws = st.window_size
    stride = x.shape[-2] / h
    ty, tx = int(query[0] // stride), int(query[1] // stride)
    ry, rx = ty // ws, tx // ws
    if not (ry < Hr and rx < Wr):  # pragma: no cover - the query is inside the image, hence inside a window
        raise ValueError(f"query {query} falls outside the {Hr}x{Wr} regional grid")
    r = ry * Wr + rx
    q = 1 + (ty % ws) * ws + (tx % ws)  # token 0 of a window is its regional token
    row = local[r, q]  # windows of image 0 come first (batch-major)
    return R2LMaps(
        regional=regional[r].reshape(Hr, Wr).numpy(),
        local=row[1:].reshape(ws, ws).numpy(),
        regional_weight=float(row[0]),
        region=(ry, rx), token=(ty, tx), window_size=ws, stride=stride, stage=stage_idx,
        block=block % len(st.blocks),
    )


def plot_regionvit(maps: R2LMaps, image: np.ndarray, path: str | Path, model_name: str, note: str,
                   query: tuple[int, int]) -> Path:
    """Three panels: the regional attention over the image, the window's local attention in place, and the window
    enlarged with the weight on its regional token."""
    plt = draw.plt()
    ws, s = maps.window_size, maps.stride
    side = ws * s  # pixels per region/window
    Hr, Wr = maps.regional.shape
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    ry, rx = maps.region
    draw.overlay(axes[0], image, maps.regional, (0, Wr * side, Hr * side, 0),
                 f"regional attention: region ({ry}, {rx}) -> all {Hr}x{Wr} regions\n(sums to 1; global, "
                 f"one token per {side:g}x{side:g}-px region)")
    draw.box(axes[0], ry * side, rx * side, side, side)
    draw.mark(axes[0], query)

    ty, tx = maps.token
    draw.overlay(axes[1], image, maps.local, (rx * side, (rx + 1) * side, (ry + 1) * side, ry * side),
                 f"local attention of token ({ty}, {tx}) inside its {ws}x{ws} window\n"
                 f"+ {maps.regional_weight:.3f} on the window's regional token (total 1)")
    draw.box(axes[1], ry * side, rx * side, side, side)
    draw.mark(axes[1], query)

    ax = axes[2]
    top, left = int(ry * side), int(rx * side)
    crop = image[top:top + int(side), left:left + int(side)]
    draw.overlay(ax, crop, maps.local, (0, ws * s, ws * s, 0), "", colorbar=True)
    ax.set_xlim(0, crop.shape[1])
    ax.set_ylim(crop.shape[0], 0)
    draw.mark(ax, ((ty % ws + 0.5) * s, (tx % ws + 0.5) * s), "query")
    ax.set_title(f"the window enlarged: {ws * ws} local keys sum to {maps.local.sum():.3f},\n"
                 f"regional token {maps.regional_weight:.3f}", fontsize=9)
    fig.suptitle(f"{model_name}: regional-to-local attention, {draw.where(maps.stage, maps.block)} "
                 f"(heads averaged; {note})", fontsize=11)
    return draw.save(fig, path)
