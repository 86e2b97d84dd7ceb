"""Shared plumbing of the model files: default cfgs, the builder, argument and input validation, the ViT
initialisation, and timm's interface, once for the pyramid models (:class:`PyramidStages`) and once for the isotropic
ones (:class:`ClassTokenBlocks`)."""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch
import torch.fx
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from locvit.layers import fastpath
from locvit.models._registry import ModelSpec


def make_cfg(
    url: str = "",
    *,
    origin_url: str = "",
    repo: str = "",
    top1: float | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """A pretrained cfg in timm's format.

    Args:
        url: direct download of the authors' weights, fetched by ``pretrained=True``.
        origin_url: the page where the authors publish the weights (release page, README, file host); where there
            is no direct link, ``pretrained=True`` fails with an error pointing here. Defaults to ``url``.
        repo: the official repository (``'IBM/RegionViT'``), named in the description (model cards).
        top1: the authors' reported ImageNet-1k top-1 of these weights (%).
        **kwargs: other ``PretrainedCfg`` fields (``license``, ``paper_ids``, ``notes``, ``input_size``, ...).
    """
    cfg = {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
    }
    if url:
        cfg["url"] = url
    if origin_url or url:
        cfg["origin_url"] = origin_url or url
    about = []
    if top1 is not None:
        about.append(f"ImageNet-1k top-1 {top1} % as reported by the authors")
    if repo:
        about.append(f"official code https://github.com/{repo}")
    if about:
        cfg["description"] = "; ".join(about) + "."
    cfg.update(kwargs)
    return cfg


def build_model(spec: ModelSpec, variant: str, pretrained: bool = False, trust_pickle: bool = False,
                **kwargs: Any) -> nn.Module:
    """``timm.models.build_model_with_cfg`` for a :class:`ModelSpec`, with locvit's pretrained loading.

    ``pretrained=True`` loads what the pretrained cfg names -- timm's sources and overrides (``url``, ``file``,
    ``hf_hub_id``, ``hf-hub:``/``local-dir:`` names), downloads cached in torch hub's folder -- through the
    spec's checkpoint filter, strictly but for a new classifier when ``num_classes`` differs
    (:func:`locvit.pretrained.load_pretrained`). ``trust_pickle=True`` admits files that pickle more than tensors.
    """
    if pretrained:  # no source: say where the weights are before building a model for nothing
        from locvit.pretrained import check_source

        check_source(resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"),
                                            kwargs.get("pretrained_cfg_overlay")).to_dict())
    feature_cfg = dict(feature_cls="getter", **spec.feature_cfg)
    model = build_model_with_cfg(spec.model_cls, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)
    if pretrained:
        from locvit.pretrained import load_pretrained

        load_pretrained(model, spec.filter_fn, trust_pickle=trust_pickle, cache_dir=kwargs.get("cache_dir"))
    return model


# --- argument validation: one ValueError naming the argument, at construction ---------------------------------
def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int``; a ``ValueError`` naming ``name`` unless it is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_length(values: Any, name: str, length: int | None = None) -> list[Any]:
    """A sequence (one entry per stage when ``length`` is given) as a list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence, one entry per stage, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} needs one entry per stage ({length} stages), got {list(values)}")
    if not values:
        raise ValueError(f"{name} is empty: a model needs at least one stage")
    return list(values)


def check_ints(values: Any, name: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """A sequence of integers (one per stage when ``length`` is given), each at least ``minimum``."""
    return tuple(check_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(check_length(values, name, length)))


def per_stage(value: Any, num_stages: int) -> list[Any]:
    """One value for every stage (a scalar repeated) or a per-stage sequence, as a list."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * num_stages


def check_positive(value: Any, name: str) -> float:
    """A finite number above zero (expansion ratios)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def check_rate(value: Any, name: str) -> float:
    """A dropout / stochastic-depth probability in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def check_heads(dim: int, heads: Any, dim_name: str = "embed_dim", heads_name: str = "num_heads") -> int:
    """``heads`` attention heads that divide ``dim`` channels; the error names the nearest heads that would."""
    heads = check_int(heads, heads_name)
    if dim % heads:
        below = max(h for h in range(1, heads) if dim % h == 0)
        above = next(h for h in range(heads + 1, dim + 1) if dim % h == 0) if heads < dim else None
        near = f"{below} or {above}" if above else str(below)
        raise ValueError(f"{dim_name} ({dim}) is not divisible by {heads_name} ({heads}): use {heads_name}={near} "
                         f"(or a width that {heads} divides)")
    return heads


def check_hidden(dim: int, ratio: Any, name: str = "mlp_ratio") -> int:
    """Hidden width ``int(dim * ratio)`` of an MLP; at least one channel."""
    hidden = int(dim * check_positive(ratio, name))
    if hidden < 1:
        raise ValueError(f"{name}={ratio} leaves no hidden channel for width {dim}; use {name} >= {1 / dim:g}")
    return hidden


def check_img_size(img_size: Any, minimum: tuple[int, int] = (1, 1), why: str = "") -> tuple[int, int]:
    """``img_size`` (an int or ``(H, W)``) as a pair, at least ``minimum``; ``why`` says what needs that minimum."""
    size = to_2tuple(img_size)
    if len(size) != 2:
        raise ValueError(f"img_size must be an int or (height, width), got {img_size!r}")
    h, w = (check_int(v, "img_size") for v in size)
    if h < minimum[0] or w < minimum[1]:
        raise ValueError(f"img_size {h}x{w} is too small: {why or 'this model'} needs at least "
                         f"{minimum[0]}x{minimum[1]}; pass a larger img_size")
    return h, w


def check_model_args(*, num_classes: Any, in_chans: Any, global_pool: str, pools: Sequence[str] = ("avg", ""),
                     **rates: Any) -> None:
    """The arguments every locvit model shares: ``num_classes`` (0 for no classifier), ``in_chans``, the
    ``global_pool`` choice and the dropout/stochastic-depth rates passed by keyword (None skips one)."""
    check_num_classes(num_classes)
    check_int(in_chans, "in_chans")
    check_global_pool(global_pool, pools)
    for name, rate in rates.items():
        if rate is not None:
            check_rate(rate, name)


def check_transformer_args(*, embed_dim: Any, depth: Any, num_heads: Any, mlp_ratio: Any, **common: Any) -> None:
    """:func:`check_model_args` (``common``; token, mean or no pooling) and the width, depth, heads and MLP ratio of
    an isotropic transformer."""
    check_model_args(pools=GLOBAL_POOLS, **common)
    check_int(embed_dim, "embed_dim")
    check_int(depth, "depth")
    check_heads(embed_dim, num_heads)
    check_hidden(embed_dim, mlp_ratio)


def check_num_classes(num_classes: Any) -> int:
    return check_int(num_classes, "num_classes (0 builds no classifier)", 0)


_RATES = ("drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")


def check_host_kwargs(kwargs: dict[str, Any], pools: Sequence[str], heads: Sequence[tuple[str, str]],
                      defaults: dict[str, Any]) -> None:
    """The checks of :func:`check_model_args` (plus widths, depth, patch size and heads) on the keyword arguments of a
    timm class that locvit registers as a host model, before timm builds it (timm asserts some, divides by others).
    ``defaults``: the entrypoint's architecture arguments, which ``kwargs`` override."""
    kw = {**defaults, **kwargs}
    check_model_args(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                     global_pool=kw.get("global_pool", pools[0]), pools=pools,
                     **{k: kw[k] for k in _RATES if k in kw})
    for name in ("embed_dim", "inner_dim", "depth", "patch_size"):
        if name in kw:
            check_int(kw[name], name)
    for dim, num in heads:
        check_heads(kw[dim], kw[num], dim, num)
    if "mlp_ratio" in kw:
        check_hidden(kw["embed_dim"], kw["mlp_ratio"])
    if "img_size" in kw:
        patch = kw.get("patch_size", 16)
        check_img_size(kw["img_size"], (patch, patch), f"patch_size={patch}")


# --- input validation at forward -------------------------------------------------------------------------------
@register_notrace_function  # shape checks are Python control flow: a leaf call for torch.fx
def check_image(x: Tensor, in_chans: int, min_size: tuple[int, int] = (1, 1), model: str = "model") -> Tensor:
    """``x`` unchanged, or a ``ValueError`` naming the constraint when it is not a ``B x in_chans x H x W`` float image
    batch of at least ``min_size`` pixels. An empty batch (``B = 0``) is valid: the model returns ``0`` rows.

    Skipped while a graph is built by torch.compile/export/jit (the graph keeps no Python checks); a leaf call under
    ``torch.fx``, so that the traced module still checks its inputs."""
    if not fastpath.tracing():
        if x.ndim != 4:
            raise ValueError(f"{model} expects a 4-D image batch B x {in_chans} x H x W, got shape {tuple(x.shape)}"
                             + ("; add a batch dimension with x.unsqueeze(0)" if x.ndim == 3 else ""))
        if x.shape[1] != in_chans:
            raise ValueError(f"{model} expects {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                             f"build it with in_chans={x.shape[1]} or convert the images")
        if x.shape[2] < min_size[0] or x.shape[3] < min_size[1]:
            raise ValueError(f"{model} needs images of at least {min_size[0]}x{min_size[1]} pixels, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        if not x.is_floating_point():
            raise ValueError(f"{model} expects floating-point images, got {x.dtype}; convert with x.float() (and "
                             "normalise as the model's pretrained_cfg mean/std say)")
    return x


@register_notrace_function  # compares grid sizes: a leaf call for torch.fx
def pos_embed_at(pos: Tensor, grid: tuple[int, int], base_grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """A ``1 x (P + h*w) x C`` position embedding made for ``base_grid``, resampled (bicubic) to ``grid`` when the
    grids differ, as timm resamples a ViT's embedding for another input size."""
    if tuple(grid) == tuple(base_grid):
        return pos
    return resample_abs_pos_embed(pos, list(grid), list(base_grid), num_prefix_tokens=num_prefix_tokens)


# plain torch.fx.symbolic_trace too (timm's tracer uses the registrations above)
torch.fx.wrap("check_image")
torch.fx.wrap("pos_embed_at")


def init_linear_layernorm(m: nn.Module) -> None:
    """The ViT initialisation the official code of several families shares: Linear weights trunc-normal(0.02) with
    zero bias, LayerNorm 1/0 (everything else keeps PyTorch's default)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


GLOBAL_POOLS = ("token", "avg", "")


def check_global_pool(global_pool: str, pools: Sequence[str] = GLOBAL_POOLS) -> str:
    """``global_pool`` if it is one of ``pools``, else a ``ValueError`` listing them."""
    if global_pool not in pools:
        names = ", ".join(repr(p) for p in pools)
        raise ValueError(f"global_pool must be one of {names}; got {global_pool!r}")
    return global_pool


class TimmModel:
    """timm's classification contract, shared by every locvit model: ``forward``, ``forward_head`` (pooling,
    ``head_drop``, ``head``), classifier access and reset, gradient checkpointing, ``no_weight_decay`` and the input
    check.

    The model provides ``head`` (Linear or Identity on ``num_features``), ``head_drop``, ``global_pool`` (one of
    ``global_pools``), ``in_chans``, ``min_input_size`` (``(H, W)``) and ``forward_features``. Its features are tokens
    (``B x N x C``, the first ``num_prefix_tokens`` of them class tokens) unless the class declares the map layout of
    spatial features in ``output_fmt`` (``'NHWC'`` or ``'NCHW'``, timm's attribute).
    """

    global_pools: tuple[str, ...] = GLOBAL_POOLS
    num_prefix_tokens: int = 0
    #: parameters named with any of these are excluded from weight decay (``no_weight_decay``)
    no_weight_decay_keys: tuple[str, ...] = ()

    def _check_input(self, x: Tensor) -> Tensor:
        return check_image(x, self.in_chans, self.min_input_size, type(self).__name__)

    def _pos_embed_at(self, pos: Tensor, grid: tuple[int, int], base_grid: tuple[int, int]) -> Tensor:
        """:func:`pos_embed_at` with the model's prefix tokens (called here, where torch.fx wraps it)."""
        return pos_embed_at(pos, grid, base_grid, self.num_prefix_tokens)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            fmt = getattr(self, "output_fmt", "NLC")
            x = x[:, self.num_prefix_tokens:].mean(1) if fmt == "NLC" else x.mean((1, 2) if fmt == "NHWC" else (2, 3))
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if any(k in n for k in self.no_weight_decay_keys)}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every block: the model's own loop and every stage that runs its blocks
        (``grad_checkpointing`` flags)."""
        for m in self.modules():
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        num_classes = check_num_classes(num_classes)
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool, self.global_pools)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


OUTPUT_FMTS = ("NCHW", "NHWC")


class PyramidStages(TimmModel):
    """timm's feature interface for a pyramid of stages: ``forward_features``, ``forward_intermediates`` (maps in
    either layout), ``prune_intermediate_layers`` and ``group_matcher``.

    The model keeps its stages in the attribute named ``stages_attr`` (its state-dict prefix), ``feature_info`` (one
    entry per stage) and an optional final ``norm``, and says where its families differ through hooks:

    * ``_stem(images) -> state``: what enters the first stage;
    * ``_stage(i, state, need_map) -> state``: run stage ``i`` (``need_map``: its map is taken as an intermediate);
    * ``_stage_map(i, state, norm) -> map``: the stage's feature map in ``stage_fmt``; ``norm``: apply the final
      norm (asked for the last stage only);
    * ``_features(state, final) -> features``: ``forward_features``' output from the last state (``final``: every
      stage ran, so the final norm applies).

    The defaults suit a model whose state is the stage map itself, normed by ``norm`` at the end (Swin-like).
    """

    global_pools = ("avg", "")
    stages_attr: str = "stages"
    stage_fmt: str = "NHWC"
    #: ``group_matcher`` regexes: the stem, a stage's modules before its blocks, and after them
    group_stem: str = r"^patch_embed"
    group_stage_start: str = r"downsample"
    group_stage_end: str | None = None

    @property
    def stage_list(self) -> nn.Module:
        return getattr(self, self.stages_attr)

    def _stage(self, i: int, x: Any, need_map: bool) -> Any:
        return self.stage_list[i](x)

    def _stage_map(self, i: int, x: Any, norm: bool) -> Tensor:
        return self.norm(x) if norm else x

    def _features(self, x: Any, final: bool) -> Tensor:
        return self.norm(x) if final else x

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._stem(self._check_input(x))
        for i in range(len(self.stage_list)):
            x = self._stage(i, x, False)
        return self._features(x, True)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage feature maps (``feature_info``), timm's interface.

        Args:
            x: ``B x C x H x W`` images.
            indices: stages to return (None: all; an int ``n``: the last ``n``; or a list).
            norm: apply the final norm to the last stage's map, where the model has one sized for it.
            stop_early: run only up to the last stage asked for (then the returned features are that stage's,
                without the final norm).
            output_fmt: ``'NCHW'`` or ``'NHWC'``.
            intermediates_only: return the maps only.

        Returns:
            ``(features, maps)``, ``features`` as ``forward_features`` returns them; or ``maps``.
        """
        if output_fmt not in OUTPUT_FMTS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FMTS}, got {output_fmt!r}")
        num_stages = len(self.stage_list)
        take_indices, max_index = feature_take_indices(num_stages, indices)
        num_run = max_index + 1 if stop_early else num_stages
        x = self._stem(self._check_input(x))
        intermediates = []
        for i in range(num_run):
            x = self._stage(i, x, i in take_indices)
            if i in take_indices:
                y = self._stage_map(i, x, norm and i == num_stages - 1)
                if output_fmt != self.stage_fmt:
                    y = y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y.permute(0, 2, 3, 1)
                intermediates.append(y.contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self._features(x, num_run == num_stages), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last one in ``indices`` (their features, the final norm and the head, which are
        sized for the last stage, go with them); returns the absolute indices."""
        take_indices, max_index = feature_take_indices(len(self.stage_list), indices)
        prune_end = max_index < len(self.stage_list) - 1
        setattr(self, self.stages_attr, self.stage_list[: max_index + 1])
        self.feature_info = self.feature_info[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if (prune_norm or prune_end) and hasattr(self, "norm"):
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def _group_extra(self, coarse: bool) -> list[tuple[str, tuple[int, ...] | None]]:
        """More ``group_matcher`` entries (parameters outside the stages)."""
        return []

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay: the stem, then each block (a stage's modules before
        its blocks join its first block, those after them its last), the final norm last."""
        s = self.stages_attr
        if coarse:
            blocks = [(rf"^{s}\.(\d+)", None)]
        else:
            blocks = [(rf"^{s}\.(\d+)\.(?:{self.group_stage_start})", (0,)), (rf"^{s}\.(\d+)\.blocks\.(\d+)", None)]
            if self.group_stage_end:
                blocks.append((rf"^{s}\.(\d+)\.(?:{self.group_stage_end})", (99999,)))
        return dict(stem=self.group_stem, blocks=blocks + self._group_extra(coarse) + [(r"^norm", (99999,))])


class PrunableBlocks(TimmModel):
    """timm's contract for an isotropic model with one ``blocks`` list, a final ``norm`` and a linear ``head`` on
    ``embed_dim`` features: pruning, parameter groups, and the head on ``forward_features``' tokens (class token
    first, ``num_prefix_tokens`` prefix tokens)."""

    group_stem: str = r"^cls_token|pos_embed|patch_embed"  # ``group_matcher``: what comes before the blocks

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=self.group_stem, blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def _tokens_to_map(self, y: Tensor, grid: tuple[int, int], output_fmt: str) -> Tensor:
        y = y[:, self.num_prefix_tokens:]
        if output_fmt == "NLC":
            return y
        return y.reshape(y.shape[0], grid[0], grid[1], y.shape[-1]).permute(0, 3, 1, 2).contiguous()


class ClassTokenBlocks(PrunableBlocks):
    """timm's classification and feature interface for an isotropic model: a class token followed by the tokens of
    an ``H x W`` grid go through ``blocks`` (each called as ``blk(x, grid)``), then ``norm``.

    The model provides ``_embed(images) -> (state, (H, W))``, ``blocks``, ``norm``, ``head_drop``, ``head``,
    ``global_pool`` (``'token' | 'avg' | ''``), ``num_prefix_tokens`` and ``grad_checkpointing``. The state is the
    token sequence, unless the model carries more (then it overrides ``_block`` and ``_tokens``).
    """

    def _block(self, blk: nn.Module, x: Any, grid: tuple[int, int]) -> Any:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, grid)
        return blk(x, grid)

    def _tokens(self, x: Any) -> Tensor:
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        x, grid = self._embed(self._check_input(x))
        for blk in self.blocks:
            x = self._block(blk, x, grid)
        return self.norm(self._tokens(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Block outputs as ``B x C x H x W`` maps of the image tokens (``'NLC'``: token sequences), timm's
        interface."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, grid = self._embed(self._check_input(x))
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates, prefixes = [], []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x, grid)
            if i in take_indices:
                y = self._tokens(x)
                y = self.norm(y) if norm else y
                prefixes.append(y[:, : self.num_prefix_tokens])
                intermediates.append(self._tokens_to_map(y, grid, output_fmt))
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefixes))
        if intermediates_only:
            return intermediates
        return self.norm(self._tokens(x)), intermediates


def clip_length(model: nn.Module) -> int | None:
    """The nominal number of frames of a video model (its ``num_frames``), None for an image model."""
    n = getattr(model, "num_frames", None)
    return n if isinstance(n, int) and not isinstance(n, bool) else None
