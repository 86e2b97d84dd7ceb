"""LocalViT on timm hosts outside the paper, built by :func:`locvit.localize`.

Each entry point creates the timm host (``pretrained=True`` loads timm's weights for it, which timm downloads and
caches; ``pretrained_cfg_overlay=dict(file=...)`` gives a local file) and localizes every block: the host's MLP
weights become the locality feed-forward's 1x1 convolutions, so fine-tuning starts from the pretrained host::

    model = timm.create_model("localvit_vit_small_patch16_224", pretrained=True, num_classes=100)

The hosts are built with ``dynamic_img_size=True, dynamic_img_pad=True``: any input of at least one pixel works
(the position embedding is resampled, partial patches padded). The model keeps the host's pretrained cfg
(normalisation, crop), which is what its weights expect.
"""
from __future__ import annotations

from typing import Any

import timm
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from locvit.models._registry import ModelSpec, register_family_model
from locvit.models.interface import check_image
from locvit.weights.checkpoint import LoadReport

__all__: list[str] = []


def _host_cfg(host: str) -> dict[str, Any]:
    """The host's preprocessing (its pretrained cfg), the weights' source as provenance."""
    cfg = timm.get_pretrained_cfg(host).to_dict()
    keep = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "num_classes", "first_conv",
            "classifier", "license")
    out = {k: cfg[k] for k in keep if cfg.get(k) is not None}
    out["min_input_size"] = (3, 1, 1)
    out["origin_url"] = f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else cfg.get("url", "")
    out["notes"] = (f"LocalViT on timm's {host}: pretrained=True loads timm's weights for the host (downloaded and "
                    "cached by timm) and carries its MLPs over",)
    return out


default_cfgs = generate_default_cfgs({"localvit_vit_small_patch16_224": _host_cfg("vit_small_patch16_224")})


def _check_input(model: nn.Module, args: tuple) -> None:
    x = args[0]
    if isinstance(x, Tensor):
        embed = getattr(model, "patch_embed", None) or getattr(getattr(model, "model", None), "patch_embed", None)
        check_image(x, embed.proj.in_channels, (1, 1), type(model).__name__)


def _localized(host: str, pretrained: bool, kwargs: dict[str, Any], **lff: Any) -> nn.Module:
    from locvit.models.localize import localize

    kwargs.pop("pretrained_cfg", None)  # timm's tag for this name; the host resolves its own
    kwargs.pop("trust_pickle", None)  # timm's loader reads the host's weights itself
    kwargs = {"dynamic_img_size": True, "dynamic_img_pad": True, **kwargs}
    model = timm.create_model(host, pretrained=pretrained, **kwargs)
    host_keys = set(model.state_dict())
    model = localize(model, **lff)
    model.register_forward_pre_hook(_check_input)  # one clear ValueError for a wrong input, as locvit's models
    if pretrained:  # what `locvit train --pretrained` reports
        keys = list(model.state_dict())
        model.load_report = LoadReport(
            loaded=[k for k in keys if k in host_keys], missing=[k for k in keys if k not in host_keys],
            source=f"timm's {model.pretrained_cfg.get('architecture', host)}.{model.pretrained_cfg.get('tag', '')} "
                   "weights (the MLPs' fc1/fc2 carried into the new 1x1 convolutions)")
    return model


# the builder is a function, not a class: instances are timm's VisionTransformer, whose own filter (timm's) loads
# their checkpoints, so no class is claimed here
HOST = ModelSpec(_localized)


@register_family_model("localvit", HOST)
def localvit_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """LocalViT on timm's ViT-S/16 (``vit_small_patch16_224``): locality feed-forward (expand 4, h-swish + SE with
    4 hidden units) in all 12 blocks, the class token bypassing it."""
    return _localized("vit_small_patch16_224", pretrained, kwargs, act="hs+se", reduction="dim")
