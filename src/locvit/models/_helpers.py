"""Shared plumbing of the model files: default cfgs, the builder, argument and input validation, the ViT
initialisation and timm's interface for isotropic class-token models."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import torch
import torch.fx
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, register_notrace_function
from timm.models._features import feature_take_indices
from torch import Tensor, nn


def make_cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    """A pretrained cfg in timm's format. ``url`` is the official weights' address, kept as provenance
    (``origin_url``): locvit never downloads; pass the file with ``pretrained_cfg_overlay=dict(file=...)``."""
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
        cfg["origin_url"] = url
    cfg.update(kwargs)
    return cfg


def build_model(
    model_cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool = False,
    filter_fn: Callable | None = None,
    feature_cfg: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``timm.models.build_model_with_cfg`` plus locvit's checkpoint loading.

    ``pretrained=True`` loads the file named by the pretrained cfg (``pretrained_cfg_overlay=dict(file=...)``)
    through :func:`locvit.load_checkpoint` -- the authors' files included -- strictly except for the classifier,
    which is left newly initialised when ``num_classes`` differs (with ``features_only`` the keys of pruned layers
    are dropped).
    """
    from locvit.checkpoint import CheckpointError, load_checkpoint

    feature_cfg = dict(feature_cls="getter", **(feature_cfg or {}))
    model = build_model_with_cfg(model_cls, variant, pretrained=False, pretrained_filter_fn=filter_fn,
                                 feature_cfg=feature_cfg, **kwargs)
    if pretrained:
        cfg = model.pretrained_cfg
        file = cfg.get("file")
        if not file:
            origin = cfg.get("origin_url") or "no official weights are published for this model"
            raise ValueError(
                f"{variant}: locvit downloads nothing. Get the checkpoint ({origin}) and pass "
                "pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth')"
            )
        report = load_checkpoint(model, file, strict=False, trust_pickle=trust_pickle)
        head = cfg.get("classifier") or "head"
        heads = (head,) if isinstance(head, str) else tuple(head)

        def is_head(k: str) -> bool:
            return any(k == h or k.startswith(h + ".") for h in heads)

        # a features_only model has pruned its head/final norm: checkpoint keys for them are expected leftovers
        pruned = hasattr(model, "feature_info") and model is not getattr(model, "model", model)
        leftovers = [] if pruned else report.unexpected
        bad = [k for k in report.missing + leftovers + [m[0] for m in report.mismatched] if not is_head(k)]
        if bad:
            raise CheckpointError(f"{file} does not fit {variant}:\n{report}")
        model.load_report = report
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

    Skipped while compiling or tracing (the graph keeps no Python checks); a leaf call under ``torch.fx``, so that
    the traced module still checks its inputs."""
    if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
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


torch.fx.wrap("check_image")  # plain torch.fx.symbolic_trace too (timm's tracer uses the registration above)


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


class PrunableBlocks:
    """timm's contract for an isotropic model with one ``blocks`` list, a final ``norm`` and a linear ``head`` on
    ``embed_dim`` features: gradient checkpointing switch, classifier access and reset, pruning, and the head on
    ``forward_features``' tokens (class token first, ``num_prefix_tokens`` prefix tokens; ``head_drop``)."""

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = check_num_classes(num_classes)
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


class ClassTokenBlocks(PrunableBlocks):
    """timm's classification and feature interface for an isotropic model: a class token followed by the tokens of
    an ``H x W`` grid go through ``blocks`` (each called as ``blk(x, grid)``), then ``norm``.

    The model provides ``_embed(images) -> (tokens, (H, W))``, ``blocks``, ``norm``, ``head_drop``, ``head``,
    ``global_pool`` (``'token' | 'avg' | ''``), ``num_prefix_tokens``, ``grad_checkpointing`` and
    ``reset_classifier``.
    """

    def _block(self, blk: nn.Module, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, grid)
        return blk(x, grid)

    def forward_features(self, x: Tensor) -> Tensor:
        x, grid = self._embed(x)
        for blk in self.blocks:
            x = self._block(blk, x, grid)
        return self.norm(x)

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
        x, (H, W) = self._embed(x)
        B = x.shape[0]
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates, prefixes = [], []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x, (H, W))
            if i in take_indices:
                y = self.norm(x) if norm else x
                prefixes.append(y[:, :1])
                y = y[:, 1:]
                intermediates.append(y.reshape(B, H, W, y.shape[-1]).permute(0, 3, 1, 2).contiguous()
                                     if output_fmt == "NCHW" else y)
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefixes))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates
