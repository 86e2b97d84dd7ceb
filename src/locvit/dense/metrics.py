"""The dense tasks' standard scores: pycocotools' COCOeval tables and mmsegmentation's mIoU / mAcc / aAcc."""
from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["COCO_STATS", "KEYPOINT_STATS", "coco_evaluate", "confusion_matrix", "segmentation_scores"]

# the names of COCOeval.stats, in order (summarize(): 12 numbers for bbox/segm, 10 for keypoints)
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def coco_evaluate(gt: Any, results: Sequence[dict[str, Any]], iou_type: str, *,
                  img_ids: Sequence[int] | None = None, kpt_oks_sigmas: Sequence[float] | None = None,
                  verbose: bool = True) -> dict[str, float]:
    """Score detections with ``pycocotools.cocoeval.COCOeval`` and return its summary as named numbers.

    Args:
        gt: ground truth (a ``pycocotools.coco.COCO``).
        results: COCO result dicts (``image_id``, ``category_id``, ``score`` and ``bbox`` [x, y, w, h] /
            ``segmentation`` (RLE) / ``keypoints`` [x, y, v] * K).
        iou_type: ``'bbox'``, ``'segm'`` or ``'keypoints'``.
        img_ids: images to score (default: all of ``gt``'s).
        kpt_oks_sigmas: per-keypoint OKS sigmas (default: COCO's 17 person sigmas when there are 17 keypoints,
            else 0.05 each).
        verbose: print pycocotools' table.

    Returns:
        ``{'{iou_type}_AP': ..., '{iou_type}_AP50': ...}``: the 12 numbers of the bbox/segm table (10 for
        keypoints), as fractions; a category without ground truth does not count, no detection at all gives 0.
    """
    from pycocotools.cocoeval import COCOeval

    names = KEYPOINT_STATS if iou_type == "keypoints" else COCO_STATS
    if not results:
        if verbose:
            print(f"{iou_type}: no detections, every AP and AR is 0")
        return {f"{iou_type}_{n}": 0.0 for n in names}
    if iou_type == "segm":
        # without 'bbox', loadRes takes each detection's area from its mask: COCOeval's small/medium/large buckets
        # (APs/APm/APl) are then mask areas, as for the ground truth, not box areas (detectron2 and mmdet drop it too)
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        dt = gt.loadRes(list(results))
        ev = COCOeval(gt, dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        if iou_type == "keypoints":
            n_kpt = len(results[0]["keypoints"]) // 3
            if kpt_oks_sigmas is not None:
                ev.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
            elif n_kpt != 17:
                ev.params.kpt_oks_sigmas = np.full(n_kpt, 0.05)
            if len(ev.params.kpt_oks_sigmas) != n_kpt:
                raise ValueError(f"{len(ev.params.kpt_oks_sigmas)} OKS sigmas for {n_kpt} keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        table = [line for line in out.getvalue().splitlines() if line.lstrip().startswith("Average")]
        print(f"COCOeval {iou_type}:\n" + "\n".join(table), flush=True)
    # -1 marks "no ground truth in this area range": report it as such rather than as a score
    return {f"{iou_type}_{n}": float(v) for n, v in zip(names, ev.stats)}


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """``num_classes x num_classes`` counts (rows: ground truth, columns: prediction), ``ignore_index`` skipped."""
    keep = label != ignore_index
    idx = label[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes)


def segmentation_scores(conf: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """mmsegmentation's ``IoUMetric`` from a confusion matrix, in percent.

    ``aAcc`` = correct / labelled pixels; per class ``IoU`` = intersection / union and ``Acc`` = intersection /
    labelled pixels of the class; ``mIoU`` and ``mAcc`` average the classes where they are defined (a class never
    labelled nor predicted has no IoU; one never labelled has no Acc), as mmsegmentation's ``nanmean``.
    """
    conf = conf.double()
    inter = conf.diag()
    label_area, pred_area = conf.sum(1), conf.sum(0)
    union = label_area + pred_area - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.nan)
    acc = torch.where(label_area > 0, inter / label_area.clamp(min=1), torch.nan)
    names = list(class_names) if class_names else [str(i) for i in range(conf.shape[0])]

    def nanmean(t: torch.Tensor) -> float:
        v = t[~t.isnan()]
        return 100 * float(v.mean()) if v.numel() else float("nan")

    return dict(aAcc=100 * float(inter.sum() / label_area.sum().clamp(min=1)), mIoU=nanmean(iou), mAcc=nanmean(acc),
                IoU={n: 100 * float(v) for n, v in zip(names, iou)},
                Acc={n: 100 * float(v) for n, v in zip(names, acc)})
