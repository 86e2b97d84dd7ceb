"""T2T-ViT (Yuan et al., "Tokens-to-Token ViT") and LocalViT-T2T, as the LocalViT repository defines them.

Tokens-to-token (T2T) turns an image into a short token sequence by three *soft splits* (overlapping unfolds:
7x7 stride 4, then 3x3 stride 2 twice), with a light transformer layer between them that mixes the unfolded
patches and shrinks them to ``token_dim`` channels; a linear layer projects the last split to the backbone
width. The backbone is a plain ViT with a class token and a frozen sinusoid position table. At 224 the grids
are 56x56 -> 28x28 -> 14x14 (reduction 16).

The two T2T layer kinds:

* **performer** (``T2t_vit_*``): linear attention with positive random features,
  ``phi(x) = exp(w x - |x|^2 / 2) / sqrt(m)`` for a frozen random orthogonal ``w`` (``m = token_dim / 2``
  features). ``y = phi(q) (phi(k)^T v) / (phi(q) . sum_t phi(k) + 1e-8)``; the skip connection goes through
  ``v`` (the input has another width), then ``x + MLP(LN(x))``.
* **transformer** (``T2t_vit_t_*``): one-head softmax attention whose skip also goes through ``v``, then
  ``x + MLP(LN(x))``.

LocalViT-T2T replaces every backbone ``norm2 + MLP`` by the locality feed-forward (act ``hs+se``, the class
token bypasses it) and the T2T layers' ``norm2 + MLP`` by a locality feed-forward with expand 1 and act ``hs``.

Official details reproduced:

* the performer's ``w`` is a frozen random matrix drawn at construction: it is part of every checkpoint and must
  be loaded, never regenerated; the position table is a fixed sinusoid (both frozen ``nn.Parameter`` upstream,
  persistent buffers here: the same state-dict keys, no gradient expected);
* the performer's order is ``k, q, v`` in the ``kqv`` projection; its dropouts are fixed at 0.1 (training only);
* the transformer T2T layer scales its logits by ``dim ** -0.5`` of its *input* width (147 / 576), not of its
  head width;
* in LocalViT-T2T the T2T layers keep an unused ``norm2`` (its weight and bias are buffers here:
  :class:`UnusedLayerNorm`);
* ``qkv_bias=False``, plain LayerNorm (eps 1e-5) everywhere;
* the ``T2t_vit_*`` factories set ``qk_scale = C ** -0.5`` (a T2T-ViT legacy, C the width, 512 for the wide
  model) when ``pretrained=True`` unless the caller passes ``qk_scale`` (or ``legacy_qk_scale=False``).

Deliberate differences, none of which changes a result the official code can produce:

* the official model hard-codes 196 patches in LocalViT-T2T and reshapes with ``int(sqrt(N))`` everywhere, so
  it runs only at 224; here every grid is the real one and the position table is resampled to it, so any size of
  at least 3x3 pixels works, non-square included;
* the official performer casts to float32 inside the feature map, so the official model cannot run in float64;
  here the feature map runs in ``promote_types(dtype, float32)``: float32 for float32/half/bfloat16 inputs (the
  cast's purpose) and float64 in float64;
* the official ``localvit_T2t_conv7`` factory also applies the legacy ``qk_scale`` when ``pretrained=True``,
  although no LocalViT-T2T weights were trained with it (none are published); ``localvit_t2t_vit_7`` does not.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from locvit.layers import Attention, LocalityFeedForward, residual_mlp, tokens_through_map
from locvit.layers.attention import attend, split_heads
from locvit.layers.locality_ffn import act_from_code
from locvit.layers.pos_embed import resize_pos_embed, resize_pos_table
from locvit.models._registry import ModelSpec, norm_eps, register_family_model, register_official
from locvit.models.args import check_img_size, check_int, check_transformer_args
from locvit.models.builder import build_model, init_linear_layernorm, make_cfg
from locvit.models.interface import ClassTokenBlocks
from locvit.models.localvit import LocalViTBlock, localvit_cfg

__all__ = ["T2TViT", "TokensToToken", "PerformerLayer", "TokenTransformerLayer", "t2t_grid", "sinusoid_table"]

# (kernel, stride, padding) of the three soft splits
SOFT_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
MIN_SIZE = 3  # the first split needs H + 2 * 2 >= 7


def t2t_grid(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Token grids after each soft split for an ``H x W`` image (``[(56, 56), (28, 28), (14, 14)]`` at 224)."""
    grids, (h, w) = [], size
    for k, s, p in SOFT_SPLITS:
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        grids.append((h, w))
    return grids


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """``1 x n x dim`` sinusoid table: ``sin`` on even and ``cos`` on odd channels of ``pos / 10000^(2(j//2)/dim)``
    (computed in float64, stored as float32, as upstream)."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, angle.sin(), angle.cos())
    return table.float().unsqueeze(0)


class UnusedLayerNorm(nn.Module):
    """A LayerNorm the official layer holds but never applies: its ``weight`` and ``bias`` as persistent buffers
    (the checkpoint keys, loaded and saved), not parameters that could never receive a gradient."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(dim))
        self.register_buffer("bias", torch.zeros(dim))


class _T2TLayer(nn.Module):
    """What both T2T layers do: their attention on the normalised tokens (``attention``, skip through ``v``), then
    the locality feed-forward on the token map (LocalViT) or the residual MLP (host)."""

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = self.attention(self.norm1(x))
        if self.locality:
            return tokens_through_map(self.conv, x, grid)
        return residual_mlp(x, self.norm2, self.mlp)


class PerformerLayer(_T2TLayer):
    """T2T layer with Performer (FAVOR+, positive random features) attention; skip through ``v``.

    State-dict keys as upstream: ``kqv``, ``proj``, ``norm1``, ``norm2``, ``w`` (frozen), then ``mlp.0``/``mlp.2``
    (host) or ``conv.conv.N`` (LocalViT: locality feed-forward, expand 1, act ``hs``; ``norm2`` unused).

    Args:
        dim: input width (unfolded patch, e.g. 3 * 7 * 7).
        out_dim: token width after the layer (``token_dim``).
        kernel_ratio: random features ``m = int(out_dim * kernel_ratio)``.
        drop: the fixed dropout on the attention projection and MLP output (0.1 upstream).
        locality: LocalViT variant.
    """

    def __init__(self, dim: int, out_dim: int, kernel_ratio: float = 0.5, drop: float = 0.1, locality: bool = False):
        super().__init__()
        self.emb = out_dim
        self.kqv = nn.Linear(dim, 3 * out_dim)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(out_dim, out_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = UnusedLayerNorm(out_dim) if locality else nn.LayerNorm(out_dim)
        self.epsilon = 1e-8
        self.locality = locality
        if locality:
            self.conv = LocalityFeedForward(out_dim, 1.0, "hs")
        else:
            self.mlp = nn.Sequential(nn.Linear(out_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim),
                                     nn.Dropout(drop))
        self.m = int(out_dim * kernel_ratio)
        w = nn.init.orthogonal_(torch.empty(self.m, out_dim)) * math.sqrt(self.m)
        self.register_buffer("w", w)  # frozen: a persistent buffer (the official frozen parameter's key)

    def _features(self, x: Tensor, w: Tensor) -> Tensor:
        # positive random features of the softmax kernel, exp(w.x - |x|^2/2) / sqrt(m); upstream draws w as
        # orthonormal rows scaled by sqrt(m) (not Gaussian), which the checkpoints were trained with
        return torch.exp(x @ w.t() - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(self.m)

    def attention(self, x: Tensor) -> Tensor:
        """Linear attention of ``x`` (already normalised); returns ``v + proj(attn)``."""
        k, q, v = self.kqv(x).split(self.emb, dim=-1)
        dt = torch.promote_types(x.dtype, torch.float32)
        w = self.w.to(dt)
        kp, qp = self._features(k.to(dt), w), self._features(q.to(dt), w)  # B x T x m
        denom = qp @ kp.sum(dim=1).unsqueeze(-1)  # B x T x 1
        kptv = v.to(dt).transpose(1, 2) @ kp  # B x emb x m
        y = (qp @ kptv.transpose(1, 2)) / (denom + self.epsilon)
        return v + self.dp(self.proj(y.to(v.dtype)))


class TokenTransformerLayer(_T2TLayer):
    """T2T layer with one-head softmax attention, skip through ``v``; logits scaled by the *input* width.

    Keys: ``norm1``, ``attn.qkv``, ``attn.proj``, then ``norm2`` + ``mlp.fc1/fc2`` (host) or ``conv.conv.N``
    (LocalViT: locality feed-forward with expand ``mlp_ratio``, act ``hs``, no ``norm2``).
    """

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 1.0, qkv_bias: bool = False,
                 locality: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _TokenAttention(dim, out_dim, qkv_bias)
        self.locality = locality
        if locality:
            self.conv = LocalityFeedForward(out_dim, mlp_ratio, "hs")
        else:
            self.norm2 = nn.LayerNorm(out_dim)
            self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), out_dim)

    def attention(self, x: Tensor) -> Tensor:
        return self.attn(x)


class _TokenAttention(nn.Module):
    def __init__(self, dim: int, out_dim: int, qkv_bias: bool = False):
        super().__init__()
        self.out_dim = out_dim
        self.scale = dim ** -0.5  # upstream: (dim // num_heads) ** -0.5 with one head and dim the input width
        self.qkv = nn.Linear(dim, out_dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = split_heads(self.qkv(x), 3, 1)
        y = attend(q, k, v, None, self.scale, owner=self)
        return v.squeeze(1) + self.proj(y.squeeze(1))


class TokensToToken(nn.Module):
    """Soft split -> T2T layer -> soft split -> T2T layer -> soft split -> linear projection."""

    def __init__(self, tokens_type: str = "performer", in_chans: int = 3, embed_dim: int = 768, token_dim: int = 64,
                 locality: bool = False):
        super().__init__()
        if tokens_type not in ("performer", "transformer"):
            raise ValueError(f"tokens_type must be 'performer' or 'transformer', got {tokens_type!r} (upstream's "
                             "'convolution' option builds a module whose forward fails)")
        self.soft_split0, self.soft_split1, self.soft_split2 = (
            nn.Unfold(kernel_size=k, stride=s, padding=p) for k, s, p in SOFT_SPLITS)
        if tokens_type == "performer":
            layer = partial(PerformerLayer, kernel_ratio=0.5, locality=locality)
        else:
            layer = partial(TokenTransformerLayer, mlp_ratio=1.0, locality=locality)
        self.attention1 = layer(in_chans * 7 * 7, token_dim)
        self.attention2 = layer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``B x 3 x H x W`` -> (``B x N x embed_dim`` tokens, their grid)."""
        B = x.shape[0]
        g1, g2, g3 = t2t_grid((x.shape[2], x.shape[3]))
        x = self.attention1(self.soft_split0(x).transpose(1, 2), g1)
        x = self.attention2(self.soft_split1(x.transpose(1, 2).reshape(B, x.shape[-1], *g1)).transpose(1, 2), g2)
        x = self.soft_split2(x.transpose(1, 2).reshape(B, x.shape[-1], *g2)).transpose(1, 2)
        return self.project(x), g3


class T2TBlock(nn.Module):
    """Pre-norm ViT block with a settable ``qk_scale``: ``x + DP(attn(LN(x)))``, ``x + DP(MLP(LN(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return residual_mlp(x, self.norm2, self.mlp, self.drop_path)


class T2TViT(ClassTokenBlocks, nn.Module):
    """T2T-ViT and LocalViT-T2T.

    Args:
        img_size: default input size (grid of the position table); other sizes resample the table on the fly.
        tokens_type: ``'performer'`` or ``'transformer'`` T2T layers.
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``'token'`` (class token, official), ``'avg'`` or ``''``.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale: backbone shape.
        token_dim: width of the T2T layers.
        locality: LocalViT-T2T (locality feed-forward in the backbone and the T2T layers).
        act, reduction: the backbone locality feed-forward's activation and SE divisor (LocalViT only).
        norm_eps: backbone LayerNorm epsilon (1e-5 in every registered model).
        drop_rate, pos_drop_rate, attn_drop_rate, drop_path_rate: regularisation.
    """

    no_weight_decay_keys = ("cls_token",)
    group_stem = r"^cls_token|pos_embed|tokens_to_token"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        tokens_type: str = "performer",
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        token_dim: int = 64,
        locality: bool = False,
        act: str | int = "hs+se",
        reduction: int = 4,
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
        check_img_size(img_size, (MIN_SIZE, MIN_SIZE), "the first soft split (7x7, stride 4, padding 2)")
        # the performer draws int(token_dim / 2) random features
        check_int(token_dim, "token_dim", 2 if tokens_type == "performer" else 1)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.in_chans = in_chans
        self.locality = locality
        self.min_input_size = (MIN_SIZE, MIN_SIZE)
        self.grad_checkpointing = False
        self.img_size = to_2tuple(img_size)
        self.grid_size = t2t_grid(self.img_size)[-1]

        self.tokens_to_token = TokensToToken(tokens_type, in_chans, embed_dim, token_dim, locality)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_patches = self.grid_size[0] * self.grid_size[1]
        # the fixed sinusoid table: a persistent buffer (the official frozen parameter's key, never trained)
        self.register_buffer("pos_embed", sinusoid_table(num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate if pos_drop_rate is None else pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        if locality:
            act = act_from_code(act)
            self.blocks = nn.ModuleList([
                LocalViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i],
                              norm_layer, act, reduction)
                for i in range(depth)
            ])
        else:
            self.blocks = nn.ModuleList([
                T2TBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, dpr[i],
                         norm_layer)
                for i in range(depth)
            ])
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=16) for i in range(depth)]
        # parameters of the official model that are buffers here (never trained): the frozen position table and
        # performer projections, and the norm2 that LocalViT's performer layers keep unused
        frozen = (".w", ".norm2.weight", ".norm2.bias")
        self.official_parameter_buffers = tuple(n for n, _ in self.named_buffers()
                                                if n == "pos_embed" or n.endswith(frozen))

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_layernorm)

    # --- timm contract -------------------------------------------------------------------------------------
    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Make ``img_size`` the default size: the position table is resampled to its token grid once, instead
        of on every forward (e.g. before fine-tuning at 384)."""
        img_size = to_2tuple(img_size)
        if min(img_size) < MIN_SIZE:
            raise ValueError(f"T2T-ViT needs an input size of at least {MIN_SIZE}x{MIN_SIZE}, got {img_size}")
        old, new = self.grid_size, t2t_grid(img_size)[-1]
        self.img_size, self.grid_size = img_size, new
        self.pos_embed = resize_pos_table(self.pos_embed, new, old, num_prefix_tokens=1)

    # --- forward -----------------------------------------------------------------------------------------------
    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x, grid = self.tokens_to_token(x)
        pos = self._pos_embed_at(self.pos_embed, grid, self.grid_size)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        return self.pos_drop(x), grid

def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: T2TViT) -> dict[str, Tensor]:
    """Official T2T-ViT / LocalViT-T2T checkpoints use our key names; a position table made for another size
    (square, as every official one) is resampled to the model's grid."""
    out = {}
    for k, v in state_dict.items():
        if k == "pos_embed" and v.shape != model.pos_embed.shape:
            v = resize_pos_embed(v, model.grid_size, num_prefix_tokens=1, name=k)
        out[k] = v
    return out


T2T = ModelSpec(T2TViT, filter_fn=checkpoint_filter_fn, feature_cfg=dict(out_indices=3))


def _translate(kw: dict[str, Any], locality: bool) -> dict[str, Any]:
    norm_layer = kw.pop("norm_layer", nn.LayerNorm)
    return dict(norm_eps=norm_eps(norm_layer, 1e-5), locality=locality, **kw)


@register_official(T2T, "models.t2t_vit.T2T_ViT")
def _from_official_t2t(kw: dict[str, Any]) -> dict[str, Any]:
    return _translate(kw, locality=False)


@register_official(T2T, "models.localvit_t2t.LocalViT_T2T")
def _from_official_localvit_t2t(kw: dict[str, Any]) -> dict[str, Any]:
    return _translate(kw, locality=True)


def _create(variant: str, pretrained: bool = False, legacy_scale: float | None = None, **kwargs: Any) -> T2TViT:
    # upstream's rule for the released T2T-ViT weights; legacy_qk_scale=False opts out (timm drops qk_scale=None)
    if kwargs.pop("legacy_qk_scale", pretrained) and legacy_scale is not None:
        kwargs.setdefault("qk_scale", legacy_scale)
    return build_model(T2T, variant, pretrained, **kwargs)


def _layout(tokens_type: str = "performer") -> dict[str, Any]:
    first = "tokens_to_token.attention1.kqv" if tokens_type == "performer" else "tokens_to_token.attention1.attn.qkv"
    return dict(first_conv=first, min_input_size=(3, 32, 32))


def _t2t_cfg(file: str = "", top1: float | None = None, tokens_type: str = "performer", **kwargs: Any
             ) -> dict[str, Any]:
    """A T2T-ViT cfg; ``file`` names the asset of the authors' "main" release."""
    release = "https://github.com/yitu-opensource/T2T-ViT/releases/"
    notes = ("pretrained=True applies the legacy qk_scale the released weights were trained with",) if file else ()
    return make_cfg(release + f"download/main/{file}" if file else "", origin_url=release + "tag/main" if file else "",
                    top1=top1, repo="yitu-opensource/T2T-ViT", license="bsd-3-clause-clear",
                    paper_ids="arXiv:2101.11986",
                    paper_name="Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet",
                    crop_pct=0.9, notes=notes + tuple(kwargs.pop("notes", ())), **_layout(tokens_type), **kwargs)


default_cfgs = generate_default_cfgs({
    "t2t_vit_7.in1k": _t2t_cfg("71.7_T2T_ViT_7.pth.tar", 71.7),
    "t2t_vit_10.in1k": _t2t_cfg("75.2_T2T_ViT_10.pth.tar", 75.2),
    "t2t_vit_12.in1k": _t2t_cfg("76.5_T2T_ViT_12.pth.tar", 76.5),
    "t2t_vit_14.in1k": _t2t_cfg("81.5_T2T_ViT_14.pth.tar", 81.5),
    "t2t_vit_19.in1k": _t2t_cfg("81.9_T2T_ViT_19.pth.tar", 81.9),
    "t2t_vit_24.in1k": _t2t_cfg("82.3_T2T_ViT_24.pth.tar", 82.3),
    "t2t_vit_t_14.in1k": _t2t_cfg("81.7_T2T_ViTt_14.pth.tar", 81.7, "transformer"),
    "t2t_vit_t_19.in1k": _t2t_cfg("82.4_T2T_ViTt_19.pth.tar", 82.4, "transformer"),
    "t2t_vit_t_24.in1k": _t2t_cfg("82.6_T2T_ViTt_24.pth.tar", 82.6, "transformer"),
    "t2t_vit_14_resnext": _t2t_cfg(notes=("32 heads of width 12; no weights published",)),
    "t2t_vit_14_wide": _t2t_cfg(notes=("width 768, depth 4; no weights published",)),
    "localvit_t2t_vit_7": localvit_cfg(**_layout(), notes=("official name localvit_T2t_conv7; no weights published",)),
})


def _t2t(name: str, tokens_type: str, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float,
         legacy_scale_dim: int, pretrained: bool, kwargs: dict[str, Any]) -> T2TViT:
    args = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    return _create(name, pretrained, legacy_scale_dim ** -0.5, **dict(args, **kwargs))


@register_family_model("t2t", T2T, aliases=("T2t_vit_7",))
def t2t_vit_7(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-7: performer T2T, width 256, depth 7, 4 heads, MLP ratio 2."""
    return _t2t("t2t_vit_7", "performer", 256, 7, 4, 2.0, 256, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_10",))
def t2t_vit_10(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-10: performer T2T, width 256, depth 10, 4 heads, MLP ratio 2."""
    return _t2t("t2t_vit_10", "performer", 256, 10, 4, 2.0, 256, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_12",))
def t2t_vit_12(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-12: performer T2T, width 256, depth 12, 4 heads, MLP ratio 2."""
    return _t2t("t2t_vit_12", "performer", 256, 12, 4, 2.0, 256, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_14",))
def t2t_vit_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14: performer T2T, width 384, depth 14, 6 heads, MLP ratio 3."""
    return _t2t("t2t_vit_14", "performer", 384, 14, 6, 3.0, 384, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_19",))
def t2t_vit_19(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-19: performer T2T, width 448, depth 19, 7 heads, MLP ratio 3."""
    return _t2t("t2t_vit_19", "performer", 448, 19, 7, 3.0, 448, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_24",))
def t2t_vit_24(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-24: performer T2T, width 512, depth 24, 8 heads, MLP ratio 3."""
    return _t2t("t2t_vit_24", "performer", 512, 24, 8, 3.0, 512, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_t_14",))
def t2t_vit_t_14(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_t-14: transformer T2T, width 384, depth 14, 6 heads, MLP ratio 3."""
    return _t2t("t2t_vit_t_14", "transformer", 384, 14, 6, 3.0, 384, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_t_19",))
def t2t_vit_t_19(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_t-19: transformer T2T, width 448, depth 19, 7 heads, MLP ratio 3."""
    return _t2t("t2t_vit_t_19", "transformer", 448, 19, 7, 3.0, 448, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_t_24",))
def t2t_vit_t_24(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT_t-24: transformer T2T, width 512, depth 24, 8 heads, MLP ratio 3."""
    return _t2t("t2t_vit_t_24", "transformer", 512, 24, 8, 3.0, 512, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_14_resnext",))
def t2t_vit_14_resnext(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14 "ResNeXt": as T2T-ViT-14 with 32 heads."""
    return _t2t("t2t_vit_14_resnext", "performer", 384, 14, 32, 3.0, 384, pretrained, kwargs)


@register_family_model("t2t", T2T, aliases=("T2t_vit_14_wide",))
def t2t_vit_14_wide(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """T2T-ViT-14 "wide": width 768, depth 4, 12 heads, MLP ratio 3 (legacy qk_scale 512 ** -0.5, as upstream)."""
    return _t2t("t2t_vit_14_wide", "performer", 768, 4, 12, 3.0, 512, pretrained, kwargs)


@register_family_model("localvit", T2T, aliases=("localvit_T2t_conv7",))
def localvit_t2t_vit_7(pretrained: bool = False, **kwargs: Any) -> T2TViT:
    """LocalViT-T2T: T2T-ViT-7 with locality feed-forwards (backbone: expand 2, h_swish + SE with 4 hidden units;
    T2T layers: expand 1, h_swish)."""
    args = dict(tokens_type="performer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0, locality=True,
                act="hs+se", reduction=128)
    return _create("localvit_t2t_vit_7", pretrained, **dict(args, **kwargs))
