"""DeiT hosts that the LocalViT repository registers and timm does not (the other ``deit_*`` names resolve to
timm's own models, which load the official files through timm's filter)."""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from locvit.models._registry import ModelSpec, register_family_model
from locvit.models.args import check_host_kwargs
from locvit.models.builder import build_model, make_cfg

# timm's ViT class, filter and feature layout (the last block)
DEIT_HOST = ModelSpec(VisionTransformer, filter_fn=checkpoint_filter_fn, feature_cfg=dict(out_indices=3))

default_cfgs = generate_default_cfgs({
    "deit_tiny_patch16_224_ex6": make_cfg(notes=("DeiT-Ti with MLP ratio 6: LocalViT's ablation baseline",)),
})


@register_family_model(None, DEIT_HOST)  # timm's class: outside locvit's zoo
def deit_tiny_patch16_224_ex6(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT-Ti with MLP expansion 6 (LocalViT's parameter-matched baseline); timm's VisionTransformer."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=6)
    check_host_kwargs(kwargs, ("token", "avg", "avgmax", "max", "map", ""), [("embed_dim", "num_heads")], args)
    return build_model(DEIT_HOST, "deit_tiny_patch16_224_ex6", pretrained, **dict(args, **kwargs))
