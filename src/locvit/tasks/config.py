"""Configurations of ``locvit detect`` and ``locvit segment``: defaults < YAML recipe < command-line flags.

The papers' recipes ship in ``locvit/configs/dense/`` (``--config mask_rcnn_1x_coco``,
``--config upernet_160k_ade20k``); the resolved configuration is written to the run directory as ``config.yaml``.
Schedules count optimiser steps (iterations, Detectron2 / mmsegmentation style) unless ``epochs`` is set
(mmdetection style), in which case ``lr_steps`` and ``eval_interval`` count epochs too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

__all__ = ["DENSE_CONFIG_DIR", "DenseConfig", "DetectConfig", "SegmentConfig", "build_task_config", "load_recipe",
           "save_task_config"]


@dataclass
class DenseConfig:
    """What detection and segmentation training share (see the subclasses for the task's own fields)."""

    # what to train, on what
    model: str = "regionvit_small"         # a locvit pyramid model (RegionViT, Focal, VVT, PVT, LocalViT-PVT/Swin)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # model constructor arguments
    checkpoint: str | None = None          # classification weights for the backbone (official or ours)
    trust_checkpoint: bool = False         # allow checkpoints that pickle more than tensors
    pretrained: bool = False               # the model's released ImageNet weights (when the zoo has them)
    data: str | None = None                # dataset folder (see the task's layouts)
    num_classes: int | None = None         # default: the dataset's categories (detection), 150 (segmentation)
    output: str = "runs/dense"             # the run directory
    # schedule and optimiser (iterations unless `epochs` is set)
    epochs: int | None = None              # schedule length in epochs (mmdetection style) ...
    iters: int | None = None               # ... or in optimiser steps (Detectron2 / mmsegmentation style)
    lr_steps: list[int] = field(default_factory=list)  # decay points (sched 'step'), in epochs or iterations
    lr_gamma: float = 0.1
    sched: str = "step"                    # step | poly
    poly_power: float = 1.0
    min_lr: float = 0.0
    warmup_iters: int = 1000
    warmup_ratio: float = 0.001            # the warm-up starts at lr * warmup_ratio, linearly to lr
    batch_size: int = 2                    # per process and micro-batch
    grad_accum_steps: int = 1              # micro-batches per optimiser step: global batch = batch_size x processes x N
    lr: float = 1e-4
    opt: str = "adamw"
    opt_eps: float = 1e-8
    opt_betas: tuple[float, float] | None = None
    momentum: float = 0.9
    weight_decay: float = 0.05
    clip_grad: float | None = None
    drop_path: float = 0.2
    hflip: float = 0.5
    # machinery
    amp: str = "auto"                      # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    workers: int = 4
    seed: int = 0
    device: str | None = None
    checkpoint_interval: int = 0           # also save every N iterations (0: at each evaluation only)
    eval_interval: int | None = None       # in the schedule's unit; default: every epoch / at the end only
    log_interval: int = 20
    max_steps: int | None = None           # stop after this many optimiser steps (smoke tests)
    resume: str | None = None              # a run directory or checkpoint; 'auto' = output/last.pth
    allow_config_change: bool = False      # resume although model, data, batch size, seed... differ from the run
    overwrite: bool = False                # start again in an --output holding a run; its files wait in replaced_run/
    deterministic: bool = False
    dist_timeout: float = 1800.0           # seconds a process waits for its peers (start and every collective)
    tensorboard: bool = True               # without --log: TensorBoard files when tensorboard is installed
    log: list[str] = field(default_factory=list)  # tensorboard and/or wandb besides metrics.csv (csv: that alone)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class DetectConfig(DenseConfig):
    """``locvit detect``: a torchvision detector on a locvit backbone, COCO-format data, COCOeval scores."""

    COMMAND: ClassVar[str] = "locvit detect train"  # what wrote a run directory (locvit.engine.rundir)
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


@dataclass
class SegmentConfig(DenseConfig):
    """``locvit segment``: Semantic FPN or UperNet (smp decoders) on a locvit encoder, ADE20K-style data."""

    COMMAND: ClassVar[str] = "locvit segment train"  # what wrote a run directory (locvit.engine.rundir)
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

    def test_views(self) -> list[tuple[float, bool]]:
        """``(ratio, flip)`` of every view :func:`locvit.tasks.segment.evaluate_segmenter` averages; one view,
        ``(1.0, False)``, is the single-scale test. ``aug_test`` is mmsegmentation's ``MultiScaleFlipAug`` of the
        Swin / Focal ADE20K configs (``img_ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75]``, ``flip=True``)."""
        ratios = self.test_ratios or (AUG_TEST_RATIOS if self.aug_test else [1.0])
        flips = [False, True] if self.test_flip or self.aug_test else [False]
        return [(float(r), f) for r in ratios for f in flips]


# mmsegmentation's multi-scale test ratios (the Swin / Focal ADE20K configs' MultiScaleFlipAug)
AUG_TEST_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]

C = TypeVar("C", bound=DenseConfig)
DENSE_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "dense"


def load_recipe(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A dense recipe (a path, or a name shipped in ``locvit/configs/dense/``) as a dict checked against ``fields``."""
    from locvit.engine.config import load_yaml, resolve_config_path

    return load_yaml(resolve_config_path(name, DENSE_CONFIG_DIR), fields, DENSE_CONFIG_DIR)
_TUPLES = ("opt_betas",)


def build_task_config(cls: type[C], config: str | None = None, overrides: dict[str, Any] | None = None,
                      run: dict[str, Any] | None = None) -> C:
    """Merge ``cls``'s defaults, a YAML recipe (path or shipped name), the configuration of the run being resumed
    (``run``, less its per-invocation settings) and explicit overrides, in that order."""
    from locvit.engine.config import PER_INVOCATION

    fields = {f.name: f for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = load_recipe(config, fields) if config else {}
    merged.update({k: v for k, v in (run or {}).items() if k in fields and k not in PER_INVOCATION})
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}")
    for k in _TUPLES:
        if merged.get(k) is not None:
            merged[k] = tuple(merged[k])
    if isinstance(merged.get("log"), str):  # `log: tensorboard` in a recipe
        merged["log"] = [merged["log"]]
    cfg = cls(**merged)
    _check(cfg)
    return cfg


def _check(cfg: DenseConfig) -> None:
    if (cfg.epochs is None) == (cfg.iters is None):
        raise ValueError("set exactly one of epochs and iters (the schedule's length), e.g. --iters 90000")
    if cfg.sched not in ("step", "poly"):
        raise ValueError(f"sched must be 'step' or 'poly', got {cfg.sched!r}")
    length = cfg.epochs if cfg.epochs is not None else cfg.iters
    if length <= 0 or cfg.batch_size <= 0 or cfg.lr <= 0:
        raise ValueError("epochs/iters, batch_size and lr must be positive")
    if not isinstance(cfg.grad_accum_steps, int) or cfg.grad_accum_steps < 1:
        raise ValueError(f"--grad-accum-steps must be at least 1 (1 = no accumulation), got {cfg.grad_accum_steps}")
    from locvit.engine.config import check_log

    problems = check_log(cfg.log, cfg.tensorboard)
    if problems:
        raise ValueError("; ".join(problems))
    bad = [s for s in cfg.lr_steps if not 0 < s <= length]
    if bad:
        raise ValueError(f"lr_steps {bad} lie outside the schedule (1..{length} {'epochs' if cfg.epochs else 'iters'})")
    if isinstance(cfg, DetectConfig):
        if cfg.detector not in ("mask_rcnn", "faster_rcnn", "retinanet", "keypoint_rcnn"):
            raise ValueError(f"detector must be mask_rcnn, faster_rcnn, retinanet or keypoint_rcnn, "
                             f"got {cfg.detector!r}")
        if not cfg.min_size or cfg.test_size is not None and len(cfg.test_size) != 2:
            raise ValueError("min_size needs at least one size; test_size is [short, long]")
    if isinstance(cfg, SegmentConfig):
        if cfg.head not in ("fpn", "upernet"):
            raise ValueError(f"head must be 'fpn' (Semantic FPN) or 'upernet', got {cfg.head!r}")
        if cfg.inference not in ("whole", "slide"):
            raise ValueError(f"inference must be 'whole' or 'slide', got {cfg.inference!r}")
        bad = [r for r in cfg.test_ratios or () if not r > 0]
        if bad:
            raise ValueError(f"test_ratios must be > 0 (each scales test_scale), got {bad}; mmsegmentation's "
                             f"multi-scale test is --test-ratios {' '.join(map(str, AUG_TEST_RATIOS))} (--aug-test)")
        if len(cfg.test_views()) > 1 and not cfg.test_scale:
            raise ValueError("multi-scale testing scales test_scale: set --test-scale (e.g. 2048 512)")


def save_task_config(cfg: DenseConfig, path: str | Path) -> None:
    """The run's ``config.yaml``, as :func:`locvit.engine.config.save_config` writes it."""
    from locvit.engine.config import save_config

    save_config(cfg, path)
