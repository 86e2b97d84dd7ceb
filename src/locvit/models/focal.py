"""Focal Transformer (Yang et al., "Focal Self-attention for Local-Global Interactions in Vision Transformers").

A Swin-like four-stage pyramid whose window attention is replaced by **focal self-attention**: the queries of a
``ws x ws`` window attend, in one softmax, to

* level 0 (fine): the window itself plus a ring of ``expand_size`` surrounding tokens at full resolution;
* levels 1.. (coarse): the map cut into sub-windows of ``floor(ws / 2^k)`` that are pooled to one token each; the
  window sees a ``focal_window``-wide neighbourhood of those pooled tokens around itself.

What the released code does, and what this module reproduces exactly (it decides the released weights' outputs),
where it departs from the paper's description:

* **The ring is cyclic and has duplicates.** The official code gathers the surroundings from four copies of the
  key map rolled by ``(-e,-e), (-e,+e), (+e,-e), (+e,+e)`` (``torch.roll``), keeping fixed in-window positions of
  each. Windows at the border therefore see tokens from the opposite border (nothing masks them), and 12 tokens of
  the 120-token ring (ws 7, e 3) are taken twice - each copy with its own bias entry, so both enter the softmax.
* **Padding is not masked.** Maps are zero-padded (after the norm) to multiples of the window; padded tokens are
  keys whose value is the ``qkv`` bias.
* **Pooled keys** come from pooling the *normed input* (``fc``: a ``Linear(sw^2, 1)`` over the positions of each
  sub-window, shared across channels; or a depth-wise ``conv``, ``mean``, ``max``) and then the same ``qkv``
  projection. The neighbourhood is read with ``unfold`` (kernel ``2*(fw//2) + 2^k + 2^k - 1``, stride ``2^k``);
  positions outside the pooled map are zero keys/values with an additive ``-100`` (not ``-inf``); for ``k > 0``
  only the bottom-right ``(fw + 2^k - 1)^2`` part of the kernel is kept.
* **Three position biases**: a Swin table for window-to-window (zero-initialised, never trunc-normal'd), a dense
  ``1 x heads x ws^2 x ring`` parameter for the ring (absolute per query/key slot), and per pooled level a
  "pseudo-relative" table indexed by in-window query coordinates minus pooled-neighbourhood coordinates, as if both
  lived on one grid.
* Optional Swin shift (off in every released config): ``-100`` mask on the window's own keys only.
* **Small maps**: when a stage's map is not larger than the window, that stage uses ``ws = min(H, W)``, no ring,
  no shift (decided at build time from ``img_size``, as the official model does).
* The official model asserts its training resolution. Here the block geometry (window, ring, shift) is fixed at
  build time from ``img_size`` exactly as the official constructor does, and the forward runs at any input size
  (padding, pooled-map sizes and masks follow the input): at ``img_size`` it equals the official model, and at
  another size it equals the official model built for that size whenever that model has the same block geometry.
  :meth:`FocalTransformer.set_input_size` switches to the geometry the official model would have for a new size
  (resizing tables; the checkpoint filter does the same when loading weights trained at another size).

Speed: instead of four rolls, eight window partitions, masked selects and ``unfold`` per block, every key of every
window (own window, ring, pooled neighbourhoods, the zero pad of the unfold) is fetched with **one index gather**
from one source tensor, through a precomputed index cached per map size; the biases and masks form one additive
``attn_mask`` for fused SDPA. Nothing about masks or indices is rebuilt per forward.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_module, to_2tuple, trunc_normal_
from timm.models import checkpoint, generate_default_cfgs
from torch import Tensor, nn

from locvit.layers import fastpath
from locvit.layers.attention import HeadsAttention
from locvit.layers.pos_embed import resize_pos_embed, resize_pos_table
from locvit.layers.rel_pos import relative_position_index, resize_bias_grid
from locvit.layers.token_mlp import residual_mlp
from locvit.layers.windows import pad_to_multiple, shifted_window_mask
from locvit.models._registry import (
    DenseRecipe,
    ModelSpec,
    norm_eps,
    pop_unused,
    register_family_model,
    register_official,
)
from locvit.models.args import check_heads, check_hidden, check_img_size, check_int, check_ints, check_model_args
from locvit.models.builder import build_model, init_linear_layernorm, make_cfg
from locvit.models.interface import PyramidStages

__all__ = ["FocalSelfAttention", "FocalBlock", "FocalStage", "FocalTransformer", "block_geometry"]

POOL_METHODS = ("fc", "conv", "mean", "max", "none")
# sign of the official rolls, in their order (top-left, top-right, bottom-left, bottom-right)
_RING_ROLLS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
_MASK_VALUE = -100.0  # the official masks add -100, not -inf


# ----------------------------------------------------------------------------------------------------------------
# focal self-attention
# ----------------------------------------------------------------------------------------------------------------
def ring_offsets(window_size: int, expand_size: int) -> Tensor:
    """Positions of the level-0 surrounding keys relative to a window's top-left token, in the official order.

    Roll ``r`` of the key map by ``(sy*e, sx*e)`` puts the token at ``(i - sy*e, j - sx*e)`` (relative to the window,
    cyclic over the map) into window slot ``(i, j)``; the slots kept are those outside the part of the rolled
    window that still overlaps the window itself. With ``ws = 7, e = 3`` this gives ``4 * (49 - 16) = 132`` keys
    covering the 120-token ring, 12 of them twice.

    Returns:
        int64 ``R x 2`` (row, column offsets).
    """
    ws, e = window_size, expand_size
    out = []
    for sy, sx in _RING_ROLLS:
        for i in range(ws):
            for j in range(ws):
                overlaps_rows = i < ws - e if sy < 0 else i >= e
                overlaps_cols = j < ws - e if sx < 0 else j >= e
                if not (overlaps_rows and overlaps_cols):
                    out.append((i - sy * e, j - sx * e))
    return torch.tensor(out, dtype=torch.long).view(-1, 2)


def pooled_offsets(focal_window: int, level: int) -> Tensor:
    """Offsets (in pooled tokens) of a window's level-``level`` neighbourhood from ``window index * 2^level``.

    The official ``unfold`` uses kernel ``K = 2*(fw//2) + 2^k + 2^k - 1``, stride ``2^k`` and padding ``K // 2``; for
    ``k > 0`` only the bottom-right ``(K - 2^k + 1)^2`` part (``valid_ind_unfold_k``) is kept. Row-major order.
    """
    s = 2 ** level
    kernel = 2 * (focal_window // 2) + 2 * s - 1
    first = s - 1 if level > 0 else 0
    a = torch.arange(first, kernel) - kernel // 2
    return torch.stack(torch.meshgrid(a, a, indexing="ij"), -1).view(-1, 2)


def _fit_center(x: Tensor, height: int, width: int) -> Tensor:
    """Trim or zero-pad a ``B x H x W x C`` map symmetrically (extra row/column at the bottom/right) to a size."""
    for dim, target in ((1, height), (2, width)):
        size = x.shape[dim]
        if size > target:
            x = x.narrow(dim, (size - target) // 2, target)
        elif size < target:
            before = (target - size) // 2
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (3 - dim): 2 * (3 - dim) + 2] = [before, target - size - before]
            x = F.pad(x, pad)
    return x


def pool_level(x: Tensor, level: int, window_size: int, method: str, layer: nn.Module | None) -> Tensor:
    """Pool a window-aligned ``B x H x W x C`` map into one token per sub-window of ``floor(ws / 2^level)``.

    The map is first trimmed/padded (centred) to ``(H / ws) * 2^level`` sub-windows per side, as the official code does.
    ``fc`` is a ``Linear(sw^2, 1)`` over the sub-window's positions (shared by all channels), ``conv`` a depth-wise
    conv with kernel = stride = ``sw``.
    """
    B, H, W, C = x.shape
    s, sw = 2 ** level, window_size // 2 ** level
    ph, pw = -(-H // window_size) * s, -(-W // window_size) * s
    x = _fit_center(x, ph * sw, pw * sw)
    if method == "conv":
        return F.conv2d(x.permute(0, 3, 1, 2), layer.weight, layer.bias, stride=sw, groups=C).permute(0, 2, 3, 1)
    x = x.reshape(B, ph, sw, pw, sw, C)
    if method == "fc":
        out = torch.einsum("bhiwjc,ij->bhwc", x, layer.weight.view(sw, sw))
        return out + layer.bias if layer.bias is not None else out
    if method == "mean":
        return x.mean((2, 4))
    if method == "max":
        return x.amax((2, 4))
    raise ValueError(f"unknown pool method {method!r}; expected one of {POOL_METHODS}")


@register_notrace_module  # gather plans cached per map size: a leaf for torch.fx
class FocalAttentionBase(HeadsAttention):
    """What the two Focal attentions share: ``qkv``/``proj``, the sub-window pooling layers, queries per window,
    the gathered key/value source, and the way back from windows to the map.

    Layout inside: heads before windows (``B x (heads * windows) x tokens x head_dim``), so that one position bias of
    ``heads x windows x ws^2 x keys`` is a plain ``attn_mask`` that broadcasts over the batch.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        focal_level: int,
        pool_method: str,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(dim, num_heads, qk_scale)
        if pool_method not in POOL_METHODS:
            raise ValueError(f"focal_pool must be one of {POOL_METHODS}, got {pool_method!r}")
        self.dim = dim
        self.window_size = window_size
        self.focal_level = focal_level
        self.pool_method = pool_method
        self.num_pooled = max(focal_level - 1, 0) if pool_method != "none" else 0
        if self.num_pooled and window_size < 2 ** (self.num_pooled - 1):
            raise ValueError(f"window size {window_size} is too small for {focal_level} focal levels "
                             f"(sub-windows of window_size / 2^{self.num_pooled - 1} would be empty)")

        self.pool_layers = nn.ModuleList()
        for k in range(self.num_pooled):
            sw = window_size // 2 ** k
            if pool_method == "fc":
                layer = nn.Linear(sw * sw, 1)
                # a mean to start with; FocalTransformer's init overwrites it with trunc_normal (official order)
                nn.init.constant_(layer.weight, 1.0 / (sw * sw))
                nn.init.zeros_(layer.bias)
                self.pool_layers.append(layer)
            elif pool_method == "conv":
                self.pool_layers.append(nn.Conv2d(dim, dim, sw, stride=sw, groups=dim))
        self._add_projections(dim, qkv_bias, attn_drop, proj_drop, qkv=3)
        self._plans = fastpath.ShapeCache()

    # --- pieces of the forward ---------------------------------------------------------------------------------
    def _pooled(self, x: Tensor) -> list[Tensor]:
        layers = list(self.pool_layers) if len(self.pool_layers) else [None] * self.num_pooled
        return [pool_level(x, k, self.window_size, self.pool_method, layers[k]) for k in range(self.num_pooled)]

    def _queries(self, qkv: Tensor) -> Tensor:
        """``B x H x W x 3C`` -> queries ``B x (heads * windows) x ws^2 x d``."""
        B, H, W, _ = qkv.shape
        ws, nh, d = self.window_size, self.num_heads, self.head_dim
        q = qkv.view(B, H // ws, ws, W // ws, ws, 3, nh, d)[:, :, :, :, :, 0]
        return q.permute(0, 5, 1, 3, 2, 4, 6).reshape(B, nh * (H // ws) * (W // ws), ws * ws, d)

    def _kv_source(self, qkv: Tensor, pooled: list[Tensor], zero_row: bool) -> Tensor:
        """Keys and values of the map, then of every pooled map (``qkv`` applied to the pooled tokens, as the official
        code does), then optionally one all-zero token: ``2 x B x heads x tokens x d``."""
        B, H, W, _ = qkv.shape
        nh, d, C = self.num_heads, self.head_dim, self.dim
        parts = [qkv.reshape(B, H * W, 3, nh, d)[:, :, 1:].permute(2, 0, 3, 1, 4)]
        bias = self.qkv.bias[C:] if self.qkv.bias is not None else None
        for xp in pooled:
            n = xp.shape[1] * xp.shape[2]
            kv = F.linear(xp.reshape(B, n, C), self.qkv.weight[C:], bias)
            parts.append(kv.view(B, n, 2, nh, d).permute(2, 0, 3, 1, 4))
        if zero_row:
            parts.append(qkv.new_zeros(2, B, nh, 1, d))
        return torch.cat(parts, dim=3)

    def _attend_gathered(self, q: Tensor, src: Tensor, index: Tensor, bias: Tensor) -> Tensor:
        """Gather every window's keys/values with one flat ``index`` (windows x keys) and attend."""
        keys = index.shape[0] // (q.shape[1] // self.num_heads)  # index: windows x keys, flat
        kv = src.index_select(3, index).view(2, q.shape[0], q.shape[1], keys, self.head_dim)
        return self._attend(q, kv[0], kv[1], bias)

    def _windows_to_map(self, out: Tensor, H: int, W: int) -> Tensor:
        """``B x (heads * windows) x ws^2 x d`` -> ``B x H x W x C``."""
        B, ws, nh, d = out.shape[0], self.window_size, self.num_heads, self.head_dim
        out = out.view(B, nh, H // ws, W // ws, ws, ws, d).permute(0, 2, 4, 3, 5, 1, 6)
        return out.reshape(B, H, W, self.dim)

    # --- checkpoint adaptation ------------------------------------------------------------------------------------
    def adapt_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fit a state dict of this module built for another input size (hence maybe another window) to this one.

        Here: the pooling kernels are resampled to the new sub-window size, scaled to keep their sum.
        """
        out = dict(sd)
        own = self.state_dict()
        for k in range(self.num_pooled):
            key = f"pool_layers.{k}.weight"
            if key in out and key in own and out[key].shape != own[key].shape:
                w, sw = out[key], self.window_size // 2 ** k
                old = int(round(math.sqrt(w.shape[-1]))) if w.ndim == 2 else w.shape[-1]
                grid = w.reshape(w.shape[0], 1, old, old).float()
                grid = F.interpolate(grid, size=(sw, sw), mode="bicubic", align_corners=False) * (old * old / sw / sw)
                out[key] = grid.reshape(own[key].shape).to(w.dtype)
        return out


class FocalSelfAttention(FocalAttentionBase):
    """Focal self-attention of the official v1 code (``focal_transformer.WindowAttention`` plus the block's pooling).

    Takes the normed ``B x H x W x C`` map, returns ``B x H x W x C`` (before the residual). Keys of each window, in
    the official order (which the biases follow): its ``ws^2`` own tokens, the ``R`` ring tokens, then per pooled
    level the ``(fw + 2^k - 1)^2`` neighbourhood tokens.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: window side (already shrunk for small maps, see :func:`block_geometry`).
        expand_size: ring width ``e`` (0: no ring).
        shift_size: Swin cyclic shift (0: none).
        focal_level: 1 + number of pooled levels.
        focal_window: pooled neighbourhood side at level 0 (odd).
        pool_method: ``'fc' | 'conv' | 'mean' | 'max' | 'none'``.
        qkv_bias, qk_scale, attn_drop, proj_drop: as usual.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        expand_size: int = 3,
        shift_size: int = 0,
        focal_level: int = 2,
        focal_window: int = 7,
        pool_method: str = "fc",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(dim, num_heads, window_size, focal_level, pool_method, qkv_bias, qk_scale, attn_drop,
                         proj_drop)
        ws = window_size
        self.expand_size = expand_size
        self.shift_size = shift_size
        self.focal_window = focal_window
        self.use_ring = expand_size > 0 and focal_level > 0
        if self.use_ring and expand_size > ws:
            raise ValueError(f"expand_size {expand_size} is larger than the window ({ws})")
        if self.num_pooled and focal_window % 2 == 0:
            raise ValueError(f"focal_window must be odd (the official unfold/bias layout), got {focal_window}")
        if not 0 <= shift_size < ws:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size} (window {ws})")

        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        self.register_buffer("rel_index_window", relative_position_index((ws, ws)), persistent=False)
        self.num_ring = 0
        if self.use_ring:
            self.register_buffer("ring_offsets", ring_offsets(ws, expand_size), persistent=False)
            self.num_ring = self.ring_offsets.shape[0]
            self.relative_position_bias_table_to_neighbors = nn.Parameter(
                torch.zeros(1, num_heads, ws * ws, self.num_ring))
            trunc_normal_(self.relative_position_bias_table_to_neighbors, std=0.02)
        self.relative_position_bias_table_to_windows = nn.ParameterList()
        for k in range(self.num_pooled):
            side = focal_window + 2 ** k - 1
            table = nn.Parameter(torch.zeros(num_heads, (ws + side - 1) ** 2))
            trunc_normal_(table, std=0.02)
            self.relative_position_bias_table_to_windows.append(table)
            self.register_buffer(f"rel_index_pooled_{k}", relative_position_index((ws, ws), (side, side)),
                                 persistent=False)
        self.num_keys = ws * ws + self.num_ring + sum((focal_window + 2 ** k - 1) ** 2 for k in range(self.num_pooled))

    def position_bias(self) -> Tensor:
        """The learned biases of all keys, ``heads x ws^2 x keys`` (the same for every window)."""
        parts = [self.relative_position_bias_table[self.rel_index_window].permute(2, 0, 1)]
        if self.use_ring:
            parts.append(self.relative_position_bias_table_to_neighbors[0])
        for k, table in enumerate(self.relative_position_bias_table_to_windows):
            parts.append(table[:, getattr(self, f"rel_index_pooled_{k}")])
        return torch.cat(parts, dim=-1)

    def gather_plan(self, Hp: int, Wp: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Key index and mask for a padded ``Hp x Wp`` map, cached per size, device and dtype.

        Returns:
            ``index``: flat ``windows * keys`` positions into :meth:`_kv_source`'s token axis (map, pooled maps, zero).
            ``mask``: ``1 x windows x (1 | ws^2) x keys`` additive mask (-100 at unfold positions outside the pooled
            map, Swin's shift mask on the own-window keys), or None when there is neither a pooled level nor a shift.
        """
        return self._plans.get_or_build((Hp, Wp, device, dtype), lambda: self._build_plan(Hp, Wp, device, dtype))

    def _build_plan(self, Hp: int, Wp: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        ws = self.window_size
        nWh, nWw = Hp // ws, Wp // ws
        wy = torch.arange(nWh).repeat_interleave(nWw)[:, None]
        wx = torch.arange(nWw).repeat(nWh)[:, None]
        local = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"), -1).view(-1, 2)
        if self.use_ring:
            local = torch.cat([local, self.ring_offsets.cpu()])
        rows = (wy * ws + local[:, 0]) % Hp  # cyclic, as torch.roll
        cols = (wx * ws + local[:, 1]) % Wp
        index, outside = [rows * Wp + cols], [torch.zeros(rows.shape, dtype=torch.bool)]
        base = Hp * Wp
        for k in range(self.num_pooled):
            s = 2 ** k
            ph, pw = nWh * s, nWw * s
            off = pooled_offsets(self.focal_window, k)
            r, c = wy * s + off[:, 0], wx * s + off[:, 1]
            inside = (r >= 0) & (r < ph) & (c >= 0) & (c < pw)
            index.append(torch.where(inside, base + r * pw + c, -1))
            outside.append(~inside)
            base += ph * pw
        index, outside = torch.cat(index, 1), torch.cat(outside, 1)
        index = torch.where(index < 0, base, index)  # `base` is the zero token appended after the pooled maps
        mask = None
        if self.num_pooled:  # decided statically (no data-dependent branch); border windows are masked
            mask = (outside.to(dtype) * _MASK_VALUE)[None, :, None]
        if self.shift_size:
            # the map is already padded: Swin's mask between cyclically shifted regions, padding not masked
            shift = shifted_window_mask(Hp, Wp, ws, self.shift_size, _MASK_VALUE, dtype=dtype)
            shift = F.pad(shift, (0, outside.shape[1] - ws * ws))[None]
            mask = shift if mask is None else mask + shift
        return index.flatten().to(device), (mask.to(device) if mask is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        ws, s = self.window_size, self.shift_size
        x, _, _ = pad_to_multiple(x, ws)  # zero padding after the norm; padded keys are not masked (official)
        if s:
            x = torch.roll(x, (-s, -s), (1, 2))
        Hp, Wp = x.shape[1], x.shape[2]
        index, mask = self.gather_plan(Hp, Wp, x.device, x.dtype)
        qkv = self.qkv(x)
        src = self._kv_source(qkv, self._pooled(x), zero_row=self.num_pooled > 0)
        nW = (Hp // ws) * (Wp // ws)
        bias = self.position_bias()[:, None]  # heads x 1 x ws^2 x keys
        bias = bias + mask if mask is not None else bias.expand(-1, nW, -1, -1)
        bias = bias.reshape(1, self.num_heads * nW, ws * ws, self.num_keys)
        out = self._windows_to_map(self._attend_gathered(self._queries(qkv), src, index, bias), Hp, Wp)
        if s:
            out = torch.roll(out, (s, s), (1, 2))
        return self.proj_drop(self.proj(out[:, :H, :W]))

    def adapt_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fit a state dict built for another window geometry: the window table and the pooled tables are
        resampled bicubically; the ring table is dropped when this module has no ring and is zero-filled when this
        module has one but the checkpoint does not (e.g. a 224 checkpoint, whose last stage has no ring, loaded for
        384, where it has one). Pooling kernels are resampled (sum kept)."""
        out = super().adapt_state_dict(sd)
        own = self.state_dict()
        ws = self.window_size
        key = "relative_position_bias_table"
        if key in out and out[key].shape != own[key].shape:
            out[key] = resize_bias_grid(out[key].t(), (2 * ws - 1, 2 * ws - 1)).t().contiguous()
        key = "relative_position_bias_table_to_neighbors"
        if key in own and key not in out:
            out[key] = torch.zeros_like(own[key])
        elif key in out and key not in own:
            del out[key]
        for k in range(self.num_pooled):
            key = f"relative_position_bias_table_to_windows.{k}"
            if key in out and out[key].shape != own[key].shape:
                side = ws + self.focal_window + 2 ** k - 2
                out[key] = resize_bias_grid(out[key], (side, side))
        return out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}, window={self.window_size}, expand={self.expand_size}, "
                f"shift={self.shift_size}, focal_level={self.focal_level}, focal_window={self.focal_window}, "
                f"pool={self.pool_method!r}, keys={self.num_keys}")


def block_geometry(grid: tuple[int, int], window_size: int, expand_size: int, shift_size: int) -> tuple[int, int, int]:
    """The official rule for a block on a ``grid`` map: if the map is not larger than the window, the window shrinks
    to ``min(H, W)`` and there is neither ring nor shift. Returns ``(window, expand, shift)``."""
    if min(grid) <= window_size:
        return min(grid), 0, 0
    return window_size, expand_size, shift_size


# ----------------------------------------------------------------------------------------------------------------
# blocks, stages, embeddings
# ----------------------------------------------------------------------------------------------------------------
class FocalBlock(nn.Module):
    """``x + DP(g1 * attn(LN(x)))``, then ``x + DP(g2 * MLP(LN(x)))`` on ``B x H x W x C`` maps (``g``: layerscale)."""

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp_ratio: float = 4.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        layerscale_value: float | None = None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.use_layerscale = layerscale_value is not None
        if self.use_layerscale:
            self.gamma_1 = nn.Parameter(layerscale_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layerscale_value * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(self.gamma_1 * y if self.use_layerscale else y)
        return residual_mlp(x, self.norm2, self.mlp, self.drop_path, self.gamma_2 if self.use_layerscale else None)


class FocalPatchEmbed(nn.Module):
    """The official ``PatchEmbed``, used as stem and between stages: (GroupNorm(1),) conv, (LayerNorm).

    Conv: kernel = stride = ``patch_size``; with ``use_conv_embed``, 7x7 stride 4 padding 2 (stem) or 3x3 stride 2
    padding 1 (between stages). Takes ``B x C x H x W``, returns ``B x H' x W' x C'``.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int = 4,
        use_conv_embed: bool = False,
        is_stem: bool = True,
        norm_layer: type[nn.Module] | None = nn.LayerNorm,
        use_pre_norm: bool = False,
    ):
        super().__init__()
        if use_conv_embed:
            k, s, p = (7, 4, 2) if is_stem else (3, 2, 1)
        else:
            k, s, p = patch_size, patch_size, 0
        self.kernel, self.stride, self.padding = k, s, p
        self.pre_norm = nn.GroupNorm(1, in_chans) if use_pre_norm and norm_layer is not None else None
        self.proj = nn.Conv2d(in_chans, embed_dim, k, stride=s, padding=p)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def out_size(self, n: int) -> int:
        return (n + 2 * self.padding - self.kernel) // self.stride + 1

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class FocalStage(nn.Module):
    """Down-sampling embedding (stages 2-4; the official code puts it at the end of the previous stage), then blocks.
    Maps are ``B x H x W x C``."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(self.downsample, nn.Identity):
            x = self.downsample(x.permute(0, 3, 1, 2))
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
        return x


# ----------------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------------
class FocalTransformer(PyramidStages, nn.Module):
    """Focal Transformer v1 (the paper's model), a timm model.

    Args:
        img_size: the size the block geometry is built for (see the module docstring); any input size runs.
        patch_size: stem patch size (the linear stem; the conv stem is always 7x7 stride 4).
        in_chans: input channels.
        num_classes: classifier outputs (0: none).
        global_pool: ``'avg'`` (official: mean over tokens after the final norm) or ``''``.
        embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale: pyramid shape.
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (official configs: drop path 0.2/0.3/0.5 T/S/B).
        norm_eps: LayerNorm epsilon (1e-5 in every official model).
        ape: absolute position embedding after the stem (resampled for other sizes).
        patch_norm: LayerNorm after the stem.
        use_shift: Swin shift in odd blocks.
        focal_stages: stages with pooled levels (others: ``focal_pool='none'``).
        focal_levels: per stage, 1 + number of pooled levels.
        focal_windows: per stage, the pooled neighbourhood side.
        focal_pool: ``'fc' | 'conv' | 'mean' | 'max' | 'none'``.
        expand_sizes: per stage, the ring width.
        expand_layer: ``'all'``, or ``'even'``/``'odd'``: blocks with ``i % 2 == 0``/``1`` get *no* ring (official).
        use_conv_embed: overlapping conv stem and down-sampling.
        use_layerscale, layerscale_value: CaiT layerscale.
        use_pre_norm: GroupNorm(1) before each embedding conv.
    """

    output_fmt = "NHWC"  # forward_features: the final normed map, timm's Swin convention
    stages_attr = "layers"
    group_stem = r"^absolute_pos_embed|patch_embed"
    # the official no_weight_decay_keywords
    no_weight_decay_keys = ("absolute_pos_embed", "relative_position_bias_table")

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_eps: float = 1e-5,
        ape: bool = False,
        patch_norm: bool = True,
        use_shift: bool = False,
        focal_stages: tuple[int, ...] = (0, 1, 2, 3),
        focal_levels: tuple[int, ...] = (2, 2, 2, 2),
        focal_windows: tuple[int, ...] = (7, 5, 3, 1),
        focal_pool: str = "fc",
        expand_sizes: tuple[int, ...] = (3, 3, 3, 3),
        expand_layer: str = "all",
        use_conv_embed: bool = False,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
        use_pre_norm: bool = False,
    ):
        super().__init__()
        check_model_args(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
                         attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        if expand_layer not in ("all", "even", "odd"):
            raise ValueError(f"expand_layer must be 'all', 'even' or 'odd', got {expand_layer!r}")
        if focal_pool not in POOL_METHODS:
            raise ValueError(f"focal_pool must be one of {POOL_METHODS}, got {focal_pool!r}")
        n = len(check_ints(depths, "depths"))
        check_int(patch_size, "patch_size")
        check_int(embed_dim, "embed_dim")
        check_int(window_size, "window_size")
        check_img_size(img_size)
        # the official code reads the first n entries of these (longer lists are accepted)
        for name, seq, minimum in (("num_heads", num_heads, 1), ("focal_levels", focal_levels, 0),
                                   ("focal_windows", focal_windows, 1), ("expand_sizes", expand_sizes, 0)):
            if len(seq) < n:
                raise ValueError(f"{name} needs one entry per stage ({n}), got {list(seq)}")
            check_ints(seq, name, minimum=minimum)
        for i in range(n):
            dim = embed_dim * 2 ** i
            check_heads(dim, num_heads[i], f"the stage-{i} width embed_dim * 2^{i}", f"num_heads[{i}]")
            check_hidden(dim, mlp_ratio)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_layers = n
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (n - 1))
        self.ape = ape
        self.img_size = to_2tuple(img_size)
        self._attn_cfg = dict(window_size=window_size, use_shift=use_shift, focal_stages=tuple(focal_stages),
                              focal_levels=tuple(focal_levels), focal_windows=tuple(focal_windows),
                              focal_pool=focal_pool, expand_sizes=tuple(expand_sizes), expand_layer=expand_layer,
                              num_heads=tuple(num_heads), qkv_bias=qkv_bias, qk_scale=qk_scale,
                              attn_drop=attn_drop_rate, proj_drop=drop_rate)

        self.patch_embed = FocalPatchEmbed(in_chans, embed_dim, patch_size, use_conv_embed, True,
                                           norm_layer if patch_norm else None, use_pre_norm)
        self._downsample_geometry = (3, 2, 1) if use_conv_embed else (2, 2, 0)
        self.grid_sizes = self._stage_grids(self.img_size)
        if min(min(g) for g in self.grid_sizes) < 1:
            raise ValueError(f"img_size {self.img_size} is too small for {n} stages")
        n_min = 1
        while min(min(g) for g in self._stage_grids((n_min, n_min))) < 1:
            n_min += 1
        self.min_img_size = self.min_input_size = (n_min, n_min)  # the smallest input with a token in every stage
        if ape:
            gh, gw = self.grid_sizes[0]
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, gh * gw, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        layers, dim, start = [], embed_dim, 0
        for i in range(n):
            out_dim = int(embed_dim * 2 ** i)
            down = None
            if i > 0:
                down = FocalPatchEmbed(dim, out_dim, 2, use_conv_embed, False, norm_layer, use_pre_norm)
            blocks = [
                FocalBlock(out_dim, self._make_attention(i, j, self.grid_sizes[i], out_dim), mlp_ratio, drop_rate,
                           dpr[start + j], norm_layer, layerscale_value if use_layerscale else None)
                for j in range(depths[i])
            ]
            layers.append(FocalStage(down, blocks))
            dim, start = out_dim, start + depths[i]
        self.layers = nn.Sequential(*layers)
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=int(embed_dim * 2 ** i), reduction=4 * 2 ** i, module=f"layers.{i}")
                             for i in range(n)]
        self.apply(init_linear_layernorm)  # the official model re-initialises every Linear, 'fc' pooling included

    # --- construction helpers -------------------------------------------------------------------------------------
    def _stage_grids(self, img_size: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map size of every stage for an input size (the convs' own arithmetic)."""
        h, w = self.patch_embed.out_size(img_size[0]), self.patch_embed.out_size(img_size[1])
        k, s, p = self._downsample_geometry
        grids = [(h, w)]
        for _ in range(1, self.num_layers):
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            grids.append((h, w))
        return grids

    def _attention_kwargs(self, stage: int, index: int, grid: tuple[int, int]) -> dict[str, Any]:
        cfg = self._attn_cfg
        ws = cfg["window_size"]
        shift = (ws // 2 if index % 2 else 0) if cfg["use_shift"] else 0
        no_ring = {"all": -1, "even": 0, "odd": 1}[cfg["expand_layer"]]
        expand = 0 if index % 2 == no_ring else cfg["expand_sizes"][stage]
        ws, expand, shift = block_geometry(grid, ws, expand, shift)
        return dict(num_heads=cfg["num_heads"][stage], window_size=ws, expand_size=expand, shift_size=shift,
                    focal_level=cfg["focal_levels"][stage], focal_window=cfg["focal_windows"][stage],
                    pool_method=cfg["focal_pool"] if stage in cfg["focal_stages"] else "none",
                    qkv_bias=cfg["qkv_bias"], qk_scale=cfg["qk_scale"], attn_drop=cfg["attn_drop"],
                    proj_drop=cfg["proj_drop"])

    def _make_attention(self, stage: int, index: int, grid: tuple[int, int], dim: int) -> nn.Module:
        return FocalSelfAttention(dim, **self._attention_kwargs(stage, index, grid))

    def _attention_matches(self, attn: nn.Module, stage: int, index: int, grid: tuple[int, int]) -> bool:
        kw = self._attention_kwargs(stage, index, grid)
        return (attn.window_size, attn.expand_size, attn.shift_size) == (
            kw["window_size"], kw["expand_size"], kw["shift_size"])

    # --- timm contract ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Rebuild the size-dependent parts as the official model would be built for ``img_size``.

        Blocks whose geometry changes (a stage map becoming larger or smaller than the window: window shrink, ring on
        or off) get new attention modules whose tables are resampled from the current ones (a new ring table starts
        at zero); the absolute position embedding is resampled. The forward already runs at any size without this;
        use it before fine-tuning at a new resolution so the model is the one the official code builds there.
        """
        img_size = to_2tuple(img_size)
        grids = self._stage_grids(img_size)
        if min(min(g) for g in grids) < 1:
            raise ValueError(f"img_size {img_size} is too small for {self.num_layers} stages")
        if self.ape:
            self.absolute_pos_embed = resize_pos_table(self.absolute_pos_embed, grids[0], self.grid_sizes[0])
        for i, stage in enumerate(self.layers):
            for j, blk in enumerate(stage.blocks):
                if self._attention_matches(blk.attn, i, j, grids[i]):
                    continue
                ref = blk.attn.qkv.weight
                new = self._make_attention(i, j, grids[i], blk.attn.dim)
                new.load_state_dict(new.adapt_state_dict(blk.attn.state_dict()))
                blk.attn = new.to(device=ref.device, dtype=ref.dtype).train(blk.attn.training)
        self.img_size, self.grid_sizes = img_size, grids

    # --- forward ---------------------------------------------------------------------------------------------------
    def _stem(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        if self.ape:
            x = x + self._position_embedding(x)
        return self.pos_drop(x)

    def _position_embedding(self, x: Tensor) -> Tensor:
        H, W = x.shape[1], x.shape[2]
        pos = self._pos_embed_at(self.absolute_pos_embed, (H, W), self.grid_sizes[0])
        return pos.view(1, H, W, pos.shape[-1])

    def _stage_map(self, i: int, x: Tensor, norm: bool) -> Tensor:
        """Stage ``i``'s output, taken *before* the next stage's down-sampling (strides 4/8/16/32, channels
        C/2C/4C/8C: Swin's dense-task convention); the final norm (``norm``) exists for the last stage only."""
        return self.norm(x) if norm else x


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------------
# official persistent buffers that locvit recomputes (v1 index maps, the shift mask, v2's window offsets)
_RECOMPUTED = re.compile(r"\.(relative_position_index(_\d+)?|valid_ind_rolled|valid_ind_unfold_\d+|attn_mask|"
                         r"window_coords)$")
_OFFICIAL_ONLY = re.compile(r"^layers\.0\.downsample\.|\.blocks\.\d+\.pool_layers\.|topk_cloest_|"
                            r"relative_position_index|valid_ind_|window_coords")


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: FocalTransformer) -> dict[str, Tensor]:
    """Official Focal (v1 and v2) checkpoints -> locvit, and any Focal checkpoint -> ``model``'s input size.

    Key changes: the down-sampling embedding of the end of stage ``i`` becomes the start of stage ``i + 1``; the
    pooling layers move into the attention (``blocks.j.pool_layers`` -> ``blocks.j.attn.pool_layers``); v2's top-k
    buffers are renamed (``topk_cloest_indice_k`` -> ``topk_index_k``, ``topk_cloest_coords_k`` -> ``topk_coords_k``)
    and kept; the v1 index buffers, the shift mask and v2's ``window_coords`` are dropped (locvit recomputes them).
    Then every attention adapts its tables to the model's geometry (see ``adapt_state_dict``) and ``absolute_pos_embed``
    is resampled to the model's stem grid.
    """
    official = any(_OFFICIAL_ONLY.search(k) for k in state_dict)
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if official:
            if _RECOMPUTED.search(k):
                continue
            m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", k)
            if m:
                k = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
            k = re.sub(r"\.blocks\.(\d+)\.pool_layers\.", r".blocks.\1.attn.pool_layers.", k)
            k = k.replace("topk_cloest_indice_", "topk_index_").replace("topk_cloest_coords_", "topk_coords_")
        out[k] = v
    pe = out.get("absolute_pos_embed")
    if pe is not None and getattr(model, "ape", False) and pe.shape != model.absolute_pos_embed.shape:
        out["absolute_pos_embed"] = resize_pos_embed(pe, model.grid_sizes[0], name="absolute_pos_embed")
    for name, module in model.named_modules():
        if isinstance(module, FocalAttentionBase):
            prefix = name + "."
            sub = {k[len(prefix):]: out.pop(k) for k in [k for k in out if k.startswith(prefix)]}
            out.update({prefix + k: v for k, v in module.adapt_state_dict(sub).items()})
    return out


def translate_official_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Official ``FocalTransformer`` constructor arguments -> ours (shared by v1 and v2)."""
    kw = dict(kw)
    norm_layer = kw.pop("norm_layer", nn.LayerNorm)
    kw["norm_eps"] = norm_eps(norm_layer, 1e-5)
    kw["qk_scale"] = kw.get("qk_scale") or None  # the official `qk_scale or head_dim ** -0.5` (configs pass False)
    # expand_stages is accepted and ignored by the official code; use_checkpoint is a runtime switch
    pop_unused(kw, {"expand_stages": ..., "use_checkpoint": ...})
    for key in ("depths", "num_heads", "focal_stages", "focal_levels", "focal_windows", "expand_sizes"):
        if key in kw:
            kw[key] = tuple(kw[key])
    if isinstance(kw.get("img_size"), list):
        kw["img_size"] = tuple(kw["img_size"])
    return kw


# ----------------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------------
FOCAL = ModelSpec(
    FocalTransformer,
    filter_fn=checkpoint_filter_fn,
    feature_cfg=dict(out_indices=(0, 1, 2, 3)),
    # Focal fixes its block geometry at build time from img_size: at 224 the last stage's 7x7 map is one window
    # without the ring, from 256 on every stage has both, as at every detection size. 256 (not 800x1333) because
    # v2 also precomputes its top-k key selection for img_size, which costs seconds at detection sizes; other
    # input sizes get theirs when first seen.
    dense=DenseRecipe(
        {"img_size": (256, 256)}, True,
        "the Swin mmdetection/mmsegmentation pipeline the paper follows (inferred: the authors released no dense "
        "code): stage outputs before down-sampling, each through an added LayerNorm"),
)


@register_official(FOCAL, "focal_transformer.FocalTransformer")
def _from_official(kw: dict[str, Any]) -> dict[str, Any]:
    return translate_official_kwargs(kw)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> FocalTransformer:
    return build_model(FOCAL, variant, pretrained, **kwargs)


# The official links point at blob storage that was closed to the public (microsoft/Focal-Transformer#8, #20):
# they are provenance (origin_url), never a download.
FOCAL_WEIGHTS = "https://projects4jw.blob.core.windows.net/model/focal-transformer/imagenet1k/"
_DEAD = ("the official download links are dead (their storage was closed to the public: "
         "microsoft/Focal-Transformer#8, #20); the file was {}, which pickles its yacs config: load it with "
         "trust_pickle=True (CLI: --trust-checkpoint)")


def focal_cfg(file: str = "", config: str = "", drop_path: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg of a Focal model (ImageNet-1k, 224, bicubic, crop 0.875 as the official eval); ``file`` is the
    name of the official weights, ``config`` the official YAML they were trained with (and its drop path)."""
    notes = tuple(kwargs.pop("notes", ()))
    if config:
        notes += (f"official config configs/{config}.yaml, drop path {drop_path}",)
    if file:
        notes += (_DEAD.format(file),)
    return make_cfg(origin_url=FOCAL_WEIGHTS + file if file else "", repo="microsoft/Focal-Transformer",
                    license="mit", paper_ids="arXiv:2107.00641",
                    paper_name="Focal Self-attention for Local-Global Interactions in Vision Transformers",
                    min_input_size=(3, 32, 32), notes=notes, **{"pool_size": (7, 7), **kwargs})


default_cfgs = generate_default_cfgs({
    "focal_tiny.in1k": focal_cfg("focal-tiny-is224-ws7.pth", "focal_tiny_patch4_window7_224", 0.2, top1=82.2),
    "focal_small.in1k": focal_cfg("focal-small-is224-ws7.pth", "focal_small_patch4_window7_224", 0.3, top1=83.6),
    "focal_base.in1k": focal_cfg("focal-base-is224-ws7.pth", "focal_base_patch4_window7_224", 0.5, top1=84.0),
    "focal_tiny_useconv.in1k": focal_cfg("focal-tiny-useconv-is224-ws7.pth",
                                         "focal_tiny_useconv_patch4_window7_224", 0.2, top1=82.7),
    "focal_small_useconv.in1k": focal_cfg("focal-small-useconv-is224-ws7.pth",
                                          "focal_small_useconv_patch4_window7_224", 0.3, top1=83.8),
    "focal_base_useconv.in1k": focal_cfg("focal-base-useconv-is224-ws7.pth",
                                         "focal_base_useconv_patch4_window7_224", 0.5, top1=84.2),
})

_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))


@register_family_model("focal", FOCAL, aliases=("focal_tiny_patch4_window7_224",))
def focal_tiny(pretrained: bool = False, **kwargs: Any) -> FocalTransformer:
    """Focal-T: C 96, depths 2-2-6-2, window 7, focal windows 7-5-3-1, ring 3, 'fc' pooling, linear patch stem."""
    return _create("focal_tiny", pretrained, **dict(_TINY, **kwargs))


@register_family_model("focal", FOCAL, aliases=("focal_small_patch4_window7_224",))
def focal_small(pretrained: bool = False, **kwargs: Any) -> FocalTransformer:
    """Focal-S: C 96, depths 2-2-18-2, linear patch stem."""
    return _create("focal_small", pretrained, **dict(_SMALL, **kwargs))


@register_family_model("focal", FOCAL, aliases=("focal_base_patch4_window7_224",))
def focal_base(pretrained: bool = False, **kwargs: Any) -> FocalTransformer:
    """Focal-B: C 128, depths 2-2-18-2, linear patch stem."""
    return _create("focal_base", pretrained, **dict(_BASE, **kwargs))


@register_family_model("focal", FOCAL, aliases=("focal_tiny_useconv_patch4_window7_224",))
def focal_tiny_useconv(pretrained: bool = False, **kwargs: Any) -> FocalTransformer:
    """Focal-T with the overlapping conv stem (7x7 s4) and 3x3 s2 conv down-sampling."""
    return _create("focal_tiny_useconv", pretrained, **dict(_TINY, use_conv_embed=True, **kwargs))


@register_family_model("focal", FOCAL, aliases=("focal_small_useconv_patch4_window7_224",))
def focal_small_useconv(pretrained: bool = False, **kwargs: Any) -> FocalTransformer:
    """Focal-S with the overlapping conv stem and down-sampling."""
    return _create("focal_small_useconv", pretrained, **dict(_SMALL, use_conv_embed=True, **kwargs))


@register_family_model("focal", FOCAL, aliases=("focal_base_useconv_patch4_window7_224",))
def focal_base_useconv(pretrained: bool = False, **kwargs: Any) -> FocalTransformer:
    """Focal-B with the overlapping conv stem and down-sampling."""
    return _create("focal_base_useconv", pretrained, **dict(_BASE, use_conv_embed=True, **kwargs))
