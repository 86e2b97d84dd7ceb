"""LocalViT-TNT (Li et al.) on Transformer in Transformer (Han et al., "Transformer in Transformer"), and the
TNT hosts the LocalViT repository registers.

TNT keeps two token sets. Each 16x16 patch is split into 4x4 *pixels* (a 7x7 stride-4 conv embeds the image,
each pixel an ``in_dim`` vector); the *patches* are ``embed_dim`` tokens plus a class token. A block runs

1. an inner transformer over the 16 pixels of every patch (attention + GELU MLP, pre-norm, residuals);
2. ``patch[1:] += Linear(flatten(LN(pixels)))``: the pixels update their patch (class token untouched, no
   drop-path);
3. an outer attention over the patches with a residual;
4. the outer feed-forward -- which LocalViT replaces by the locality feed-forward on the patch map (act
   ``hs+se``, ``reduction=embed_dim`` so the SE gate has 4 hidden units; no norm, no drop-path, residual
   inside; the class token bypasses it).

Official details reproduced: plain LayerNorm (eps 1e-5) everywhere, ``qkv_bias=False``, separate ``qk`` and
``v`` projections, ``first_stride=4``, the order above (the official step 2 is an in-place update; here it is an
out-of-place concatenation, numerically identical), drop-path applied per patch in the inner transformer.

Differences: the official model asserts ``img_size``; here the patch grid is the real one (conv output //
pixels per patch side, non-square allowed) and the patch position embedding is resampled to it, so any input of
at least 13x13 pixels works. Attention takes the fused SDPA path.

The plain TNT hosts of the LocalViT repository (``tnt_t/s/b_patch16_224``) are exactly timm's ``TNT`` with
``legacy=True`` (the layout of the first TNT release, which timm keeps for ``tnt_s_legacy_patch16_224``), so they
are built from timm's class (with its attention modules swapped for the fused :class:`TNTAttention`, same
parameters): ``tnt_t_legacy_patch16_224`` (official name ``tnt_t_patch16_224``, which timm lacks) and
``tnt_b_legacy_patch16_224`` are registered here; timm's own ``tnt_s_patch16_224`` and
``tnt_b_patch16_224`` are a later, different layout and keep their meaning in timm, while
:func:`locvit.create_model` builds the LocalViT repository's model for those two official names (see
``locvit.models.factory.OFFICIAL_HOMONYMS``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import checkpoint, generate_default_cfgs
from timm.models import tnt as timm_tnt
from torch import Tensor, nn

from locvit.layers import LocalityFeedForward, tokens_through_map
from locvit.layers.attention import HeadsAttention
from locvit.layers.locality_ffn import act_from_code
from locvit.layers.pos_embed import resize_pos_embed, resize_pos_table
from locvit.models._registry import (
    ModelSpec,
    norm_eps,
    register_family_model,
    register_official,
    register_official_homonym,
)
from locvit.models.args import check_heads, check_host_kwargs, check_img_size, check_int, check_transformer_args
from locvit.models.builder import build_model, init_linear_layernorm, make_cfg
from locvit.models.interface import ClassTokenBlocks
from locvit.models.localvit import localvit_cfg

__all__ = ["LocalViTTNT", "LocalViTTNTBlock", "PixelEmbed", "TNTAttention"]


class TNTAttention(HeadsAttention):
    """Multi-head attention with TNT's key layout: ``qk`` (queries and keys), ``v``, ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__(dim, num_heads)
        self._add_projections(dim, qkv_bias, attn_drop, proj_drop, qk=2, v=1)

    def forward(self, x: Tensor) -> Tensor:
        q, k = self._heads(self.qk(x), 2)
        (v,) = self._heads(self.v(x), 1)
        return self._merge(self._attend(q, k, v))


class PixelEmbed(nn.Module):
    """Image -> pixel tokens: conv 7x7 (stride ``stride``, pad 3), cut into ``k x k`` pixel groups, one per patch
    (``k = ceil(patch_size / stride)``); rows/columns beyond a whole group are dropped, as upstream's unfold does.
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, in_dim: int = 48, stride: int = 4):
        super().__init__()
        self.stride = stride
        self.new_patch_size = math.ceil(patch_size / stride)
        self.proj = nn.Conv2d(in_chans, in_dim, kernel_size=7, padding=3, stride=stride)

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid for an ``H x W`` image."""
        k = self.new_patch_size
        return ((size[0] - 1) // self.stride + 1) // k, ((size[1] - 1) // self.stride + 1) // k

    @property
    def min_size(self) -> int:
        """Smallest image side that yields one patch."""
        return (self.new_patch_size - 1) * self.stride + 1

    def forward(self, x: Tensor, pixel_pos: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``B x 3 x H x W`` -> (``(B * gh * gw) x k*k x in_dim`` pixel tokens, patch grid ``(gh, gw)``)."""
        x = self.proj(x)
        B, C, H, W = x.shape
        k = self.new_patch_size
        gh, gw = H // k, W // k
        x = x[:, :, : gh * k, : gw * k].reshape(B, C, gh, k, gw, k).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(B * gh * gw, k * k, C) + pixel_pos.flatten(2).transpose(1, 2)
        return x, (gh, gw)


class LocalViTTNTBlock(nn.Module):
    """Inner (pixel) transformer, pixel -> patch update, outer attention, locality feed-forward on the patch map.

    Keys as upstream: ``norm_in``, ``attn_in``, ``norm_mlp_in``, ``mlp_in``, ``norm1_proj``, ``proj``, ``norm_out``,
    ``attn_out``, ``conv``.
    """

    def __init__(
        self,
        dim: int,
        in_dim: int,
        num_pixel: int,
        num_heads: int = 12,
        in_num_head: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act: str = "hs+se",
        reduction: int | None = None,
    ):
        super().__init__()
        self.norm_in = norm_layer(in_dim)
        self.attn_in = TNTAttention(in_dim, in_num_head, qkv_bias, attn_drop, proj_drop)
        self.norm_mlp_in = norm_layer(in_dim)
        self.mlp_in = Mlp(in_dim, in_dim * 4, in_dim, drop=proj_drop)
        self.norm1_proj = norm_layer(in_dim)
        self.proj = nn.Linear(in_dim * num_pixel, dim)
        self.norm_out = norm_layer(dim)
        self.attn_out = TNTAttention(dim, num_heads, qkv_bias, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.conv = LocalityFeedForward(dim, mlp_ratio, act, dim if reduction is None else reduction)

    def forward(self, pixel: Tensor, patch: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        pixel = pixel + self.drop_path(self.attn_in(self.norm_in(pixel)))
        pixel = pixel + self.drop_path(self.mlp_in(self.norm_mlp_in(pixel)))
        B, N, _ = patch.shape
        update = self.proj(self.norm1_proj(pixel).reshape(B, N - 1, self.proj.in_features))
        patch = torch.cat([patch[:, :1], patch[:, 1:] + update], dim=1)
        patch = patch + self.drop_path(self.attn_out(self.norm_out(patch)))
        return pixel, tokens_through_map(self.conv, patch, grid, 1)


class LocalViTTNT(ClassTokenBlocks, nn.Module):
    """TNT with the locality feed-forward as the outer (patch-level) feed-forward.

    Args:
        img_size: default input size (grid of the patch position embedding); other sizes resample it on the fly.
        patch_size: patch size (16).
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``'token'`` (class token, official), ``'avg'`` or ``''``.
        embed_dim, depth, num_heads, mlp_ratio: outer transformer shape (``mlp_ratio`` = locality FFN expansion).
        in_dim, in_num_head: inner (pixel) transformer width and heads.
        qkv_bias: bias of the ``qk``/``v`` projections (False in every registered model).
        first_stride: stride of the pixel-embedding conv.
        act, reduction: locality FFN activation and SE divisor (``None``: ``embed_dim``, as upstream).
        norm_eps: LayerNorm epsilon (1e-5 upstream).
        drop_rate, pos_drop_rate, attn_drop_rate, drop_path_rate: regularisation.
    """

    no_weight_decay_keys = ("patch_pos", "pixel_pos", "cls_token")
    group_stem = r"^cls_token|patch_pos|pixel_pos|pixel_embed|norm[12]_proj|proj"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        in_dim: int = 48,
        depth: int = 12,
        num_heads: int = 12,
        in_num_head: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        first_stride: int = 4,
        act: str | int = "hs+se",
        reduction: int | None = None,
        norm_eps: float = 1e-5,
        drop_rate: float = 0.0,
        pos_drop_rate: float | None = None,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        check_transformer_args(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                               num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate,
                               pos_drop_rate=pos_drop_rate, attn_drop_rate=attn_drop_rate,
                               drop_path_rate=drop_path_rate)
        check_int(patch_size, "patch_size")
        check_int(first_stride, "first_stride")
        check_int(in_dim, "in_dim")
        check_heads(in_dim, in_num_head, "in_dim", "in_num_head")

        def norm_layer(d: int) -> nn.LayerNorm:
            return nn.LayerNorm(d, eps=norm_eps)

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.in_chans = in_chans
        self.grad_checkpointing = False

        self.pixel_embed = PixelEmbed(patch_size, in_chans, in_dim, first_stride)
        m = self.pixel_embed.min_size
        self.min_input_size = (m, m)
        self.img_size = check_img_size(img_size, (m, m), f"one {patch_size}x{patch_size} patch")
        self.grid_size = self.pixel_embed.grid(self.img_size)
        k = self.pixel_embed.new_patch_size
        num_pixel = k * k
        self.norm1_proj = norm_layer(num_pixel * in_dim)
        self.proj = nn.Linear(num_pixel * in_dim, embed_dim)
        self.norm2_proj = norm_layer(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_pos = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1] + 1, embed_dim))
        self.pixel_pos = nn.Parameter(torch.zeros(1, in_dim, k, k))
        self.pos_drop = nn.Dropout(drop_rate if pos_drop_rate is None else pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        act = act_from_code(act)
        self.blocks = nn.ModuleList([
            LocalViTTNTBlock(embed_dim, in_dim, num_pixel, num_heads, in_num_head, mlp_ratio, qkv_bias, drop_rate,
                             attn_drop_rate, dpr[i], norm_layer, act, reduction)
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        reduction_px = first_stride * k
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=reduction_px)
                             for i in range(depth)]

        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.patch_pos, std=0.02)
        trunc_normal_(self.pixel_pos, std=0.02)
        self.apply(init_linear_layernorm)

    # --- timm contract -------------------------------------------------------------------------------------
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Make ``img_size`` the default size: the patch position embedding is resampled to its grid once."""
        img_size = to_2tuple(img_size)
        if min(img_size) < self.pixel_embed.min_size:
            m = self.pixel_embed.min_size
            raise ValueError(f"TNT needs an input size of at least {m}x{m} (one patch), got {img_size}")
        old, new = self.grid_size, self.pixel_embed.grid(img_size)
        self.img_size, self.grid_size = img_size, new
        self.patch_pos = resize_pos_table(self.patch_pos, new, old, num_prefix_tokens=1)

    # --- forward: the state is the (pixel tokens, patch tokens) pair --------------------------------------------
    def _embed(self, x: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[int, int]]:
        B = x.shape[0]
        pixel, grid = self.pixel_embed(x, self.pixel_pos)
        patch = self.norm2_proj(self.proj(self.norm1_proj(pixel.reshape(B, grid[0] * grid[1], self.proj.in_features))))
        pos = self._pos_embed_at(self.patch_pos, grid, self.grid_size)
        patch = torch.cat([self.cls_token.expand(B, -1, -1), patch], dim=1) + pos
        return (pixel, self.pos_drop(patch)), grid

    def _block(self, blk: nn.Module, x: tuple[Tensor, Tensor], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, *x, grid)
        return blk(*x, grid)

    def _tokens(self, x: tuple[Tensor, Tensor]) -> Tensor:
        return x[1]


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: LocalViTTNT) -> dict[str, Tensor]:
    """Official LocalViT-TNT checkpoints use our key names; a patch position embedding trained at another size
    (square, as every official one) is resampled to the model's grid."""
    out = {}
    for k, v in state_dict.items():
        if k == "patch_pos" and v.shape != model.patch_pos.shape:
            v = resize_pos_embed(v, model.grid_size, num_prefix_tokens=1, name=k)
        out[k] = v
    return out


def fuse_tnt_attention(model: timm_tnt.TNT) -> timm_tnt.TNT:
    """Swap the attention modules of a timm ``TNT`` for :class:`TNTAttention` (same parameters and keys, fused
    SDPA instead of an explicit softmax); the model's outputs are unchanged up to rounding."""
    for blk in model.blocks:
        for name in ("attn_in", "attn_out"):
            old = getattr(blk, name)
            dim = old.v.in_features
            if old.qk.out_features != 2 * dim:  # hidden_dim != dim: not a layout TNTAttention covers
                continue
            new = TNTAttention(dim, old.num_heads, old.v.bias is not None, old.attn_drop.p, old.proj_drop.p)
            new.load_state_dict(old.state_dict())
            setattr(blk, name, new.to(old.v.weight.device, old.v.weight.dtype).train(old.training))
    return model


def legacy_tnt(**kwargs: Any) -> timm_tnt.TNT:
    """timm's ``TNT`` in the layout of the first TNT release (``legacy=True``), with fused attention."""
    return fuse_tnt_attention(timm_tnt.TNT(**{**kwargs, "legacy": True}))


LOCALVIT_TNT = ModelSpec(LocalViTTNT, filter_fn=checkpoint_filter_fn, feature_cfg=dict(out_indices=3))
# the LocalViT repository's TNT hosts: timm's class, and timm's filter for the first release's files
TNT_HOST = ModelSpec(legacy_tnt, filter_fn=timm_tnt.checkpoint_filter_fn, feature_cfg=dict(out_indices=3),
                     classes=(timm_tnt.TNT,))


@register_official(LOCALVIT_TNT, "models.localvit_tnt.LocalViT_TNT")
def _from_official(kw: dict[str, Any]) -> dict[str, Any]:
    norm_layer = kw.pop("norm_layer", nn.LayerNorm)
    return dict(norm_eps=norm_eps(norm_layer, 1e-5), **kw)


@register_official(TNT_HOST, "models.tnt.TNT")
def _from_official_host(kw: dict[str, Any]) -> dict[str, Any]:
    """The LocalViT repository's TNT is timm's ``TNT`` with ``legacy=True`` (argument names differ)."""
    drop = kw.pop("drop_rate", 0.0)
    renames = {"in_dim": "inner_dim", "in_num_head": "num_heads_inner", "num_heads": "num_heads_outer"}
    kw = {renames.get(k, k): v for k, v in kw.items()}
    kw.setdefault("num_heads_outer", 12)  # both classes default to 12 outer heads; stated for clarity
    return dict(pos_drop_rate=drop, proj_drop_rate=drop, **kw)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> LocalViTTNT:
    return build_model(LOCALVIT_TNT, variant, pretrained, **kwargs)


def _create_host(variant: str, pretrained: bool = False, **kwargs: Any) -> timm_tnt.TNT:
    heads = [("embed_dim", "num_heads_outer"), ("inner_dim", "num_heads_inner")]
    check_host_kwargs(kwargs, ("token", "avg", ""), heads, dict(patch_size=16, img_size=224))
    return build_model(TNT_HOST, variant, pretrained, **kwargs)


_TNT = dict(first_conv="pixel_embed.proj", min_input_size=(3, 32, 32))
default_cfgs = generate_default_cfgs({
    "localvit_tnt_tiny.in1k": localvit_cfg("localvit_tnt.pth", top1=75.90, **_TNT,
                                           notes=("official name localvit_tnt_t_patch16_224",)),
    "localvit_tnt_small": localvit_cfg(**_TNT, notes=(
        "official name localvit_tnt_s_patch16_224; no weights published",)),
    # timm's TNT class (fixed input size); ImageNet mean/std as LocalViT's training script normalises
    "tnt_t_legacy_patch16_224": make_cfg(**_TNT, fixed_input_size=True, notes=(
        "official name tnt_t_patch16_224 (LocalViT repository); timm TNT, legacy layout; no weights published",)),
    "tnt_b_legacy_patch16_224": make_cfg(**_TNT, fixed_input_size=True, notes=(
        "LocalViT repository's tnt_b_patch16_224 (timm's model of that name has the later layout); no weights",)),
})


@register_family_model("localvit", LOCALVIT_TNT, aliases=("localvit_tnt_t_patch16_224",))
def localvit_tnt_tiny(pretrained: bool = False, **kwargs: Any) -> LocalViTTNT:
    """LocalViT-TNT: TNT-T (192 wide, 3 heads; pixels 12 wide, 3 heads) with the locality FFN (expand 4,
    h_swish + SE with 4 hidden units)."""
    args = dict(patch_size=16, embed_dim=192, in_dim=12, depth=12, num_heads=3, in_num_head=3, qkv_bias=False)
    return _create("localvit_tnt_tiny", pretrained, **dict(args, **kwargs))


@register_family_model("localvit", LOCALVIT_TNT, aliases=("localvit_tnt_s_patch16_224",))
def localvit_tnt_small(pretrained: bool = False, **kwargs: Any) -> LocalViTTNT:
    """LocalViT-TNT-S: TNT-S (384 wide, 6 heads; pixels 24 wide, 4 heads) with the locality FFN."""
    args = dict(patch_size=16, embed_dim=384, in_dim=24, depth=12, num_heads=6, in_num_head=4, qkv_bias=False)
    return _create("localvit_tnt_small", pretrained, **dict(args, **kwargs))


# timm lacks tnt_t_patch16_224: the official name is registered as an alias
@register_family_model(None, TNT_HOST, aliases=("tnt_t_patch16_224",))  # timm's class: outside locvit's zoo
def tnt_t_legacy_patch16_224(pretrained: bool = False, **kwargs: Any) -> timm_tnt.TNT:
    """TNT-T as the LocalViT repository registers it (``tnt_t_patch16_224``): timm's TNT, legacy layout."""
    args = dict(patch_size=16, embed_dim=192, inner_dim=12, depth=12, num_heads_inner=3, num_heads_outer=3,
                qkv_bias=False)
    return _create_host("tnt_t_legacy_patch16_224", pretrained, **dict(args, **kwargs))


@register_family_model(None, TNT_HOST)  # timm's class: outside locvit's zoo
def tnt_b_legacy_patch16_224(pretrained: bool = False, **kwargs: Any) -> timm_tnt.TNT:
    """TNT-B as the LocalViT repository registers it (``tnt_b_patch16_224``): timm's TNT, legacy layout."""
    args = dict(patch_size=16, embed_dim=640, inner_dim=40, depth=12, num_heads_inner=4, num_heads_outer=10,
                qkv_bias=False)
    return _create_host("tnt_b_legacy_patch16_224", pretrained, **dict(args, **kwargs))


# timm registers tnt_s/b_patch16_224 for its later layout; those names keep their meaning in timm, and
# locvit.create_model maps them.
register_official_homonym("tnt_s_patch16_224", "tnt_s_legacy_patch16_224")
register_official_homonym("tnt_b_patch16_224", "tnt_b_legacy_patch16_224")
