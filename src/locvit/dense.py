"""locvit models as backbones for detection and segmentation frameworks (thin adapters).

Every pyramid model (RegionViT, Focal v1/v2, VVT, PVT / LocalViT-PVT, LocalViT-Swin) returns four NCHW maps of
strides 4/8/16/32 through timm's ``features_only=True, out_indices=...`` at any input size, so most frameworks need
no code from here (smp ``tu-<name>``, mmpretrain's ``TIMMBackbone``, a detectron2 wrapper: see ``docs/dense.md``).
This module adds what torchvision's detectors and a fair comparison with the papers need:

* :func:`dense_recipe` -- the architecture settings each family's dense-task results were obtained with
  (RegionViT's ``det_norm``; the Swin-style extra output norms of Focal and LocalViT-Swin, ...);
* :class:`LocvitFPN` / :func:`create_backbone` -- a ``BackboneWithFPN``-style module (``out_channels``, an
  ``OrderedDict`` of FPN maps) usable in ``torchvision.models.detection`` Mask R-CNN / Faster R-CNN / RetinaNet /
  Keypoint R-CNN, and :func:`mask_rcnn`, :func:`faster_rcnn`, :func:`retinanet`, :func:`keypoint_rcnn`, which build
  those detectors with anchors and RoI poolers matched to the backbone's levels;
* :func:`load_pretrained` -- a classification checkpoint (the authors' file or ours) into a backbone, through the
  family's ``checkpoint_filter_fn`` (tables resized for the new window / size), non-strictly, with a
  :class:`PretrainedReport` of what was loaded, converted, newly initialised and dropped;
* :class:`PadCrop` and :func:`smp_model` -- segmentation_models_pytorch models with a locvit encoder that accept
  any input size (padded to the decoder's stride, output cropped back).

Nothing here depends on a framework being installed except the function that builds for it.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from locvit.checkpoint import LoadReport, find_filter_fn, load_checkpoint, read_checkpoint, unwrap_state_dict
from locvit.models import DenseRecipe, spec_of

__all__ = [
    "DenseRecipe",
    "LocvitFPN",
    "PadCrop",
    "PretrainedReport",
    "create_backbone",
    "create_features",
    "dense_recipe",
    "faster_rcnn",
    "keypoint_rcnn",
    "load_pretrained",
    "mask_rcnn",
    "retinanet",
    "smp_model",
]


# --- per-family dense settings ----------------------------------------------------------------------------------
def dense_recipe(model_name: str) -> DenseRecipe:
    """The dense-task settings of ``model_name``'s family, as its model file declares them next to its feature
    config (an empty recipe for models without one)."""
    spec = spec_of(model_name)
    return spec.dense if spec is not None else DenseRecipe()


# --- checkpoints ------------------------------------------------------------------------------------------------
def _storage(t: Tensor) -> int:
    return t.untyped_storage().data_ptr() if t.numel() else 0


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did, key by key (keys are the backbone model's state-dict names).

    Attributes:
        model: the model name.
        source: the checkpoint.
        loaded: tensors taken from the checkpoint as they are (possibly renamed or reshaped).
        converted: tensors the family's ``checkpoint_filter_fn`` computed from the checkpoint for this model
            (tables / kernels / embeddings resized for another window or input size, merged projections).
        new: parameters left as initialised: not in the checkpoint (e.g. RegionViT's detection norms),
            zero-filled by the filter (e.g. a Focal ring table the checkpoint's geometry lacks) or skipped for a
            shape mismatch.
        rebuilt: buffers (index tables) the model computes for its own geometry instead of taking the checkpoint's.
        dropped: checkpoint tensors the backbone has no use for (classifier, final norm, pruned stages).
        adapter_new: the adapter's own new modules (FPN, extra output norms), always newly initialised.
    """

    model: str
    source: str
    loaded: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    adapter_new: list[str] = field(default_factory=list)
    raw: LoadReport | None = None

    def __str__(self) -> str:
        def fmt(keys: Sequence[str], limit: int = 8) -> str:
            shown = ", ".join(keys[:limit])
            return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")

        lines = [f"{self.model}: {len(self.loaded) + len(self.converted)} tensors from {self.source}"]
        lines.append(f"  loaded as is ({len(self.loaded)})")
        if self.converted:
            lines.append(f"  resized/converted by the family's checkpoint filter ({len(self.converted)}): "
                         + fmt(self.converted))
        if self.new:
            lines.append(f"  newly initialised ({len(self.new)}): " + fmt(self.new))
        if self.rebuilt:
            lines.append(f"  buffers rebuilt for this model ({len(self.rebuilt)}): " + fmt(self.rebuilt))
        if self.mismatched:
            lines.append(f"  skipped, other shape ({len(self.mismatched)}): "
                         + fmt([f"{k} {tuple(a)}->{tuple(b)}" for k, a, b in self.mismatched]))
        if self.dropped:
            lines.append(f"  dropped from the checkpoint ({len(self.dropped)}): " + fmt(self.dropped))
        if self.adapter_new:
            lines.append(f"  adapter modules, newly initialised: {', '.join(self.adapter_new)}")
        return "\n".join(lines)


def _inner_model(model: nn.Module) -> nn.Module:
    if isinstance(model, LocvitFPN):
        model = model.body
    inner = getattr(model, "model", None)  # timm's features_only wrappers
    return inner if isinstance(inner, nn.Module) and hasattr(model, "feature_info") else model


def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    trust_pickle: bool = False,
    use_ema: bool = False,
    verbose: bool = True,
) -> PretrainedReport:
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
        A :class:`PretrainedReport` (also stored as ``model.load_report``).
    """
    target = _inner_model(model)
    if isinstance(checkpoint, (str, os.PathLike)):
        source, raw = str(checkpoint), read_checkpoint(checkpoint, trust_pickle=trust_pickle, use_ema=use_ema)
    else:
        source, raw = "<state dict>", unwrap_state_dict(checkpoint, use_ema=use_ema)
    own_storage = {k: _storage(v) for k, v in target.state_dict().items()}
    filter_fn = find_filter_fn(target)
    sd = filter_fn(dict(raw), target) if filter_fn is not None else dict(raw)
    raw_storage = {_storage(v) for v in raw.values()} - {0}
    base = load_checkpoint(target, sd, strict=False, filter_fn=None)

    name = (getattr(target, "pretrained_cfg", None) or {}).get("architecture") or type(target).__name__
    report = PretrainedReport(model=name, source=source, dropped=list(base.unexpected),
                              mismatched=list(base.mismatched), raw=base)
    new = list(base.missing) + [k for k, _, _ in base.mismatched]
    for k in base.loaded:
        t, ptr = sd[k], _storage(sd[k])
        if ptr and ptr == own_storage.get(k):  # the filter handed back the model's own tensor
            new.append(k)
        elif ptr in raw_storage:
            report.loaded.append(k)
        elif t.is_floating_point() and t.numel() and not bool(t.any()):
            new.append(k)  # zero-filled for a part the checkpoint's geometry lacks
        else:
            report.converted.append(k)
    params = {n for n, _ in target.named_parameters()}
    report.new = [k for k in new if k in params]
    report.rebuilt = [k for k in new if k not in params]
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
    from locvit._registry import create_model

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
        self.load_report: PretrainedReport | LoadReport | None = getattr(body, "load_report", None)

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


# --- torchvision detectors ----------------------------------------------------------------------------------------
def _anchors(strides: Sequence[int], base: int, num_scales: int = 1) -> Any:
    """``base x stride`` anchors per level, at ``num_scales`` octave steps (2^(i/3)), ratios 0.5 / 1 / 2."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(tuple(int(base * s * 2 ** (i / 3)) for i in range(num_scales)) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


def _detector_defaults(backbone: LocvitFPN, kwargs: dict[str, Any]) -> dict[str, Any]:
    cfg = backbone.pretrained_cfg or {}
    kwargs.setdefault("image_mean", list(cfg.get("mean", (0.485, 0.456, 0.406))))
    kwargs.setdefault("image_std", list(cfg.get("std", (0.229, 0.224, 0.225))))
    return kwargs


def _two_stage(cls_name: str, model_name: str, num_classes: int | None, backbone_kwargs: dict[str, Any],
               detector_kwargs: dict[str, Any], mask: bool, keypoint: bool = False) -> nn.Module:
    import torchvision.models.detection as tvd
    from torchvision.ops import MultiScaleRoIAlign

    backbone = create_backbone(model_name, extra_blocks="pool", **backbone_kwargs)
    kw = _detector_defaults(backbone, dict(detector_kwargs))
    # proposals kept per image after the RPN's NMS in training: Detectron2's POST_NMS_TOPK_TRAIN and mmdetection's
    # rpn_proposal.max_per_img (torchvision's default is 2000); at test both keep 1000, as torchvision does
    kw.setdefault("rpn_post_nms_top_n_train", 1000)
    # Mask R-CNN's 32..512 anchors for strides 4..64, one size per level
    kw.setdefault("rpn_anchor_generator", _anchors(backbone.strides, 8))
    kw.setdefault("box_roi_pool", MultiScaleRoIAlign(backbone.level_names, 7, 2))
    if mask:
        kw.setdefault("mask_roi_pool", MultiScaleRoIAlign(backbone.level_names, 14, 2))
    if keypoint:
        kw.setdefault("keypoint_roi_pool", MultiScaleRoIAlign(backbone.level_names, 14, 2))
    if "box_predictor" in kw or "mask_predictor" in kw:
        num_classes = None  # torchvision takes the class count from the predictors then
    return getattr(tvd, cls_name)(backbone, num_classes=num_classes, **kw)


def mask_rcnn(model_name: str, num_classes: int | None, *, out_indices: Sequence[int] = (0, 1, 2, 3),
              out_channels: int = 256, checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
              pretrained: bool = False, recipe: bool = True, verbose: bool = True, trust_pickle: bool = False,
              model_kwargs: Mapping[str, Any] | None = None, **detector_kwargs: Any) -> nn.Module:
    """``torchvision.models.detection.MaskRCNN`` on a locvit backbone + FPN (+ max-pooled P6).

    Anchors (32-512, three ratios, one size per level) and RoI poolers follow the backbone's levels; the image
    normalisation is the model's pretrained cfg. ``detector_kwargs`` go to ``MaskRCNN`` (``min_size``,
    ``max_size``, ``size_divisible``, heads, sampling sizes, ...; with your own ``box_predictor`` /
    ``mask_predictor`` pass ``num_classes=None``, as torchvision wants); ``model_kwargs`` to the locvit model.
    ``pretrained=True`` starts the backbone from the official ImageNet weights (see :func:`create_features`),
    ``checkpoint=`` from a file.
    """
    backbone_kwargs = dict(out_indices=out_indices, out_channels=out_channels, checkpoint=checkpoint,
                           pretrained=pretrained, recipe=recipe, verbose=verbose, trust_pickle=trust_pickle,
                           **(model_kwargs or {}))
    return _two_stage("MaskRCNN", model_name, num_classes, backbone_kwargs, detector_kwargs, mask=True)


def faster_rcnn(model_name: str, num_classes: int | None, *, out_indices: Sequence[int] = (0, 1, 2, 3),
                out_channels: int = 256, checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
                pretrained: bool = False, recipe: bool = True, verbose: bool = True, trust_pickle: bool = False,
                model_kwargs: Mapping[str, Any] | None = None, **detector_kwargs: Any) -> nn.Module:
    """``torchvision.models.detection.FasterRCNN`` on a locvit backbone + FPN (see :func:`mask_rcnn`)."""
    backbone_kwargs = dict(out_indices=out_indices, out_channels=out_channels, checkpoint=checkpoint,
                           pretrained=pretrained, recipe=recipe, verbose=verbose, trust_pickle=trust_pickle,
                           **(model_kwargs or {}))
    return _two_stage("FasterRCNN", model_name, num_classes, backbone_kwargs, detector_kwargs, mask=False)


def keypoint_rcnn(model_name: str, num_classes: int | None = 2, *, num_keypoints: int | None = 17,
                  out_indices: Sequence[int] = (0, 1, 2, 3), out_channels: int = 256,
                  checkpoint: str | os.PathLike | Mapping[str, Any] | None = None, pretrained: bool = False,
                  recipe: bool = True, verbose: bool = True, trust_pickle: bool = False,
                  model_kwargs: Mapping[str, Any] | None = None, **detector_kwargs: Any) -> nn.Module:
    """``torchvision.models.detection.KeypointRCNN`` on a locvit backbone + FPN (RegionViT's keypoint detection):
    anchors, RoI poolers and weights (``pretrained`` / ``checkpoint``) as :func:`mask_rcnn`, COCO's 17 person
    keypoints by default (``num_classes=2``: background and person). With your own ``keypoint_predictor`` pass
    ``num_keypoints=None``."""
    backbone_kwargs = dict(out_indices=out_indices, out_channels=out_channels, checkpoint=checkpoint,
                           pretrained=pretrained, recipe=recipe, verbose=verbose, trust_pickle=trust_pickle,
                           **(model_kwargs or {}))
    if num_keypoints is not None and "keypoint_predictor" not in detector_kwargs:
        detector_kwargs["num_keypoints"] = num_keypoints
    return _two_stage("KeypointRCNN", model_name, num_classes, backbone_kwargs, detector_kwargs, mask=False,
                      keypoint=True)


def retinanet(model_name: str, num_classes: int, *, out_indices: Sequence[int] = (1, 2, 3),
              out_channels: int = 256, checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
              pretrained: bool = False, recipe: bool = True, verbose: bool = True, trust_pickle: bool = False,
              model_kwargs: Mapping[str, Any] | None = None, **detector_kwargs: Any) -> nn.Module:
    """``torchvision.models.detection.RetinaNet`` on a locvit backbone: FPN on strides 8-32 plus P6/P7 convs
    from the last map (RegionViT's official RetinaNet; mmdet's ``add_extra_convs='on_input'``), anchors
    4 x stride at three scales and three ratios per level."""
    from torchvision.models.detection import RetinaNet

    backbone = create_backbone(model_name, out_indices, out_channels=out_channels, extra_blocks="p6p7",
                               checkpoint=checkpoint, pretrained=pretrained, recipe=recipe, verbose=verbose,
                               trust_pickle=trust_pickle, **(model_kwargs or {}))
    kw = _detector_defaults(backbone, dict(detector_kwargs))
    kw.setdefault("anchor_generator", _anchors(backbone.strides, 4, num_scales=3))
    return RetinaNet(backbone, num_classes=num_classes, **kw)


# --- segmentation -----------------------------------------------------------------------------------------------
class PadCrop(nn.Module):
    """Run ``model`` on the input zero-padded (bottom/right) to a multiple of ``multiple`` and crop its output
    back to the input size: decoders that add upsampled maps (smp's FPN, U-Net...) need sizes divisible by their
    output stride, detection-style images rarely are. Pad after normalisation, so zero is the mean colour."""

    def __init__(self, model: nn.Module, multiple: int = 32):
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, x: Tensor) -> Any:
        H, W = x.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (m - H % m) % m, (m - W % m) % m
        out = self.model(F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x)
        if isinstance(out, (tuple, list)):  # smp: (masks, labels) with an aux classification head
            return type(out)([out[0][..., :H, :W], *out[1:]])
        return out[..., :H, :W]


def smp_model(
    arch: str,
    model_name: str,
    classes: int,
    *,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    pretrained: bool = False,
    recipe: bool = True,
    pad_to: int | None = 32,
    verbose: bool = True,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A segmentation_models_pytorch model (``'FPN'``, ``'Unet'``, ``'UPerNet'``...) with encoder
    ``tu-<model_name>``.

    Args:
        arch: smp architecture name (``smp.create_model``'s ``arch``).
        model_name: a locvit pyramid model.
        classes: output channels.
        checkpoint: classification weights for the encoder (see :func:`load_pretrained`).
        pretrained: the official weights for the encoder: smp's ``encoder_weights``, which for a ``tu-`` encoder is
            timm's ``pretrained=True`` (``pretrained_cfg_overlay`` in ``kwargs`` overrides the source).
        recipe: pass :func:`dense_recipe`'s model kwargs to the encoder.
        pad_to: wrap in :class:`PadCrop` (inputs of any size); ``None`` returns the bare smp model.
        verbose: print the checkpoint report.
        trust_pickle: for ``checkpoint`` and ``pretrained``: see :func:`locvit.read_checkpoint`.
        **kwargs: for ``smp.create_model`` (decoder settings) and the encoder (model kwargs), as smp splits them;
            a model ``depth`` (which smp reserves for itself) included.
    """
    import locvit  # noqa: F401  (registers the names with timm before smp looks them up)

    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        raise ImportError("smp_model needs segmentation_models_pytorch: pip install 'locvit[tools]' "
                          "(or pip install segmentation-models-pytorch)") from e
    if recipe:
        kwargs = {**dense_recipe(model_name).model_kwargs, **kwargs}
    if pretrained and checkpoint is not None:
        raise ValueError("pass pretrained=True (the published weights) or checkpoint=FILE, not both")
    # smp hands the encoder its own `depth` (how many stages to return), so a model's `depth` (RegionViT's blocks
    # per stage) cannot travel with the other encoder keywords: the encoder is rebuilt with it below
    model_depth = kwargs.pop("depth", None)
    if pretrained and trust_pickle:
        kwargs["trust_pickle"] = True  # reaches the locvit entrypoint with smp's other encoder keywords
    # smp hands encoder_weights to timm as pretrained=True for tu- encoders
    model = smp.create_model(arch, encoder_name=f"tu-{model_name}", encoder_weights=True if pretrained else None,
                             classes=classes, **kwargs)
    if model_depth is not None:
        import inspect

        from locvit._registry import create_model

        smp_args = set(inspect.signature(type(model).__init__).parameters)
        encoder_kwargs = {k: v for k, v in kwargs.items() if k not in smp_args}
        built = model.encoder.model
        model.encoder.model = create_model(model_name, features_only=True, in_chans=kwargs.get("in_channels", 3),
                                           out_indices=tuple(built.feature_info.out_indices), depth=model_depth,
                                           pretrained=pretrained, **encoder_kwargs)
        if model.encoder.model.feature_info.channels() != built.feature_info.channels():
            raise ValueError(f"{model_name} with depth={model_depth} changes its channels; smp's decoder was built "
                             "for the others")
    if pretrained:
        model.load_report = model.encoder.model.load_report
        if verbose:
            print(model.load_report, flush=True)
    if checkpoint is not None:
        model.load_report = load_pretrained(model.encoder.model, checkpoint, trust_pickle=trust_pickle,
                                            verbose=verbose)
    return PadCrop(model, pad_to) if pad_to else model
