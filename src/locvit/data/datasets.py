"""Datasets: ImageNet-style folders, CIFAR from its standard files on disk, and an embedded default dataset.

Every dataset returns ``(image, target)`` where ``image`` is an :class:`Unreadable` record (index, file, reason)
when the file could not be decoded; the collate function of :mod:`locvit.data.loader` drops those samples and
the training loop counts each unreadable file once and names it, so a few corrupt JPEGs never stop an epoch.
Images in any mode Pillow reads (16-bit and 32-bit grayscale, CMYK, palette, alpha) become 8-bit RGB by
:func:`to_rgb`. Augmentation randomness is a function of ``(seed, epoch, index)`` (see
:meth:`SeededDataset.__getitem__`), which makes a resumed run see exactly the samples an uninterrupted run
would have seen.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from locvit.runtime import seed_all

EMBEDDED = ("digits",)
CIFAR = ("cifar10", "cifar100")
_CIFAR_URL = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}
_CIFAR_DIR = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")  # what a folder of images holds
#: what PIL raises on a file it cannot decode (an unreadable image is skipped and listed, never fatal)
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Unreadable:
    """Stands in for an image that could not be decoded: which sample, which file, and why."""

    index: int
    path: str
    reason: str


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow opens. ``convert('RGB')`` alone clips 16/32-bit grayscale at 255 (a 16-bit
    PNG turns white), so those are rescaled from their bit depth; palette images with transparency go through
    RGBA as Pillow asks; alpha is dropped as timm's loader drops it."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            arr = arr * 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else arr
            arr = np.nan_to_num(arr).clip(0, 255).astype(np.uint8)
        else:
            # I;16*: 16-bit samples; mode I holds 16-bit PNG data or true 32-bit values: scale from the depth used
            bits = 16 if mode.startswith("I;16") or int(arr.max(initial=0)) < 2**16 else 32
            arr = (arr.astype(np.int64).clip(0, None) >> (bits - 8)).clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def seed_sample(seed: int, epoch: int, index: int) -> None:
    """Seed Python, NumPy and torch from ``(seed, epoch, index)`` alone, whatever the worker: the random crops,
    RandAugment, erasing, flips... of a sample are then the same in a resumed run."""
    seed_all(zlib.crc32(f"{seed}/{epoch}/{index}".encode()))


class SeededDataset(Dataset):
    """Base class: samples are loaded by :meth:`load` and transformed under per-sample seeding."""

    classes: list[str]

    def __init__(self, transform: Callable | None = None, seed: int = 0):
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> tuple[Image.Image, int]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        try:
            img, target = self.load(index)
        except DECODE_ERRORS as e:
            return Unreadable(index, self.describe(index), f"{type(e).__name__}: {e}"), self.target(index)
        if self.transform is not None:
            seed_sample(self.seed, self.epoch, index)
            img = self.transform(img)
        return img, target

    def target(self, index: int) -> int:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """What sample ``index`` is, for messages (its file where there is one)."""
        return f"sample {index}"


class ImageFolderDataset(SeededDataset):
    """Class sub-folders of images (``root/<class>/<image>``), classes sorted naturally as timm does."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, seed: int = 0,
                 class_to_idx: dict[str, int] | None = None):
        super().__init__(transform, seed)
        from timm.data.readers.reader_image_folder import find_images_and_targets

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.samples, self.class_to_idx = find_images_and_targets(str(self.root), class_to_idx=class_to_idx)
        if not self.samples:
            raise ValueError(f"{self.root} holds no images: expected class sub-folders of image files "
                             "(root/<class>/<image>.jpg)")
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, target = self.samples[index]
        with Image.open(path) as im:
            return to_rgb(im), target

    def target(self, index: int) -> int:
        return self.samples[index][1]

    def describe(self, index: int) -> str:
        return str(self.samples[index][0])


class FileListDataset(SeededDataset):
    """Image files given one by one (``locvit predict``): the target of each is its index in ``paths``, so a
    prediction finds its file after unreadable ones were skipped. Decoding as :class:`ImageFolderDataset`."""

    def __init__(self, paths: Sequence[str | os.PathLike], transform: Callable | None = None):
        super().__init__(transform)
        self.samples = [str(p) for p in paths]
        self.classes = []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, int]:
        with Image.open(self.samples[index]) as im:
            return to_rgb(im), index

    def target(self, index: int) -> int:
        return index

    def describe(self, index: int) -> str:
        return self.samples[index]


class ArrayDataset(SeededDataset):
    """Images held in memory as a ``N x H x W [x 3]`` uint8 array with integer labels."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: list[str],
                 transform: Callable | None = None, seed: int = 0):
        super().__init__(transform, seed)
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = classes

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> tuple[Image.Image, int]:
        return to_rgb(Image.fromarray(self.images[index])), self.targets[index]

    def target(self, index: int) -> int:
        return self.targets[index]


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes): a fixed stratified
    80/20 split, ``'train'`` (1,437 images) or ``'val'`` (360). Installed with scikit-learn, no download."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency of the tools extra
        raise ValueError("the embedded 'digits' dataset needs scikit-learn: pip install 'locvit[tools]'") from e
    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx_train, idx_val = train_test_split(np.arange(len(images)), test_size=0.2, random_state=0, stratify=d.target)
    idx = idx_train if split == "train" else idx_val
    return images[idx], d.target[idx], [str(c) for c in range(10)]


def cifar_arrays(name: str, root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CIFAR-10/100 from the standard python-version files under ``root`` (never downloaded)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        ds = cls(str(root), train=split == "train", download=False)
    except RuntimeError:
        raise FileNotFoundError(
            f"{name} files not found under {root}: extract {_CIFAR_URL[name]} there so that "
            f"{Path(root) / _CIFAR_DIR[name]} exists (locvit downloads nothing)"
        ) from None
    return ds.data, np.asarray(ds.targets), list(ds.classes)


def split_folder(root: str | os.PathLike, split: str) -> Path:
    """``root/train`` or ``root/val`` (also ``validation``); a folder of class folders is its own split."""
    root = Path(root)
    names = ("train", "training") if split == "train" else ("val", "validation", "valid", "test")
    for n in names:
        if (root / n).is_dir():
            return root / n
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        return root
    raise FileNotFoundError(f"no '{names[0]}' split under {root}: expected {root}/{names[0]}/<class>/<image> "
                            f"or a folder of class sub-folders")


def build_dataset(data: str, split: str, transform: Callable | None = None, seed: int = 0,
                  class_to_idx: dict[str, int] | None = None) -> SeededDataset:
    """Build a dataset from ``data``: ``'digits'`` (embedded), ``'cifar10[:ROOT]'``/``'cifar100[:ROOT]'``
    (ROOT defaults to ``./data``), ``'wds:SHARDS'`` (WebDataset shards, streamed: :mod:`locvit.data.shards`) or a
    folder path (``train/`` and ``val/`` inside, or class folders).

    Args:
        data: dataset spec as above.
        split: ``'train'`` or ``'val'``.
        transform: image transform (timm's ``create_transform``).
        seed: augmentation seed.
        class_to_idx: reuse the train split's class mapping for the val split.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    name, _, root = data.partition(":")
    if name == "wds":
        from locvit.data.shards import ShardDataset, ShardSpec

        return ShardDataset(ShardSpec(root, split), transform, seed)  # type: ignore[return-value]
    if name in EMBEDDED:
        images, targets, classes = digits_arrays(split)
        return ArrayDataset(images, targets, classes, transform, seed)
    if name in CIFAR:
        images, targets, classes = cifar_arrays(name, root or "data", split)
        return ArrayDataset(images, targets, classes, transform, seed)
    return ImageFolderDataset(split_folder(data, split), transform, seed, class_to_idx=class_to_idx)


def check_readable(dataset: SeededDataset, max_tries: int = 64) -> None:
    """Fail before training when a dataset has no readable image (tries files until one decodes)."""
    if hasattr(dataset, "first_readable"):  # streamed shards
        if not dataset.first_readable(max_tries):
            raise ValueError(f"no readable image in {dataset.root}: the first {max_tries} samples do not decode")
        return
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    step = max(1, n // max_tries)
    for i in range(0, n, step):
        try:
            dataset.load(i)
            return
        except DECODE_ERRORS:
            continue
    where = getattr(dataset, "root", "the dataset")
    raise ValueError(f"no readable image in {where}: the {min(n, max_tries)} files tried could not be decoded")
