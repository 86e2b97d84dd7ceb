"""LocalViT on its DeiT host (Li et al., "LocalViT: Bringing Locality to Vision Transformers").

The host is a plain DeiT/ViT. Each block keeps its attention and replaces ``norm2 + MLP`` with the locality
feed-forward (:class:`~locvit.layers.LocalityFeedForward`), applied to the image tokens laid out as a map;
the class token bypasses it. Differences from a standard ViT block that decide exactness:

* no LayerNorm before the feed-forward, and its residual lives inside the layer;
* no drop-path on the feed-forward branch;
* the class token is not touched by the feed-forward.

Unlike the official code (timm 0.3.2, fixed ``img_size``), the position embedding is resampled to the
input's grid, so any size of at least one patch works, non-square included.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, PatchEmbed, trunc_normal_
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from locvit.layers import Attention, LocalityFeedForward, tokens_through_map
from locvit.layers.locality_ffn import act_from_code
from locvit.layers.pos_embed import resize_pos_embed, resize_pos_table
from locvit.models._registry import ModelSpec, norm_eps, pop_unused, register_family_model, register_official
from locvit.models.args import check_img_size, check_int, check_transformer_args
from locvit.models.builder import build_model, init_linear_layernorm, make_cfg
from locvit.models.interface import ClassTokenBlocks

__all__ = ["LocalViT", "LocalViTBlock"]


class LocalViTBlock(nn.Module):
    """``x + DP(attn(LN(x)))``, then the locality feed-forward on the image tokens (prefix tokens bypass)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act: str = "hs+se",
        reduction: int = 4,
        wo_dp_conv: bool = False,
        dp_first: bool = False,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.conv = LocalityFeedForward(dim, mlp_ratio, act, reduction, wo_dp_conv=wo_dp_conv, dp_first=dp_first)

    def forward(self, x: Tensor, grid: tuple[int, int], num_prefix: int = 1) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return tokens_through_map(self.conv, x, grid, num_prefix)


class LocalViT(ClassTokenBlocks, nn.Module):
    """DeiT with the locality feed-forward in every block.

    Args:
        img_size: default input size (the position embedding's grid); other sizes resample it on the fly.
        patch_size: patch size of the conv patch embedding.
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``'token'`` (class token, official), ``'avg'`` (mean of image tokens) or ``''``.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale: transformer shape.
        act: locality FFN activation, ``'relu6' | 'hs' | 'hs+se' | 'hs+eca' | 'hs+ecah'`` or official code 1-5.
        reduction: SE divisor.
        wo_dp_conv, dp_first: the official ablation switches.
        norm_eps: LayerNorm epsilon (1e-6 in every registered model).
        drop_rate, pos_drop_rate, attn_drop_rate, drop_path_rate: regularisation.
    """

    no_weight_decay_keys = ("pos_embed", "cls_token")

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        act: str | int = "hs+se",
        reduction: int = 4,
        wo_dp_conv: bool = False,
        dp_first: bool = False,
        norm_eps: float = 1e-6,
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
        patch_size = check_int(patch_size, "patch_size")
        check_img_size(img_size, (patch_size, patch_size), f"patch_size={patch_size}")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.min_input_size = (patch_size, patch_size)
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate if pos_drop_rate is None else pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        act = act_from_code(act)
        self.blocks = nn.ModuleList([
            LocalViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i],
                          norm_layer, act, reduction, wo_dp_conv, dp_first)
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_layernorm)

    # --- timm contract -------------------------------------------------------------------------------------
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Resample the position embedding for a new default input size (e.g. before fine-tuning at 384)."""
        old = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size)
        new = self.patch_embed.grid_size
        self.pos_embed = resize_pos_table(self.pos_embed, new, old, num_prefix_tokens=1)

    # --- forward -----------------------------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # floors sizes that are not multiples of the patch
        B, H, W, C = x.shape
        pos = self._pos_embed_at(self.pos_embed, (H, W), self.patch_embed.grid_size)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x.reshape(B, H * W, C)], dim=1) + pos
        return self.pos_drop(x), (H, W)

def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: LocalViT) -> dict[str, Tensor]:
    """Official LocalViT (DeiT host) checkpoints use our key names; only a position embedding trained at
    another size is resampled to the model's grid."""
    out = {}
    for k, v in state_dict.items():
        if k == "pos_embed" and v.shape != model.pos_embed.shape:
            v = resize_pos_embed(v, model.patch_embed.grid_size, num_prefix_tokens=1, name=k)
        out[k] = v
    return out


LOCALVIT = ModelSpec(LocalViT, filter_fn=checkpoint_filter_fn, feature_cfg=dict(out_indices=3))


@register_official(LOCALVIT, "models.localvit.LocalVisionTransformer")
def _from_official(kw: dict[str, Any]) -> dict[str, Any]:
    norm_layer = kw.pop("norm_layer", nn.LayerNorm)
    pop_unused(kw, {"hybrid_backbone": None})
    return dict(norm_eps=norm_eps(norm_layer, 1e-5), **kw)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> LocalViT:
    return build_model(LOCALVIT, variant, pretrained, **kwargs)


def localvit_cfg(file: str = "", **kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg of a LocalViT model (any host); ``file`` names the asset of the authors' v1.0.0 release."""
    release = "https://github.com/ofsoundof/LocalViT/releases/"
    return make_cfg(release + f"download/v1.0.0/{file}" if file else "",
                    origin_url=release + "tag/v1.0.0" if file else "", repo="ofsoundof/LocalViT", license="mit",
                    paper_ids="arXiv:2104.05707", paper_name="LocalViT: Analyzing Locality in Vision Transformers",
                    **kwargs)


default_cfgs = generate_default_cfgs({
    "localvit_tiny.in1k": localvit_cfg("localvit_t.pth", top1=74.84,
                                       notes=("official name localvit_tiny_mlp4_act3_r192",)),
    "localvit_tiny_se4.in1k": localvit_cfg("localvit_t_se4.pth", top1=75.74,
                                           notes=("official name localvit_tiny_mlp4_act3_r4",)),
    "localvit_tiny_mlp6_relu6": localvit_cfg(notes=("official name localvit_tiny_mlp6_act1 (ablation); no weights",)),
    "localvit_small.in1k": localvit_cfg("localvit_s.pth", top1=80.78,
                                        notes=("official name localvit_small_mlp4_act3_r384",)),
})


@register_family_model("localvit", LOCALVIT, aliases=("localvit_tiny_mlp4_act3_r192",))
def localvit_tiny(pretrained: bool = False, **kwargs: Any) -> LocalViT:
    """LocalViT-T: DeiT-T with 4 heads, locality FFN (expand 4, h_swish + SE with 4 hidden units)."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=4, mlp_ratio=4, act="hs+se", reduction=192)
    return _create("localvit_tiny", pretrained, **dict(args, **kwargs))


@register_family_model("localvit", LOCALVIT, aliases=("localvit_tiny_mlp4_act3_r4",))
def localvit_tiny_se4(pretrained: bool = False, **kwargs: Any) -> LocalViT:
    """LocalViT-T-SE4: as LocalViT-T with SE reduction 4 (192 hidden units)."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=4, mlp_ratio=4, act="hs+se", reduction=4)
    return _create("localvit_tiny_se4", pretrained, **dict(args, **kwargs))


@register_family_model("localvit", LOCALVIT, aliases=("localvit_tiny_mlp6_act1",))
def localvit_tiny_mlp6_relu6(pretrained: bool = False, **kwargs: Any) -> LocalViT:
    """Ablation: expand 6, ReLU6, no SE."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=4, mlp_ratio=6, act="relu6", reduction=4)
    return _create("localvit_tiny_mlp6_relu6", pretrained, **dict(args, **kwargs))


@register_family_model("localvit", LOCALVIT, aliases=("localvit_small_mlp4_act3_r384",))
def localvit_small(pretrained: bool = False, **kwargs: Any) -> LocalViT:
    """LocalViT-S: DeiT-S with 8 heads, locality FFN (expand 4, h_swish + SE with 4 hidden units)."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=8, mlp_ratio=4, act="hs+se", reduction=384)
    return _create("localvit_small", pretrained, **dict(args, **kwargs))
