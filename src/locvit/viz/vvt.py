"""VVT: the vicinity (Manhattan-distance) re-weighting and the effective attention of one query.

VVT's attention is linear (:mod:`locvit.models.vvt`): no attention matrix exists in the forward. The weight that
query ``n`` implicitly gives key ``m`` is ``relu(q_n) . relu(k_m) * r(n, m)`` normalised over the keys, with the
re-weighting ``r(n, m) = cos(alpha_n - alpha_m) + cos(beta_n - beta_m)`` (``alpha = pi/2 * row / H``,
``beta = pi/2 * col / W``): 2 at the query, falling with the row and the column distance. Here:

* :func:`vicinity_map`: ``r(n, .)`` on the key grid (from the model's own angle tables);
* :func:`vvt_attention`: the effective weights of a block's attention for the query
  (:meth:`~locvit.models.vvt.VicinityAttention.attention_weights` on the block's recorded input) and, for
  comparison, the same content term without the re-weighting (``w / r``, renormalised per head).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from locvit.models.vvt import angle_table
from locvit.viz import draw
from locvit.viz.probe import capture, pick_block


def vicinity_map(grid: tuple[int, int], query: tuple[int, int], key_grid: tuple[int, int] | None = None,
                 key_extent: tuple[float, float] | None = None) -> np.ndarray:
    """``cos(alpha_q - alpha_m) + cos(beta_q - beta_m)`` for every key ``m`` of ``key_grid`` (default: ``grid``),
    as a ``key_grid`` array in ``[0, 2]`` (2 at the query's own position)."""
    key_grid = key_grid or grid
    q = angle_table(grid).double()[query[0] * grid[1] + query[1]]
    k = angle_table(key_grid, key_extent).double()
    return (k @ q).reshape(key_grid).numpy()  # cos a cos b + sin a sin b = cos(a - b), per axis


@dataclass
class VicinityMaps:
    """One query of one VVT block (``effective`` and ``content`` heads averaged, each sums to one)."""

    reweight: np.ndarray
    effective: np.ndarray
    content: np.ndarray
    token: tuple[int, int]
    stride: float
    key_stride: float
    stage: int
    block: int


@torch.no_grad()
def vvt_attention(model: nn.Module, x: Tensor, query: tuple[int, int], stage: int = 0, block: int = 0) -> VicinityMaps:
    """Re-weighting map and effective attention of block ``(stage, block)`` for the query pixel ``(row, col)``."""
    st, blk = pick_block(model, stage, block)
    stage_idx = stage % len(model.stages)
    with capture(blk.attn) as inputs:
        model.forward_intermediates(x, indices=[stage_idx], stop_early=True, intermediates_only=True)
    tokens, (H, W) = inputs[0][0][:1], inputs[0][1]
    stride = x.shape[-2] / H
    ty, tx = min(int(query[0] // stride), H - 1), min(int(query[1] // stride), W - 1)
    weights = blk.attn.attention_weights(tokens, (H, W), [ty * W + tx])[0, :, 0].double()  # heads x keys
    sr = blk.attn.sr_ratio
    if sr > 1:  # keys on the reduced grid, the conv floors the size
        kh, kw, extent = H // sr, W // sr, (H / sr, W / sr)
    else:
        kh, kw, extent = H, W, None
    reweight = vicinity_map((H, W), (ty, tx), (kh, kw), extent)
    content = weights / torch.from_numpy(reweight).reshape(1, -1)
    content = content / content.sum(-1, keepdim=True)
    return VicinityMaps(reweight, weights.mean(0).reshape(kh, kw).numpy(), content.mean(0).reshape(kh, kw).numpy(),
                        (ty, tx), stride, x.shape[-2] / kh, stage_idx, block % len(st.blocks))


def plot_vvt(maps: VicinityMaps, image: np.ndarray, path: str | Path, model_name: str, note: str,
             query: tuple[int, int]) -> Path:
    """Three panels: the re-weighting map, the content-only weights and the effective vicinity attention."""
    plt = draw.plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    kh, kw = maps.effective.shape
    ks = maps.key_stride
    extent = (0, kw * ks, kh * ks, 0)
    ty, tx = maps.token
    center = ((ty + 0.5) * maps.stride, (tx + 0.5) * maps.stride)
    draw.overlay(axes[0], image, maps.reweight, extent,
                 f"vicinity re-weighting cos(Δα) + cos(Δβ), range {maps.reweight.min():.2f}-2\n"
                 "(a sum over the row and the column distance; fixed, not learned)",
                 vmax=2.0, vmin=float(maps.reweight.min()), cmap="viridis", contours=6)
    draw.overlay(axes[1], image, maps.content, extent,
                 "content only: relu(q)·relu(k), normalised\n(the same block without the re-weighting)")
    draw.overlay(axes[2], image, maps.effective, extent,
                 f"effective vicinity attention (sums to {maps.effective.sum():.3f})\n"
                 "linear attention: weights never materialised in the forward")
    for ax in axes:
        draw.mark(ax, center)
    fig.suptitle(f"{model_name}: vicinity attention of token ({ty}, {tx}), {draw.where(maps.stage, maps.block)} "
                 f"({kh}x{kw} keys, {ks:g} px each; heads averaged; {note})", fontsize=11)
    return draw.save(fig, path)
