"""``locvit segment train|eval``: Semantic FPN or UperNet on a locvit encoder, ADE20K-style data, mIoU/mAcc/aAcc.

The decoders are segmentation_models_pytorch's (``smp.FPN``: the Semantic FPN head of PVT/VVT's ADE20K protocol --
an FPN of 256 channels and a 128-channel segmentation branch, as mmsegmentation's ``FPNHead``; ``smp.UPerNet``:
Swin/Focal's head) on smp's timm-universal encoder ``tu-<model>``. What smp lacks is added here and nothing else:
the FCN auxiliary head UperNet recipes train on the stride-16 map (mmsegmentation's ``FCNHead``: one 3x3 conv,
BN, ReLU, dropout 0.1, 1x1 classifier; loss weight 0.4), and inputs of any size (padded to the decoder's stride 32,
output cropped back).

Inference is mmsegmentation's: the image rescaled into ``test_scale``, run whole or in ``crop_size`` windows every
``slide_stride`` pixels (logits averaged where windows overlap), logits resized bilinearly to the label map's size,
argmax. With several test views (``--aug-test``, ``--test-ratios``, ``--test-flip``: mmsegmentation's ``aug_test``),
each view is the image rescaled into ``test_scale`` x ratio, flipped or not, predicted as above and flipped back;
the views' softmax probabilities are averaged at the label map's size (mmsegmentation's ``inference`` returns
probabilities, and ``aug_test`` averages those), then argmax. Scores: mmsegmentation's ``IoUMetric``
(:func:`locvit.dense.metrics.segmentation_scores`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locvit.data.loader import DataError
from locvit.dense.common import (
    eval_loader,
    no_weight_decay,
    report_size,
    session,
    train_loader,
)
from locvit.dense.config import SegmentConfig
from locvit.dense.metrics import confusion_matrix, segmentation_scores
from locvit.dense.segmentation_data import (
    SegmentationFolder,
    collate_segmentation,
    find_segmentation_split,
    rescale_size,
)
from locvit.dense.segmenters import Segmenter, build_segmenter
from locvit.engine.distributed import DistInfo, all_reduce_sum
from locvit.engine.loop import fit
from locvit.engine.run import start_run
from locvit.engine.step import mixed_precision
from locvit.models import resolve_alias
from locvit.weights import load_weights

__all__ = ["SegmentationTask", "evaluate_run", "evaluate_segmenter", "predict",
           "predict_views", "train_run"]

@torch.no_grad()
def predict(model: nn.Module, x: Tensor, cfg: SegmentConfig, out_size: tuple[int, int]) -> Tensor:
    """Class logits ``1 x C x out_size`` for one normalised image ``1 x 3 x h x w`` (whole image or sliding
    windows, then resized to ``out_size``)."""
    if cfg.inference == "whole":
        logits = model(x)
    else:
        ch, cw = cfg.crop_size
        sh, sw = cfg.slide_stride
        H, W = x.shape[-2:]
        rows = max(H - ch + sh - 1, 0) // sh + 1
        cols = max(W - cw + sw - 1, 0) // sw + 1
        logits, count = None, x.new_zeros(1, 1, H, W)
        for r in range(rows):
            for c in range(cols):
                y1, x1 = max(min(r * sh, H - ch), 0), max(min(c * sw, W - cw), 0)
                y2, x2 = min(y1 + ch, H), min(x1 + cw, W)
                out = model(x[..., y1:y2, x1:x2])
                if logits is None:
                    logits = x.new_zeros(1, out.shape[1], H, W)
                logits[..., y1:y2, x1:x2] += out
                count[..., y1:y2, x1:x2] += 1
        logits = logits / count
    return F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_views(model: nn.Module, x: Tensor, cfg: SegmentConfig, out_size: tuple[int, int]) -> Tensor:
    """Class probabilities ``1 x C x out_size`` averaged over ``cfg.test_views()`` for one normalised image
    ``1 x 3 x h x w`` at its original size: each view rescales it into ``test_scale`` x ratio (bounds rounded down,
    as mmcv's ``Resize`` with ``img_ratios``), flips it or not, runs :func:`predict` and flips the output back."""
    views = cfg.test_views()
    long, short = cfg.test_scale
    probs = None
    for ratio, flip in views:
        size = rescale_size(tuple(x.shape[-2:]), (int(long * ratio), int(short * ratio)))
        xi = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        xi = xi.flip(-1) if flip else xi
        p = predict(model, xi, cfg, out_size).softmax(1)
        p = p.flip(-1) if flip else p
        probs = p if probs is None else probs + p
    return probs / len(views)


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, dataset: SegmentationFolder, cfg: SegmentConfig, dist: DistInfo,
                       num_classes: int, verbose: bool = True) -> dict[str, Any]:
    """mIoU / mAcc / aAcc (percent) and per-class IoU/Acc of ``model`` on ``dataset``, all ranks summed.

    With several test views the dataset must yield the images at their own size (``test_scale=None``, as
    :func:`load_split` builds it then): :func:`predict_views` rescales each view from the original."""
    from tqdm import tqdm

    multi_view = len(cfg.test_views()) > 1
    if multi_view and dataset.test_scale is not None:
        raise ValueError("multi-scale testing rescales the original images: build the dataset with test_scale=None")

    autocast, _ = mixed_precision(cfg.amp, dist.device)
    conf = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    skipped, first_skipped = 0, None
    model.eval()
    loader = eval_loader(dataset, 1, cfg.workers, dist, collate_segmentation)
    for batch in tqdm(loader, desc="eval", leave=False, disable=not (verbose and dist.main), dynamic_ncols=True):
        batch.refuse()  # a label map with values outside the classes stops the evaluation (DataError)
        xs, ys = batch
        skipped += batch.skipped
        first_skipped = first_skipped or next((f"{u.path}: {u.reason}" for u in batch.unreadable), None)
        for x, y in zip(xs, ys):
            with autocast():
                logits = (predict_views if multi_view else predict)(model, x[None].to(dist.device), cfg,
                                                                    tuple(y.shape[-2:]))
            conf += confusion_matrix(logits.argmax(1)[0].cpu(), y, num_classes, cfg.ignore_index).double()
    totals = all_reduce_sum(torch.cat([conf.flatten(), torch.tensor([float(skipped)], dtype=torch.float64)]))
    conf = totals[:-1].view(num_classes, num_classes)
    if not conf.sum():
        n_skipped = int(totals[-1].item())
        raise DataError(f"no pixel of the {len(dataset)} validation images could be scored: "
                        + (f"all {n_skipped} images were unreadable (first: {first_skipped}); replace them with "
                           "readable ones" if n_skipped == len(dataset) else
                           f"every pixel of {'the other ' if n_skipped else ''}{len(dataset) - n_skipped} label "
                           f"maps in {dataset.labels_dir} is ignored: {dataset.ignored_hint()}"))
    scores = segmentation_scores(conf)
    scores["skipped"] = int(totals[-1].item())
    if verbose and dist.main:
        views = cfg.test_views()
        flips = " with flips" if any(f for _, f in views) else ""
        how = f"{cfg.inference} inference" + (f", {len(views)} views: ratios {sorted({r for r, _ in views})}{flips}"
                                               if multi_view else "")
        print(f"mIoU {scores['mIoU']:.2f}  mAcc {scores['mAcc']:.2f}  aAcc {scores['aAcc']:.2f}  "
              f"({how}, {len(dataset)} images)", flush=True)
    return scores


class SegmentationTask:
    """The :class:`locvit.engine.loop.Task` of ``locvit segment train``."""

    key_metric = "mIoU"
    panels = [("loss", "loss", [("train_loss", "train")]),
              ("validation", "%", [("mIoU", "mIoU"), ("mAcc", "mAcc"), ("aAcc", "aAcc")])]

    def __init__(self, cfg: SegmentConfig, model: Segmenter, train_set: SegmentationFolder,
                 val_set: SegmentationFolder, num_classes: int, dist: DistInfo):
        self.cfg, self.model, self.val_set, self.num_classes, self.dist = cfg, model, val_set, num_classes, dist
        self.train_loader = train_loader(train_set, cfg, dist, collate_segmentation)
        self.unused_reason = f"were crops in which every pixel is ignored: {train_set.ignored_hint()}"
        # RegionViT's last stage leaves regional parameters unused; a frozen encoder part would too
        self.find_unused_parameters = bool(getattr(_encoder_body(model), "unused_parameters", ()))

    def loss(self, net: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor], int]:
        """Cross-entropy over the labelled pixels; a batch without any is a loss of 0 (no gradient, where the mean
        would be 0 / 0 = NaN), and the images counted are those with a labelled pixel."""
        x, y = batch
        x, y = x.to(self.dist.device, non_blocking=True), y.to(self.dist.device, non_blocking=True)
        out = net(x)
        ignore = self.cfg.ignore_index
        labelled = y != ignore
        used = int(labelled.flatten(1).any(1).sum())
        pixels = labelled.sum().clamp(min=1)

        def ce(logits: Tensor) -> Tensor:
            return F.cross_entropy(logits.float(), y, ignore_index=ignore, reduction="sum") / pixels

        if isinstance(out, tuple):
            seg, aux = ce(out[0]), self.cfg.aux_weight * ce(out[1])
            return seg + aux, dict(loss_seg=seg, loss_aux=aux), used
        seg = ce(out)
        return seg, dict(loss_seg=seg), used

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        return evaluate_segmenter(model, self.val_set, self.cfg, self.dist, self.num_classes)

    def summary(self, scores: dict[str, Any]) -> str:
        return f"mIoU {scores['mIoU']:.2f}  mAcc {scores['mAcc']:.2f}  aAcc {scores['aAcc']:.2f}"

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay(self.model)


def _encoder_body(model: Segmenter) -> nn.Module:
    enc = model.smp.encoder.model
    return getattr(enc, "model", enc)


def load_split(cfg: SegmentConfig, split: str, num_classes: int, mean: Any, std: Any) -> SegmentationFolder:
    """The validated ``split`` of ``cfg.data`` with the configured pipeline."""
    if not cfg.data:
        raise ValueError("no data: pass --data DIR (ADE20K layout: images/{training,validation}, "
                         "annotations/{training,validation})")
    images, labels = find_segmentation_split(cfg.data, split)
    ds = SegmentationFolder(images, labels, num_classes, train=split == "train", mean=mean, std=std,
                            reduce_zero_label=cfg.reduce_zero_label, ignore_index=cfg.ignore_index,
                            crop_size=tuple(cfg.crop_size), scale=tuple(cfg.scale),
                            ratio_range=tuple(cfg.ratio_range), cat_max_ratio=cfg.cat_max_ratio, hflip=cfg.hflip,
                            photometric=cfg.photometric,
                            test_scale=tuple(cfg.test_scale) if cfg.test_scale and len(cfg.test_views()) == 1
                            else None, seed=cfg.seed)
    ds.check_labels()
    return ds


def image_norm(cfg: SegmentConfig) -> tuple[Any, Any]:
    """The mean and std the backbone's pretrained cfg normalises images with (ImageNet's when it names none)."""
    from timm.models import get_pretrained_cfg

    pc = get_pretrained_cfg(resolve_alias(cfg.model))
    pc = pc.to_dict() if pc is not None else {}
    return pc.get("mean", (0.485, 0.456, 0.406)), pc.get("std", (0.229, 0.224, 0.225))


def train_run(cfg: SegmentConfig) -> dict[str, Any]:
    """``locvit segment train``: train as configured (under ``torchrun`` for DDP); returns the last evaluation."""
    with session(cfg) as dist:
        run_start = start_run(cfg, dist.world)  # --output and --resume checked before the data are read
        num_classes = cfg.num_classes or 150
        mean, std = image_norm(cfg)
        train_set = load_split(cfg, "train", num_classes, mean, std)  # data errors surface before the model
        val_set = load_split(cfg, "val", num_classes, mean, std)
        if dist.main:
            print(f"{len(train_set)} training / {len(val_set)} validation images, {num_classes} classes", flush=True)
        model = build_segmenter(cfg, num_classes, verbose=dist.main)
        report_size(model.to(dist.device), f"{cfg.head} on {cfg.model}", dist)
        task = SegmentationTask(cfg, model, train_set, val_set, num_classes, dist)
        return fit(cfg, task, dist, run_start)


def evaluate_run(cfg: SegmentConfig, weights: str | None) -> dict[str, Any]:
    """``locvit segment eval``: score trained weights on the validation split."""
    with session(cfg) as dist:
        num_classes = cfg.num_classes or 150
        val_set = load_split(cfg, "val", num_classes, *image_norm(cfg))
        model = build_segmenter(cfg, num_classes, verbose=False)
        if weights:
            load_weights(model, weights, trust_pickle=cfg.trust_checkpoint)
        return evaluate_segmenter(model.to(dist.device), val_set, cfg, dist, num_classes)
