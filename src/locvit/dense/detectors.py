"""torchvision's four detectors on a locvit backbone + FPN: Mask R-CNN, Faster R-CNN, Keypoint R-CNN, RetinaNet.

The builders (:func:`mask_rcnn`, :func:`faster_rcnn`, :func:`keypoint_rcnn`, :func:`retinanet`) match anchors and
RoI poolers to the backbone's levels and take torchvision's other arguments as they are; :func:`build_detector`
builds the one a ``locvit detect`` configuration names, with the recipe's heads (the two-layer box head, the mask
and keypoint convolution stacks).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from torch import nn

from locvit.dense.backbone import LocvitFPN, backbone_kwargs, create_backbone
from locvit.dense.config import DetectConfig

__all__ = ["DETECTORS", "IOU_TYPES", "build_detector", "faster_rcnn", "keypoint_rcnn", "mask_rcnn", "retinanet"]

#: what COCOeval scores each detector on
IOU_TYPES = {"mask_rcnn": ("bbox", "segm"), "faster_rcnn": ("bbox",), "retinanet": ("bbox",),
             "keypoint_rcnn": ("bbox", "keypoints")}


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


DETECTORS = {"mask_rcnn": mask_rcnn, "faster_rcnn": faster_rcnn, "keypoint_rcnn": keypoint_rcnn,
             "retinanet": retinanet}


def build_detector(cfg: DetectConfig, num_classes: int, num_keypoints: int | None = None,
                   verbose: bool = True) -> nn.Module:
    """The configured torchvision detector (``num_classes`` counts the background) on ``cfg.model``."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    c = cfg.fpn_channels
    kw: dict[str, Any] = dict(min_size=tuple(cfg.min_size), max_size=cfg.max_size, out_channels=c, verbose=verbose)
    if cfg.detector == "retinanet":
        kw.update(detections_per_img=100)
        kw.update(cfg.detector_kwargs)
        return retinanet(cfg.model, num_classes, **backbone_kwargs(cfg), **kw)
    kw.update(box_head=TwoMLPHead(c * 7 * 7, cfg.box_head_dim),
              box_predictor=FastRCNNPredictor(cfg.box_head_dim, num_classes))
    if cfg.detector == "mask_rcnn":
        ch = list(cfg.mask_head_channels)
        kw.update(mask_head=MaskRCNNHeads(c, ch, 1), mask_predictor=MaskRCNNPredictor(ch[-1], ch[-1], num_classes))
    if cfg.detector == "keypoint_rcnn":
        ch = list(cfg.keypoint_head_channels)
        kw.update(keypoint_head=KeypointRCNNHeads(c, ch), keypoint_predictor=KeypointRCNNPredictor(ch[-1],
                                                                                                   num_keypoints))
        kw.update(num_keypoints=None)
    kw.update(cfg.detector_kwargs)
    return DETECTORS[cfg.detector](cfg.model, None, **backbone_kwargs(cfg), **kw)
