"""Focal Transformer (v1 and the top-K v2): where one query token's attention goes, level by level.

A focal window's queries attend, in one softmax, to keys gathered with one flat index (``gather_plan`` of
:class:`~locvit.models.focal.FocalSelfAttention` / :class:`~locvit.models.focal_v2.FocalTopKAttention`) from one
source: the stage's (padded) token map, then each pooled map (level ``j``: one token per ``ws / 2^j`` sub-window),
then (v1) a zero token for unfold positions outside the pooled map. The probabilities of the explicit attention path
(:func:`~locvit.layers.attention.record_attention`, same outputs) are scattered back through that index:

* **fine** (v1 level 0: the window, the ring of ``expand_size`` tokens around it, cyclic at the borders, 12 ring
  tokens taken twice and summed here; v2 level 0: the top-K nearest tokens) on the token grid;
* **coarse level j**: one value per pooled token, drawn over the ``ws / 2^j`` sub-window it pools (the pooled map is
  centred on the window grid, as the model trims/pads it).

The fine map plus every coarse map sum to one (up to v1's zero key, which ``-100`` keeps at ~e^-100).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from locvit.layers.attention import record_attention
from locvit.viz import draw
from locvit.viz.probe import capture, pick_block


@dataclass
class FocalLevel:
    """One level's attention: ``weights`` on a grid whose cells are ``cell`` tokens wide, the grid's top-left corner
    ``origin`` in tokens of the stage map."""

    name: str
    weights: np.ndarray
    cell: int
    origin: tuple[int, int]


@dataclass
class FocalMaps:
    """Attention of one focal block for one query token (heads averaged)."""

    levels: list[FocalLevel]
    token: tuple[int, int]
    window: tuple[int, int]
    window_size: int
    expand_size: int
    stride: float
    map_size: tuple[int, int]
    stage: int
    block: int
    version: int
    outside: float = 0.0  # weight on v1's zero key (unfold positions outside the pooled map)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(sum(lv.weights.sum() for lv in self.levels) + self.outside)


@torch.no_grad()
def focal_attention(model: nn.Module, x: Tensor, query: tuple[int, int], stage: int = 0, block: int = 0) -> FocalMaps:
    """Per-level attention of the focal block ``(stage, block)`` for the query pixel ``(row, col)`` of ``x``."""
    st, blk = pick_block(model, stage, block)
    attn = blk.attn
    stage_idx = stage % len(model.layers)
    with capture(attn) as inputs, record_attention() as rec:
        model.forward_intermediates(x, indices=[stage_idx], stop_early=True, intermediates_only=True)
    B, H, W, _ = inputs[0][0].shape
    ws = attn.window_size
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    nWh, nWw = Hp // ws, Wp // ws
    nW = nWh * nWw
    heads = attn.num_heads
    # B x (heads * windows) x queries x keys, heads-major
    probs = rec[attn][0].float()[0].view(heads, nW, ws * ws, -1).mean(0)
    del rec
    index = attn.gather_plan(Hp, Wp, x.device, x.dtype)[0].view(nW, -1).cpu()

    stride = x.shape[-2] / H
    shift = getattr(attn, "shift_size", 0)
    ty, tx = min(int(query[0] // stride), H - 1), min(int(query[1] // stride), W - 1)
    sy, sx = (ty - shift) % Hp, (tx - shift) % Wp  # the map is rolled by -shift before the windows are cut
    w = (sy // ws) * nWw + sx // ws
    row = probs[w, (sy % ws) * ws + sx % ws].cpu().numpy()
    keys = index[w].numpy()

    levels = []
    fine = np.zeros(Hp * Wp)
    sel = keys < Hp * Wp
    np.add.at(fine, keys[sel], row[sel])
    fine = np.roll(fine.reshape(Hp, Wp), (shift, shift), (0, 1))  # back to unshifted positions
    version = 2 if hasattr(attn, "topk") else 1
    expand = getattr(attn, "expand_size", 0) if getattr(attn, "use_ring", False) else 0
    if version == 1:
        name = f"fine: {ws}x{ws} window" + (f" + {expand}-token ring" if expand else "")
    else:
        name = f"fine: top-{min(attn.topk, Hp * Wp)} nearest tokens"
    levels.append(FocalLevel(name, fine, 1, (0, 0)))
    base = Hp * Wp
    for j in range(attn.num_pooled):
        ph, pw, sw = nWh * 2 ** j, nWw * 2 ** j, ws // 2 ** j
        grid = np.zeros(ph * pw)
        sel = (keys >= base) & (keys < base + ph * pw)
        np.add.at(grid, keys[sel] - base, row[sel])
        origin = ((Hp - ph * sw) // 2, (Wp - pw * sw) // 2)  # pool_level trims/pads centred
        if version == 1:
            side = attn.focal_window + 2 ** j - 1
            label = f"coarse level {j + 1}: {side}x{side} pooled tokens ({sw}x{sw} tokens each)"
        else:
            label = f"coarse level {j + 1}: top-{min(attn.topk, ph * pw)} pooled tokens ({sw}x{sw} tokens each)"
        levels.append(FocalLevel(label, grid.reshape(ph, pw), sw, origin))
        base += ph * pw
    outside = float(row[keys >= base].sum())
    notes = []
    if shift:
        notes.append(f"cyclic shift {shift}")
    return FocalMaps(levels, (ty, tx), (sy // ws, sx // ws), ws, expand, stride, (H, W), stage_idx,
                     block % len(st.blocks), version, outside, notes)


def plot_focal(maps: FocalMaps, image: np.ndarray, path: str | Path, model_name: str, note: str,
               query: tuple[int, int]) -> Path:
    """One panel per level, each drawn back on the image grid, with the query and its window marked."""
    plt = draw.plt()
    n = len(maps.levels)
    fig, axes = plt.subplots(1, n + 1, figsize=(5 * (n + 1), 5.4))
    s, ws = maps.stride, maps.window_size
    wy, wx = maps.window
    combined = np.zeros(maps.levels[0].weights.shape)
    for ax, lv in zip(axes[1:], maps.levels):
        h, w = lv.weights.shape
        oy, ox = lv.origin
        extent = (ox * s, (ox + w * lv.cell) * s, (oy + h * lv.cell) * s, oy * s)
        draw.overlay(ax, image, lv.weights, extent, f"{lv.name}\nweight {lv.weights.sum():.3f}")
        if not maps.notes:  # with a shift the window lives in the rolled frame: not outlined
            draw.box(ax, wy * ws * s, wx * ws * s, ws * s, ws * s)
        draw.mark(ax, ((maps.token[0] + 0.5) * s, (maps.token[1] + 0.5) * s))
        # every level spread back to the token grid (a pooled token's weight shared by the tokens it pools)
        grid = np.repeat(np.repeat(lv.weights, lv.cell, 0), lv.cell, 1) / lv.cell ** 2
        full = np.zeros_like(combined)
        y0, x0 = max(oy, 0), max(ox, 0)
        gy, gx = y0 - oy, x0 - ox
        hh = min(full.shape[0] - y0, grid.shape[0] - gy)
        ww = min(full.shape[1] - x0, grid.shape[1] - gx)
        full[y0:y0 + hh, x0:x0 + ww] = grid[gy:gy + hh, gx:gx + ww]
        combined += full
    Hp, Wp = combined.shape
    draw.overlay(axes[0], image, combined, (0, Wp * s, Hp * s, 0),
                 f"all levels on the token grid (total {maps.total:.3f})")
    if not maps.notes:
        draw.box(axes[0], wy * ws * s, wx * ws * s, ws * s, ws * s)
    draw.mark(axes[0], ((maps.token[0] + 0.5) * s, (maps.token[1] + 0.5) * s), "query")
    extra = f"; {', '.join(maps.notes)}" if maps.notes else ""
    fig.suptitle(f"{model_name}: focal attention of token {maps.token} ({draw.where(maps.stage, maps.block)},"
                 f" {maps.map_size[0]}x{maps.map_size[1]} tokens, {s:g} px each; heads averaged{extra}; {note})",
                 fontsize=11)
    return draw.save(fig, path)
