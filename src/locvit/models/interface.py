"""timm's model interface, written once for every locvit model: classification (:class:`TimmModel`), the feature
interface of the pyramid models (:class:`PyramidStages`) and of the isotropic ones (:class:`ClassTokenBlocks`), and
the input check at forward."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx
from timm.layers import register_notrace_function
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from locvit.layers import fastpath
from locvit.layers.pos_embed import resize_pos_embed
from locvit.models.args import GLOBAL_POOLS, check_global_pool, check_num_classes

__all__ = ["ClassTokenBlocks", "PrunableBlocks", "PyramidStages", "TimmModel", "check_image", "clip_length"]


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


# plain torch.fx.symbolic_trace too (timm's tracer uses their registrations)
torch.fx.wrap("check_image")
torch.fx.wrap("resize_pos_embed")


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
        """``pos`` (made for ``base_grid``) on ``grid``: :func:`~locvit.layers.pos_embed.resize_pos_embed` with the
        model's prefix tokens (called here, where torch.fx wraps it)."""
        return resize_pos_embed(pos, grid, base_grid, self.num_prefix_tokens)

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

    * ``_stem(images) -> state``: what enters the first stage (from ``_input_state``, which checks the input first;
      a model whose input is more than an image batch overrides that instead);
    * ``_stage(i, state, need_map) -> state``: run stage ``i`` (``need_map``: its map is taken as an intermediate);
    * ``_stage_map(i, state, norm) -> map``: the stage's feature map in ``stage_fmt``; ``norm``: apply the final
      norm (asked for the last stage only);
    * ``_features(state, final) -> features``: ``forward_features``' output from the last state (``final``: every
      stage ran, so the final norm applies);
    * ``_map_in_fmt(map, output_fmt) -> map``: a ``stage_fmt`` map in ``output_fmt`` (the defaults permute 4-D maps).

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

    def _input_state(self, x: Tensor) -> Any:
        return self._stem(self._check_input(x))

    def _map_in_fmt(self, y: Tensor, output_fmt: str) -> Tensor:
        if output_fmt != self.stage_fmt:
            y = y.permute(0, 3, 1, 2) if output_fmt == "NCHW" else y.permute(0, 2, 3, 1)
        return y.contiguous() if output_fmt == "NCHW" else y

    def forward_features(self, x: Tensor) -> Tensor:
        x = self._input_state(x)
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
        x = self._input_state(x)
        intermediates = []
        for i in range(num_run):
            x = self._stage(i, x, i in take_indices)
            if i in take_indices:
                intermediates.append(self._map_in_fmt(self._stage_map(i, x, norm and i == num_stages - 1), output_fmt))
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

