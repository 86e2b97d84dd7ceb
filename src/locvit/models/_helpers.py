"""Shared plumbing of the model files: default cfgs, the builder, input validation, the ViT initialisation and
timm's interface for isotropic class-token models."""
from __future__ import annotations

from typing import Any, Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, checkpoint
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from locvit.layers import fastpath


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
