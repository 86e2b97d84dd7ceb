"""PVT v1 (Wang et al., "Pyramid Vision Transformer") and LocalViT-PVT, as the LocalViT repository builds them.

The core op is *spatial-reduction attention*: queries come from every token of the stage's ``H x W`` map, while
keys and values come from the map shrunk by a ``sr x sr`` strided convolution (then LayerNorm), so attention
over a large early-stage map costs ``N x N / sr^2``. Four stages, each a non-overlapping patch embedding
(conv + LayerNorm; patch 4, then 2, 2, 2), a learned position embedding of its own, and blocks
``x + DP(SRA(LN(x)))``, ``x + DP(MLP(LN(x)))``. PVT v1 carries a class token, prepended as token 0 to the
last stage only (its position embedding has one more row), and classifies ``LN(class token)``.

LocalViT-PVT replaces ``norm2 + MLP`` with the locality feed-forward (:class:`~locvit.layers.LocalityFeedForward`,
SE hidden size = mlp ratio because the SE divisor is ``dim``) on the image tokens laid out as a map; the class
token bypasses it. Official details reproduced:

* the patch-embedding and spatial-reduction LayerNorms are plain ``nn.LayerNorm`` (eps 1e-5); only the block
  norms and the final norm take the model's ``norm_layer`` (eps 1e-6 in every registered model);
* a LocalViT-PVT block splits off a class token *iff its sr_ratio == 1*. The official code only runs when that
  is exactly the class-token (last) stage, so other configurations raise unless
  ``official_cls_split=False`` (split where the class token actually is);
* the official block forms the map with ``int(sqrt(num_tokens))`` -- square inputs only (``int(sqrt(50)) = 7``
  in stage 4 at 224). Here the map always has the stage's real ``H x W``, so non-square inputs work and square
  ones give the same result.

The official model only accepts its construction ``img_size`` (position embeddings are added as they are).
Here each stage's position embedding is resampled to the input's grid on the fly (and permanently by
:meth:`PyramidVisionTransformer.set_input_size` or the checkpoint filter), so any input of at least
``min_img_size`` pixels (every stage's map at least ``sr x sr``) works.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import checkpoint, generate_default_cfgs
from torch import Tensor, nn

from locvit.layers import LocalityFeedForward, residual_mlp, tokens_through_map
from locvit.layers.attention import HeadsAttention
from locvit.layers.locality_ffn import act_from_code
from locvit.layers.pos_embed import resize_pos_embed, resize_pos_table
from locvit.models._registry import DenseRecipe, ModelSpec, norm_eps, register_family_model, register_official
from locvit.models.args import (
    GLOBAL_POOLS,
    check_heads,
    check_hidden,
    check_img_size,
    check_int,
    check_ints,
    check_length,
    check_model_args,
)
from locvit.models.builder import build_model, make_cfg
from locvit.models.interface import PyramidStages
from locvit.models.localvit import localvit_cfg

__all__ = ["PyramidVisionTransformer", "PvtBlock", "SpatialReductionAttention"]


class SpatialReductionAttention(HeadsAttention):
    """Multi-head attention whose keys/values come from the map reduced by a ``sr x sr`` strided conv + LN.

    Key layout as the official code: ``q``, ``kv``, ``proj`` and, when ``sr_ratio > 1``, ``sr`` (conv) and
    ``norm`` (plain LayerNorm, eps 1e-5).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
    ):
        super().__init__(dim, num_heads, qk_scale)
        self._add_projections(dim, qkv_bias, attn_drop, proj_drop, q=1, kv=2)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, N, C = x.shape
        (q,) = self._heads(self.q(x), 1)
        if self.sr_ratio > 1:
            # sr > 1 only in stages without prefix tokens (checked at construction): all N tokens form the map
            kv_in = self.sr(x.transpose(1, 2).reshape(B, C, grid[0], grid[1])).flatten(2).transpose(1, 2)
            kv_in = self.norm(kv_in)
        else:
            kv_in = x
        k, v = self._heads(self.kv(kv_in), 2)
        return self._merge(self._attend(q, k, v))


class PvtBlock(nn.Module):
    """``x + DP(SRA(LN(x)))``, then either ``x + DP(MLP(LN(x)))`` (PVT) or the locality feed-forward on the
    image tokens with the prefix (class) tokens bypassing it (LocalViT-PVT: no norm, no drop-path)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        locality: bool = False,
        act: str = "hs+se",
        reduction: int | None = None,
    ):
        super().__init__()
        self.locality = locality
        self.norm1 = norm_layer(dim)
        self.attn = SpatialReductionAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        if locality:
            self.conv = LocalityFeedForward(dim, mlp_ratio, act, dim if reduction is None else reduction)
        else:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: Tensor, grid: tuple[int, int], num_prefix: int = 0) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        if self.locality:
            return tokens_through_map(self.conv, x, grid, num_prefix)
        return residual_mlp(x, self.norm2, self.mlp, self.drop_path)


class PvtPatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv then LayerNorm (eps 1e-5, as upstream); floors partial patches."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class PvtStage(nn.Module):
    """Patch embedding, position embedding (``+ num_prefix`` rows, prefix first), dropout and blocks."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        patch_size: int,
        grid_size: tuple[int, int],
        depth: int,
        num_prefix_tokens: int,
        drop_rate: float,
        drop_path: list[float],
        **block_kwargs: Any,
    ):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = grid_size
        self.grad_checkpointing = False
        self.patch_embed = PvtPatchEmbed(in_chans, dim, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size[0] * grid_size[1] + num_prefix_tokens, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([PvtBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)])

    def set_grid_size(self, grid_size: tuple[int, int]) -> None:
        self.pos_embed = resize_pos_table(self.pos_embed, grid_size, self.grid_size, self.num_prefix_tokens)
        self.grid_size = grid_size

    def forward(self, x: Tensor, prefix: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """``x``: ``B x C x H x W`` map; ``prefix``: ``B x P x C`` tokens to prepend. Returns tokens and grid."""
        x, grid = self.patch_embed(x)
        pos = resize_pos_embed(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)
        x = self.pos_drop(x + pos)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, grid, self.num_prefix_tokens)
            else:
                x = blk(x, grid, self.num_prefix_tokens)
        return x, grid


class PyramidVisionTransformer(PyramidStages, nn.Module):
    """PVT v1, optionally with the locality feed-forward in every block (LocalViT-PVT).

    Args:
        img_size: default input size (the position embeddings' grids); other sizes resample them on the fly.
        patch_size: first stage's patch size (later stages merge 2x2).
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``'token'`` (class token, official), ``'avg'`` (mean of the last stage's image tokens) or ``''``.
        embed_dims, num_heads, mlp_ratios, depths, sr_ratios: per-stage shape.
        qkv_bias, qk_scale: attention projections.
        locality: use LocalViT's locality feed-forward instead of ``norm2 + MLP``.
        act: locality FFN activation (``'hs+se'`` upstream) or official code 1-5.
        reduction: SE divisor; ``None`` means the stage's dim (upstream: SE hidden = mlp ratio).
        official_cls_split: LocalViT-PVT splits a class token off iff ``sr_ratio == 1`` (upstream); False splits
            it where the class token is. Only matters for configurations the official code cannot run.
        norm_eps: epsilon of the block and final LayerNorms (patch-embedding and reduction norms keep 1e-5).
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (``drop_rate`` as upstream: position-embedding,
            projection and MLP dropout).
    """

    global_pools = GLOBAL_POOLS
    num_prefix_tokens = 1  # the class token, carried by the last stage
    stage_fmt = "NCHW"
    group_stem = r"^stages\.0\.(?:patch_embed|pos_embed)"
    group_stage_start = "patch_embed|pos_embed"
    no_weight_decay_keys = ("cls_token",)  # upstream decays the position embeddings

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        locality: bool = False,
        act: str | int = "hs+se",
        reduction: int | None = None,
        official_cls_split: bool = True,
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        check_model_args(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool,
                         pools=self.global_pools, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                         drop_path_rate=drop_path_rate)
        patch_size = check_int(patch_size, "patch_size")
        num_stages = len(check_ints(depths, "depths"))
        embed_dims = check_ints(embed_dims, "embed_dims", num_stages)
        sr_ratios = check_ints(sr_ratios, "sr_ratios", num_stages)
        check_ints(num_heads, "num_heads", num_stages)
        check_length(mlp_ratios, "mlp_ratios", num_stages)
        for i in range(num_stages):
            check_heads(embed_dims[i], num_heads[i], f"embed_dims[{i}]", f"num_heads[{i}]")
            check_hidden(embed_dims[i], mlp_ratios[i], f"mlp_ratios[{i}]")
        if sr_ratios[-1] != 1:
            raise ValueError(f"the last stage carries the class token, so its sr_ratio must be 1 (got "
                             f"{sr_ratios[-1]}); the official code cannot run such a model either")
        if locality and official_cls_split and any(sr == 1 for sr in sr_ratios[:-1]):
            raise ValueError("LocalViT-PVT (official rule) splits a class token off every block with sr_ratio 1, but "
                             f"only the last stage has one (sr_ratios={list(sr_ratios)}); pass "
                             "official_cls_split=False to split it where it is")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        strides = [patch_size * 2 ** i for i in range(num_stages)]
        # every stage's map must be at least sr x sr for its reduction conv (and non-empty)
        min_img_size = max(s * r for s, r in zip(strides, sr_ratios))
        img_size = check_img_size(img_size, (min_img_size, min_img_size), f"a {num_stages}-stage pyramid with "
                                  f"patch_size={patch_size} and sr_ratios={sr_ratios}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.img_size = tuple(img_size)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dims[-1]
        self.patch_sizes = [patch_size] + [2] * (num_stages - 1)
        self.min_img_size = min_img_size
        self.min_input_size = (min_img_size, min_img_size)
        act = act_from_code(act)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.feature_info = []
        cur, prev = 0, in_chans
        for i in range(num_stages):
            grid = (img_size[0] // strides[i], img_size[1] // strides[i])
            self.stages.append(PvtStage(
                prev, embed_dims[i], self.patch_sizes[i], grid, depths[i], int(i == num_stages - 1), drop_rate,
                dpr[cur: cur + depths[i]], num_heads=num_heads[i], mlp_ratio=mlp_ratios[i], sr_ratio=sr_ratios[i],
                qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                norm_layer=norm_layer, locality=locality, act=act, reduction=reduction,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=strides[i], module=f"stages.{i}"))
            cur += depths[i]
            prev = embed_dims[i]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
        self.norm = norm_layer(embed_dims[-1])
        self.head_drop = nn.Identity()
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    # --- timm contract -------------------------------------------------------------------------------------
    def _group_extra(self, coarse: bool) -> list[tuple[str, tuple[int, ...]]]:
        last = len(self.stages) - 1  # the class token joins the stage that carries it
        return [(r"^cls_token", (last,) if coarse else (last, 0))]

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Resample every stage's position embedding for a new default input size (e.g. before fine-tuning)."""
        img_size = to_2tuple(img_size)
        if min(img_size) < self.min_img_size:
            raise ValueError(f"img_size {img_size} is below this model's minimum input size {self.min_img_size}")
        self.img_size = tuple(img_size)
        for i, stage in enumerate(self.stages):
            stride = self.feature_info[i]["reduction"]
            stage.set_grid_size((img_size[0] // stride, img_size[1] // stride))

    # --- forward -----------------------------------------------------------------------------------------------
    # the state between stages is a B x C x H x W map; the last stage's is (tokens, grid), its class token first
    def _stem(self, x: Tensor) -> Tensor:
        return x

    def _stage(self, i: int, x: Tensor, need_map: bool) -> Tensor | tuple[Tensor, tuple[int, int]]:
        stage = self.stages[i]
        prefix = self.cls_token.expand(x.shape[0], -1, -1) if stage.num_prefix_tokens else None
        x, grid = stage(x, prefix)
        if i == len(self.stages) - 1:
            return x, grid
        return tokens_to_map(x, grid, stage.num_prefix_tokens)

    def _stage_map(self, i: int, x: Tensor | tuple[Tensor, tuple[int, int]], norm: bool) -> Tensor:
        """Stage ``i``'s image tokens as a map (the class token dropped; ``norm``: the final norm first)."""
        if i < len(self.stages) - 1:
            return x
        tokens, grid = x
        return tokens_to_map(self.norm(tokens) if norm else tokens, grid, self.stages[i].num_prefix_tokens)

    def _features(self, x: Tensor | tuple[Tensor, tuple[int, int]], final: bool) -> Tensor:
        """The final-normed tokens of the last stage, ``B x (1 + H*W) x C`` (class token first); a stage map when
        the last stages did not run."""
        return self.norm(x[0]) if final else x


def tokens_to_map(x: Tensor, grid: tuple[int, int], num_prefix: int) -> Tensor:
    """``B x (P + H*W) x C`` tokens -> ``B x C x H x W`` map of the image tokens."""
    B, _, C = x.shape
    return x[:, num_prefix:].transpose(1, 2).reshape(B, C, grid[0], grid[1])


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        # upstream's trunc_normal_(std=0.02) truncates at +-2, i.e. 100 sigma: the same distribution as a plain
        # normal, which is five times cheaper to draw (pvt_huge_v2 has 0.3 G weights)
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _official_key(k: str) -> str:
    """``patch_embed3.proj.weight`` -> ``stages.2.patch_embed.proj.weight``, ``pos_embed4`` -> ``stages.3.pos_embed``,
    ``block2.1.attn.q.weight`` -> ``stages.1.blocks.1.attn.q.weight`` (our keys pass through)."""
    m = re.match(r"^(patch_embed|pos_embed|block)(\d+)(.*)$", k)
    if m is None:
        return k
    name, stage, rest = m.groups()
    if name == "block":
        return f"stages.{int(stage) - 1}.blocks{rest}"
    return f"stages.{int(stage) - 1}.{name}{rest}"


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: PyramidVisionTransformer) -> dict[str, Tensor]:
    """Official PVT / LocalViT-PVT keys -> ours; position embeddings trained at another size are resampled to the
    model's grids (the trained grid is taken as square, as every official model is)."""
    out = {}
    for k, v in state_dict.items():
        k = _official_key(k)
        m = re.match(r"^stages\.(\d+)\.pos_embed$", k)
        if m is not None and int(m.group(1)) < len(model.stages):
            stage = model.stages[int(m.group(1))]
            if v.shape != stage.pos_embed.shape:
                v = resize_pos_embed(v, stage.grid_size, num_prefix_tokens=stage.num_prefix_tokens, name=k)
        out[k] = v
    return out


# The official constructors' defaults (a translation fills them in, so an omitted argument means the same thing).
_OFFICIAL_DEFAULTS = dict(
    img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dims=[64, 128, 256, 512], num_heads=[1, 2, 4, 8],
    mlp_ratios=[4, 4, 4, 4], qkv_bias=False, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
    depths=[3, 4, 6, 3], sr_ratios=[8, 4, 2, 1],
)


PVT = ModelSpec(
    PyramidVisionTransformer,
    filter_fn=checkpoint_filter_fn,
    feature_cfg=dict(out_indices=(0, 1, 2, 3)),
    dense=DenseRecipe({}, False, "PVT's detection backbone: the four stage outputs (LocalViT-PVT: untested upstream)"),
)


def _translate(kw: dict[str, Any], locality: bool) -> dict[str, Any]:
    kw = dict(_OFFICIAL_DEFAULTS, **kw)
    norm_layer = kw.pop("norm_layer", nn.LayerNorm)
    return dict(norm_eps=norm_eps(norm_layer, 1e-5), locality=locality, **kw)


@register_official(PVT, "models.pvt.PyramidVisionTransformer")
def _from_official_pvt(kw: dict[str, Any]) -> dict[str, Any]:
    return _translate(kw, locality=False)


@register_official(PVT, "models.localvit_pvt.LocalViT_PVT")
def _from_official_localvit_pvt(kw: dict[str, Any]) -> dict[str, Any]:
    return _translate(kw, locality=True)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    return build_model(PVT, variant, pretrained, **kwargs)


_PVT_LAYOUT = dict(first_conv="stages.0.patch_embed.proj", min_input_size=(3, 32, 32))


def _pvt_cfg(file: str = "", **kwargs: Any) -> dict[str, Any]:
    # the PVT authors' v1 weights are assets of their "v2" release
    return make_cfg(f"https://github.com/whai362/PVT/releases/download/v2/{file}" if file else "",
                    origin_url="https://github.com/whai362/PVT/releases/tag/v2" if file else "",
                    repo="whai362/PVT", license="apache-2.0", paper_ids="arXiv:2102.12122",
                    paper_name="Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without "
                               "Convolutions", **_PVT_LAYOUT, **kwargs)


default_cfgs = generate_default_cfgs({
    "pvt_tiny.in1k": _pvt_cfg("pvt_tiny.pth", top1=75.1, notes=("PVT-Tiny (v1)",)),
    "pvt_small.in1k": _pvt_cfg("pvt_small.pth", top1=79.8, notes=("PVT-Small (v1)",)),
    "pvt_medium.in1k": _pvt_cfg("pvt_medium.pth", top1=81.2, notes=("PVT-Medium (v1)",)),
    "pvt_large.in1k": _pvt_cfg("pvt_large.pth", top1=81.7, notes=("PVT-Large (v1)",)),
    "pvt_huge_v2": _pvt_cfg(notes=("PVT v1 layout with the 'huge_v2' widths registered by the LocalViT "
                                   "repository; no weights",)),
    "localvit_pvt_tiny.in1k": localvit_cfg("localvit_pvt.pth", top1=78.14, notes=("LocalViT-PVT",), **_PVT_LAYOUT),
})

_PVT_TINY_LAYOUT = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                        qkv_bias=True, sr_ratios=(8, 4, 2, 1))


@register_family_model("pvt", PVT)
def pvt_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """PVT-Tiny: widths 64/128/320/512, depths 2/2/2/2."""
    return _create("pvt_tiny", pretrained, **{**_PVT_TINY_LAYOUT, "depths": (2, 2, 2, 2), **kwargs})


@register_family_model("pvt", PVT)
def pvt_small(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """PVT-Small: widths 64/128/320/512, depths 3/4/6/3."""
    return _create("pvt_small", pretrained, **{**_PVT_TINY_LAYOUT, "depths": (3, 4, 6, 3), **kwargs})


@register_family_model("pvt", PVT)
def pvt_medium(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """PVT-Medium: widths 64/128/320/512, depths 3/4/18/3."""
    return _create("pvt_medium", pretrained, **{**_PVT_TINY_LAYOUT, "depths": (3, 4, 18, 3), **kwargs})


@register_family_model("pvt", PVT)
def pvt_large(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """PVT-Large: widths 64/128/320/512, depths 3/8/27/3."""
    return _create("pvt_large", pretrained, **{**_PVT_TINY_LAYOUT, "depths": (3, 8, 27, 3), **kwargs})


@register_family_model("pvt", PVT)
def pvt_huge_v2(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """PVT v1 'huge_v2' (LocalViT repository): widths 128/256/512/768, heads 2/4/8/12, depths 3/10/60/3."""
    args = dict(_PVT_TINY_LAYOUT, embed_dims=(128, 256, 512, 768), num_heads=(2, 4, 8, 12), depths=(3, 10, 60, 3))
    return _create("pvt_huge_v2", pretrained, **dict(args, **kwargs))


@register_family_model("localvit", PVT)
def localvit_pvt_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformer:
    """LocalViT-PVT: PVT-Tiny with the locality feed-forward (h_swish + SE with mlp-ratio hidden units)."""
    args = dict(_PVT_TINY_LAYOUT, depths=(2, 2, 2, 2), locality=True, act="hs+se")
    return _create("localvit_pvt_tiny", pretrained, **dict(args, **kwargs))
