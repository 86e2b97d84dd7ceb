"""Detection and segmentation on locvit backbones: one package, read top-down like torchvision's detection package.

Models (importable from here, no training machinery loaded):

* :mod:`.backbone` -- the feature pyramid, the FPN adapter, the family's dense recipe, classification weights
  into a backbone (:func:`load_pretrained`);
* :mod:`.detectors` -- torchvision's Mask R-CNN, Faster R-CNN, Keypoint R-CNN and RetinaNet on it, heads included;
* :mod:`.segmenters` -- segmentation_models_pytorch decoders on it (Semantic FPN, UperNet) for inputs of any size.

Tasks (``locvit detect`` / ``locvit segment``): :mod:`.config` (the configurations and recipes), :mod:`.coco` and
:mod:`.segmentation_data` (datasets and their checks), :mod:`.detect` and :mod:`.segment` (train, evaluate,
predict on the shared loop :func:`locvit.engine.loop.fit`), :mod:`.metrics` (COCOeval, mIoU), :mod:`.common`
(what the two tasks share), :mod:`.demo` (``locvit demo --task detect|segment``).
"""
from locvit.dense.backbone import (
    DenseRecipe,
    LocvitFPN,
    PretrainedReport,
    create_backbone,
    create_features,
    dense_recipe,
    load_pretrained,
)
from locvit.dense.detectors import faster_rcnn, keypoint_rcnn, mask_rcnn, retinanet
from locvit.dense.segmenters import PadCrop, pad_to_multiple, smp_model

__all__ = ["DenseRecipe", "LocvitFPN", "PadCrop", "PretrainedReport", "create_backbone", "create_features",
           "dense_recipe", "faster_rcnn", "keypoint_rcnn", "load_pretrained", "mask_rcnn", "pad_to_multiple",
           "retinanet", "smp_model"]
