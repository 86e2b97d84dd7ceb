"""Generated dense-task datasets (``locvit demo --task detect|segment`` and the tests): shapes on noise.

Each image holds 1-3 non-overlapping shapes -- axis-aligned rectangles and discs (ellipses) of random size and
colour -- on a dark noise background, at sizes that are not multiples of 32. What to learn is the shape, not the
colour. Written in the standard layouts, so the commands read them as they read COCO and ADE20K:

* detection (COCO): ``{train,val}/images/*.png`` + ``{train,val}/annotations.json`` with boxes, polygon masks and
  four corner keypoints per rectangle (``top_left``, ``top_right``, ``bottom_right``, ``bottom_left``; a disc has
  none, as a COCO person without labelled keypoints);
* segmentation (ADE20K): ``images/{training,validation}/*.png`` + ``annotations/{training,validation}/*.png``
  with ADE20K's convention: 0 = unlabelled (a one-pixel band along every shape's edge), 1 = background,
  2 = rectangle, 3 = disc; with ``reduce_zero_label`` the model predicts 3 classes.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from locvit.files import atomic_write_text

__all__ = ["CORNERS", "SHAPES", "make_detection_data", "make_segmentation_data"]

SHAPES = ("rectangle", "disc")
CORNERS = ("top_left", "top_right", "bottom_right", "bottom_left")


def _scene(rng: random.Random, h: int, w: int, max_shapes: int = 3) -> list[tuple[int, list[int]]]:
    """Up to ``max_shapes`` non-overlapping (category, [x0, y0, x1, y1]) boxes."""
    boxes: list[tuple[int, list[int]]] = []
    for _ in range(40):
        if len(boxes) >= rng.randint(1, max_shapes):
            break
        bw, bh = rng.randint(w // 6, w // 2), rng.randint(h // 6, h // 2)
        x0, y0 = rng.randint(1, w - bw - 2), rng.randint(1, h - bh - 2)
        box = [x0, y0, x0 + bw, y0 + bh]
        if all(box[2] + 3 < b[0] or b[2] + 3 < box[0] or box[3] + 3 < b[1] or b[3] + 3 < box[1] for _, b in boxes):
            boxes.append((rng.randrange(len(SHAPES)), box))
    return boxes


def _canvas(rng: random.Random, h: int, w: int) -> Image.Image:
    noise = np.random.default_rng(rng.randrange(2**31)).integers(0, 70, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(noise)


def _polygon(cat: int, box: list[int], n: int = 32) -> list[float]:
    x0, y0, x1, y1 = box
    if SHAPES[cat] == "rectangle":
        return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return [round(v, 2) for k in range(n) for v in (cx + rx * math.cos(2 * math.pi * k / n),
                                                   cy + ry * math.sin(2 * math.pi * k / n))]


def _draw(draw: ImageDraw.ImageDraw, cat: int, box: list[int], fill) -> None:
    (draw.rectangle if SHAPES[cat] == "rectangle" else draw.ellipse)(box, fill=fill)


def _size(rng: random.Random, size: int) -> tuple[int, int]:
    return rng.randrange(size * 3 // 4, size + 1) | 1, rng.randrange(size, size * 5 // 4 + 1) | 1


def make_detection_data(root: str | Path, num_train: int = 64, num_val: int = 16, size: int = 128,
                        seed: int = 0) -> Path:
    """Write a COCO-format shapes dataset under ``root`` (see the module docstring); returns ``root``."""
    root = Path(root)
    rng = random.Random(seed)
    cats = [dict(id=i + 1, name=n, supercategory="shape", keypoints=list(CORNERS), skeleton=[[1, 2], [2, 3], [3, 4],
                                                                                             [4, 1]])
            for i, n in enumerate(SHAPES)]
    for split, n in (("train", num_train), ("val", num_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            h, w = _size(rng, size)
            img = _canvas(rng, h, w)
            draw = ImageDraw.Draw(img)
            for cat, box in _scene(rng, h, w):
                _draw(draw, cat, box, tuple(rng.randint(110, 255) for _ in range(3)))
                x0, y0, x1, y1 = box
                kpts = [0] * 12
                if SHAPES[cat] == "rectangle":
                    kpts = [x0, y0, 2, x1, y0, 2, x1, y1, 2, x0, y1, 2]
                bw, bh = x1 - x0, y1 - y0
                area = bw * bh if SHAPES[cat] == "rectangle" else math.pi * bw * bh / 4
                anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=cat + 1, iscrowd=0,
                                 area=round(float(area), 2), bbox=[float(x0), float(y0), float(bw), float(bh)],
                                 segmentation=[_polygon(cat, box)], keypoints=kpts,
                                 num_keypoints=sum(1 for v in kpts[2::3] if v > 0)))
            name = f"{i:05d}.png"
            img.save(root / split / "images" / name)
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
        atomic_write_text(root / split / "annotations.json",
                          json.dumps(dict(images=images, annotations=anns, categories=cats)))
    return root


def make_segmentation_data(root: str | Path, num_train: int = 64, num_val: int = 16, size: int = 128,
                           seed: int = 0) -> Path:
    """Write an ADE20K-layout shapes dataset under ``root`` (see the module docstring); returns ``root``."""
    root = Path(root)
    rng = random.Random(seed)
    for split, n in (("training", num_train), ("validation", num_val)):
        for sub in ("images", "annotations"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = _size(rng, size)
            img, label = _canvas(rng, h, w), Image.new("L", (w, h), 1)
            draw, ldraw = ImageDraw.Draw(img), ImageDraw.Draw(label)
            for cat, box in _scene(rng, h, w):
                _draw(draw, cat, box, tuple(rng.randint(110, 255) for _ in range(3)))
                _draw(ldraw, cat, [box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], 0)  # the unlabelled edge band
                _draw(ldraw, cat, [box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1], cat + 2)
            img.save(root / "images" / split / f"{i:05d}.png")
            label.save(root / "annotations" / split / f"{i:05d}.png")
    return root
