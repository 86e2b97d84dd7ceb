"""The photo a figure is drawn on: the user's file, or a real photo that installs with scikit-learn.

The image is resized so that it covers the model's input size and centre-cropped to it (aspect ratio kept), then
normalised with the model's mean/std. Query positions are pixels ``(row, col)`` of that cropped input.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

DEFAULT_PHOTO = "china.jpg"  # scikit-learn's bundled sample photo (a temple in China); flower.jpg is the other one


def default_photo(name: str = DEFAULT_PHOTO) -> np.ndarray:
    """A real photo bundled with scikit-learn (``sklearn.datasets.load_sample_image``): ``H x W x 3`` uint8.

    Nothing is downloaded: the JPEGs ship inside the scikit-learn wheel (``pip install 'locvit[tools]'``).
    """
    try:
        from sklearn.datasets import load_sample_image
    except ImportError as e:  # pragma: no cover - tools extra missing
        raise ValueError("the default photo comes with scikit-learn (pip install 'locvit[tools]'); "
                         "or pass an image file with --image") from e
    return load_sample_image(name)


def read_image(path: str | Path | None) -> tuple[np.ndarray, str]:
    """``(H x W x 3 uint8 array, label)`` of an image file, or of the default photo when ``path`` is None."""
    if path is None:
        return default_photo(), f"scikit-learn sample photo {DEFAULT_PHOTO}"
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")), path.name
    except UnidentifiedImageError as e:
        raise ValueError(f"{path} is not an image file PIL can read") from e


@dataclass
class Prepared:
    """A photo ready for a model: ``tensor`` (1 x 3 x H x W, normalised) and ``display`` (H x W x 3 floats in
    [0, 1], the same crop), plus where the photo came from."""

    tensor: Tensor
    display: np.ndarray
    label: str

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.tensor.shape[-2:])


def model_input_size(model: nn.Module, img_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """``img_size`` if given, else the model's pretrained-cfg input size."""
    if img_size is not None:
        return int(img_size[0]), int(img_size[1])
    size = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
    return int(size[-2]), int(size[-1])


def prepare(image: np.ndarray, model: nn.Module, size: tuple[int, int], label: str = "") -> Prepared:
    """Resize ``image`` to cover ``size`` (bicubic, aspect kept), centre-crop, normalise with the model's cfg."""
    from PIL import Image

    H, W = size
    h, w = image.shape[:2]
    scale = max(H / h, W / w)
    nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
    im = Image.fromarray(image).resize((nw, nh), Image.BICUBIC)
    top, left = (nh - H) // 2, (nw - W) // 2
    arr = np.asarray(im, dtype=np.float32)[top:top + H, left:left + W] / 255.0
    cfg = getattr(model, "pretrained_cfg", {})
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(1, 3, 1, 1)
    x = (torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0) - mean) / std
    return Prepared(x, arr, label)


def check_query(query: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Validate a ``(row, col)`` pixel of the model input."""
    r, c = int(query[0]), int(query[1])
    if not (0 <= r < size[0] and 0 <= c < size[1]):
        raise ValueError(f"query pixel ({r}, {c}) lies outside the {size[0]}x{size[1]} model input "
                         "(--query takes ROW COL pixels of the resized, centre-cropped image)")
    return r, c
