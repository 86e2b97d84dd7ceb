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
from __future__ import annotations

from locvit.runtime import lazy_api

# public name -> the module that defines it, imported on first use (PEP 562): ``locvit.dense.config`` is read by
# the command line's parser without loading the models
_API = {
    **dict.fromkeys(["DenseRecipe", "LocvitFPN", "PretrainedReport", "create_backbone", "create_features",
                     "dense_recipe", "load_pretrained"], "locvit.dense.backbone"),
    **dict.fromkeys(["faster_rcnn", "keypoint_rcnn", "mask_rcnn", "retinanet"], "locvit.dense.detectors"),
    **dict.fromkeys(["PadCrop", "pad_to_multiple", "smp_model"], "locvit.dense.segmenters"),
}
__all__ = sorted(_API)


__getattr__, __dir__ = lazy_api(__name__, _API)
