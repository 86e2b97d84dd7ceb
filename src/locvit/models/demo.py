"""The small configuration of each family that ``locvit demo`` trains (classification on the digits; detection and
segmentation on generated shapes): the registered architecture, shrunk to a few hundred thousand parameters."""
from __future__ import annotations

from typing import Any

#: classification (``locvit demo``): one small model per family
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "RegionViT": dict(model="regionvit_tiny", model_kwargs=dict(
        embed_dim=[32, 64, 128, 128], depth=[1, 1, 2, 1], num_heads=[2, 2, 4, 4], window_size=4)),
    "Focal": dict(model="focal_tiny", model_kwargs=dict(
        embed_dim=32, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4], window_size=4, focal_windows=[3, 3, 1, 1],
        expand_sizes=[1, 1, 1, 1])),
    "VVT": dict(model="vvt_tiny", model_kwargs=dict(
        embed_dims=[32, 64, 96, 128], num_heads=[1, 2, 3, 4], depths=[1, 1, 2, 1], mlp_ratios=[4, 4, 4, 4])),
    "LocalViT": dict(model="localvit_tiny", model_kwargs=dict(
        patch_size=4, embed_dim=96, depth=4, num_heads=4, mlp_ratio=4, reduction=4)),
}
#: detection and segmentation (``locvit demo --task detect|segment``): pyramid models, so LocalViT on PVT
DENSE_DEMO_MODELS: dict[str, dict[str, Any]] = {
    **{k: v for k, v in DEMO_MODELS.items() if k != "LocalViT"},
    "LocalViT": dict(model="localvit_pvt_tiny", model_kwargs=dict(
        embed_dims=[32, 64, 96, 128], num_heads=[1, 2, 3, 4], depths=[1, 1, 2, 1], mlp_ratios=[4, 4, 4, 4])),
}
