"""DeiT hosts that the LocalViT repository registers and timm does not (the other ``deit_*`` names resolve to
timm's own models, which load the official files through timm's filter)."""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer

from locvit.models._helpers import check_host_kwargs, make_cfg

default_cfgs = generate_default_cfgs({
    "deit_tiny_patch16_224_ex6": make_cfg(notes=("DeiT-Ti with MLP ratio 6: LocalViT's ablation baseline",)),
})


@register_model  # a timm model, outside locvit's zoo contract (list_models)
def deit_tiny_patch16_224_ex6(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-Ti with MLP expansion 6 (LocalViT's parameter-matched baseline); timm's VisionTransformer."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=6)
    check_host_kwargs(kwargs, ("token", "avg", "avgmax", "max", "map", ""), [("embed_dim", "num_heads")], args)
    return _create_vision_transformer("deit_tiny_patch16_224_ex6", pretrained=pretrained, **dict(args, **kwargs))
