"""LocalViT on its Swin host (LocalViT-Swin, ``localvit_swin_tiny_patch4_window7_224`` upstream).

Swin-T with shifted-window attention unchanged and, in every block, ``norm2 + MLP + residual`` replaced by the
locality feed-forward (:class:`~locvit.layers.LocalityFeedForward`) applied to the stage's ``H x W`` map:

    x = x + DP(W-MSA(LN(x)))          # windows ws x ws, cyclic shift ws // 2 in odd blocks, relative bias
    x = LFF(x as a B x C x H x W map) # no norm, no drop-path, the residual lives inside LFF

Details reproduced from the official code: the SE divisor is ``dim // 4`` (16 hidden units in every stage at
expand 4); the map is formed with the stage's real ``(H, W)`` (no class token, no ``sqrt``); plain LayerNorms
(eps 1e-5); the shift mask adds -100 between tokens of different regions; a stage whose map is not larger than
the window uses one window of the map's size and no shift (decided from the construction size, so the relative
position tables have the official shapes); the head is ``LN -> mean over tokens -> Linear``. Upstream, the
registered factory ignores its keyword arguments (always 1000 classes, drop-path 0.1); ours honours them.

The official model runs only at its construction size (masks built for it, PatchMerging asserts even sizes).
Here the blocks follow the map they receive: masks for other sizes are built once per shape and cached; a map
that is not a multiple of the window is zero-padded at the bottom/right *before* the cyclic shift (Swin's
detection code) and, unlike upstream Swin, the padded keys are masked, so the output at real positions does not
depend on the padding (timm's Swin pads after the shift, which misaligns the shift regions with the padding);
PatchMerging zero-pads odd maps. Any input of at least one patch works; at sizes whose stage maps are window
multiples (or not larger than the window) the result is exactly the official model's built at that size.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.layers import ClassifierHead, DropPath, PatchEmbed, register_notrace_module
from timm.models import checkpoint, generate_default_cfgs
from timm.models import swin_transformer as timm_swin
from torch import Tensor, nn

from locvit.layers import LocalityFeedForward, attend, fastpath
from locvit.layers.attention import attend_windows, head_scale, split_heads
from locvit.layers.locality_ffn import act_from_code
from locvit.layers.windows import shifted_window_mask, window_gather_index, window_partition, window_reverse
from locvit.models._registry import (
    DenseRecipe,
    ModelSpec,
    norm_eps,
    pop_unused,
    register_family_model,
    register_official,
)
from locvit.models.args import (
    check_global_pool,
    check_heads,
    check_hidden,
    check_img_size,
    check_int,
    check_ints,
    check_model_args,
    check_num_classes,
)
from locvit.models.builder import build_model, init_linear_layernorm
from locvit.models.interface import PyramidStages
from locvit.models.localvit import localvit_cfg

__all__ = ["LocalViTSwin", "LocalViTSwinBlock", "WindowAttention"]


class WindowAttention(timm_swin.WindowAttention):
    """timm's Swin window attention (``relative_position_bias_table``, ``qkv``, ``proj``; ``set_window_size``
    resizes the table) computed through :func:`locvit.layers.attend`.

    ``forward(x, mask)``: ``x`` is ``(B * windows) x ws^2 x C`` (windows batch-major), ``mask`` an additive
    ``windows x ws^2 x ws^2`` mask or None.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int | tuple[int, int] = 7, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                         proj_drop=proj_drop)
        self.scale = head_scale(dim, num_heads, qk_scale)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B_, N, C = x.shape
        q, k, v = split_heads(self.qkv(x), 3, self.num_heads)
        bias = self._get_rel_pos_bias()  # 1 x h x N x N
        drop = self.attn_drop.p if self.training else 0.0
        if mask is None:
            x = attend(q, k, v, bias, self.scale, drop, owner=self)
        else:
            x = attend_windows(q, k, v, bias + mask.unsqueeze(1), self.scale, drop, owner=self)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, C)))


def official_window(resolution: tuple[int, int], window_size: int, shift: bool) -> tuple[int, int]:
    """Upstream rule: a map not larger than the window (``min(H, W) <= ws``) is one window of ``min(H, W)``
    and is not shifted; otherwise ``ws`` and, in shifted blocks, a shift of ``ws // 2``."""
    if min(resolution) <= window_size:
        return min(resolution), 0
    return window_size, window_size // 2 if shift else 0


@register_notrace_module  # padding, shift and masks follow the map size: a leaf for torch.fx
class LocalViTSwinBlock(nn.Module):
    """``x + DP(W-MSA(LN(x)))`` on a ``B x H x W x C`` map, then the locality feed-forward on the map."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shifted: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act: str = "hs+se",
        reduction: int | None = None,
    ):
        super().__init__()
        self.shifted = shifted
        self.target_window = window_size
        self.input_resolution = tuple(input_resolution)
        self.window_size, self.shift_size = official_window(self.input_resolution, window_size, shifted)
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.conv = LocalityFeedForward(dim, mlp_ratio, act, dim // 4 if reduction is None else reduction)
        self._masks = fastpath.ShapeCache()
        self.register_buffer("attn_mask", self._build_mask(*self.input_resolution), persistent=False)

    def set_input_size(self, input_resolution: tuple[int, int], window_size: int | None = None) -> None:
        """Rebuild as upstream would for another map size (and optionally window): the single-window rule is
        re-applied, and the relative-position table is resized when the window changes (as the checkpoint filter
        does when loading into a model built at that size)."""
        if window_size is not None:
            self.target_window = window_size
        self.input_resolution = tuple(input_resolution)
        self.window_size, self.shift_size = official_window(self.input_resolution, self.target_window, self.shifted)
        self.attn.set_window_size(self.window_size)
        self._masks.clear()
        self.attn_mask = self._build_mask(*self.input_resolution)

    def _geometry(self, H: int, W: int) -> tuple[int, int]:
        if (H, W) == self.input_resolution:
            return self.window_size, self.shift_size
        # the table fixes the window; the shift follows upstream's rule for the map at hand
        ws = self.window_size
        return ws, (ws // 2 if self.shifted and min(H, W) > ws else 0)

    def _build_mask(self, H: int, W: int, device: torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Tensor | None:
        ws, shift = self._geometry(H, W)
        return shifted_window_mask(H, W, ws, shift, device=device or self.norm1.weight.device,
                                   dtype=dtype or self.norm1.weight.dtype)

    def _mask(self, H: int, W: int, x: Tensor) -> Tensor | None:
        if (H, W) == self.input_resolution:
            mask = self.attn_mask
        else:
            mask = self._masks.get_or_build(("mask", H, W, x.device, x.dtype),
                                            lambda: self._build_mask(H, W, x.device, x.dtype))
        return None if mask is None else mask.to(device=x.device, dtype=x.dtype)

    def _attn(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        ws, shift = self._geometry(H, W)
        pad_b, pad_r = (-H) % ws, (-W) % ws
        if pad_b or pad_r:
            x = nn.functional.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        mask = self._mask(H, W, x)
        if shift:  # cyclic shift + partition as one gather (and back), see window_gather_index
            index, inverse = self._masks.get_or_build(
                ("index", Hp, Wp, ws, shift, x.device),
                lambda: [t.to(x.device) for t in window_gather_index(Hp, Wp, ws, shift)])
            windows = self.attn(x.reshape(B, Hp * Wp, C).index_select(1, index).view(-1, ws * ws, C), mask)
            x = windows.view(B, Hp * Wp, C).index_select(1, inverse).view(B, Hp, Wp, C)
        else:
            windows = self.attn(window_partition(x, ws).reshape(-1, ws * ws, C), mask)
            x = window_reverse(windows.reshape(-1, ws, ws, C), ws, Hp, Wp)
        return x[:, :H, :W] if pad_b or pad_r else x

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self._attn(self.norm1(x)))
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        self._masks.clear()  # cached masks follow the module's device and dtype
        return super()._apply(fn, recurse)


class LocalViTSwinStage(nn.Module):
    """Optional 2x2 patch merging (timm layout: at the stage's start), then the blocks."""

    def __init__(self, dim: int, out_dim: int, input_resolution: tuple[int, int], depth: int, downsample: bool,
                 drop_path: list[float], norm_layer: type[nn.Module], **block_kwargs: Any):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = timm_swin.PatchMerging(dim, out_dim, norm_layer) if downsample else nn.Identity()
        res = tuple((r + 1) // 2 for r in input_resolution) if downsample else tuple(input_resolution)
        self.blocks = nn.ModuleList([
            LocalViTSwinBlock(out_dim, res, shifted=i % 2 == 1, drop_path=drop_path[i], norm_layer=norm_layer,
                              **block_kwargs)
            for i in range(depth)
        ])

    def set_input_size(self, input_resolution: tuple[int, int], window_size: int | None = None) -> None:
        down = not isinstance(self.downsample, nn.Identity)
        res = tuple((r + 1) // 2 for r in input_resolution) if down else tuple(input_resolution)
        for blk in self.blocks:
            blk.set_input_size(res, window_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            x = checkpoint(blk, x) if self.grad_checkpointing and not torch.jit.is_scripting() else blk(x)
        return x


class LocalViTSwin(PyramidStages, nn.Module):
    """Swin Transformer with the locality feed-forward in every block.

    Args:
        img_size: construction input size (decides which stages are a single unshifted window, as upstream, and
            the masks prepared in advance); other sizes work too.
        patch_size: patch size of the conv patch embedding.
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``'avg'`` (official) or ``''``.
        embed_dim: first stage width (doubled per stage).
        depths, num_heads: per-stage depth and heads.
        window_size: attention window.
        mlp_ratio: locality FFN expansion.
        qkv_bias, qk_scale: attention projections.
        act: locality FFN activation (``'hs+se'`` upstream) or official code 1-5.
        reduction: SE divisor; ``None`` means ``dim // 4`` per stage (upstream).
        patch_norm: LayerNorm after the patch embedding.
        norm_eps: LayerNorm epsilon (1e-5 upstream).
        drop_rate, attn_drop_rate, drop_path_rate: regularisation (``drop_rate``: after the patch embedding and
            on the attention projections, as upstream).
    """

    output_fmt = "NHWC"  # forward_features: the final normed map, timm's Swin convention
    stages_attr = "layers"
    global_pools = ("avg", "")
    no_weight_decay_keys = ("relative_position_bias_table",)

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
        act: str | int = "hs+se",
        reduction: int | None = None,
        patch_norm: bool = True,
        norm_eps: float = 1e-5,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ):
        super().__init__()
        check_model_args(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, pools=self.global_pools,
                         drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        patch_size = check_int(patch_size, "patch_size")
        check_img_size(img_size, (patch_size, patch_size), f"patch_size={patch_size}")
        check_int(embed_dim, "embed_dim")
        check_int(window_size, "window_size")
        num_heads = check_ints(num_heads, "num_heads", len(check_ints(depths, "depths")))
        for i, heads in enumerate(num_heads):
            dim = embed_dim * 2 ** i
            check_heads(dim, heads, f"the stage-{i} width embed_dim * 2^{i}", f"num_heads[{i}]")
            check_hidden(dim, mlp_ratio)
            if reduction is None and dim < 4:
                raise ValueError(f"the default SE reduction (width // 4) leaves no hidden unit at width {dim}; use "
                                 "embed_dim >= 4 or pass reduction")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        num_stages = len(depths)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.min_input_size = (patch_size, patch_size)
        self.window_size = window_size
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (num_stages - 1)
        act = act_from_code(act)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      norm_layer=norm_layer if patch_norm else None, strict_img_size=False,
                                      output_fmt="NHWC")
        self.pos_drop = nn.Dropout(drop_rate)
        grid = self.patch_embed.grid_size
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, self.feature_info = [], []
        in_dim, cur = embed_dim, 0
        for i in range(num_stages):
            out_dim = embed_dim * 2 ** i
            res = tuple(-(-g // 2 ** max(i - 1, 0)) for g in grid)  # the stage's input (before its merging)
            stages.append(LocalViTSwinStage(
                in_dim, out_dim, res, depths[i], i > 0, dpr[cur: cur + depths[i]], norm_layer,
                num_heads=num_heads[i], window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                qk_scale=qk_scale, proj_drop=drop_rate, attn_drop=attn_drop_rate, act=act, reduction=reduction,
            ))
            self.feature_info.append(dict(num_chs=out_dim, reduction=patch_size * 2 ** i, module=f"layers.{i}"))
            in_dim, cur = out_dim, cur + depths[i]
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, input_fmt="NHWC")

        self.apply(init_linear_layernorm)

    # --- timm contract -------------------------------------------------------------------------------------
    # the classifier is timm's ClassifierHead (keys head.fc.*, as timm's Swin)
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            check_global_pool(global_pool, self.global_pools)
        self.num_classes = check_num_classes(num_classes)
        self.head.reset(num_classes, pool_type=global_pool)
        if global_pool is not None:
            self.global_pool = global_pool

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def set_input_size(self, img_size: int | tuple[int, int], window_size: int | None = None) -> None:
        """New construction size: masks prepared for it, and upstream's single-window rule re-applied per stage.
        The window stays as trained unless ``window_size`` is given (relative-position tables are resized)."""
        self.patch_embed.set_input_size(img_size=img_size)
        if window_size is not None:
            self.window_size = window_size
        grid = self.patch_embed.grid_size
        for i, stage in enumerate(self.layers):
            stage.set_input_size(tuple(-(-g // 2 ** max(i - 1, 0)) for g in grid), window_size)

    # --- forward -----------------------------------------------------------------------------------------------
    def _stem(self, x: Tensor) -> Tensor:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # floors sizes that are not multiples of the patch
        return self.pos_drop(self.patch_embed.norm(x))


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: LocalViTSwin) -> dict[str, Tensor]:
    """Official LocalViT-Swin (and Swin) checkpoints -> ours, by timm's Swin filter: merging layers move from the
    end of stage i to the start of stage i + 1, ``head`` becomes ``head.fc``, the persistent ``attn_mask`` and
    ``relative_position_index`` buffers are dropped, and relative-position tables / patch embeddings trained for
    another window or patch are resized."""
    return timm_swin.checkpoint_filter_fn(state_dict, model)


# The official constructor's defaults (a translation fills them in, so an omitted argument means the same thing).
_OFFICIAL_DEFAULTS = dict(
    img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
    attn_drop_rate=0.0, drop_path_rate=0.1, patch_norm=True,
)


LOCALVIT_SWIN = ModelSpec(
    LocalViTSwin,
    filter_fn=checkpoint_filter_fn,
    feature_cfg=dict(out_indices=(0, 1, 2, 3)),
    dense=DenseRecipe({}, True, "Swin's detection backbone (LocalViT-Swin: untested upstream)"),
)


@register_official(LOCALVIT_SWIN, "models.localvit_swin.LocalViT_swin")
def _from_official(kw: dict[str, Any]) -> dict[str, Any]:
    kw = dict(_OFFICIAL_DEFAULTS, **kw)
    norm_layer = kw.pop("norm_layer", nn.LayerNorm)
    pop_unused(kw, {"ape": False, "use_checkpoint": ...})
    return dict(norm_eps=norm_eps(norm_layer, 1e-5), **kw)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> LocalViTSwin:
    return build_model(LOCALVIT_SWIN, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    "localvit_swin_tiny.in1k": localvit_cfg(
        "localvit_swin.pth", top1=81.86, crop_pct=0.9, classifier="head.fc", min_input_size=(3, 32, 32),
        pool_size=(7, 7), notes=("official name localvit_swin_tiny_patch4_window7_224",)),
})


@register_family_model("localvit", LOCALVIT_SWIN, aliases=("localvit_swin_tiny_patch4_window7_224",))
def localvit_swin_tiny(pretrained: bool = False, **kwargs: Any) -> LocalViTSwin:
    """LocalViT-Swin: Swin-T (96, depths 2/2/6/2, window 7) with the locality FFN (expand 4, h_swish + SE 16)."""
    args = dict(patch_size=4, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                mlp_ratio=4.0, act="hs+se")
    return _create("localvit_swin_tiny", pretrained, **dict(args, **kwargs))
