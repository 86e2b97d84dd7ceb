"""Shared plumbing of the model files: default cfgs, the builder, input validation, the ViT initialisation and
timm's interface for isotropic class-token models."""
from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
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


def check_image(x: Tensor, in_chans: int, min_size: tuple[int, int] = (1, 1), model: str = "model") -> None:
    """Raise a ``ValueError`` naming the constraint when ``x`` is not a ``B x in_chans x H x W`` image batch
    of at least ``min_size``."""
    if not fastpath.tracing():
        if x.ndim != 4:
            raise ValueError(f"{model} expects a 4-D image batch B x {in_chans} x H x W, got shape {tuple(x.shape)}")
        if x.shape[1] != in_chans:
            raise ValueError(f"{model} expects {in_chans} input channels, got {x.shape[1]} (shape {tuple(x.shape)}); "
                             f"build it with in_chans={x.shape[1]} or convert the images")
        if x.shape[2] < min_size[0] or x.shape[3] < min_size[1]:
            raise ValueError(f"{model} needs images of at least {min_size[0]}x{min_size[1]} pixels, "
                             f"got {x.shape[2]}x{x.shape[3]}")


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


def check_global_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
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
        self.num_classes = num_classes
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
                intermediates.append(y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
                                     if output_fmt == "NCHW" else y)
        if return_prefix_tokens:
            intermediates = list(zip(intermediates, prefixes))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates


def clip_length(model: nn.Module) -> int | None:
    """The nominal number of frames of a video model (its ``num_frames``), None for an image model."""
    n = getattr(model, "num_frames", None)
    return n if isinstance(n, int) and not isinstance(n, bool) else None
