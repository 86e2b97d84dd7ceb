"""Configurations of ``locvit detect`` and ``locvit segment``: defaults < YAML recipe < command-line flags.

The papers' recipes ship in ``locvit/configs/dense/`` (``--config mask_rcnn_1x_coco``,
``--config upernet_160k_ade20k``); the resolved configuration is written to the run directory as ``config.yaml``.
Schedules count optimiser steps (iterations, Detectron2 / mmsegmentation style) unless ``epochs`` is set
(mmdetection style), in which case ``lr_steps`` and ``eval_interval`` count epochs too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from locvit.engine.config import RunConfig, load_yaml, resolve_config_path

__all__ = ["DENSE_CONFIG_DIR", "DenseConfig", "DetectConfig", "SegmentConfig", "build_task_config", "load_recipe"]


DENSE_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "dense"
DETECTORS = ("mask_rcnn", "faster_rcnn", "retinanet", "keypoint_rcnn")


@dataclass
class DenseConfig(RunConfig):
    """What detection and segmentation training add to :class:`~locvit.engine.config.RunConfig` (see the
    subclasses for each task's own fields)."""

    RECIPES: ClassVar[Path] = DENSE_CONFIG_DIR
    model: str = "regionvit_small"         # a locvit pyramid model (RegionViT, Focal, VVT, PVT, LocalViT-PVT/Swin)
    checkpoint: str | None = None          # classification weights for the backbone (official or ours)
    pretrained: bool = False               # the model's released ImageNet weights (when the zoo has them)
    num_classes: int | None = None         # default: the dataset's categories (detection), 150 (segmentation)
    output: str = "runs/dense"
    # schedule (iterations unless `epochs` is set)
    epochs: int | None = None              # schedule length in epochs (mmdetection style) ...
    iters: int | None = None               # ... or in optimiser steps (Detectron2 / mmsegmentation style)
    lr_steps: list[int] = field(default_factory=list)  # decay points (sched 'step'), in epochs or iterations
    lr_gamma: float = 0.1
    sched: str = "step"                    # step | poly
    poly_power: float = 1.0
    min_lr: float = 0.0
    warmup_iters: int = 1000
    warmup_ratio: float = 0.001            # the warm-up starts at lr * warmup_ratio, linearly to lr
    batch_size: int = 2
    lr: float = 1e-4
    drop_path: float = 0.2
    workers: int = 4
    checkpoint_interval: int = 0           # also save every N iterations (0: at each evaluation only)
    eval_interval: int | None = None       # in the schedule's unit; default: every epoch / at the end only
    log_interval: int = 20

    def problems(self) -> list[str]:
        out = super().problems()
        if (self.epochs is None) == (self.iters is None):
            return out + ["set exactly one of epochs and iters (the schedule's length), e.g. --iters 90000"]
        length = self.epochs if self.epochs is not None else self.iters
        if self.sched not in ("step", "poly"):
            out.append(f"sched must be 'step' or 'poly', got {self.sched!r}")
        if length <= 0:
            out.append(f"epochs/iters must be positive, got {length}")
        bad = [s for s in self.lr_steps if not 0 < s <= length]
        if bad:
            out.append(f"lr_steps {bad} lie outside the schedule (1..{length} {'epochs' if self.epochs else 'iters'})")
        return out


@dataclass
class DetectConfig(DenseConfig):
    """``locvit detect``: a torchvision detector on a locvit backbone, COCO-format data, COCOeval scores."""

    COMMAND: ClassVar[str] = "locvit detect train"  # what wrote a run directory (locvit.engine.run)
    output: str = "runs/detect"
    detector: str = "mask_rcnn"            # mask_rcnn | faster_rcnn | retinanet | keypoint_rcnn
    train_ann: str | None = None           # explicit files instead of `data`'s layout
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    min_size: list[int] = field(default_factory=lambda: [800])  # training short sides (one drawn per image)
    max_size: int = 1333
    detr_crop: bool = False                # Swin/DETR: half the images resized to short 400/500/600, cropped 384-600
    test_size: list[int] | None = None     # [short, long] at evaluation; default: [min_size[-1], max_size]
    fpn_channels: int = 256
    box_head_dim: int = 1024               # the two-layer box head's width (Mask/Faster/Keypoint R-CNN)
    mask_head_channels: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    keypoint_head_channels: list[int] = field(default_factory=lambda: [512] * 8)
    detector_kwargs: dict[str, Any] = field(default_factory=dict)  # any other torchvision detector argument
    kpt_oks_sigmas: list[float] | None = None  # default: COCO's for 17 keypoints, else 0.05 each

    def problems(self) -> list[str]:
        out = super().problems()
        if self.detector not in DETECTORS:
            out.append(f"detector must be {', '.join(DETECTORS[:-1])} or {DETECTORS[-1]}, got {self.detector!r}")
        if not self.min_size or self.test_size is not None and len(self.test_size) != 2:
            out.append("min_size needs at least one size; test_size is [short, long]")
        return out


@dataclass
class SegmentConfig(DenseConfig):
    """``locvit segment``: Semantic FPN or UperNet (smp decoders) on a locvit encoder, ADE20K-style data."""

    COMMAND: ClassVar[str] = "locvit segment train"  # what wrote a run directory (locvit.engine.run)
    output: str = "runs/segment"
    head: str = "fpn"                      # fpn (Semantic FPN) | upernet
    decoder_channels: int | None = None    # FPN pyramid width (256) / UperNet width (smp: 256, mmseg: 512)
    aux_weight: float = 0.0                # an FCN auxiliary head on the stride-16 map (UperNet recipes: 0.4)
    reduce_zero_label: bool = True         # ADE20K: label 0 ("other") ignored, 1..150 -> 0..149
    ignore_index: int = 255
    crop_size: list[int] = field(default_factory=lambda: [512, 512])
    scale: list[int] = field(default_factory=lambda: [2048, 512])  # random rescale bounds (long, short)
    ratio_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    photometric: bool = True
    test_scale: list[int] | None = field(default_factory=lambda: [2048, 512])
    inference: str = "whole"               # whole | slide
    slide_stride: list[int] = field(default_factory=lambda: [341, 341])
    test_ratios: list[float] | None = None  # multi-scale test: test_scale times each ratio, probabilities averaged
    test_flip: bool = False                # also every test view flipped horizontally (and its output flipped back)
    aug_test: bool = False                 # mmseg's multi-scale + flip test: test_ratios 0.5-1.75 and test_flip
    weight_decay: float = 0.01
    lr: float = 6e-5

    def problems(self) -> list[str]:
        out = super().problems()
        if self.head not in ("fpn", "upernet"):
            out.append(f"head must be 'fpn' (Semantic FPN) or 'upernet', got {self.head!r}")
        if self.inference not in ("whole", "slide"):
            out.append(f"inference must be 'whole' or 'slide', got {self.inference!r}")
        bad = [r for r in self.test_ratios or () if not r > 0]
        if bad:
            out.append(f"test_ratios must be > 0 (each scales test_scale), got {bad}; mmsegmentation's multi-scale "
                       f"test is --test-ratios {' '.join(map(str, AUG_TEST_RATIOS))} (--aug-test)")
        elif len(self.test_views()) > 1 and not self.test_scale:
            out.append("multi-scale testing scales test_scale: set --test-scale (e.g. 2048 512)")
        return out

    def test_views(self) -> list[tuple[float, bool]]:
        """``(ratio, flip)`` of every view :func:`locvit.dense.segment.evaluate_segmenter` averages; one view,
        ``(1.0, False)``, is the single-scale test. ``aug_test`` is mmsegmentation's ``MultiScaleFlipAug`` of the
        Swin / Focal ADE20K configs (``img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]``, ``flip=True``)."""
        ratios = self.test_ratios or (AUG_TEST_RATIOS if self.aug_test else [1.0])
        flips = [False, True] if self.test_flip or self.aug_test else [False]
        return [(float(r), f) for r in ratios for f in flips]


# mmsegmentation's multi-scale test ratios (the Swin / Focal ADE20K configs' MultiScaleFlipAug)
AUG_TEST_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]

C = TypeVar("C", bound=DenseConfig)


def load_recipe(name: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """A dense recipe (a path, or a name shipped in ``locvit/configs/dense/``) as a dict (checked against
    ``fields``; default: every dense task's)."""
    return load_yaml(resolve_config_path(name, DENSE_CONFIG_DIR), fields or _ALL_FIELDS, DENSE_CONFIG_DIR)


def build_task_config(cls: type[C], config: str | None = None, overrides: dict[str, Any] | None = None,
                      run: dict[str, Any] | None = None) -> C:
    """A dense task's configuration: :meth:`~locvit.engine.config.RunConfig.build` of ``cls``."""
    return cls.build(config, overrides, run)


_ALL_FIELDS = {**DetectConfig.fields(), **SegmentConfig.fields()}
