"""Semantic-segmentation data in ADE20K's layout, with mmsegmentation's label conventions and ADE20K pipeline.

Layout (``ADEChallengeData2016`` as released): ``images/{training,validation}/<stem>.jpg`` and
``annotations/{training,validation}/<stem>.png``, one single-channel label map per image, of the image's size.

Labels, as mmsegmentation defines them: pixels equal to ``ignore_index`` (255) count nowhere; with
``reduce_zero_label`` (ADE20K's convention: 0 means "other", classes are 1..150) label 0 becomes 255 and every
other label ``l`` becomes ``l - 1``, so the model predicts 150 classes 0..149.

Checks (:class:`SegmentationFolder`): every label map's PNG header -- its mode (one channel) and size (the
image's) -- when the split is built; label values in a sample of maps before training
(:meth:`SegmentationFolder.check_labels`), and in every map as it is loaded, where a bad one stops the run
(:class:`~locvit.data.loader.Refused`) instead of being skipped.

Training pipeline (mmsegmentation's ADE20K config): random rescale of the image into ``scale`` (2048 x 512) times a
ratio in ``ratio_range`` (0.5-2.0), keeping the aspect ratio; a random ``crop_size`` crop in which no single class
covers more than ``cat_max_ratio`` of the labelled pixels (up to 10 tries); horizontal flip; photometric
distortion (:func:`photometric_distort`);
normalisation; padding to ``crop_size`` (image 0, labels 255). Randomness is seeded by ``(seed, epoch, index)``.
Evaluation rescales into ``test_scale`` (the model sees that size) and scores at the label map's own size.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from locvit.data.datasets import DECODE_ERRORS, SeededDataset, Unreadable, seed_sample, to_rgb
from locvit.data.loader import Batch, DataError, Refused

__all__ = ["SegmentationFolder", "collate_segmentation", "find_segmentation_split", "photometric_distort",
           "reduce_zero_label", "rescale_size"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Pillow modes of a single-channel map of class indices (``P``: a palette PNG, whose indices are the labels)
LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
SPLIT_NAMES = {"train": ("training", "train"), "val": ("validation", "val")}


def find_segmentation_split(data: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``(images_dir, labels_dir)`` of ``split`` (``'train'``/``'val'``) in an ADE20K-style folder."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    for name in SPLIT_NAMES[split]:
        images, labels = root / "images" / name, root / "annotations" / name
        if images.is_dir() and labels.is_dir():
            return images, labels
    name = SPLIT_NAMES[split][0]
    raise FileNotFoundError(f"no '{split}' split under {root}: expected images/{name}/ and annotations/{name}/ "
                            "(ADE20K's layout: one PNG label map per image, same stem)")


def photometric_distort(x: torch.Tensor) -> torch.Tensor:
    """mmsegmentation's ``PhotoMetricDistortion`` on a uint8 RGB tensor, each step with probability 0.5:
    brightness +-32, contrast x[0.5, 1.5] (before or after the colour steps, at random), saturation x[0.5, 1.5] and
    a hue shift of +-18 of OpenCV's 180 (torchvision's functional ops; its saturation blends with the grey image
    rather than scaling HSV's S channel)."""
    import torchvision.transforms.v2.functional as TF

    x = x.float()
    if random.random() < 0.5:
        x = (x + random.uniform(-32, 32)).clamp_(0, 255)
    contrast_first = random.random() < 0.5
    if contrast_first and random.random() < 0.5:
        x = (x * random.uniform(0.5, 1.5)).clamp_(0, 255)
    x = x.round().to(torch.uint8)
    if random.random() < 0.5:
        x = TF.adjust_saturation(x, random.uniform(0.5, 1.5))
    if random.random() < 0.5:
        x = TF.adjust_hue(x, random.randint(-18, 18) / 180)
    if not contrast_first and random.random() < 0.5:
        x = (x.float() * random.uniform(0.5, 1.5)).clamp_(0, 255).round().to(torch.uint8)
    return x


def reduce_zero_label(label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """mmsegmentation's ``reduce_zero_label``: 0 -> ignore, l -> l - 1 (ADE20K's "other" class dropped)."""
    out = label.long() - 1
    out[(label == 0) | (label == ignore_index)] = ignore_index
    return out


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` rescaled to fit ``scale`` = (long edge, short edge) bounds keeping the aspect ratio
    (mmcv's ``rescale`` with ``keep_ratio``: the largest factor with long <= scale[0] and short <= scale[1])."""
    h, w = size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


class SegmentationFolder(SeededDataset):
    """Images and label maps of one split, checked on construction: every image has a label map, and every label
    map's header says one channel and the image's size.

    Label values are checked where the pixels are decoded anyway: :meth:`check_labels` (before training) decodes
    a sample of maps spread over the split, and every sample is checked as it is loaded; a map with a value
    outside the classes (other than the ignore index) stops the run with its file named (a
    :class:`~locvit.data.loader.Refused` sample). Decoding all maps up front would be a pass over the whole
    dataset before the first step (ADE20K: 20,210 PNGs) for a check the loader does for free; the headers
    alone (mode, size) cost no decoding and are read for every file.

    Args:
        images_dir: folder of images.
        labels_dir: folder of PNG label maps with the images' stems.
        num_classes: classes the model predicts (after ``reduce_zero_label``).
        train: apply the training pipeline (else: rescale into ``test_scale`` only).
        mean, std: normalisation (the model's pretrained cfg), in [0, 1] units.
        reduce_zero_label, ignore_index: label conventions (see the module docstring).
        crop_size, scale, ratio_range, cat_max_ratio, hflip, photometric: the training pipeline.
        test_scale: evaluation rescale bounds (long, short); ``None`` keeps the images' sizes.
        seed: augmentation seed.
    """

    def __init__(self, images_dir: str | os.PathLike, labels_dir: str | os.PathLike, num_classes: int, *,
                 train: bool = False, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), reduce_zero_label: bool = True,
                 ignore_index: int = 255, crop_size: tuple[int, int] = (512, 512),
                 scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, hflip: float = 0.5, photometric: bool = True,
                 test_scale: tuple[int, int] | None = (2048, 512), seed: int = 0):
        super().__init__(None, seed)
        self.images_dir, self.labels_dir = Path(images_dir), Path(labels_dir)
        self.num_classes, self.train = num_classes, train
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.reduce_zero_label, self.ignore_index = reduce_zero_label, ignore_index
        self.crop_size, self.scale, self.ratio_range = tuple(crop_size), tuple(scale), tuple(ratio_range)
        self.cat_max_ratio, self.hflip, self.test_scale = cat_max_ratio, hflip, test_scale
        self.photometric = photometric
        self.samples = self._pairs()

    def _pairs(self) -> list[tuple[Path, Path]]:
        images = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{self.images_dir} holds no images: the split is empty")
        pairs, missing, mismatched, modes = [], [], [], []
        for img in images:
            label = self.labels_dir / f"{img.stem}.png"
            if not label.is_file():
                missing.append(img.name)
                continue
            try:  # the headers only: cheap even for the 20,210 ADE20K training images
                with Image.open(img) as a, Image.open(label) as b:
                    if b.mode not in LABEL_MODES:
                        modes.append(f"{label.name} ({b.mode})")
                    if a.size != b.size:
                        mismatched.append(f"{label} is {b.size[0]}x{b.size[1]}, {img.name} is "
                                          f"{a.size[0]}x{a.size[1]}")
            except DECODE_ERRORS:
                pass  # unreadable files are skipped and counted when loaded
            pairs.append((img, label))
        if missing:
            raise FileNotFoundError(f"{len(missing)} images in {self.images_dir} have no label map <stem>.png in "
                                    f"{self.labels_dir}: {', '.join(missing[:5])}"
                                    + (f", ... ({len(missing)} in all)" if len(missing) > 5 else ""))
        if modes:
            raise DataError(f"{len(modes)} label maps in {self.labels_dir} are not single-channel: "
                            f"{', '.join(modes[:5])}" + (f", ... ({len(modes)} in all)" if len(modes) > 5 else "")
                            + "; a label map holds one class index per pixel (a mode L or P PNG, as ADE20K's). A "
                            "grey map saved as RGB converts losslessly with PIL's Image.open(f).convert('L')"
                            ".save(f); a colour-coded map needs its colour -> class table")
        if mismatched:
            raise ValueError(f"{len(mismatched)} label maps differ in size from their images (label maps must be "
                             f"pixel-aligned with the image): {'; '.join(mismatched[:3])}"
                             + (f"; ... ({len(mismatched)} in all)" if len(mismatched) > 3 else ""))
        return pairs

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, index: int) -> int:
        return index

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        img_path, label_path = self.samples[index]
        with Image.open(img_path) as im, Image.open(label_path) as lb:
            img, label = to_rgb(im), lb.copy()
        if label.mode not in LABEL_MODES:  # the header check passed: the file changed since
            raise DataError(f"{label_path}: a label map must be single-channel (got mode {label.mode})")
        return img, label

    def check_labels(self, max_files: int = 64) -> None:
        """Fail before training on what a sample of ``max_files`` maps spread over the split shows: a label outside
        the classes, no pair that can be read, or nothing but the ignore index (nothing to learn from). Every other
        map is checked as it is loaded (see the class docstring)."""
        step = max(1, len(self) // max_files)
        read, labelled, first_error = 0, 0, None
        for i in range(0, len(self), step):
            try:
                _, lb = self.load(i)
            except DataError:
                raise
            except DECODE_ERRORS as e:
                first_error = first_error or f"{self.describe(i)}: {type(e).__name__}: {e}"
                continue
            y = self._labels(lb)
            problem = self.label_problem(y, self.samples[i][1])
            if problem:
                raise DataError(problem)
            read += 1
            labelled += bool((y != self.ignore_index).any())
        tried = len(range(0, len(self), step))
        if not read:
            raise DataError(f"none of the {tried} image / label map pairs tried in {self.images_dir} and "
                            f"{self.labels_dir} could be read (first: {first_error}); check the files")
        if not labelled:
            raise DataError(f"every pixel of the {read} label maps read in {self.labels_dir} is ignored: "
                            + self.ignored_hint())

    def ignored_hint(self) -> str:
        """Why every pixel can be ignored, and what to check (for the errors of a split or a run with no labelled
        pixel)."""
        if self.reduce_zero_label:
            return (f"nothing to learn from: every label is the ignore index {self.ignore_index} (--ignore-index) "
                    "or 0, which --reduce-zero-label (on: ADE20K's convention, 0 = 'other') ignores too. Check the "
                    f"label maps (classes 1..{self.num_classes} with --reduce-zero-label), or pass "
                    "--no-reduce-zero-label if 0 is a class")
        return (f"nothing to learn from: every label is the ignore index {self.ignore_index} (--ignore-index). "
                f"Check the label maps: one class index 0..{self.num_classes - 1} per pixel")

    def label_problem(self, y: torch.Tensor, path: str | os.PathLike) -> str | None:
        """What is wrong with the (reduced) labels ``y`` of the map ``path``, and the fix; ``None`` when nothing is:
        every value is a class (``0..num_classes - 1``) or the ignore index."""
        bad = y[(y != self.ignore_index) & ((y < 0) | (y >= self.num_classes))]
        if not bad.numel():
            return None
        v = int(bad.max()) if int(bad.max()) >= self.num_classes else int(bad.min())
        raw = v + 1 if self.reduce_zero_label else v
        where = f"{path} holds label {raw}" + (f" ({v} after --reduce-zero-label)" if self.reduce_zero_label else "")
        fix = (f"pass --num-classes {v + 1} if the dataset has that many classes, or fix the map" if v >= 0
               else "fix the map")
        if v == self.num_classes and not self.reduce_zero_label:
            fix += "; or --reduce-zero-label if 0 means 'other' and the classes are 1.." + str(v)
        return (f"{where}, outside the {self.num_classes} classes 0..{self.num_classes - 1} and not the ignore "
                f"index {self.ignore_index} (--ignore-index): {fix}")

    def _labels(self, label: Image.Image) -> torch.Tensor:
        y = torch.from_numpy(np.asarray(label, dtype=np.int64).copy())
        return reduce_zero_label(y, self.ignore_index) if self.reduce_zero_label else y

    def describe(self, index: int) -> str:
        return str(self.samples[index][0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Unreadable, torch.Tensor | int]:
        try:
            img, label = self.load(index)
        except DataError as e:
            return Refused(index, self.describe(index), str(e)), index
        except DECODE_ERRORS as e:
            return Unreadable(index, self.describe(index), f"{type(e).__name__}: {e}"), index
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        y = self._labels(label)
        problem = self.label_problem(y, self.samples[index][1])
        if problem:
            return Refused(index, self.describe(index), problem), index
        if self.train:
            seed_sample(self.seed, self.epoch, index)
            x, y = self._augment(x, y)
        elif self.test_scale is not None:
            x = F.interpolate(x[None].float(), rescale_size(tuple(x.shape[-2:]), self.test_scale), mode="bilinear",
                              align_corners=False)[0].clamp_(0, 255)
        x = (x.float() / 255 - self.mean) / self.std
        if self.train:
            ph, pw = self.crop_size[0] - x.shape[-2], self.crop_size[1] - x.shape[-1]
            if ph > 0 or pw > 0:
                x = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)))
                y = F.pad(y, (0, max(pw, 0), 0, max(ph, 0)), value=self.ignore_index)
        return x, y

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = random.uniform(*self.ratio_range)
        bounds = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        size = rescale_size(tuple(x.shape[-2:]), bounds)
        x = F.interpolate(x[None].float(), size, mode="bilinear", align_corners=False)[0].clamp_(0, 255)
        x = x.round().to(torch.uint8)
        y = F.interpolate(y[None, None].float(), size, mode="nearest")[0, 0].long()
        x, y = self._crop(x, y)
        if random.random() < self.hflip:
            x, y = x.flip(-1), y.flip(-1)
        if self.photometric:
            x = photometric_distort(x)
        return x, y

    def _crop(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ch, cw = self.crop_size
        H, W = y.shape
        h, w = min(ch, H), min(cw, W)
        for _ in range(10):
            top, left = random.randint(0, H - h), random.randint(0, W - w)
            crop = y[top:top + h, left:left + w]
            if self.cat_max_ratio >= 1:
                break
            counts = crop[crop != self.ignore_index].unique(return_counts=True)[1]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return x[:, top:top + h, left:left + w], y[top:top + h, left:left + w]

    def label_map(self, index: int) -> torch.Tensor:
        """The evaluation label map of sample ``index`` at its own size (after the label reduction)."""
        y = self._labels(self.load(index)[1])
        problem = self.label_problem(y, self.samples[index][1])
        if problem:
            raise DataError(problem)
        return y


def collate_segmentation(samples: Sequence[tuple[Any, Any]]) -> Batch:
    """Training: stacked crops and label maps; evaluation (sizes differ): lists. Unreadable images are counted
    (and refused ones kept for :meth:`~locvit.data.loader.Batch.refuse`)."""
    good = [(x, y) for x, y in samples if not isinstance(x, Unreadable)]
    bad = [x for x, _ in samples if isinstance(x, Unreadable)]
    xs, ys = [x for x, _ in good], [y for _, y in good]
    if xs and all(x.shape == xs[0].shape for x in xs) and all(y.shape == ys[0].shape for y in ys):
        return Batch(torch.stack(xs), torch.stack(ys), bad)
    return Batch(xs, ys, bad)  # type: ignore[arg-type]
