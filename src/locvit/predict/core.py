"""The classification predictor: a model, its evaluation preprocessing and its class names, applied to anything that
holds an image.

Preprocessing is :func:`locvit.data.loader.eval_transform` -- the model's pretrained cfg through timm's
``resolve_data_config`` / ``create_transform``, the code ``locvit eval`` runs -- so a file predicted here gives the
logits its evaluation computed. Files are read by :class:`locvit.data.datasets.FileListDataset` (any mode Pillow
opens becomes 8-bit RGB; a file that does not decode is named and skipped) in batches on DataLoader workers.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from locvit.data.datasets import IMAGE_EXTENSIONS, FileListDataset, to_rgb
from locvit.data.loader import build_loader, eval_transform
from locvit.data.video import VIDEO_EXTENSIONS, VideoFileList, clip_eval_transform, is_clip, middle_frame
from locvit.engine.config import TrainConfig
from locvit.engine.run import open_run
from locvit.engine.video import MultiViewModel, check_task, video_data_kwargs
from locvit.labels import check_label_names, class_name, label_names_of, read_label_names
from locvit.models import create_model, load_checkpoint

__all__ = ["Prediction", "Predictor", "expand_inputs"]



@dataclass
class Prediction:
    """The top-k classes of one input.

    Attributes:
        source: the file, or ``'<input N>'`` for an in-memory image.
        labels: class indices, most probable first.
        scores: their softmax probabilities.
        names: their names (``'class N'`` when the model's class names are unknown).
        logits: all of the model's outputs for the input (float32, on the CPU).
    """

    source: str
    labels: list[int]
    scores: list[float]
    names: list[str]
    logits: torch.Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """What ``predictions.jsonl`` holds for the input (the logits left out)."""
        return dict(source=self.source, labels=self.labels, names=self.names,
                    scores=[round(s, 6) for s in self.scores])


def expand_inputs(inputs: Iterable[str | os.PathLike], video: bool = False) -> list[Path]:
    """Files to predict from ``inputs``: files as given (an unreadable one is reported when it is read), folders as
    the image files anywhere below them, and glob patterns (``'photos/**/*.jpg'``) as their matches; in order,
    each file once. With ``video``: video files and frame folders (a folder holding frame images is one clip;
    another folder stands for the clips anywhere below it). An empty folder, a pattern without matches or a missing
    path is a ``ValueError`` / ``FileNotFoundError`` naming it."""
    def found_in(folder: Path) -> list[Path]:
        if video:
            if is_clip(folder):
                return [folder]
            found = sorted(f for f in folder.rglob("*") if is_clip(f))
            what = f"clips (video files {', '.join(VIDEO_EXTENSIONS[:5])}, ... or folders of frame images)"
        else:
            found = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            what = f"image files ({', '.join(IMAGE_EXTENSIONS)})"
        if not found:
            raise ValueError(f"{folder} holds no {what}: nothing to predict there; pass "
                             + ("video files or frame folders" if video else
                                "a folder of images, image files or a glob such as 'photos/*.jpg'"))
        return found

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += found_in(p)
        elif p.is_file():
            files.append(p)
        elif glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {str(item)!r}")
            for m in map(Path, matches):
                files += found_in(m) if m.is_dir() else [m]
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    if not files:
        raise ValueError("no input given: pass image files, folders or globs")
    return list(dict.fromkeys(files))


def to_image(x: Any) -> Image.Image:
    """8-bit RGB from a PIL image, an ``H x W [x C]`` numpy array or a ``[C x] H x W`` tensor (uint8, or floats in
    [0, 1]; 1, 3 or 4 channels), or an image file."""
    if isinstance(x, Image.Image):
        return to_rgb(x)
    if isinstance(x, (str, os.PathLike)):
        with Image.open(x) as im:
            return to_rgb(im)
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        x = t.numpy()
    if isinstance(x, np.ndarray):
        arr = x
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"an image array must be H x W or H x W x 1/3/4 (a tensor C x H x W), got shape "
                             f"{tuple(x.shape)}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"an image array must be uint8, or floats in [0, 1]; got {arr.dtype}")
            top = float(np.nanmax(arr)) if arr.size else 0.0
            if top > 1.0 + 1e-6:
                raise ValueError(f"a float image must hold values in [0, 1], this one reaches {top:g}: divide it "
                                 "by 255, or pass it as uint8")
            arr = (np.nan_to_num(arr).clip(0, 1) * 255).round().astype(np.uint8)
        return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))
    raise ValueError(f"cannot predict a {type(x).__name__}: pass a file path, a PIL image, a numpy array or a tensor")


class Predictor:
    """A classifier ready to predict: ``Predictor('focal_tiny', pretrained=True)(['cat.jpg', pil_image, array])``.

    Args:
        model: a model name (locvit's, an official alias, timm's, ``local-dir:DIR``, ``hf-hub:ORG/NAME``) or a built
            ``nn.Module``; ``None`` takes the model of the run directory ``checkpoint`` names.
        checkpoint: weights (the authors' file or ours), or a ``locvit train`` run directory (its ``config.yaml``
            gives the model, its arguments and input size; its ``best.safetensors`` the weights).
        pretrained: load the authors' weights (``pretrained=True`` in timm).
        label_names: one name per class, in index order; by default the names the weights record (a run's
            safetensors metadata, a converted folder's ``config.json``), ImageNet's for the authors' ImageNet heads,
            else ``'class N'``.
        img_size: input size (default: the run's, else the model's pretrained cfg).
        num_classes: head size (default: the checkpoint's head).
        model_kwargs: more arguments for the model (``--model-kwargs``).
        device: default CUDA when available.
        trust_pickle: allow checkpoints that pickle Python objects.
        topk: classes per prediction (default: 5, or all of them when the model has fewer).
        batch_size, workers: of the DataLoader that reads files.
        task: ``'video'`` for a clip model (default: the run's task, else ``'classify'``); its clips are sampled
            as ``locvit eval --task video`` samples them: ``num_frames``, ``frame_sampling``, ``frame_stride``
            (default: the run's, else the training defaults), ``test_clips`` x ``test_crops`` views per video with
            their scores averaged.
    """

    def __init__(self, model: str | nn.Module | None = None, checkpoint: str | os.PathLike | None = None, *,
                 pretrained: bool = False, label_names: Sequence[str] | None = None, img_size: int | None = None,
                 num_classes: int | None = None, model_kwargs: dict[str, Any] | None = None,
                 device: str | torch.device | None = None, trust_pickle: bool = False, topk: int | None = None,
                 batch_size: int = 32, workers: int = 0, task: str | None = None, num_frames: int | None = None,
                 frame_sampling: str | None = None, frame_stride: int | None = None, test_clips: int = 1,
                 test_crops: int = 1):
        if batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
        run: dict[str, Any] = {}
        if checkpoint is not None and Path(checkpoint).is_dir():
            run, checkpoint = open_run(checkpoint)
        elif checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        run_task = run.get("task", "classify")
        if task is not None and run and task != run_task:
            raise ValueError(f"the run was trained with --task {run_task}; predict with --task {run_task}")
        self.video = check_task(task or run_task)
        self.clip: dict[str, Any] = {}
        if self.video:
            self.clip = video_data_kwargs(num_frames or run.get("num_frames") or TrainConfig.num_frames,
                                          frame_sampling or run.get("frame_sampling") or TrainConfig.frame_sampling,
                                          frame_stride or run.get("frame_stride") or TrainConfig.frame_stride,
                                          test_clips)
            model_kwargs = dict(model_kwargs or {}, num_frames=self.clip["num_frames"])
        if isinstance(model, nn.Module):
            self.model = model
            if checkpoint is not None:
                load_checkpoint(model, checkpoint, trust_pickle=trust_pickle)
            self.name = type(model).__name__
        else:
            name = model or run.get("model")
            if not name:
                raise ValueError("no model: pass --model NAME, or a run directory as --checkpoint")
            kwargs = {**(run.get("model_kwargs") or {}), **(model_kwargs or {})}
            img_size = img_size or run.get("img_size")
            self.model = create_model(name, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes,
                                      img_size=img_size, trust_pickle=trust_pickle, **kwargs)
            self.name = name
        self.model.eval()
        self.num_classes = int(self.model.num_classes)
        if not self.num_classes:
            raise ValueError(f"{self.name} has no classifier head (num_classes=0): nothing to predict")
        self.topk = self._check_topk(min(5, self.num_classes) if topk is None else topk)
        if label_names is not None:
            names = check_label_names(label_names, self.num_classes, "--label-names")
        else:
            recorded = read_label_names(checkpoint) if checkpoint is not None else None
            if recorded is not None:
                names = check_label_names(recorded, self.num_classes, str(checkpoint))
            else:  # the authors' files are ImageNet weights; a run of ours without names stays unnamed
                names = label_names_of(self.model, self.num_classes, imagenet=pretrained or (
                    checkpoint is not None and not run))
        self.label_names: list[str] | None = names
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.data_cfg, self.transform = eval_transform(self.model, img_size)
        self.net: nn.Module = self.model
        if self.video:  # as `locvit eval --task video`: scores averaged over clips x crops
            self.transform = clip_eval_transform(self.transform, test_crops)
            self.net = MultiViewModel(self.model, chunk=batch_size)
        self.batch_size, self.workers = batch_size, workers

    def _check_topk(self, topk: int) -> int:
        if topk < 1 or topk > self.num_classes:
            raise ValueError(f"--topk {topk}: the model has {self.num_classes} classes; pick 1 to {self.num_classes}")
        return topk

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The model's outputs for a preprocessed batch, float32 on the CPU; ``ValueError`` when not finite."""
        out = self.net(images.to(self.device)).float().cpu()
        if not torch.isfinite(out).all():
            raise ValueError(f"{self.name} gave NaN/inf outputs" + (f" with {self.checkpoint}" if self.checkpoint
                                                                    else "") + ": the weights are broken")
        return out

    def _results(self, logits: torch.Tensor, sources: Sequence[str], topk: int) -> list[Prediction]:
        probs = logits.softmax(dim=1)
        top = probs.topk(topk, dim=1)
        return [Prediction(src, idx.tolist(), p.tolist(), [class_name(self.label_names, i) for i in idx.tolist()],
                           row.clone())
                for src, idx, p, row in zip(sources, top.indices, top.values, logits)]

    def __call__(self, inputs: Any, topk: int | None = None) -> list[Prediction]:
        """Predict one input or a list: file paths, PIL images, numpy arrays, image tensors (``C x H x W``, uint8 or
        floats in [0, 1]). Inputs are read here; a file that does not decode raises ``ValueError`` naming it."""
        topk = self._check_topk(topk or self.topk)
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if self.video:  # clips are files or frame folders
            preds, unreadable = self.predict_files(items, topk)
            if unreadable:
                raise ValueError(f"{unreadable[0].path} could not be read as a clip ({unreadable[0].reason})")
            return preds
        out: list[Prediction] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            images, sources = [], []
            for i, x in enumerate(chunk, start):
                source = str(x) if isinstance(x, (str, os.PathLike)) else f"<input {i}>"
                try:
                    images.append(self.transform(to_image(x)))
                except (OSError, SyntaxError, Image.DecompressionBombError) as e:
                    raise ValueError(f"{source} could not be read as an image ({type(e).__name__}: {e})") from None
                sources.append(source)
            out += self._results(self.logits(torch.stack(images)), sources, topk)
        return out

    def predict_files(self, paths: Sequence[str | os.PathLike], topk: int | None = None, progress: bool = False
                      ) -> tuple[list[Prediction], list[Any]]:
        """Predict image files in batches on DataLoader workers: the predictions in the order of ``paths``, and the
        :class:`~locvit.data.datasets.Unreadable` records of the files that did not decode (skipped)."""
        from tqdm import tqdm

        topk = self._check_topk(topk or self.topk)
        dataset = (VideoFileList(paths, transform=self.transform, **self.clip) if self.video
                   else FileListDataset(paths, self.transform))
        loader = build_loader(dataset, self.batch_size, training=False, workers=self.workers)
        preds: list[Prediction] = []
        unreadable: list[Any] = []
        for batch in tqdm(loader, desc="predict", leave=False, disable=not progress, dynamic_ncols=True):
            images, index = batch
            unreadable += batch.unreadable
            if images.numel():
                preds += self._results(self.logits(images), [str(dataset.samples[i]) for i in index.tolist()], topk)
        return preds, unreadable

    def explain(self, inputs: Any, target: int | str | None = None, stage: int = -1) -> list[Any]:
        """Grad-CAM maps (:class:`locvit.predict.explain.Explanation`) of one input or a list, for the predicted
        class or ``target`` (an index or a class name), on stage map ``stage`` (``-1``: the last)."""
        from locvit.predict.explain import explain

        if self.video:
            raise ValueError("--explain draws maps over images; it does not apply to clips (--task video)")
        target = self.class_index(target)
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        return [explain(self, x, str(x) if isinstance(x, (str, os.PathLike)) else f"<input {i}>", target, stage)
                for i, x in enumerate(items)]

    def preview(self, source: str | os.PathLike) -> Image.Image:
        """The picture of an input: the image, or a clip's middle frame."""
        return middle_frame(source) if self.video else to_image(source)

    def class_index(self, target: int | str | None) -> int | None:
        """``target`` as a class index: an index (also as a string), or a class name; ``ValueError`` naming the
        choices otherwise."""
        if target is None or isinstance(target, int):
            index = target
        elif str(target).lstrip("-").isdigit():
            index = int(target)
        elif self.label_names and str(target) in self.label_names:
            index = self.label_names.index(str(target))
        else:
            known = f"one of {self.label_names[:10]}{'...' if len(self.label_names) > 10 else ''}" \
                if self.label_names else "an index (the model's class names are unknown)"
            raise ValueError(f"--target {target!r} is not a class of the model: pass {known}")
        if index is not None and not 0 <= index < self.num_classes:
            raise ValueError(f"--target {index}: the model has {self.num_classes} classes (0 to "
                             f"{self.num_classes - 1})")
        return index

