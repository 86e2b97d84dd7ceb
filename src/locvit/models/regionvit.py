"""RegionViT (Chen, Panda and Fan, "RegionViT: Regional-to-Local Attention for Vision Transformers").

The image is tokenised twice: *local* tokens from a 4x4-stride stem and *regional* tokens from one large
non-overlapping patch of ``4 * ws`` pixels, so each regional token sits on a ``ws x ws`` window of local tokens.
A regional-to-local (R2L) block then

1. runs self-attention over all regional tokens of an image (global, cheap: there are few of them);
2. runs self-attention inside every window over ``[its regional token, its ws² local tokens]``, with a
   relative-position bias among the local tokens -- the regional token carries global context into the window;
3. applies the MLP to every token.

Both attention steps use the *same* ``qkv``/``proj`` weights (one module, two calls). Between stages a shared
depth-wise projection halves both maps and multiplies the channels. Classification averages the final regional
tokens; detection uses the four local-token maps.

Working layout: each stage keeps one tensor ``x`` of shape ``(B * nW) x (1 + ws²) x C`` (windows batch-major,
row-major over the regional grid; token 0 is the regional token, then the window's local tokens row-major).

Official behaviour reproduced (``IBM/RegionViT``, the released weights were trained with it):

* relative position: the table is ``heads x (2ws-1)²`` and the slot of displacement ``d = key - query`` is
  ``(d + ws//2) mod (2ws-1)`` per axis (an offset of ``ws//2`` with Python's negative-index wrap-around, not the
  Swin ``ws-1``); the regional row and column get no bias;
* regional stem padding: when H *or* W is not a multiple of the regional patch P, *both* sides are zero-padded
  by ``P - size % P``, centred -- a side that already divides gets a whole extra patch (224x200 -> 9x8 regions);
* local padding and masks: local maps are zero-padded bottom/right to ``(Hr*ws) x (Wr*ws)`` once per stage; the
  padded tokens are carried through every block (``LN(0)`` is the LN bias, not zero) and cropped at the end.
  Masked logits are *replaced* by ``finfo.min`` (fully masked rows get a uniform softmax). The bottom-right
  window's mask ORs the "right" and "bottom" rules instead of AND-ing them, so padded columns of valid rows (and
  valid columns of padded rows) stay visible there. ``corrected_mask=True`` uses the AND (opt-in);
* stochastic depth on the local-attention and MLP branches drops whole *windows* (their batch axis is
  ``B * nW``), on the regional branch whole images;
* PEG (``*_peg``): one depth-wise 3x3 conv per stage, applied residually to both maps after the first block, on
  the cropped maps, which are then padded again with zeros;
* ``det_norm``: a channel LayerNorm per stage on the local map that is both the stage's output *and* the next
  stage's input (the official detection backbone), not a side branch.
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, Mlp, register_notrace_module, to_2tuple, trunc_normal_
from timm.models import checkpoint, generate_default_cfgs
from torch import Tensor, nn

from locvit.layers import fastpath
from locvit.layers.attention import HeadsAttention, attend_windows
from locvit.layers.rel_pos import resize_bias_grid
from locvit.layers.token_mlp import residual_mlp
from locvit.models._registry import (
    DenseRecipe,
    ModelSpec,
    norm_eps,
    pop_unused,
    register_family_model,
    register_official,
)
from locvit.models.args import (
    check_heads,
    check_hidden,
    check_img_size,
    check_int,
    check_ints,
    check_length,
    check_model_args,
    per_stage,
)
from locvit.models.builder import build_model, init_linear_layernorm, make_cfg
from locvit.models.interface import PyramidStages
from locvit.weights.checkpoint import CheckpointError

__all__ = ["R2LAttention", "R2LBlock", "RegionViT", "RegionViTStage", "r2l_window_mask", "rel_pos_index"]


# the official LayerNorm2d keeps eps as a float32 tensor: in float64 it adds float32(1e-5), not 1e-5
LN2D_EPS = float(torch.tensor(1e-5, dtype=torch.float32))


# --- the regional-to-local attention ---------------------------------------------------------------------------
def rel_pos_index(window_size: int) -> Tensor:
    """``ws² x ws²`` index into the flattened ``(2ws-1)²`` table for (query, key) local tokens, official layout:
    per axis, slot ``(key - query + ws//2) mod (2ws-1)``."""
    ws = window_size
    span = 2 * ws - 1
    pos = torch.arange(ws)
    slot = (pos[None, :] - pos[:, None] + ws // 2) % span  # [query, key]
    index = slot[:, None, :, None] * span + slot[None, :, None, :]  # [y, x, y', x']
    return index.reshape(ws * ws, ws * ws)


def r2l_window_mask(
    grid: tuple[int, int],
    pad: tuple[int, int],
    window_size: int,
    corrected: bool = False,
    device: torch.device | None = None,
) -> Tensor:
    """Which (query, key) pairs may attend in every window: bool ``(Hr*Wr) x (1+ws²) x (1+ws²)``.

    Local maps are padded at the bottom by ``pad[0]`` and at the right by ``pad[1]`` tokens (at most ``ws``),
    so only the last window row/column holds padding. Interior windows see everything; last-column windows
    mask padded columns (as queries and keys), last-row windows padded rows. The official bottom-right window
    allows a pair when *either* rule allows it; ``corrected=True`` requires both.
    """
    (Hr, Wr), (pad_b, pad_r), ws = grid, pad, window_size
    t = torch.arange(ws * ws, device=device)
    regional = torch.ones(1, dtype=torch.bool, device=device)
    col_ok = torch.cat([regional, t % ws < ws - pad_r])
    row_ok = torch.cat([regional, t // ws < ws - pad_b])
    right = col_ok[:, None] & col_ok[None, :]
    bottom = row_ok[:, None] & row_ok[None, :]
    corner = right & bottom if corrected else right | bottom
    last_col = (torch.arange(Wr, device=device) == Wr - 1).view(1, Wr, 1, 1)
    last_row = (torch.arange(Hr, device=device) == Hr - 1).view(Hr, 1, 1, 1)
    # boolean algebra rather than where(): ONNX Runtime has no CPU kernel for Where on booleans
    mask = ((last_row & last_col & corner) | (last_row & ~last_col & bottom) | (~last_row & last_col & right)
            | (~last_row & ~last_col))
    return mask.reshape(Hr * Wr, ws * ws + 1, ws * ws + 1)


class R2LAttention(HeadsAttention):
    """Multi-head attention shared by the regional and the local step of an R2L block.

    ``regional(r)`` attends over the ``B x nW x C`` regional tokens of each image; ``local(x, mask)`` attends
    inside each ``(B*nW) x (1+ws²) x C`` window with the relative-position bias, and the window mask if given.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(dim, num_heads, qk_scale)
        self.window_size = window_size
        self._add_projections(dim, qkv_bias, attn_drop, proj_drop, qkv=3)
        self.rel_pos = nn.Parameter(torch.zeros(num_heads, (2 * window_size - 1) ** 2))
        # full (1+ws²)² index; the regional row/column point at a zero slot appended to the table
        n = window_size ** 2
        index = torch.full((n + 1, n + 1), (2 * window_size - 1) ** 2, dtype=torch.long)
        index[1:, 1:] = rel_pos_index(window_size)
        self.register_buffer("bias_index", index, persistent=False)
        trunc_normal_(self.rel_pos, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """``heads x (1+ws²) x (1+ws²)`` bias, zero on the regional token's row and column."""
        return F.pad(self.rel_pos, (0, 1))[:, self.bias_index]

    def regional(self, r: Tensor) -> Tensor:
        q, k, v = self._heads(self.qkv(r))
        return self._merge(self._attend(q, k, v))

    def local(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Every token of every ``(B*nW) x (1+ws²) x C`` window attends inside its window. ``mask``: bool
        ``nW x 1 x N x N`` (True = attend) for padded maps, else None."""
        q, k, v = self._heads(self.qkv(x))
        return self._local(q, k, v, self.relative_position_bias().to(q.dtype), mask)

    def local_regional_queries(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """:meth:`local` for the regional token of each window only (output ``(B*nW) x 1 x C``): the local tokens
        serve as keys and values, the result is the regional row of :meth:`local`."""
        q, k, v = self._heads(self.qkv(x))
        bias = self.relative_position_bias().to(q.dtype)[:, :1]
        return self._local(q[:, :, :1], k, v, bias, None if mask is None else mask[..., :1, :])

    def _local(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return self._merge(self._attend(q, k, v, bias.unsqueeze(0)))  # 4-D: fused kernel
        # the official code *replaces* masked logits by finfo.min; adding finfo.min / 2 to a logit rounds to one
        # constant just the same (fully masked rows keep the official uniform softmax, the others exact zeros),
        # and cannot overflow to -inf in half precision
        bias = torch.where(mask, bias, torch.finfo(q.dtype).min / 2)  # nW x heads x Nq x N
        return self._merge(attend_windows(q, k, v, bias, self.scale, self._dropout_p(), owner=self))


# --- block, layout, stage --------------------------------------------------------------------------------------
class R2LBlock(nn.Module):
    """Regional attention, then windowed local attention, then MLP; pre-norm residuals (one drop-path rate)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm0 = norm_layer(dim)
        self.norm1 = norm_layer(dim)
        self.attn = R2LAttention(dim, num_heads, window_size, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def mix_regional(self, x: Tensor, num_windows: int) -> Tensor:
        """Step 1: the regional tokens of each image attend to each other; ``x``: ``(B*nW) x (1+ws²) x C``."""
        BW, N, C = x.shape
        r = x[:, 0].reshape(BW // num_windows, num_windows, C)
        r = r + self.drop_path(self.attn.regional(self.norm0(r)))
        return torch.cat([r.reshape(BW, 1, C), x[:, 1:]], dim=1)

    def mix_local(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Steps 2-3: windowed attention (``mask`` as in :meth:`R2LAttention.local`) and the MLP, every token."""
        x = x + self.drop_path(self.attn.local(self.norm1(x), mask))
        return residual_mlp(x, self.norm2, self.mlp, self.drop_path)

    def mix_local_regional(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Steps 2-3 for the regional tokens only (``(B*nW) x 1 x C``), for a last block whose local tokens nobody
        reads (classification)."""
        x = x[:, :1] + self.drop_path(self.attn.local_regional_queries(self.norm1(x), mask))
        return residual_mlp(x, self.norm2, self.mlp, self.drop_path)

    def forward(self, x: Tensor, num_windows: int, mask: Tensor | None = None, **regional_kwargs: Any) -> Tensor:
        """``x``: ``(B*nW) x (1+ws²) x C`` windows; ``mask`` as in :meth:`R2LAttention.local`;
        ``regional_kwargs`` go to :meth:`mix_regional` (a subclass's extra inputs, e.g. the video block's
        ``num_frames``)."""
        return self.mix_local(self.mix_regional(x, num_windows, **regional_kwargs), mask)


def to_windows(region: Tensor, local: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """``B x C x Hr x Wr`` regional and ``B x C x H x W`` local maps -> ``(B*Hr*Wr) x (1+ws²) x C`` windows.

    The local map is zero-padded at the bottom/right to ``(Hr*ws) x (Wr*ws)``; returns the padding
    ``(pad_b, pad_r)``.
    """
    B, C, Hr, Wr = region.shape
    H, W = local.shape[-2:]
    ws = window_size
    pad_b, pad_r = Hr * ws - H, Wr * ws - W
    if pad_b or pad_r:
        local = F.pad(local, (0, pad_r, 0, pad_b))
    local = local.reshape(B, C, Hr, ws, Wr, ws).permute(0, 2, 4, 3, 5, 1).reshape(B * Hr * Wr, ws * ws, C)
    region = region.permute(0, 2, 3, 1).reshape(B * Hr * Wr, 1, C)
    return torch.cat([region, local], dim=1), (pad_b, pad_r)


def to_maps(x: Tensor, grid: tuple[int, int], size: tuple[int, int], window_size: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`to_windows`: regional ``B x C x Hr x Wr`` and local ``B x C x H x W`` maps (padding
    cropped). Both come back channels-last in memory, which the following norms and convs prefer."""
    (Hr, Wr), (H, W), ws = grid, size, window_size
    C = x.shape[-1]
    region = x[:, 0].reshape(-1, Hr, Wr, C).permute(0, 3, 1, 2)
    local = x[:, 1:].reshape(-1, Hr, Wr, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, Hr * ws, Wr * ws, C)
    return region, local[:, :H, :W].permute(0, 3, 1, 2)


class Projection(nn.Module):
    """The down-sampling between stages, one module for the regional and the local map: LayerNorm2d -> GELU ->
    grouped conv (``groups = in_dim``, each channel feeding ``out_dim // in_dim`` outputs); ``'sc'`` is k3 s2 p1,
    ``'c'`` is k1 s1."""

    def __init__(self, in_dim: int, out_dim: int, mode: str = "sc"):
        super().__init__()
        if mode not in ("c", "sc"):
            raise ValueError(f"downsampling mode must be 'c' or 'sc', got {mode!r}")
        if out_dim % in_dim:
            raise ValueError(f"projection {in_dim}->{out_dim}: output channels must be a multiple of the input")
        k, s = (3, 2) if mode == "sc" else (1, 1)
        self.norm = LayerNorm2d(in_dim, eps=LN2D_EPS)
        self.act = nn.GELU()
        self.conv = nn.Conv2d(in_dim, out_dim, k, s, k // 2, groups=in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.act(self.norm(x)))


@register_notrace_module  # windows, padding and masks follow the map size: a leaf for torch.fx
class RegionViTStage(nn.Module):
    """Projection, then R2L blocks on the windowed layout (PEG after the first), then back to maps."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        downsampling: str = "sc",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        norm_layer: type[nn.Module] = nn.LayerNorm,
        peg: bool = False,
        det_norm: bool = False,
        corrected_mask: bool = False,
        block_fn: Callable[..., nn.Module] = R2LBlock,
    ):
        super().__init__()
        self.window_size = window_size
        self.corrected_mask = corrected_mask
        self.grad_checkpointing = False
        identity = downsampling == "c" and in_dim == dim
        self.downsample = nn.Identity() if identity else Projection(in_dim, dim, downsampling)
        dpr = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList([
            block_fn(dim, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, proj_drop, attn_drop, dpr[i],
                     norm_layer)
            for i in range(depth)
        ])
        self.peg = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False) if peg else None
        self.det_norm = LayerNorm2d(dim, eps=LN2D_EPS) if det_norm else None
        self._masks = fastpath.ShapeCache()

    def window_mask(self, grid: tuple[int, int], pad: tuple[int, int], device: torch.device) -> Tensor | None:
        """The stage's attention mask for a padded input (None when nothing is padded), cached by shape."""
        ws = self.window_size
        if not pad[0] and not pad[1]:
            return None
        if not 0 <= pad[0] <= ws or not 0 <= pad[1] <= ws:
            raise ValueError(f"window size {ws} does not fit a local map padded by {pad} for a {grid} regional "
                             "grid; use the same window size in every stage")
        return self._masks.get_or_build(
            (grid, pad, device), lambda: r2l_window_mask(grid, pad, ws, self.corrected_mask, device).unsqueeze(1))

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(partial(fn, **kwargs) if kwargs else fn, *args)
        return fn(*args, **kwargs)

    def forward(self, region: Tensor, local: Tensor, final: bool = False,
                need_local: bool = True, **block_kwargs: Any) -> tuple[Tensor, Tensor | None]:
        """``B x C x H x W`` regional and local maps in and out; ``block_kwargs`` go to every block's regional step
        (e.g. ``num_frames`` for the video blocks).

        ``final``: the model's last stage, whose regional tokens are all that classification reads: its last block
        runs the regional queries alone for them (the same numbers up to rounding, a fraction of the work), and the
        local map is computed only when ``need_local`` (else None). The official code runs every token.
        """
        region, local = self.downsample(region), self.downsample(local)
        grid, size, ws = tuple(region.shape[-2:]), tuple(local.shape[-2:]), self.window_size
        x, pad = to_windows(region, local, ws)
        mask = self.window_mask(grid, pad, x.device)
        num_windows = grid[0] * grid[1]
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            pegged = i == 0 and self.peg is not None
            if i == last and final and not pegged:
                x = self._run(blk.mix_regional, x, num_windows, **block_kwargs)
                r = self._run(blk.mix_local_regional, x, mask)
                region = r.reshape(-1, grid[0], grid[1], r.shape[-1]).permute(0, 3, 1, 2)
                local = to_maps(self._run(blk.mix_local, x, mask), grid, size, ws)[1] if need_local else None
                return region, self._det_norm(local)
            x = self._run(blk, x, num_windows, mask, **block_kwargs)
            if pegged:
                region, local = to_maps(x, grid, size, ws)
                x, _ = to_windows(region + self.peg(region), local + self.peg(local), ws)
        region, local = to_maps(x, grid, size, ws)
        return region, self._det_norm(local)

    def _det_norm(self, local: Tensor | None) -> Tensor | None:
        return local if self.det_norm is None or local is None else self.det_norm(local)


# --- stems and the model ---------------------------------------------------------------------------------------
class LocalStem(nn.Module):
    """Local-token stem: ``'3conv'`` (three 3x3 convs, strides 2/2/1, LayerNorm2d+GELU between; patch 4 only),
    ``'1conv'`` (kernel 2p, stride p, padding p-1) or ``'linear'`` (kernel = stride = p). No norm after it."""

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, conv_type: str = "3conv"):
        super().__init__()
        if conv_type == "3conv":
            if patch_size != 4:
                raise ValueError(f"the '3conv' stem is defined for patch_size 4 only, got {patch_size}")
            self.proj = nn.Sequential(
                nn.Conv2d(in_chans, dim // 4, 3, 2, 1), LayerNorm2d(dim // 4, eps=LN2D_EPS), nn.GELU(),
                nn.Conv2d(dim // 4, dim // 2, 3, 2, 1), LayerNorm2d(dim // 2, eps=LN2D_EPS), nn.GELU(),
                nn.Conv2d(dim // 2, dim, 3, 1, 1),
            )
            self.min_size = 1
        elif conv_type == "1conv":
            self.proj = nn.Conv2d(in_chans, dim, 2 * patch_size, patch_size, patch_size - 1)
            self.min_size = 2
        elif conv_type == "linear":
            self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)
            self.min_size = patch_size
        else:
            raise ValueError(f"patch_conv_type must be '3conv', '1conv' or 'linear', got {conv_type!r}")
        self.conv_type, self.patch_size = conv_type, patch_size

    def out_size(self, n: int) -> int:
        """Local tokens along a side of ``n`` pixels."""
        if self.conv_type == "3conv":
            return ((n - 1) // 2) // 2 + 1
        if self.conv_type == "1conv":
            return (n - 2) // self.patch_size + 1
        return n // self.patch_size

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


@register_notrace_module  # pads by the input size: a leaf for torch.fx
class RegionalStem(nn.Module):
    """Regional-token stem: a conv with kernel = stride = P on the image, zero-padded centred to multiples of P
    (official rule: when either side needs it, both sides get ``P - size % P``, see the module docstring)."""

    def __init__(self, in_chans: int, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, patch)

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """Regional tokens of an ``H x W`` image (the official padding rule)."""
        (H, W), P = size, self.patch
        if H % P or W % P:
            H, W = H + P - H % P, W + P - W % P
        return H // P, W // P

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        P = self.patch
        if H % P or W % P:
            ph, pw = P - H % P, P - W % P
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return self.proj(x)


class RegionViT(PyramidStages, nn.Module):
    """RegionViT: regional-to-local attention on a 4-stage pyramid.

    Args:
        img_size: nominal input size (pretrained cfg only: every size works).
        patch_size: local-token stride of the stem.
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``'avg'`` (mean of the final regional tokens, official) or ``''``.
        embed_dim: channels of each stage.
        depth: R2L blocks per stage.
        num_heads: attention heads per stage.
        window_size: local tokens per window side, one int or one per stage (7, or 14 for the ``w14`` models);
            the regional patch is ``patch_size * window_size[0]`` pixels.
        stem_dim: channels of the stems (official ``embed_dim[0]``); ``embed_dim[0]`` when None.
        patch_conv_type: local stem, ``'3conv'``, ``'1conv'`` or ``'linear'``.
        downsampling: projection mode per stage, ``'c'`` (k1; identity when channels stay) or ``'sc'`` (k3 s2).
        mlp_ratio: MLP expansion, one float or one per stage.
        qkv_bias, qk_scale: attention projection bias and logit scale (``head_dim ** -0.5`` when None).
        peg: add the position-encoding generator (depth-wise conv after each stage's first block).
        det_norm: normalise each stage's local map (the official detection backbone; feeds the next stage).
        corrected_mask: opt-in fix of the official bottom-right window mask (see the module docstring).
        norm_eps: epsilon of the token LayerNorms (1e-6 in every registered model).
        drop_rate, attn_drop_rate, drop_path_rate: regularisation as in the official code (``drop_rate``: after
            the stem, in the MLPs and after the attention projections).
        head_drop_rate: dropout before the classifier (not in the official model).
        block_fn: the R2L block class (called with :class:`R2LBlock`'s arguments); subclasses extend the block
            (the video model's temporal attention).
    """

    stage_fmt = "NCHW"
    group_stem = r"^patch_embed|^region_embed"
    group_stage_start = "downsample|peg|det_norm"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: Sequence[int] = (96, 192, 384, 768),
        depth: Sequence[int] = (2, 2, 8, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int | Sequence[int] = 7,
        stem_dim: int | None = None,
        patch_conv_type: str = "3conv",
        downsampling: Sequence[str] = ("c", "sc", "sc", "sc"),
        mlp_ratio: float | Sequence[float] = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        peg: bool = False,
        det_norm: bool = False,
        corrected_mask: bool = False,
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_drop_rate: float = 0.0,
        block_fn: Callable[..., nn.Module] = R2LBlock,
    ):
        super().__init__()
        check_model_args(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, pools=self.global_pools,
                         drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                         head_drop_rate=head_drop_rate)
        num_stages = len(check_ints(depth, "depth"))
        embed_dim = check_ints(embed_dim, "embed_dim", num_stages)
        num_heads = check_ints(num_heads, "num_heads", num_stages)
        for i, mode in enumerate(check_length(downsampling, "downsampling", num_stages)):
            if mode not in ("c", "sc"):
                raise ValueError(f"downsampling[{i}] must be 'c' or 'sc', got {mode!r}")
        window_size = check_ints(per_stage(window_size, num_stages), "window_size", num_stages)
        mlp_ratio = check_length(per_stage(mlp_ratio, num_stages), "mlp_ratio", num_stages)
        for i in range(num_stages):
            check_heads(embed_dim[i], num_heads[i], f"embed_dim[{i}]", f"num_heads[{i}]")
            check_hidden(embed_dim[i], mlp_ratio[i], f"mlp_ratio[{i}]")
        patch_size = check_int(patch_size, "patch_size")
        stem_dim = check_int(embed_dim[0] if stem_dim is None else stem_dim, "stem_dim",
                             4 if patch_conv_type == "3conv" else 1)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = tuple(embed_dim)
        self.num_features = self.head_hidden_size = embed_dim[-1]
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size)
        self.window_size = tuple(window_size)
        self.det_norm = det_norm

        self.patch_embed = LocalStem(in_chans, stem_dim, patch_size, patch_conv_type)
        self.region_embed = RegionalStem(in_chans, stem_dim, patch_size * window_size[0])
        self.pos_drop = nn.Dropout(drop_rate)
        self.min_input_size = (self.patch_embed.min_size, self.patch_embed.min_size)
        self._check_geometry(check_img_size(img_size, self.min_input_size, f"the {patch_conv_type!r} stem"),
                             downsampling)

        dpr = torch.linspace(0, drop_path_rate, sum(depth)).tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        in_dim, stride, start = stem_dim, patch_size, 0
        for i in range(num_stages):
            self.stages.append(RegionViTStage(
                in_dim, embed_dim[i], depth[i], num_heads[i], window_size[i], downsampling[i], mlp_ratio[i],
                qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[start:start + depth[i]], norm_layer, peg,
                det_norm, corrected_mask, block_fn,
            ))
            stride *= 2 if downsampling[i] == "sc" else 1
            self.feature_info.append(dict(num_chs=embed_dim[i], reduction=stride, module=f"stages.{i}"))
            in_dim, start = embed_dim[i], start + depth[i]
        self.norm = norm_layer(embed_dim[-1])
        self.head_drop = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        # the last stage's detection norm only shapes the last local map, which classification discards
        self.unused_parameters = (f"stages.{num_stages - 1}.det_norm.weight",
                                  f"stages.{num_stages - 1}.det_norm.bias") if det_norm else ()
        self.apply(init_linear_layernorm)

    def _check_geometry(self, img_size: tuple[int, int], downsampling: Sequence[str]) -> None:
        """Refuse windows that do not fit the maps of an ``img_size`` input: a window larger than the stage-1
        local map (it would be mostly padding, and its attention grows with the window's fourth power), or
        per-stage windows whose padding the regional grid cannot hold."""
        grid = self.region_embed.grid(img_size)
        size = tuple(self.patch_embed.out_size(n) for n in img_size)
        ws = self.window_size[0]
        if ws > min(size):
            raise ValueError(f"window_size {ws} is larger than the {size[0]}x{size[1]} local-token map of a "
                             f"{img_size[0]}x{img_size[1]} img_size; use window_size <= {min(size)} (the published "
                             "models use 7 and 14) or a larger img_size")
        for i, (mode, ws) in enumerate(zip(downsampling, self.window_size)):
            if mode == "sc":
                grid, size = tuple((n - 1) // 2 + 1 for n in grid), tuple((n - 1) // 2 + 1 for n in size)
            pad = (grid[0] * ws - size[0], grid[1] * ws - size[1])
            if not (0 <= pad[0] <= ws and 0 <= pad[1] <= ws):
                raise ValueError(f"window_size[{i}]={ws} does not fit stage {i}: its {size[0]}x{size[1]} local map "
                                 f"on a {grid[0]}x{grid[1]} regional grid; use the same window size in every stage")

    # --- forward: the state between stages is the (regional, local) pair of maps -----------------------------------
    def _stem(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.region_embed(x), self.pos_drop(self.patch_embed(x))

    def _stage(self, i: int, x: tuple[Tensor, Tensor], need_map: bool, **block_kwargs: Any
               ) -> tuple[Tensor, Tensor | None]:
        final = i == len(self.stages) - 1
        region, local = x
        return self.stages[i](region, local, final=final, need_local=not final or need_map, **block_kwargs)

    def _stage_map(self, i: int, x: tuple[Tensor, Tensor], norm: bool) -> Tensor:
        """The stage's local-token map (strides 4/8/16/32), cropped to the input's true size; with ``det_norm=True``
        the normalised map, which the model also feeds to the next stage. ``norm`` does not apply: the final norm
        acts on regional tokens."""
        return x[1]

    def _features(self, x: tuple[Tensor, Tensor], final: bool) -> Tensor:
        """The final regional tokens, ``B x (Hr*Wr) x C``, normalised when every stage ran."""
        tokens = x[0].flatten(2).transpose(1, 2)
        return self.norm(tokens) if final else tokens


# --- checkpoints -----------------------------------------------------------------------------------------------
_D2_PREFIX = "backbone.bottom_up.model."  # the authors' Detectron2 wrapper (tools/convert_cls_model_to_d2.py)


def _official_key(k: str) -> str:
    """Official key -> ours (keys already ours pass through)."""
    k = re.sub(r"^cls_token\.", "region_embed.", k)
    k = re.sub(r"^norm(\d+)\.", r"stages.\1.det_norm.", k)
    k = re.sub(r"^layers\.(\d+)\.peg\.", r"stages.\1.peg.", k)
    m = re.match(r"^layers\.(\d+)\.block\.0\.proj(?:_cls)?\.(\d+)\.(.*)$", k)
    if m:
        part = {"0": "norm", "2": "conv"}.get(m.group(2), m.group(2))
        return f"stages.{m.group(1)}.downsample.{part}.{m.group(3)}"
    m = re.match(r"^layers\.(\d+)\.block\.(\d+)\.(.*)$", k)
    if m:
        return f"stages.{m.group(1)}.blocks.{int(m.group(2)) - 1}.{m.group(3)}"
    return k


def resize_rel_pos(table: Tensor, window_size: int) -> Tensor:
    """Bicubic resize of a ``heads x (2ws-1)²`` table to another window size, in the stored (wrapped) order, as
    the authors' ``tools/convert_cls_model_to_diff_ws.py`` does (so it is not a geometric resize of the
    displacement grid)."""
    span = 2 * window_size - 1
    return resize_bias_grid(table, (span, span))


def resize_region_kernel(weight: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize of the regional stem's ``C x in x P x P`` kernel (the authors' window-size conversion)."""
    if tuple(weight.shape[-2:]) == tuple(size):
        return weight
    return F.interpolate(weight.float(), size=size, mode="bicubic").to(weight.dtype)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: RegionViT) -> dict[str, Tensor]:
    """Official RegionViT checkpoints (or ours) -> this model's keys.

    * ``cls_token.*`` (the regional stem) -> ``region_embed.*``; ``layers.{s}.block.0.proj.*`` and its duplicate
      ``proj_cls.*`` (one module saved twice) -> ``stages.{s}.downsample.*`` (they must agree);
      ``layers.{s}.block.{j}`` -> ``stages.{s}.blocks.{j-1}``; ``norm{s}`` (det_norm) -> ``stages.{s}.det_norm``;
      the ``1 x C x 1 x 1`` LayerNorm2d affines become ``C``; the Detectron2 prefix
      ``backbone.bottom_up.model.`` is stripped (other detector keys are dropped).
    * another window size: the regional stem kernel and every ``rel_pos`` table are resized bicubically (the
      tables in their stored, wrapped order), as the authors' conversion tool does -- each table to its own
      stage's window (the tool's stage filter never matches, so with per-stage windows it resizes every table to
      the last changed stage's size; for one window size for all stages, as in every released model, the
      results are the same).
    * a ``det_norm`` model loading an ImageNet checkpoint keeps its freshly initialised detection norms (the
      official detection fine-tuning starts them that way).
    """
    if any(k.startswith(_D2_PREFIX) for k in state_dict):
        state_dict = {k[len(_D2_PREFIX):]: v for k, v in state_dict.items() if k.startswith(_D2_PREFIX)}
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if k.endswith("rel_pos_index"):
            continue
        nk = _official_key(k)
        if nk in out:  # the shared projection, saved as proj and proj_cls
            if not torch.equal(out[nk], v.reshape(out[nk].shape)):
                raise CheckpointError(f"{k} differs from its twin: the official down-sampling layer is one module "
                                      "saved under proj and proj_cls, the two must be equal")
            continue
        target = own.get(nk)
        if target is not None:
            if v.ndim == 4 and target.ndim == 1 and v.numel() == target.numel():  # LayerNorm2d affine
                v = v.reshape(-1)
            elif nk.endswith("attn.rel_pos") and v.shape != target.shape and v.shape[0] == target.shape[0]:
                v = resize_rel_pos(v, math.isqrt(target.shape[1]) // 2 + 1)
            elif nk == "region_embed.proj.weight" and v.shape[:2] == target.shape[:2]:
                v = resize_region_kernel(v, tuple(target.shape[-2:]))
        out[nk] = v
    for k, v in own.items():
        if ".det_norm." in k and k not in out:
            out[k] = v
    return out


# --- registry --------------------------------------------------------------------------------------------------
REGIONVIT = ModelSpec(
    RegionViT,
    filter_fn=checkpoint_filter_fn,
    feature_cfg=dict(out_indices=(0, 1, 2, 3)),
    dense=DenseRecipe(
        {"det_norm": True}, False,
        "IBM/RegionViT detection/configs (Detectron2): DET_NORM True, window 7 (Ti/S/M/B) or 14 (the '+' models, "
        "*_w14*), drop path 0.2, FPN on res2-res5 + max-pool P6 (Mask R-CNN) or P6/P7 from res5 (RetinaNet)"),
)


@register_official(REGIONVIT, "regionvit.regionvit.RegionViT")
def _from_official(kw: dict[str, Any]) -> dict[str, Any]:
    embed_dim = list(kw.pop("embed_dim"))
    norm_layer = kw.pop("norm_layer", None)
    pop_unused(kw, {"computed_cls_token": True})
    return dict(
        stem_dim=embed_dim[0],
        embed_dim=embed_dim[1:],
        window_size=list(kw.pop("kernel_sizes")),
        norm_eps=norm_eps(norm_layer, 1e-6),
        **kw,
    )


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> RegionViT:
    return build_model(REGIONVIT, variant, pretrained, **kwargs)


_RELEASE = "https://github.com/IBM/RegionViT/releases/download/weights-v0.1/"
_DET = "detection backbone; the authors release only COCO detectors with it ({}): load their backbone with " \
       "det_norm=True, features_only=True"


def _cfg(url: str = "", stem: str = "3conv", **kwargs: Any) -> dict[str, Any]:
    return make_cfg(
        url, origin_url="https://github.com/IBM/RegionViT/releases/tag/weights-v0.1" if url else "",
        repo="IBM/RegionViT", license="apache-2.0", paper_ids="arXiv:2106.02689",
        paper_name="RegionViT: Regional-to-Local Attention for Vision Transformers",
        first_conv="patch_embed.proj.0" if stem == "3conv" else "patch_embed.proj", min_input_size=(3, 32, 32),
        **kwargs)


default_cfgs = generate_default_cfgs({
    "regionvit_tiny.in1k": _cfg(_RELEASE + "RegionViT-Ti.pth", top1=80.4, notes=("official name regionvit_tiny_224",)),
    "regionvit_small.in1k": _cfg(_RELEASE + "RegionViT-S.pth", top1=82.6,
                                 notes=("official name regionvit_small_224",)),
    "regionvit_medium.in1k": _cfg(
        _RELEASE + "RegionViT-M.pth", stem="1conv", top1=83.1,
        notes=("official name regionvit_medium_224", "the README links RegionViT-S.pth for this model by mistake; "
               "RegionViT-M.pth is the release asset (IBM/RegionViT PR #2)")),
    "regionvit_base.in1k": _cfg(_RELEASE + "RegionViT-B.pth", stem="1conv", top1=83.2,
                                notes=("official name regionvit_base_224",)),
    "regionvit_small_w14": _cfg(notes=(_DET.format("MaskRCNN_1x_RegionViT-S+.pth, RetinaNet_*_RegionViT-S+.pth"),)),
    "regionvit_small_w14_peg": _cfg(notes=(_DET.format("*_RegionViT-S+peg.pth"),)),
    "regionvit_base_w14": _cfg(stem="1conv", notes=(_DET.format("*_RegionViT-B+.pth"),)),
    "regionvit_base_w14_peg": _cfg(stem="1conv", notes=(_DET.format("*_RegionViT-B+peg*.pth"),)),
    "regionvit_tiny_w14": _cfg(notes=("not buildable in the official registry (missing config); no weights",)),
})

_TINY = dict(embed_dim=(64, 128, 256, 512), depth=(2, 2, 8, 2), num_heads=(2, 4, 8, 16), patch_conv_type="3conv")
_SMALL = dict(embed_dim=(96, 192, 384, 768), depth=(2, 2, 8, 2), num_heads=(3, 6, 12, 24), patch_conv_type="3conv")
_MEDIUM = dict(embed_dim=(96, 192, 384, 768), depth=(2, 2, 14, 2), num_heads=(3, 6, 12, 24), patch_conv_type="1conv")
_BASE = dict(embed_dim=(128, 256, 512, 1024), depth=(2, 2, 14, 2), num_heads=(4, 8, 16, 32), patch_conv_type="1conv")


def _variant(name: str, base: dict[str, Any], pretrained: bool, kwargs: dict[str, Any], **extra: Any) -> RegionViT:
    return _create(name, pretrained, **{**base, **extra, **kwargs})


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_tiny_224",))
def regionvit_tiny(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-Ti: 3conv stem, dims 64/128/256/512, depths 2/2/8/2, window 7."""
    return _variant("regionvit_tiny", _TINY, pretrained, kwargs, window_size=7)


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_small_224",))
def regionvit_small(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-S: 3conv stem, dims 96/192/384/768, depths 2/2/8/2, window 7."""
    return _variant("regionvit_small", _SMALL, pretrained, kwargs, window_size=7)


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_medium_224",))
def regionvit_medium(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-M: 1conv stem, dims 96/192/384/768, depths 2/2/14/2, window 7."""
    return _variant("regionvit_medium", _MEDIUM, pretrained, kwargs, window_size=7)


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_base_224",))
def regionvit_base(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-B: 1conv stem, dims 128/256/512/1024, depths 2/2/14/2, window 7."""
    return _variant("regionvit_base", _BASE, pretrained, kwargs, window_size=7)


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_tiny_w14_224",))
def regionvit_tiny_w14(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-Ti with window 14 (registered but broken in the official code; no official weights)."""
    return _variant("regionvit_tiny_w14", _TINY, pretrained, kwargs, window_size=14)


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_small_w14_224",))
def regionvit_small_w14(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-S+ (detection README): RegionViT-S with window 14."""
    return _variant("regionvit_small_w14", _SMALL, pretrained, kwargs, window_size=14)


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_small_w14_peg_224",))
def regionvit_small_w14_peg(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-S+ with PEG: window 14 and a depth-wise position conv per stage."""
    return _variant("regionvit_small_w14_peg", _SMALL, pretrained, kwargs, window_size=14, peg=True)


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_base_w14_224",))
def regionvit_base_w14(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-B+ (detection README): RegionViT-B with window 14."""
    return _variant("regionvit_base_w14", _BASE, pretrained, kwargs, window_size=14)


@register_family_model("regionvit", REGIONVIT, aliases=("regionvit_base_w14_peg_224",))
def regionvit_base_w14_peg(pretrained: bool = False, **kwargs: Any) -> RegionViT:
    """RegionViT-B+ with PEG: window 14 and a depth-wise position conv per stage."""
    return _variant("regionvit_base_w14_peg", _BASE, pretrained, kwargs, window_size=14, peg=True)
