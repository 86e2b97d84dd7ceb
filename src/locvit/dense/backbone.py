"""locvit models as backbones for detection and segmentation frameworks (thin adapters).

Every pyramid model (RegionViT, Focal v1/v2, VVT, PVT / LocalViT-PVT, LocalViT-Swin) returns four NCHW maps of
strides 4/8/16/32 through timm's ``features_only=True, out_indices=...`` at any input size, so most frameworks need
no code from here (smp ``tu-<name>``, mmpretrain's ``TIMMBackbone``, a detectron2 wrapper: see ``docs/dense.md``).
This module adds what torchvision's detectors and a fair comparison with the papers need:

* :func:`dense_recipe` -- the architecture settings each family's dense-task results were obtained with
  (RegionViT's ``det_norm``; the Swin-style extra output norms of Focal and LocalViT-Swin, ...);
* :func:`create_features` and :class:`LocvitFPN` / :func:`create_backbone` -- the feature pyramid alone, or with
  an FPN in the shape torchvision's detectors expect (``out_channels``, an ``OrderedDict`` of maps);
* :func:`load_pretrained` -- a classification checkpoint (the authors' file or ours) into a backbone, through the
  family's ``checkpoint_filter_fn`` (tables resized for the new window / size), non-strictly, with the
  :class:`~locvit.weights.LoadReport` of what was taken, converted, newly initialised and dropped.

The detectors are built in :mod:`locvit.dense.detectors`, the segmentation models in :mod:`locvit.dense.segmenters`.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Mapping, Sequence

from timm.layers import LayerNorm2d
from torch import Tensor, nn

from locvit.dense.config import DenseConfig
from locvit.models import DenseRecipe, create_model, find_filter_fn, spec_of
from locvit.weights import LoadReport, load_converted, unwrap_model

__all__ = ["DenseRecipe", "LocvitFPN", "PretrainedReport", "backbone_kwargs", "create_backbone", "create_features",
           "dense_recipe", "load_pretrained"]


# --- per-family dense settings ----------------------------------------------------------------------------------
def dense_recipe(model_name: str) -> DenseRecipe:
    """The dense-task settings of ``model_name``'s family, as its model file declares them next to its feature
    config (an empty recipe for models without one)."""
    spec = spec_of(model_name)
    return spec.dense if spec is not None else DenseRecipe()


# --- checkpoints ------------------------------------------------------------------------------------------------
PretrainedReport = LoadReport  # deprecated name (0.1) of the one load report


def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    trust_pickle: bool = False,
    use_ema: bool = False,
    verbose: bool = True,
) -> LoadReport:
    """Load a classification checkpoint into a backbone, non-strictly, and say what happened.

    The checkpoint (official or locvit format) goes through the family's ``checkpoint_filter_fn`` -- which maps
    official names to ours and resizes window tables, regional kernels and position embeddings to the backbone's
    configuration -- then :func:`locvit.load_checkpoint` with ``strict=False``: the classifier and final norm
    are dropped, what the backbone adds (RegionViT's ``det_norm``, the adapter's FPN) stays newly initialised.

    Args:
        model: a ``features_only`` model, a :class:`LocvitFPN`, or a plain locvit model.
        checkpoint: file path or (wrapped) state dict.
        trust_pickle: see :func:`locvit.read_checkpoint`.
        use_ema: prefer EMA weights when the file has them.
        verbose: print the report.

    Returns:
        The :class:`~locvit.weights.LoadReport` of :func:`~locvit.weights.load_converted`: what was taken as it is,
        converted by the filter, newly initialised, rebuilt and dropped (also stored as ``model.load_report``).
    """
    target = model.body if isinstance(model, LocvitFPN) else model
    report = load_converted(target, checkpoint, find_filter_fn(unwrap_model(target)), trust_pickle=trust_pickle,
                            use_ema=use_ema)
    if isinstance(model, LocvitFPN):
        report.adapter_new = model.adapter_modules()
    model.load_report = report
    if verbose:
        print(report, flush=True)
    return report


# --- features and the torchvision backbone ----------------------------------------------------------------------
def create_features(
    model_name: str,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    *,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    pretrained: bool = False,
    recipe: bool = True,
    verbose: bool = True,
    trust_pickle: bool = False,
    **model_kwargs: Any,
) -> nn.Module:
    """``locvit.create_model(model_name, features_only=True, out_indices=...)`` with the family's dense recipe.

    Args:
        model_name: a locvit model name (or official alias).
        out_indices: stages whose maps are returned.
        checkpoint: classification weights to load (see :func:`load_pretrained`).
        pretrained: load the official weights as ``pretrained=True`` does (downloaded and cached on first use;
            ``pretrained_cfg_overlay`` in ``model_kwargs`` overrides the source).
        recipe: apply :func:`dense_recipe`'s model kwargs (explicit ``model_kwargs`` win).
        verbose: print the checkpoint report.
        trust_pickle: for ``checkpoint`` and ``pretrained``: see :func:`locvit.read_checkpoint`.
        **model_kwargs: for the model (``drop_path_rate``, ``window_size``, tiny test configurations...).
    """
    if pretrained and checkpoint is not None:
        raise ValueError("pass pretrained=True (the published weights) or checkpoint=FILE, not both")
    kwargs = {**(dict(dense_recipe(model_name).model_kwargs) if recipe else {}), **model_kwargs}
    model = create_model(model_name, pretrained=pretrained, features_only=True, out_indices=tuple(out_indices),
                         trust_pickle=trust_pickle, **kwargs)
    if pretrained and verbose:
        print(model.load_report, flush=True)
    reductions = model.feature_info.reduction()
    if len(set(reductions)) < len(reductions):
        raise ValueError(f"{model_name} is not a feature pyramid (strides {reductions} at out_indices "
                         f"{tuple(out_indices)}); FPN-style necks need one map per stride. Use a pyramid model "
                         "(RegionViT, Focal, VVT, PVT / LocalViT-PVT, LocalViT-Swin).")
    if checkpoint is not None:
        load_pretrained(model, checkpoint, trust_pickle=trust_pickle, verbose=verbose)
    return model


class LocvitFPN(nn.Module):
    """A locvit feature pyramid + torchvision's FPN, in the shape torchvision's detectors expect.

    Like ``torchvision.models.detection.backbone_utils.BackboneWithFPN``: ``forward`` returns an ``OrderedDict``
    of ``out_channels``-wide maps named ``'0'..'n-1'`` (one per backbone level) plus the extra block's
    (``'pool'`` for Mask/Faster R-CNN, ``'p6', 'p7'`` for RetinaNet).

    Args:
        body: a ``features_only`` locvit model (see :func:`create_features`).
        out_channels: FPN width.
        extra_blocks: ``'pool'`` (max-pooled P6, Mask/Faster R-CNN), ``'p6p7'`` (P6/P7 convs from the last
            backbone map, RetinaNet), ``None``, or a torchvision ``ExtraFPNBlock``.
        out_norm: a new LayerNorm per level between the backbone and the FPN (Swin-style backbones).
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks: str | nn.Module | None = "pool",
                 out_norm: bool = False):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

        channels = list(body.feature_info.channels())
        self.body = body
        self.out_norms = nn.ModuleList([LayerNorm2d(c) for c in channels]) if out_norm else None
        strides = list(body.feature_info.reduction())
        if extra_blocks == "pool":
            extra, extra_strides = LastLevelMaxPool(), [strides[-1] * 2]
        elif extra_blocks == "p6p7":
            # from the last backbone map (RegionViT's official RetinaNet, mmdet's add_extra_convs='on_input');
            # torchvision switches to P5 when the widths agree
            extra, extra_strides = LastLevelP6P7(channels[-1], out_channels), [strides[-1] * 2, strides[-1] * 4]
        elif extra_blocks is None:
            extra, extra_strides = None, []
        elif isinstance(extra_blocks, nn.Module):
            extra, extra_strides = extra_blocks, []
        else:
            raise ValueError(f"extra_blocks must be 'pool', 'p6p7', None or a module, got {extra_blocks!r}")
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.level_names = [str(i) for i in range(len(channels))]
        #: stride of every output map, in order (the extra block's included when known)
        self.strides = strides + extra_strides
        self.pretrained_cfg = getattr(body, "pretrained_cfg", {})
        self.load_report: LoadReport | None = getattr(body, "load_report", None)

    def adapter_modules(self) -> list[str]:
        """Names of the modules the adapter adds on top of the backbone (never in a classification checkpoint)."""
        return ["fpn"] + (["out_norms"] if self.out_norms is not None else [])

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        if self.out_norms is not None:
            feats = [norm(f) for norm, f in zip(self.out_norms, feats)]
        return self.fpn(OrderedDict(zip(self.level_names, feats)))


def create_backbone(
    model_name: str,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    *,
    out_channels: int = 256,
    extra_blocks: str | nn.Module | None = "pool",
    out_norm: bool | None = None,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    pretrained: bool = False,
    recipe: bool = True,
    verbose: bool = True,
    trust_pickle: bool = False,
    **model_kwargs: Any,
) -> LocvitFPN:
    """A torchvision-ready backbone: the model's feature pyramid + FPN (+ the family's recipe).

    Args:
        model_name: a locvit pyramid model.
        out_indices: backbone stages fed to the FPN (``(0, 1, 2, 3)``: strides 4-32).
        out_channels: FPN width (256 in every paper).
        extra_blocks: see :class:`LocvitFPN`.
        out_norm: extra per-level LayerNorms; ``None``: as the family's recipe says.
        checkpoint: classification weights (report printed unless ``verbose=False``, kept as ``.load_report``).
        pretrained: the official weights, as ``pretrained=True`` loads them (see :func:`create_features`).
        recipe: apply :func:`dense_recipe` (model kwargs and ``out_norm``).
        verbose: print the checkpoint report.
        trust_pickle: for ``checkpoint`` and ``pretrained``: see :func:`locvit.read_checkpoint`.
        **model_kwargs: for the model.

    Example:
        >>> backbone = create_backbone("regionvit_small", checkpoint="RegionViT-S.pth")  # doctest: +SKIP
        >>> model = torchvision.models.detection.MaskRCNN(backbone, num_classes=91)  # doctest: +SKIP
    """
    rec = dense_recipe(model_name) if recipe else DenseRecipe()
    if pretrained and checkpoint is not None:
        raise ValueError("pass pretrained=True (the published weights) or checkpoint=FILE, not both")
    body = create_features(model_name, out_indices, pretrained=pretrained, recipe=recipe, verbose=verbose,
                           trust_pickle=trust_pickle, **model_kwargs)
    backbone = LocvitFPN(body, out_channels, extra_blocks, rec.out_norm if out_norm is None else out_norm)
    if checkpoint is not None:
        load_pretrained(backbone, checkpoint, trust_pickle=trust_pickle, verbose=verbose)
    return backbone


def backbone_kwargs(cfg: DenseConfig) -> dict[str, Any]:
    """``checkpoint`` / ``pretrained`` / ``trust_pickle`` / ``model_kwargs`` (with the recipe's drop path) of a dense
    task's configuration, for the builders of :mod:`locvit.dense`."""
    out: dict[str, Any] = dict(model_kwargs=dict(dict(drop_path_rate=cfg.drop_path), **cfg.model_kwargs),
                               trust_pickle=cfg.trust_checkpoint)
    if cfg.checkpoint:
        out["checkpoint"] = cfg.checkpoint
    if cfg.pretrained:
        out["pretrained"] = True
    return out
