"""Shared plumbing of the model files: default cfgs, the builder, input validation."""
from __future__ import annotations

from typing import Any, Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
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


def check_image(x: Tensor, in_chans: int, min_size: tuple[int, int] = (1, 1), model: str = "model") -> None:
    """Raise a ``ValueError`` naming the constraint when ``x`` is not a ``B x in_chans x H x W`` image batch
    of at least ``min_size``."""
    if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
        if x.ndim != 4:
            raise ValueError(f"{model} expects a 4-D image batch B x {in_chans} x H x W, got shape {tuple(x.shape)}")
        if x.shape[1] != in_chans:
            raise ValueError(f"{model} expects {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                             f"build it with in_chans={x.shape[1]} or convert the images")
        if x.shape[2] < min_size[0] or x.shape[3] < min_size[1]:
            raise ValueError(f"{model} needs images of at least {min_size[0]}x{min_size[1]} pixels, "
                             f"got {x.shape[2]}x{x.shape[3]}")
