"""Top-1/top-5 accuracy and loss over a loader (all ranks summed)."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from locvit.data.datasets import build_dataset, check_readable
from locvit.data.loader import build_loader, default_workers, eval_transform
from locvit.data.video import build_video_dataset, clip_eval_transform
from locvit.engine.distributed import all_reduce_sum
from locvit.models import create_model


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast: Any = None,
             progress: bool = False, channels_last: bool = False) -> dict[str, float]:
    """Evaluate ``model`` on ``loader``: returns ``top1``, ``top5`` (percent), ``loss``, ``images``, ``skipped``
    (unreadable images), ``unreadable`` (their :class:`~locvit.data.datasets.Unreadable` records on this rank) and
    ``nonfinite`` (images whose logits hold NaN/inf; their loss is left out of ``loss``)."""
    model.eval()
    stats = torch.zeros(6, dtype=torch.float64)  # loss sum, top1, top5, count, skipped, non-finite
    unreadable: list = []
    autocast = autocast or contextlib.nullcontext
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        images, targets = batch
        unreadable += getattr(batch, "unreadable", ())
        stats[4] += getattr(batch, "skipped", 0)
        if images.numel() == 0:
            continue
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(images)
        logits = logits.float()
        finite = torch.isfinite(logits).all(dim=1)
        stats[5] += (~finite).sum().item()
        stats[0] += F.cross_entropy(logits[finite], targets[finite], reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top.eq(targets[:, None])
        stats[1] += hit[:, :1].sum().item()
        stats[2] += hit.sum().item()
        stats[3] += targets.numel()
    stats = all_reduce_sum(stats)
    n = max(stats[3].item(), 1.0)
    return dict(top1=100 * stats[1].item() / n, top5=100 * stats[2].item() / n, loss=stats[0].item() / n,
                images=int(stats[3].item()), skipped=int(stats[4].item()), nonfinite=int(stats[5].item()),
                unreadable=unreadable)


def evaluate_model(model_name: str, data: str, checkpoint: str | None = None, split: str = "val",
                   img_size: int | None = None, batch_size: int = 64, workers: int | None = None,
                   num_classes: int | None = None, device: str | None = None, trust_pickle: bool = False,
                   model_kwargs: dict[str, Any] | None = None, progress: bool = False,
                   video: dict[str, Any] | None = None) -> dict[str, float]:
    """Build ``model_name``, load ``checkpoint`` strictly (official release files included) and evaluate it on
    ``data`` with the model's own preprocessing (input size, crop, interpolation, mean/std of its cfg).

    ``video``: evaluate a clip model on a clip dataset (:mod:`locvit.data.video`) with the sampling arguments
    ``num_frames``, ``sampling``, ``frame_stride``, ``num_clips`` and ``crops`` (views per video = clips x crops;
    scores averaged over them).

    Raises ``ValueError`` when the model's outputs are not finite (NaN weights or an input it cannot take)."""
    from locvit.engine.video import MultiViewModel

    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    video = dict(video) if video is not None else None
    crops = video.pop("crops", 1) if video is not None else 1
    dataset = build_dataset(data, split) if video is None else build_video_dataset(data, split, training=False, **video)
    check_readable(dataset)
    if num_classes is None and checkpoint is None:
        num_classes = len(dataset.classes)
    model_kwargs = dict(model_kwargs or {})
    if video is not None:
        model_kwargs.setdefault("num_frames", video["num_frames"])
    model = create_model(model_name, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size,
                         trust_pickle=trust_pickle, **model_kwargs)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    _, dataset.transform = eval_transform(model, img_size)
    if video is not None:
        dataset.transform = clip_eval_transform(dataset.transform, crops)
        model = MultiViewModel(model, chunk=batch_size)
    loader = build_loader(dataset, batch_size, training=False,
                          workers=default_workers() if workers is None else workers)
    res = evaluate(model, loader, dev, progress=progress)
    if res["nonfinite"]:
        raise ValueError(f"{model_name} gave NaN/inf outputs for {res['nonfinite']} of {res['images']} images"
                         + (f" with {checkpoint}" if checkpoint else "") + ": the weights or the inputs are broken")
    return res


# `locvit eval` flags a recipe or a run's config.yaml provides when they are not given (training's field names)
EVAL_FIELDS = ("model", "data", "img_size", "task", "num_frames", "frame_sampling", "frame_stride", "test_clips",
               "test_crops")


def resolve_eval_args(args: Any, model_kwargs: dict[str, Any] | None = None) -> Any:
    """``locvit eval``'s arguments with what was not given filled in: from ``--config`` (a training recipe), then
    from the run directory ``--checkpoint`` names (:func:`locvit.engine.run.open_run`: its ``config.yaml``, and its
    weights become the checkpoint), then :class:`~locvit.engine.config.TrainConfig`'s defaults. So a
    recipe's test protocol (``test_clips`` x ``test_crops``, the clip sampling) is what eval runs by default.

    Returns a new namespace (``model_kwargs`` a dict: the recipe's or run's, updated by ``model_kwargs``); raises
    ``ValueError`` naming what is still missing."""
    import argparse
    from pathlib import Path

    from locvit.engine.config import TrainConfig, load_yaml, resolve_config_path

    a = argparse.Namespace(**vars(args))
    layers: list[dict[str, Any]] = []
    if getattr(a, "config", None):
        layers.append(load_yaml(resolve_config_path(a.config)))
    if a.checkpoint and Path(a.checkpoint).is_dir():
        from locvit.engine.run import open_run

        saved, weights = open_run(a.checkpoint)
        layers.append(saved)
        a.checkpoint = str(weights)
    defaults = TrainConfig.__dataclass_fields__
    for name in EVAL_FIELDS:
        if getattr(a, name, None) is None:
            given = next((layer[name] for layer in layers if layer.get(name) is not None), None)
            if given is None and name not in ("model", "data", "img_size"):
                given = defaults[name].default
            setattr(a, name, given)
    a.model_kwargs = {**next((dict(layer["model_kwargs"]) for layer in layers if layer.get("model_kwargs")), {}),
                      **(model_kwargs or {})}
    missing = [f"--{n}" for n in ("model", "data") if getattr(a, n) is None]
    if missing:
        raise ValueError(f"pass {' and '.join(missing)} (or --config RECIPE, or a run directory as --checkpoint, "
                         "whose settings are the defaults)")
    return a
