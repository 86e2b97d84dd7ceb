"""``locvit detect train|eval``: torchvision's Mask R-CNN, Faster R-CNN, RetinaNet and Keypoint R-CNN on a locvit
pyramid backbone (:mod:`locvit.dense`), trained on COCO-format data and scored with pycocotools' ``COCOeval``.

Labels are the categories in id order, 1..K (0 is the background); predictions are mapped back to the file's
category ids for ``COCOeval``. Mask R-CNN is scored on boxes and masks (``bbox`` and ``segm``), Keypoint R-CNN on
boxes and keypoints (OKS), the others on boxes.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from locvit.data.datasets import check_readable
from locvit.data.loader import DataError
from locvit.dense.coco import CocoDetection, collate_detection, find_coco_split
from locvit.dense.common import (
    eval_loader,
    no_weight_decay,
    report_size,
    session,
    train_loader,
)
from locvit.dense.config import DetectConfig
from locvit.dense.detectors import IOU_TYPES, build_detector
from locvit.dense.metrics import coco_evaluate
from locvit.engine.distributed import DistInfo, all_gather_objects
from locvit.engine.loop import fit
from locvit.engine.run import start_run
from locvit.engine.step import mixed_precision
from locvit.files import atomic_write_text
from locvit.weights import load_weights

__all__ = ["DetectionTask", "detect_dataset", "evaluate_detector", "evaluate_run", "load_split",
           "score_detections", "test_size", "to_coco_results", "train_run"]

def load_split(cfg: DetectConfig, split: str, categories: list[int] | None = None) -> CocoDetection:
    """The validated ``split`` of ``cfg``'s data (explicit ``{split}_ann`` / ``{split}_images`` win)."""
    ann, images = getattr(cfg, f"{split}_ann"), getattr(cfg, f"{split}_images")
    if not (ann and images):
        if not cfg.data:
            raise ValueError(f"no data: pass --data DIR (COCO layout) or --{split}-ann FILE --{split}-images DIR")
        found = find_coco_split(cfg.data, split, "person_keypoints" if cfg.detector == "keypoint_rcnn"
                                else "instances")
        ann, images = ann or found.ann, images or found.images
    train = split == "train"
    return CocoDetection(ann, images, train=train, masks=cfg.detector == "mask_rcnn",
                         keypoints=cfg.detector == "keypoint_rcnn", hflip=cfg.hflip if train else 0.0,
                         detr_crop=cfg.detr_crop and train,
                         seed=cfg.seed, categories=categories)


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, label_to_cat: dict[int, int],
                    iou_types: tuple[str, ...]) -> list[dict[str, Any]]:
    """One image's torchvision detections as COCO result dicts (boxes xywh, RLE masks, keypoints)."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].float().cpu()
    if not len(boxes):
        return []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    scores, labels = output["scores"].float().cpu().tolist(), output["labels"].cpu().tolist()
    res = [dict(image_id=image_id, category_id=label_to_cat[lab], bbox=[round(v, 2) for v in b], score=s)
           for b, s, lab in zip(xywh, scores, labels)]
    if "segm" in iou_types:
        masks = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for r, rle in zip(res, rles):
            r["segmentation"] = dict(size=rle["size"], counts=rle["counts"].decode("ascii"))
    if "keypoints" in iou_types:
        for r, k in zip(res, output["keypoints"].float().cpu()):
            r["keypoints"] = [round(v, 2) for v in k.flatten().tolist()]
    return res


@contextlib.contextmanager
def test_size(model: nn.Module, cfg: DetectConfig) -> Iterator[None]:
    """The detector's resize set to the recipe's test scale (``test_size``, else the largest training scale) while
    the block runs; the training scales are restored after."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    saved = inner.transform.min_size, inner.transform.max_size
    short, long = cfg.test_size or (cfg.min_size[-1], cfg.max_size)
    inner.transform.min_size, inner.transform.max_size = (short,), long
    try:
        yield
    finally:
        inner.transform.min_size, inner.transform.max_size = saved


@torch.no_grad()
def detect_dataset(model: nn.Module, dataset: CocoDetection, cfg: DetectConfig, dist: DistInfo,
                   verbose: bool = True) -> tuple[list[dict[str, Any]], int]:
    """``model``'s detections on ``dataset`` as COCO results (the file's own category and image ids; all ranks'
    gathered) and the number of unreadable images skipped."""
    from tqdm import tqdm

    autocast, _ = mixed_precision(cfg.amp, dist.device)
    label_to_cat = {v: k for k, v in dataset.cat_to_label.items()}
    iou_types = IOU_TYPES[cfg.detector]
    results: list[dict[str, Any]] = []
    skipped, first_skipped = 0, None
    model.eval()
    with test_size(model, cfg):
        loader = eval_loader(dataset, cfg.batch_size, cfg.workers, dist, collate_detection)
        for batch in tqdm(loader, desc="eval", leave=False, disable=not (verbose and dist.main), dynamic_ncols=True):
            images, targets = batch
            skipped += batch.skipped
            first_skipped = first_skipped or next((f"{u.path}: {u.reason}" for u in batch.unreadable), None)
            if not images:
                continue
            with autocast():
                outputs = model([im.to(dist.device) for im in images])
            for out, t in zip(outputs, targets):
                results += to_coco_results(out, int(t["image_id"]), label_to_cat, iou_types)
    gathered = all_gather_objects((results, skipped))
    skipped = sum(s for _, s in gathered)
    if skipped == len(dataset):
        raise DataError(f"none of the {len(dataset)} validation images of {dataset.ann_file} could be read (first: "
                        f"{first_skipped}); replace them with readable ones")
    return [r for part, _ in gathered for r in part], skipped


def score_detections(results: list[dict[str, Any]], dataset: CocoDetection, cfg: DetectConfig,
                     verbose: bool = True) -> dict[str, Any]:
    """COCOeval scores of COCO ``results`` on ``dataset``, for each IoU type of the detector."""
    scores: dict[str, Any] = {}
    gt = dataset.coco()
    for iou_type in IOU_TYPES[cfg.detector]:
        scores.update(coco_evaluate(gt, results, iou_type, img_ids=dataset.ids, kpt_oks_sigmas=cfg.kpt_oks_sigmas,
                                    verbose=verbose))
    return scores


def evaluate_detector(model: nn.Module, dataset: CocoDetection, cfg: DetectConfig, dist: DistInfo,
                      verbose: bool = True) -> dict[str, Any]:
    """COCOeval scores of ``model`` on ``dataset`` (all ranks' detections gathered; every rank gets the scores)."""
    results, skipped = detect_dataset(model, dataset, cfg, dist, verbose)
    return dict(score_detections(results, dataset, cfg, verbose=verbose and dist.main), skipped=skipped)


class DetectionTask:
    """The :class:`locvit.engine.loop.Task` of ``locvit detect train``."""

    find_unused_parameters = True  # RegionViT's last regional attention, unused heads of some recipes
    unused_reason = "had no object"  # never: training keeps the images with an annotation only

    def __init__(self, cfg: DetectConfig, model: nn.Module, train_set: CocoDetection, val_set: CocoDetection,
                 dist: DistInfo):
        self.cfg, self.model, self.val_set, self.dist = cfg, model, val_set, dist
        self.train_loader = train_loader(train_set, cfg, dist, collate_detection)
        self.iou_types = IOU_TYPES[cfg.detector]
        self.key_metric = f"{'keypoints' if cfg.detector == 'keypoint_rcnn' else 'bbox'}_AP"
        self.panels = [("loss", "loss", [("train_loss", "train")]),
                       ("COCO AP", "AP", [(f"{t}_{s}", f"{t} {s}") for t in self.iou_types for s in ("AP", "AP50")])]

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        images, targets = batch
        device = self.dist.device
        losses = net([im.to(device, non_blocking=True) for im in images],
                     [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets])
        return sum(losses.values()), losses, len(images)

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        return evaluate_detector(model, self.val_set, self.cfg, self.dist)

    def summary(self, scores: dict[str, Any]) -> str:
        return "  ".join(f"{t} AP {scores[f'{t}_AP']:.3f} AP50 {scores[f'{t}_AP50']:.3f}" for t in self.iou_types)

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self.model)


def _datasets(cfg: DetectConfig, verbose: bool) -> tuple[CocoDetection, CocoDetection]:
    train_set = load_split(cfg, "train")
    check_readable(train_set)  # a split of images none of which decodes trains nothing
    val_set = load_split(cfg, "val", categories=train_set.cat_ids)
    if verbose:
        print(train_set.summary() + "\n" + val_set.summary(), flush=True)
    return train_set, val_set


def train_run(cfg: DetectConfig) -> dict[str, Any]:
    """``locvit detect train``: train as configured (under ``torchrun`` for DDP); returns the last evaluation."""
    with session(cfg) as dist:
        run_start = start_run(cfg, dist.world)  # --output and --resume checked before the data are read
        train_set, val_set = _datasets(cfg, dist.main)  # every data error surfaces here, before the model
        num_classes = cfg.num_classes or len(train_set.cat_ids) + 1
        model = build_detector(cfg, num_classes, len(train_set.keypoint_names) or None, verbose=dist.main)
        report_size(model.to(dist.device), f"{cfg.detector} on {cfg.model}, {num_classes - 1} classes", dist)
        task = DetectionTask(cfg, model, train_set, val_set, dist)
        return fit(cfg, task, dist, run_start)


def evaluate_run(cfg: DetectConfig, weights: str | None, save_results: str | None = None) -> dict[str, Any]:
    """``locvit detect eval``: score trained weights (or, without, the freshly built detector) on the val split.

    The detections are written as a COCO results JSON (xywh boxes, RLE masks, keypoints; the annotation file's
    category and image ids) to ``OUTPUT/results.json`` and, when given, to ``save_results``."""
    with session(cfg) as dist:
        val_set = load_split(cfg, "val")
        if dist.main:
            print(val_set.summary(), flush=True)
        num_classes = cfg.num_classes or len(val_set.cat_ids) + 1
        model = build_detector(cfg, num_classes, len(val_set.keypoint_names) or None, verbose=False)
        if weights:
            load_weights(model, weights, trust_pickle=cfg.trust_checkpoint)
        results, skipped = detect_dataset(model.to(dist.device), val_set, cfg, dist)
        if dist.main:  # the detections as COCO results: pycocotools' loadRes takes the file and re-scores it
            text = json.dumps(results)
            for path in [Path(cfg.output) / "results.json"] + ([Path(save_results)] if save_results else []):
                atomic_write_text(path, text)
                print(f"wrote {len(results)} detections of {len(val_set)} images to {path}", flush=True)
        return dict(score_detections(results, val_set, cfg, verbose=dist.main), skipped=skipped)
