"""Detections and segmentations you can look at: ``locvit detect predict`` and ``locvit segment predict``.

:class:`DetectPredictor` runs a ``locvit detect train`` run's detector on image files (or in-memory images) at the
recipe's test scale, as ``locvit detect eval`` does, and returns :class:`Detections` (boxes in the image's pixels,
class names, scores, instance masks, keypoints). :func:`draw_detections` draws them with torchvision's
``draw_bounding_boxes`` / ``draw_segmentation_masks`` / ``draw_keypoints`` (the skeleton the annotation file's
category declares). :class:`SegmentPredictor` runs a ``locvit segment train`` run's segmenter with the evaluation's
rescale and whole/slide inference and writes, per image, the label PNG (class index per pixel, at the image's size),
a colour mask with a legend and an overlay.

The class names are the categories of the run's data (``--data``, as ``eval`` reads it): a detection run's labels
1..K are the annotation file's categories in id order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from locvit.data.datasets import FileListDataset, Unreadable
from locvit.data.loader import build_loader
from locvit.dense.coco import collate_detection
from locvit.dense.detect import load_split, test_size
from locvit.dense.detectors import build_detector
from locvit.dense.segment import image_norm, predict
from locvit.dense.segmentation_data import rescale_size
from locvit.dense.segmenters import build_segmenter
from locvit.predict.core import to_image
from locvit.weights import load_weights

__all__ = ["DetectPredictor", "Detections", "SegmentPredictor", "Segmentation", "draw_detections", "palette"]


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct, saturated colours (golden-angle hues), the same for a class in every picture."""
    import colorsys

    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95))  # type: ignore
            for i in range(n)]


def _to_uint8(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def _unreadable_error(source: str, e: BaseException) -> ValueError:
    return ValueError(f"{source} could not be read as an image ({type(e).__name__}: {e})")


def _images(inputs: Any):
    """``(RGB image, source name)`` of each input (paths, PIL images, numpy arrays, tensors); an input that cannot be
    read is an error naming it."""
    for x, source in _sources(inputs):
        try:
            yield to_image(x), source
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise _unreadable_error(source, e) from None


def _sources(inputs: Any) -> list[tuple[Any, str]]:
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    return [(x, str(x) if isinstance(x, (str, os.PathLike)) else f"<input {i}>") for i, x in enumerate(items)]


def check_score_thr(score_thr: float) -> float:
    if not 0.0 <= score_thr <= 1.0:
        raise ValueError(f"--score-thr {score_thr}: a score threshold is a probability, between 0 and 1")
    return float(score_thr)


@dataclass
class Detections:
    """One image's detections at or above the score threshold, most confident first.

    Attributes:
        source: the file, or ``'<input N>'``.
        boxes: ``N x 4`` (x0, y0, x1, y1) in the image's pixels.
        labels: the detector's labels (1..K; 0 is the background).
        names: their category names.
        scores: their scores.
        masks: ``N x H x W`` bool instance masks (Mask R-CNN), else None.
        keypoints: ``N x K x 3`` (x, y, score) (Keypoint R-CNN), else None.
        category_ids: the annotation file's category ids of ``labels``.
    """

    source: str
    boxes: Tensor
    labels: list[int]
    names: list[str]
    scores: list[float]
    masks: Tensor | None
    keypoints: Tensor | None
    category_ids: list[int]

    def to_dict(self) -> dict[str, Any]:
        """What ``detections.jsonl`` holds: boxes xyxy, names, scores, RLE masks, keypoints."""
        out: dict[str, Any] = dict(source=self.source, boxes=[[round(v, 2) for v in b] for b in self.boxes.tolist()],
                                   labels=self.labels, category_ids=self.category_ids, names=self.names,
                                   scores=[round(s, 5) for s in self.scores])
        if self.masks is not None:
            from pycocotools import mask as mask_utils

            rles = mask_utils.encode(np.asfortranarray(self.masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
            out["masks"] = [dict(size=r["size"], counts=r["counts"].decode("ascii")) for r in rles]
        if self.keypoints is not None:
            out["keypoints"] = [[round(v, 2) for v in k.flatten().tolist()] for k in self.keypoints]
        return out


def _font_file() -> str | None:
    """A TrueType font for the box labels (torchvision's ``font_size`` needs one): matplotlib's DejaVu Sans when
    matplotlib is installed, else None (Pillow's small bitmap font)."""
    try:
        from matplotlib import font_manager
    except ImportError:
        return None
    return font_manager.findfont("DejaVu Sans", fallback_to_default=True)


def draw_detections(image: Image.Image, det: Detections, colors: Sequence[tuple[int, int, int]],
                    skeleton: Sequence[tuple[int, int]] | None = None, min_side: int = 512) -> Image.Image:
    """``image`` with ``det``'s masks (translucent), boxes with their names and scores, and keypoint skeletons.
    An image whose longer side is under ``min_side`` pixels is enlarged first (boxes, masks and keypoints with it),
    so the names stay legible."""
    import torch.nn.functional as F
    from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

    scale = max(1.0, min_side / max(image.size))
    size = (round(image.width * scale), round(image.height * scale))
    x = _to_uint8(image.resize(size, Image.Resampling.BICUBIC) if scale > 1 else image)
    side = max(x.shape[-2:])
    cols = [tuple(colors[lab % len(colors)]) for lab in det.labels]
    if det.masks is not None and len(det.masks):
        masks = det.masks
        if scale > 1:
            masks = F.interpolate(masks[None].float(), size=(size[1], size[0]), mode="nearest")[0] > 0.5
        x = draw_segmentation_masks(x, masks, alpha=0.45, colors=cols)
    if len(det.boxes):
        x = draw_bounding_boxes(x, det.boxes * scale, [f"{n} {s:.2f}" for n, s in zip(det.names, det.scores)],
                                colors=cols, width=max(2, round(side / 250)), font=_font_file(),
                                font_size=max(12, round(side / 40)))
    if det.keypoints is not None and len(det.keypoints):
        x = draw_keypoints(x, det.keypoints[..., :2] * scale, connectivity=list(skeleton or []) or None,
                           colors="yellow", radius=max(2, round(side / 150)), width=2)
    return Image.fromarray(x.permute(1, 2, 0).numpy())


class DetectPredictor:
    """A detection run ready to predict.

    Args:
        cfg: the run's :class:`~locvit.dense.config.DetectConfig` (``locvit.dense.common.eval_config`` reads it
            from the run directory).
        weights: the trained weights (a run's ``best.safetensors``...).
        score_thr: keep detections scoring at least this (0..1).
        device: default CUDA when available.
    """

    def __init__(self, cfg: Any, weights: str | os.PathLike | None, score_thr: float = 0.5,
                 device: str | torch.device | None = None):
        self.score_thr = check_score_thr(score_thr)
        if weights is None:
            raise ValueError("no weights: pass --checkpoint RUN_DIR (or its best.safetensors): an untrained "
                             "detector predicts nothing")
        val_set = load_split(cfg, "val")  # the run's categories (labels 1..K), keypoints and skeleton
        self.cfg = cfg
        self.class_names = list(val_set.class_names)
        self.category_ids = list(val_set.cat_ids)
        self.keypoint_names = list(val_set.keypoint_names)
        cats = {c["id"]: c for c in val_set._coco_data["categories"]}
        skel = next((cats[c].get("skeleton") for c in self.category_ids if cats.get(c, {}).get("skeleton")), None)
        self.skeleton = [(a - 1, b - 1) for a, b in skel] if skel and self.keypoint_names else None
        num_classes = cfg.num_classes or len(self.category_ids) + 1
        self.model = build_detector(cfg, num_classes, len(self.keypoint_names) or None, verbose=False)
        load_weights(self.model, weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.colors = palette(num_classes)

    def _detections(self, out: dict[str, Tensor], source: str) -> Detections:
        keep = out["scores"].float() >= self.score_thr
        labels = out["labels"][keep].cpu().tolist()
        masks = (out["masks"][keep][:, 0] > 0.5).cpu() if "masks" in out else None
        kpts = out["keypoints"][keep].float().cpu() if "keypoints" in out else None
        return Detections(source, out["boxes"][keep].float().cpu(), labels,
                          [self.class_names[lab - 1] if 0 < lab <= len(self.class_names) else f"class {lab}"
                           for lab in labels],
                          out["scores"][keep].float().cpu().tolist(), masks, kpts,
                          [self.category_ids[lab - 1] if 0 < lab <= len(self.category_ids) else lab
                           for lab in labels])

    @torch.no_grad()
    def _run(self, images: list[Tensor], sources: list[str]) -> list[Detections]:
        with test_size(self.model, self.cfg):
            outputs = self.model([im.to(self.device) for im in images])
        return [self._detections(o, s) for o, s in zip(outputs, sources)]

    def __call__(self, inputs: Any) -> list[Detections]:
        """Detect in one input or a list (file paths, PIL images, numpy arrays, image tensors)."""
        from torchvision.transforms.functional import to_tensor

        out = []
        for image, source in _images(inputs):
            out += self._run([to_tensor(image)], [source])
        return out

    def predict_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 2, workers: int = 0,
                      progress: bool = False) -> tuple[list[Detections], list[Any]]:
        """Detect in image files on DataLoader workers: the detections in file order, and the files that did not
        decode (skipped)."""
        from torchvision.transforms.functional import to_tensor
        from tqdm import tqdm

        dataset = FileListDataset(paths, to_tensor)
        loader = build_loader(dataset, batch_size, training=False, workers=workers, collate_fn=collate_detection)
        dets: list[Detections] = []
        unreadable: list[Any] = []
        for batch in tqdm(loader, desc="detect", leave=False, disable=not progress, dynamic_ncols=True):
            images, index = batch
            unreadable += batch.unreadable
            if images:
                dets += self._run(list(images), [dataset.samples[i] for i in index])
        return dets, unreadable

    def draw(self, det: Detections) -> Image.Image:
        return draw_detections(to_image(det.source), det, self.colors, self.skeleton)


@dataclass
class Segmentation:
    """One image's segmentation: ``labels`` (``H x W`` class indices at the image's size) and the class names."""

    source: str
    labels: Tensor
    names: list[str]

    def classes_present(self) -> list[int]:
        return torch.unique(self.labels).tolist()


class SegmentPredictor:
    """A segmentation run ready to predict: the evaluation's normalisation (the encoder's pretrained cfg), rescale
    into ``test_scale`` and whole/slide inference, logits resized to the image's size, argmax.

    Args:
        cfg: the run's :class:`~locvit.dense.config.SegmentConfig`.
        weights: the trained weights.
        class_names: one per class (default: ``'class N'``).
        device: default CUDA when available.
    """

    def __init__(self, cfg: Any, weights: str | os.PathLike | None, class_names: Sequence[str] | None = None,
                 device: str | torch.device | None = None):
        if weights is None:
            raise ValueError("no weights: pass --checkpoint RUN_DIR (or its best.safetensors): an untrained "
                             "segmenter predicts nothing")
        self.cfg = cfg
        self.num_classes = cfg.num_classes or 150
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for the run's {self.num_classes} classes")
        mean, std = image_norm(cfg)
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.model = build_segmenter(cfg, self.num_classes, verbose=False)
        load_weights(self.model, weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.colors = palette(self.num_classes)

    @torch.no_grad()
    def segment(self, image: Image.Image, source: str) -> Segmentation:
        import torch.nn.functional as F

        x = _to_uint8(image).float()
        size = tuple(x.shape[-2:])
        if self.cfg.test_scale:
            x = F.interpolate(x[None], rescale_size(size, tuple(self.cfg.test_scale)), mode="bilinear",
                              align_corners=False)[0]
        x = (x / 255 - self.mean) / self.std
        logits = predict(self.model, x[None].to(self.device), self.cfg, size)
        return Segmentation(source, logits.argmax(1)[0].cpu(), self.class_names)

    def __call__(self, inputs: Any) -> list[Segmentation]:
        return [self.segment(image, source) for image, source in _images(inputs)]

    def pictures(self, seg: Segmentation, image: Image.Image) -> dict[str, Image.Image]:
        """``label`` (class index per pixel, 8 or 16-bit grayscale PNG), ``color`` (the classes' colours with a
        legend of the classes present) and ``overlay`` (the colours over the image)."""
        lab = seg.labels.numpy()
        label = Image.fromarray(lab.astype(np.uint8 if self.num_classes <= 256 else np.uint16))
        colors = np.asarray(self.colors, dtype=np.uint8)[lab]
        color = Image.fromarray(colors)
        overlay = Image.blend(image.convert("RGB"), color, 0.5)
        return dict(label=label, color=_with_legend(color, [(self.class_names[c], self.colors[c])
                                                            for c in seg.classes_present()]), overlay=overlay)


def _with_legend(image: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """``image`` with a legend column on its right: a swatch and the name of each class shown."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    line = 18
    probe = ImageDraw.Draw(image)
    width = 30 + max((round(probe.textlength(n, font=font)) for n, _ in entries), default=0)
    out = Image.new("RGB", (image.width + width + 8, max(image.height, line * len(entries) + 8)), "white")
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (name, col) in enumerate(entries):
        y = 4 + i * line
        draw.rectangle([image.width + 6, y + 2, image.width + 20, y + line - 4], fill=tuple(col), outline="black")
        draw.text((image.width + 26, y), name, fill="black", font=font)
    return out


def predict_command(task: str, cfg: Any, weights: Any, inputs: Sequence[str], output: str | os.PathLike,
                    score_thr: float = 0.5, log: Any = print) -> None:
    """``locvit detect|segment predict``: predict ``inputs`` with the run and write the pictures (and, for
    detection, ``detections.jsonl``) into ``output``, all or nothing; unreadable files are named and skipped, and
    a ``ValueError`` is raised when none could be read."""
    import json
    import sys

    from locvit.predict.core import expand_inputs
    from locvit.predict.output import picture_name, save_png, staged, write_unreadable

    if task == "detect":
        check_score_thr(score_thr)
    files = expand_inputs(inputs)
    if task == "detect":
        det = DetectPredictor(cfg, weights, score_thr, device=cfg.device)
        results, unreadable = det.predict_files(files, batch_size=cfg.batch_size, workers=cfg.workers, progress=True)
    else:
        seg = SegmentPredictor(cfg, weights, device=cfg.device)
        results, unreadable, images = [], [], []
        dataset = FileListDataset(files)
        for i in range(len(dataset)):
            image, _ = dataset[i]
            if isinstance(image, Unreadable):
                unreadable.append(image)
            else:
                results.append(seg.segment(image, dataset.samples[i]))
                images.append(image)
    for u in unreadable:
        print(f"skipped {u.path}: not readable as an image ({u.reason})", file=sys.stderr)
    if not results:
        raise ValueError(f"none of the {len(files)} inputs could be read as an image; nothing was predicted")
    with staged(output) as tmp:
        write_unreadable(tmp, unreadable)
        if task == "detect":
            (tmp / "detections.jsonl").write_text("".join(json.dumps(d.to_dict()) + "\n" for d in results))
            for i, d in enumerate(results):
                save_png(det.draw(d), tmp / "images" / picture_name(i, d.source))
                log(f"{d.source}: {len(d.labels)} detections" + (": " if d.labels else "")
                    + ", ".join(f"{n} {s:.2f}" for n, s in zip(d.names, d.scores)))
        else:
            for i, (s, image) in enumerate(zip(results, images)):
                for kind, picture in seg.pictures(s, image).items():
                    save_png(picture, tmp / kind / picture_name(i, s.source))
                log(f"{s.source}: " + ", ".join(f"{s.names[c]} {100 * float((s.labels == c).float().mean()):.1f}%"
                                                for c in s.classes_present()))
    log(f"wrote the pictures of {len(results)} images to {output}")
