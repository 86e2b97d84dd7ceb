"""COCO-format detection data: instances (boxes, masks) and person-style keypoints, checked before training.

A split is an images folder plus a COCO JSON file, in the layout COCO itself ships (``train2017/``, ``val2017/``,
``annotations/instances_train2017.json``, ``annotations/person_keypoints_val2017.json``...), a generic
``{split}/`` + ``annotations/instances_{split}.json``, or ``{split}/images/`` + ``{split}/annotations.json``
(what ``locvit demo --task detect`` writes). Everything a file can get wrong -- a missing annotation file, an image
listed but absent, entries that are not objects, missing or repeated ids, a category id outside the category list,
a box that is not four numbers or has a negative width or height, a polygon of fewer than three points, an RLE of
another size than its image, an empty split -- is an error naming the file, the offending entries (a few of each
kind, with their count) and the fix when the dataset is built, before any training step. Boxes of zero width or
height (COCO train2017 has a few) are dropped and counted; images the decoder cannot read are skipped and counted
per batch, as in classification.

Samples are ``(image, target)``: a float ``3 x H x W`` tensor in [0, 1] and the torchvision detection target
(``boxes`` xyxy in pixels, ``labels`` 1..K, ``masks`` ``N x H x W`` uint8, ``keypoints`` ``N x K x 3``,
``image_id``). Resizing and normalisation happen inside the torchvision detector (``GeneralizedRCNNTransform``:
``min_size`` / ``max_size``, one of several ``min_size`` values drawn per image when training); the dataset adds
the horizontal flip and, with ``detr_crop``, the DETR-style crop of Swin's multi-scale recipes
(:func:`detr_crop`), both seeded by ``(seed, epoch, index)`` so that a resumed run sees the same augmentation.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from locvit.data.datasets import DECODE_ERRORS, SeededDataset, Unreadable, seed_sample, to_rgb
from locvit.data.loader import Batch, DataError

__all__ = ["CocoDetection", "CocoSplit", "collate_detection", "detr_crop", "find_coco_split", "flip_permutation"]


@dataclass(frozen=True)
class CocoSplit:
    """An annotation file and the folder its ``file_name`` entries are relative to."""

    ann: Path
    images: Path


def find_coco_split(data: str | os.PathLike, split: str, kind: str = "instances") -> CocoSplit:
    """Locate ``split`` (``'train'`` or ``'val'``) of a COCO-format folder.

    Args:
        data: the dataset folder.
        split: ``'train'`` or ``'val'``.
        kind: annotation file prefix: ``'instances'`` (boxes, masks) or ``'person_keypoints'``.

    Raises:
        FileNotFoundError: naming every layout that was looked for.
    """
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    candidates = [
        (root / "annotations" / f"{kind}_{split}2017.json", root / f"{split}2017"),
        (root / "annotations" / f"{kind}_{split}.json", root / split),
        (root / split / "annotations.json", root / split / "images"),
    ]
    for ann, images in candidates:
        if ann.is_file() and images.is_dir():
            return CocoSplit(ann, images)
    tried = "; ".join(f"{a.relative_to(root)} + {i.relative_to(root)}/" for a, i in candidates)
    raise FileNotFoundError(f"no COCO-format '{split}' split under {root} (looked for {tried}); pass the files "
                            f"explicitly with --{split}-ann and --{split}-images")


def flip_permutation(names: Sequence[str]) -> list[int]:
    """Index of each keypoint's mirror image under a horizontal flip: ``left_*`` <-> ``right_*`` (COCO's person
    keypoints, ``top_left`` <-> ``top_right`` ...); names without a side map to themselves."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        mirrored = n.replace("left", "\0").replace("right", "left").replace("\0", "right")
        out.append(index.get(mirrored, index[n]))
    return out


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a COCO JSON file: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path} is not a COCO instances file: no {', '.join(repr(k) for k in missing)} list")
    not_lists = [f"{k!r} is a {type(data[k]).__name__}" for k in ("images", "annotations", "categories")
                 if not isinstance(data[k], list)]
    if not_lists:
        raise DataError(f"{path} is not a COCO instances file: {', '.join(not_lists)}, not a list of objects")
    return data


def _listing(items: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _all_numbers(values: list[Any]) -> bool:
    """Whether ``values`` are all finite numbers; ``math.fsum`` checks them in C (COCO train2017's 860k polygons
    hold tens of millions of numbers)."""
    try:
        return math.isfinite(math.fsum(values))
    except (TypeError, OverflowError):
        return False


class _Problems:
    """The invalid entries of an annotation file, by kind (a description that says the fix); :meth:`check` raises
    one error listing a few entries of each kind with their count, so that one run of the check shows them all."""

    def __init__(self, path: Path):
        self.path = path
        self.found: dict[str, list[str]] = {}

    def add(self, kind: str, entry: str) -> None:
        self.found.setdefault(kind, []).append(entry)

    def check(self) -> None:
        if self.found:
            n = sum(len(v) for v in self.found.values())
            raise DataError(f"{self.path}: {n} invalid entries -- " + "; ".join(
                f"{len(entries)} {kind}: {_listing(entries, 3)}" for kind, entries in self.found.items()))


_NOT_OBJECT = "{} that are not JSON objects (each is {{{}}})"
_POLYGON = ("annotations with a polygon of fewer than 3 points (a polygon is [x1, y1, x2, y2, x3, y3, ...], at "
            "least 6 numbers: drop the shorter polygons, and the annotations left with none)")
_BAD_SEGMENTATION = ("annotations whose segmentation is neither polygons (a list of [x1, y1, x2, y2, ...] lists "
                     "of an even count of numbers) nor RLE ({'counts', 'size': [height, width]})")
_RLE_SIZE = "annotations whose RLE size is not their image's [height, width]"


def _segmentation_problem(seg: Any, im: dict[str, Any]) -> tuple[str, str] | None:
    """``(kind, detail)`` of what is wrong with a COCO ``segmentation`` (polygons or RLE) of an annotation of image
    ``im``; ``None`` when pycocotools can decode it. pycocotools takes a first polygon of 4 numbers for a box (and
    fails with a TypeError) and refuses one of 2 in the first batch; a polygon needs 3 points (Detectron2 drops
    shorter or odd-length ones with a warning)."""
    if isinstance(seg, list):
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) % 2 or not _all_numbers(poly):
                return _BAD_SEGMENTATION, f"polygon {j} is {str(poly)[:40]}"
            if len(poly) < 6:
                return _POLYGON, f"polygon {j} has {len(poly)} numbers"
        return None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size, counts = seg["size"], seg["counts"]
        if (not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size)
                or not (isinstance(counts, str) or isinstance(counts, list) and all(_is_int(v) for v in counts))):
            return _BAD_SEGMENTATION, f"RLE of size {size!r}"
        h, w = im.get("height"), im.get("width")
        if h is not None and w is not None and list(size) != [h, w]:
            return _RLE_SIZE, f"size {size}, image {h}x{w}"
        return None
    return _BAD_SEGMENTATION, f"a {type(seg).__name__}"


class CocoDetection(SeededDataset):
    """One split of a COCO-format dataset, validated on construction.

    Args:
        ann_file: the COCO JSON file.
        image_dir: the folder ``file_name`` is relative to.
        train: training split (images without a usable annotation are left out, crowd regions are not targets).
        masks: build instance masks (Mask R-CNN); every annotation then needs a ``segmentation``.
        keypoints: build keypoint targets (Keypoint R-CNN); the categories name their keypoints.
        hflip: probability of a horizontal flip (training).
        detr_crop: apply :func:`detr_crop` to half the training images (Swin's and DETR's multi-scale recipe).
        seed: augmentation seed.
        categories: category ids in label order (1..K); default: the file's categories sorted by id. Pass the
            training split's to the validation split so that labels agree.
    """

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, *, train: bool = False,
                 masks: bool = False, keypoints: bool = False, hflip: float = 0.0, detr_crop: bool = False,
                 seed: int = 0, categories: Sequence[int] | None = None):
        super().__init__(None, seed)
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.train, self.with_masks, self.with_keypoints, self.hflip = train, masks, keypoints, hflip
        self.detr_crop = detr_crop
        data = _load_json(self.ann_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} (of {self.ann_file}) does not exist")
        problems = _Problems(self.ann_file)
        cats = sorted(self._check_categories(data["categories"], problems), key=lambda c: c["id"])
        problems.check()
        cat_ids = [c["id"] for c in cats]
        if categories is not None:
            unknown = sorted(set(cat_ids) - set(categories))
            if unknown:
                raise ValueError(f"{self.ann_file}: categories {unknown} are not among the training split's "
                                 f"{list(categories)}")
            cat_ids = list(categories)
        if not cat_ids:
            raise ValueError(f"{self.ann_file}: the categories list is empty")
        self.cat_ids = cat_ids
        self.cat_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        by_id = {c["id"]: c for c in cats}
        self.class_names = [by_id.get(c, {}).get("name", str(c)) for c in cat_ids]
        self.keypoint_names: list[str] = []
        if keypoints:
            named = [c for c in cats if c.get("keypoints")]
            if not named:
                raise ValueError(f"{self.ann_file}: no category names keypoints (a Keypoint R-CNN needs COCO's "
                                 "person_keypoints format: categories with a 'keypoints' list)")
            self.keypoint_names = list(named[0]["keypoints"])
            if any(list(c["keypoints"]) != self.keypoint_names for c in named):
                raise ValueError(f"{self.ann_file}: categories name different keypoints; one schema is supported")
            self.flip_index = flip_permutation(self.keypoint_names)
        self._check(data, problems)

    # --- validation -------------------------------------------------------------------------------------------
    @staticmethod
    def _check_categories(entries: list[Any], problems: _Problems) -> list[dict[str, Any]]:
        """The well-formed categories (objects with an integer ``id`` seen once); the others go to ``problems``."""
        cats, seen = [], set()
        for i, c in enumerate(entries):
            if not isinstance(c, dict):
                problems.add(_NOT_OBJECT.format("categories", '"id": 1, "name": "person"'),
                             f"categories[{i}] is a {type(c).__name__}")
            elif not _is_int(c.get("id")):
                problems.add("categories without an integer 'id' (give each category a unique one)",
                             f"categories[{i}]" + (f" ({c['name']})" if "name" in c else ""))
            elif c["id"] in seen:
                problems.add("category ids listed twice (ids must be unique)", f"id {c['id']}")
            else:
                seen.add(c["id"])
                cats.append(c)
        return cats

    def _check(self, data: dict[str, Any], problems: _Problems) -> None:
        """Check the images and annotations (every problem listed in one error), index the usable annotations."""
        f = self.ann_file
        images: dict[int, dict[str, Any]] = {}
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict):
                problems.add(_NOT_OBJECT.format("images", '"id": 1, "file_name": "a.jpg", "height": 480, '
                                                          '"width": 640'), f"images[{i}] is a {type(im).__name__}")
            elif not _is_int(im.get("id")):
                problems.add("images without an integer 'id' (give each image a unique one)", f"images[{i}]")
            elif not isinstance(im.get("file_name"), str):
                problems.add("images without a 'file_name' (the image's path under the images folder)",
                             f"image {im['id']}")
            elif im["id"] in images:
                problems.add("image ids listed twice (ids must be unique)", f"id {im['id']}")
            elif any(k in im and not (_is_number(im[k]) and im[k] > 0) for k in ("height", "width")):
                problems.add("images whose height or width is not a positive number (the image's size in pixels)",
                             f"image {im['id']} ({im['file_name']}): {im.get('height')!r} x {im.get('width')!r}")
            else:
                images[im["id"]] = im
        anns: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        self.degenerate = 0
        n_kpt = len(self.keypoint_names)
        seen: set[int] = set()
        for i, a in enumerate(data["annotations"]):
            if not isinstance(a, dict):
                problems.add(_NOT_OBJECT.format("annotations", '"id": 1, "image_id": 1, "category_id": 1, "bbox": '
                                                               '[x, y, width, height], ...'),
                             f"annotations[{i}] is a {type(a).__name__}")
                continue
            if not _is_int(a.get("id")):
                problems.add("annotations without an integer 'id' (COCOeval indexes annotations by id: give each "
                             "a unique one)", f"annotations[{i}]")
                continue
            if a["id"] in seen:
                problems.add("annotation ids listed twice (ids must be unique)", f"id {a['id']}")
                continue
            seen.add(a["id"])
            if a.get("image_id") not in images:
                problems.add("annotations whose image_id is not in 'images'",
                             f"annotation {a['id']}: image_id {a.get('image_id')!r}")
                continue
            im = images[a["image_id"]]
            where = f"annotation {a['id']} (image {im['file_name']})"
            if a.get("category_id") not in self.cat_to_label:
                problems.add(f"annotations whose category_id is not in the categories list {self.cat_ids}",
                             f"{where}: category_id {a.get('category_id')!r}")
            box = a.get("bbox")
            if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
                problems.add("annotations whose bbox is not 4 finite numbers [x, y, width, height] in pixels",
                             f"{where}: {str(box)[:40]}")
                box = None
            elif box[2] < 0 or box[3] < 0:
                problems.add("annotations with a negative width or height (bbox is [x, y, width, height], not "
                             "[x0, y0, x1, y1])", f"{where}: {box}")
            seg = a.get("segmentation")
            # masks are built for every object, and for crowd regions where they are scored (not in training)
            if self.with_masks and not seg and (not a.get("iscrowd") or not self.train):
                problems.add("annotations without a segmentation (Mask R-CNN needs one per object, or train a "
                             "faster_rcnn / retinanet detector)", where)
            elif self.with_masks and seg:
                bad = _segmentation_problem(seg, im)
                if bad:
                    problems.add(bad[0], f"{where}: {bad[1]}")
            kpts = a.get("keypoints")
            if self.with_keypoints and kpts is not None and (
                    not isinstance(kpts, list) or len(kpts) != 3 * n_kpt or not _all_numbers(kpts)):
                problems.add(f"annotations whose keypoints are not {3 * n_kpt} numbers (the category names {n_kpt} "
                             "keypoints: x, y, visibility each)",
                             f"{where}: {len(kpts) if isinstance(kpts, list) else type(kpts).__name__}")
            if problems.found or box is None:
                continue
            if self._xyxy(box, im) is None:
                self.degenerate += 1
                continue
            anns[a["image_id"]].append(a)
        problems.check()
        if not images:
            raise DataError(f"{f} lists no images: the split is empty")
        absent = [im["file_name"] for im in images.values() if not (self.image_dir / im["file_name"]).is_file()]
        if absent:
            raise FileNotFoundError(f"{f} lists {len(absent)} images that are not in {self.image_dir}: "
                                    f"{_listing(absent)} (extract the images there, or point --*-images at them)")
        ids = sorted(images)
        if self.train:
            ids = [i for i in ids if any(not a.get("iscrowd") for a in anns[i])]
            if not ids:
                raise DataError(f"{f}: no image has a usable (non-crowd, non-empty) annotation; nothing to train on")
        self.dropped_images = len(images) - len(ids)
        self.images, self.anns, self.ids = images, anns, ids
        self._coco_data = data

    @staticmethod
    def _xyxy(box: Sequence[float], im: dict[str, Any]) -> list[float] | None:
        x, y, w, h = box
        W, H = im.get("width", math.inf), im.get("height", math.inf)
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, W), min(y + h, H)
        return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else None

    @property
    def root(self) -> Path:
        """The images folder (where :func:`locvit.data.datasets.check_readable` says it found no readable image)."""
        return self.image_dir

    def summary(self) -> str:
        """One line: images, annotations, what was dropped."""
        n = sum(len(self.anns[i]) for i in self.ids)
        msg = f"{self.ann_file.name}: {len(self.ids)} images, {n} objects, {len(self.cat_ids)} categories"
        if self.dropped_images:
            msg += f"; {self.dropped_images} images without a usable annotation left out"
        if self.degenerate:
            msg += f"; {self.degenerate} boxes of zero width or height dropped"
        return msg

    def coco(self):
        """The split as a ``pycocotools.coco.COCO`` object (ground truth for ``COCOeval``)."""
        from pycocotools.coco import COCO

        gt = COCO()
        gt.dataset = self._coco_data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            gt.createIndex()
        return gt

    # --- samples ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def target(self, index: int) -> int:
        return self.ids[index]

    def load(self, index: int) -> tuple[Image.Image, dict[str, torch.Tensor]]:
        info = self.images[self.ids[index]]
        with Image.open(self.image_dir / info["file_name"]) as im:
            img = to_rgb(im)
        return img, self._target(info, img.size)

    def _target(self, info: dict[str, Any], size: tuple[int, int]) -> dict[str, torch.Tensor]:
        W, H = size
        im = dict(info, width=W, height=H)
        boxes, labels, masks, kpts = [], [], [], []
        for a in self.anns[info["id"]]:
            if self.train and a.get("iscrowd"):
                continue
            box = self._xyxy(a["bbox"], im)
            if box is None:
                continue
            boxes.append(box)
            labels.append(self.cat_to_label[a["category_id"]])
            if self.with_masks:
                masks.append(self._mask(a["segmentation"], H, W))
            if self.with_keypoints:
                k = a.get("keypoints") or [0.0] * (3 * len(self.keypoint_names))
                kpts.append(torch.tensor(k, dtype=torch.float32).view(-1, 3))
        t = dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                 labels=torch.tensor(labels, dtype=torch.int64), image_id=torch.tensor(info["id"]))
        if self.with_masks:
            t["masks"] = torch.stack(masks) if masks else torch.zeros(0, H, W, dtype=torch.uint8)
        if self.with_keypoints:
            t["keypoints"] = torch.stack(kpts) if kpts else torch.zeros(0, len(self.keypoint_names), 3)
        return t

    @staticmethod
    def _mask(seg: Any, h: int, w: int) -> torch.Tensor:
        from pycocotools import mask as mask_utils

        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        return torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rle))).to(torch.uint8)

    def describe(self, index: int) -> str:
        return str(self.image_dir / self.images[self.ids[index]]["file_name"])

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Unreadable, dict[str, torch.Tensor] | int]:
        try:
            img, t = self.load(index)
        except DECODE_ERRORS as e:
            return Unreadable(index, self.describe(index), f"{type(e).__name__}: {e}"), self.target(index)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        if self.train and (self.hflip > 0 or self.detr_crop):
            seed_sample(self.seed, self.epoch, index)
            if self.hflip > 0 and torch.rand(()) < self.hflip:
                x, t = self._flip(x, t)
            if self.detr_crop and torch.rand(()) < 0.5:  # AutoAugment's choice between its two policies
                x, t = detr_crop(x, t)
        return x, t

    def _flip(self, x: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        W = x.shape[-1]
        t = dict(t)
        b = t["boxes"].clone()
        b[:, [0, 2]] = W - t["boxes"][:, [2, 0]]
        t["boxes"] = b
        if "masks" in t:
            t["masks"] = t["masks"].flip(-1)
        if "keypoints" in t:
            k = t["keypoints"][:, self.flip_index].clone()
            k[..., 0] = W - k[..., 0]
            k[k[..., 2] == 0] = 0  # unlabelled points stay at (0, 0, 0)
            t["keypoints"] = k
        return x.flip(-1), t


# the DETR-style crop of Swin's mmdetection configs (mask_rcnn_swin_*_mstrain_480-800_adamw_{1x,3x}_coco.py)
DETR_CROP_SHORT = (400, 500, 600)
DETR_CROP_SIZE = (384, 600)
DETR_CROP_MAX = 1333


def detr_crop(x: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The cropping policy of Swin's (and DETR's) multi-scale training, on one image and its target.

    mmdetection's pipeline: ``Resize`` to a short side drawn from 400 / 500 / 600 (long side at most 1333, aspect
    kept, sizes rounded as mmcv rounds them), then ``RandomCrop(crop_type='absolute_range', crop_size=(384, 600),
    allow_negative_crop=True)``: a crop height drawn uniformly from ``[min(h, 384), min(h, 600)]``, a width
    likewise, at a uniform offset. Boxes are shifted and clipped to the crop, and instances left with no area
    (and their masks and keypoints) are dropped; keypoints outside the crop become unlabelled; a crop may keep no
    instance at all (``allow_negative_crop``). The policy's last step, the multi-scale ``Resize`` to 480-800, is the
    detector's own (``GeneralizedRCNNTransform``). Draws from torch's generator (the caller seeds it).
    """
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    short = DETR_CROP_SHORT[int(torch.randint(len(DETR_CROP_SHORT), ()))]
    scale = min(short / min(H, W), DETR_CROP_MAX / max(H, W))
    h, w = int(H * scale + 0.5), int(W * scale + 0.5)
    x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    sy, sx = h / H, w / W
    t = dict(t)
    boxes = t["boxes"] * torch.tensor([sx, sy, sx, sy])
    lo, hi = DETR_CROP_SIZE
    ch = int(torch.randint(min(h, lo), min(h, hi) + 1, ()))
    cw = int(torch.randint(min(w, lo), min(w, hi) + 1, ()))
    y0 = int(torch.randint(h - ch + 1, ()))
    x0 = int(torch.randint(w - cw + 1, ()))
    x = x[:, y0:y0 + ch, x0:x0 + cw]
    boxes = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    t["boxes"], t["labels"] = boxes[keep], t["labels"][keep]
    if "masks" in t:
        m = F.interpolate(t["masks"][None].float(), size=(h, w), mode="nearest")[0].to(torch.uint8)
        t["masks"] = m[keep, y0:y0 + ch, x0:x0 + cw].contiguous()
    if "keypoints" in t:
        k = t["keypoints"][keep].clone()
        k[..., 0] = k[..., 0] * sx - x0
        k[..., 1] = k[..., 1] * sy - y0
        outside = (k[..., 0] < 0) | (k[..., 0] >= cw) | (k[..., 1] < 0) | (k[..., 1] >= ch) | (k[..., 2] == 0)
        k[outside] = 0
        t["keypoints"] = k
    return x.contiguous(), t


def collate_detection(samples: Sequence[tuple[Any, Any]]) -> Batch:
    """Lists of images and targets (sizes differ), unreadable images dropped and counted."""
    good = [(x, t) for x, t in samples if not isinstance(x, Unreadable)]
    bad = [x for x, _ in samples if isinstance(x, Unreadable)]
    return Batch([x for x, _ in good], [t for _, t in good], bad)  # type: ignore[arg-type]
