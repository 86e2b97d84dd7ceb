"""How a model file builds its models for timm: the pretrained cfg (:func:`make_cfg`), the builder that loads
locvit's pretrained weights (:func:`build_model`) and the ViT initialisation several families share."""
from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from torch import nn

from locvit.models._registry import ModelSpec
from locvit.weights.pretrained import check_source, load_published


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
    (:func:`locvit.weights.pretrained.load_published`). ``trust_pickle=True`` admits files that pickle more than
    tensors.
    """
    if pretrained:  # no source: say where the weights are before building a model for nothing
        check_source(resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"),
                                            kwargs.get("pretrained_cfg_overlay")).to_dict())
    feature_cfg = dict(feature_cls="getter", **spec.feature_cfg)
    model = build_model_with_cfg(spec.model_cls, variant, pretrained=False, feature_cfg=feature_cfg, **kwargs)
    if pretrained:
        load_published(model, spec.filter_fn, trust_pickle=trust_pickle, cache_dir=kwargs.get("cache_dir"))
    return model


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

