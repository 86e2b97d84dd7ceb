"""Run configurations: defaults < family recipe < YAML file < command-line flags.

:class:`RunConfig` holds what every training command shares -- what to train on what, the optimiser, the
machinery, resume and logging -- and the one build / validate / save path; :class:`TrainConfig` (``locvit train``)
and the dense tasks' configurations (:mod:`locvit.dense.config`) add only their own fields and checks. A recipe is
a YAML file of a configuration's fields; the papers' recipes ship in ``locvit/configs/`` (dense ones in
``locvit/configs/dense/``) and can be named without path or suffix (``--config regionvit_in1k``). The resolved
configuration is written to the run directory as ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from locvit.files import atomic_write_text
from locvit.runtime import default_workers

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# settings of one invocation that a resumed run does not inherit from the run it continues
PER_INVOCATION = ("resume", "allow_config_change", "max_steps", "overwrite")
LOG_TARGETS = ("csv", "tensorboard", "wandb")
R = TypeVar("R", bound="RunConfig")


@dataclass
class RunConfig:
    """What every training command's configuration holds, and how it is built, checked and saved."""

    COMMAND: ClassVar[str] = ""                 # what wrote a run directory (locvit.engine.run)
    RECIPES: ClassVar[Path] = CONFIG_DIR        # where --config names are looked up
    TUPLES: ClassVar[tuple[str, ...]] = ("opt_betas",)  # list-valued fields held as tuples
    # what to train, on what
    model: str = "localvit_tiny"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # model constructor arguments
    checkpoint: str | None = None          # initial weights (official or ours); head/tables adapted
    pretrained: bool = False               # start from the official weights (pretrained=True: downloaded, cached)
    trust_checkpoint: bool = False         # allow checkpoints that pickle more than tensors
    data: str | None = None                # the dataset (see the command's layouts)
    num_classes: int | None = None         # default: the dataset's class count
    output: str = "runs/train"             # the run directory
    # optimiser
    batch_size: int = 128                  # per process and micro-batch
    grad_accum_steps: int = 1              # micro-batches per optimiser step: global batch = batch_size x processes x N
    lr: float | None = None
    min_lr: float = 1e-5
    opt: str = "adamw"
    opt_eps: float = 1e-8
    opt_betas: tuple[float, float] | None = None
    momentum: float = 0.9
    weight_decay: float = 0.05
    clip_grad: float | None = None
    drop_path: float = 0.1
    hflip: float = 0.5
    # machinery
    amp: str = "auto"                      # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    workers: int = field(default_factory=default_workers)  # DataLoader processes: min(4, CPU cores)
    seed: int = 0
    device: str | None = None              # default: cuda if available, else cpu
    checkpoint_interval: int = 0           # also save every N optimiser steps (0: at each evaluation only)
    eval_interval: int | None = 1          # in the schedule's unit (epochs, or the dense tasks' iterations)
    log_interval: int = 10                 # steps between progress-bar updates of the loss
    max_steps: int | None = None           # stop after this many optimiser steps (smoke tests)
    resume: str | None = None              # a run directory or checkpoint; 'auto' = output/last.pth
    allow_config_change: bool = False      # resume although model, data, batch size, seed... differ from the run
    overwrite: bool = False                # start again in an --output holding a run; its files wait in replaced_run/
    deterministic: bool = False
    dist_timeout: float = 1800.0           # seconds a process waits for its peers (start and every collective)
    tensorboard: bool = True               # without --log: TensorBoard files when tensorboard is installed
    log: list[str] = field(default_factory=list)  # tensorboard and/or wandb besides metrics.csv (csv: that alone)

    # -- building ------------------------------------------------------------------------------------------------
    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def load_recipe(cls, name: str | Path) -> dict[str, Any]:
        """A recipe (a path, or a name shipped in :attr:`RECIPES`) as a dict checked against this class's fields."""
        return load_yaml(resolve_config_path(str(name), cls.RECIPES), cls.fields(), cls.RECIPES)

    @classmethod
    def recipe_defaults(cls, model: str) -> dict[str, Any]:
        """Values a model brings before any recipe file (:class:`TrainConfig`: its family's recipe)."""
        return {}

    @classmethod
    def build(cls: type[R], config: str | None = None, overrides: dict[str, Any] | None = None,
              run: dict[str, Any] | None = None) -> R:
        """Merge the defaults, :meth:`recipe_defaults`, a YAML recipe (path or shipped name), the configuration of
        the run being resumed (``run``, less its per-invocation settings) and explicit overrides (``None`` values
        skipped), in that order, and validate the result."""
        fields = cls.fields()
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        run = {k: v for k, v in (run or {}).items() if k in fields and k not in PER_INVOCATION}
        file_cfg = cls.load_recipe(config) if config else {}
        model = overrides.get("model") or run.get("model") or file_cfg.get("model") or fields["model"].default
        merged = {**cls.recipe_defaults(model), **file_cfg, **run, **overrides}
        unknown = sorted(set(merged) - set(fields))
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        for k in cls.TUPLES:
            if merged.get(k) is not None:
                merged[k] = tuple(merged[k])
        if isinstance(merged.get("log"), str):  # `log: tensorboard` in a recipe
            merged["log"] = [merged["log"]]
        return cls(**merged).validate()

    # -- checking ------------------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """What cannot work in the shared settings (the subclasses add their own)."""
        out: list[str] = []

        def need(ok: bool, msg: str) -> None:
            if not ok:
                out.append(msg)

        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(isinstance(self.grad_accum_steps, int) and self.grad_accum_steps >= 1,
             f"--grad-accum-steps must be at least 1 (1 = no accumulation), got {self.grad_accum_steps}")
        out.extend(check_log(self.log, self.tensorboard))
        need(self.workers >= 0, f"--workers must be 0 or more, got {self.workers}")
        need(self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}")
        need(self.num_classes is None or self.num_classes >= 1,
             f"--num-classes must be at least 1, got {self.num_classes}")
        need(0 <= self.drop_path < 1, f"--drop-path must be in [0, 1), got {self.drop_path}")
        need(self.amp in ("auto", "bf16", "fp16", "off"), f"--amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        need(self.checkpoint_interval >= 0, f"--checkpoint-interval must be 0 or more, got {self.checkpoint_interval}")
        need(self.eval_interval is None or self.eval_interval >= 1,
             f"--eval-interval must be at least 1, got {self.eval_interval}")
        need(self.dist_timeout > 0, f"--dist-timeout must be positive (seconds), got {self.dist_timeout}")
        need(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be at least 1, got {self.max_steps}")
        need(self.clip_grad is None or self.clip_grad > 0, f"--clip-grad must be positive, got {self.clip_grad}")
        need(not (self.pretrained and self.checkpoint),
             "pass --pretrained (the published weights) or --checkpoint FILE, not both")
        return out

    def validate(self: R) -> R:
        """Raise ``ValueError`` naming each setting that cannot work (before any data is read); returns self."""
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- saving --------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def save(self, path: str | Path) -> None:
        """Write the run's ``config.yaml``, usable as ``--config``; without ``overwrite``: permission to replace a
        run is given by a command, never carried along by a recipe made from a run."""
        settings = {k: v for k, v in self.to_dict().items() if k != "overwrite"}
        atomic_write_text(path, yaml.safe_dump(settings, sort_keys=False))


@dataclass
class TrainConfig(RunConfig):
    """``locvit train``: image classification (the DeiT/Swin recipe) and, with ``task: video``, clips."""

    COMMAND: ClassVar[str] = "locvit train"
    TUPLES: ClassVar[tuple[str, ...]] = ("opt_betas", "scale")
    data: str | None = None                # folder, 'digits', 'cifar10[:ROOT]', 'cifar100[:ROOT]', 'wds:SHARDS'
    img_size: int | None = None            # default: the model's pretrained cfg
    # video (--task video): clips B x C x T x H x W from locvit.data.video
    task: str = "classify"                 # classify (images) | video (clips)
    num_frames: int = 8                    # frames per clip
    frame_sampling: str = "uniform"        # uniform (one frame per segment, TSN) | dense (stride apart, SlowFast)
    frame_stride: int = 4                  # frame step of dense sampling
    test_clips: int = 1                    # video test views (locvit eval --config / a run): temporal clips per video
    test_crops: int = 1                    # video test views: spatial crops per clip (3: both ends and the centre)
    # schedule (DeiT/Swin recipe; the optimiser fields are RunConfig's)
    epochs: int = 300
    lr: float | None = None                # absolute lr; default blr * global_batch / 512
    blr: float = 5e-4
    scale_lr: bool = True                  # scale lr, warmup_lr and min_lr by global_batch / 512
    warmup_lr: float = 1e-6
    warmup_epochs: int = 5
    sched: str = "cosine"
    sched_on_updates: bool = False         # per-iteration schedule (Swin/Focal) instead of per-epoch
    decay_milestones: list[int] | None = None  # sched multistep: epochs at which the lr is multiplied by decay_rate
    decay_rate: float = 0.1                # sched multistep (and step): the lr factor at each milestone
    # regularisation and augmentation
    drop: float = 0.0
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    aa: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    train_interpolation: str = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)
    repeated_aug: int = 3                  # repeats per sample (RASampler); 1 = off
    model_ema: bool = False
    model_ema_decay: float = 0.99996
    # machinery
    grad_checkpointing: bool = False
    sync_bn: bool = False                  # synchronised BatchNorm under DDP (CUDA); the papers used per-GPU BN
    channels_last: bool = False

    @classmethod
    def recipe_defaults(cls, model: str) -> dict[str, Any]:
        return family_recipe(model)

    def __post_init__(self) -> None:
        if isinstance(self.aa, str) and self.aa.lower() in ("none", ""):  # `aa: none` in a recipe or flag
            self.aa = None

    def problems(self) -> list[str]:
        out = [] if self.data else ["no training data: pass --data (a folder of class sub-folders, 'digits', "
                                    "'wds:SHARDS', 'cifar10:ROOT' or 'cifar100:ROOT')"]
        out += super().problems()

        def need(ok: bool, msg: str) -> None:
            if not ok:
                out.append(msg)

        need(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.warmup_epochs >= 0, f"--warmup-epochs must be 0 or more, got {self.warmup_epochs}")
        need(self.warmup_epochs == 0 or self.warmup_epochs < self.epochs,
             f"the warm-up ({self.warmup_epochs} epochs) is not shorter than the run ({self.epochs} epochs): the "
             f"learning rate would never reach its peak; pass --warmup-epochs N with N < {self.epochs} (0: none)")
        need(self.blr > 0, f"--blr must be positive, got {self.blr}")
        need(self.img_size is None or self.img_size >= 1, f"--img-size must be positive, got {self.img_size}")
        need(self.repeated_aug >= 1, f"--repeated-aug must be at least 1 (1 = off), got {self.repeated_aug}")
        need(0 <= self.drop < 1, f"--drop must be in [0, 1), got {self.drop}")
        need(0 <= self.smoothing < 1, f"--smoothing must be in [0, 1), got {self.smoothing}")
        need(self.mixup >= 0 and self.cutmix >= 0, "--mixup and --cutmix must be 0 (off) or positive")
        need(0 <= self.reprob <= 1, f"--reprob must be in [0, 1], got {self.reprob}")
        need(0 < self.model_ema_decay < 1, f"--model-ema-decay must be in (0, 1), got {self.model_ema_decay}")
        need(self.task in ("classify", "video"), f"--task must be classify or video, got {self.task!r}")
        need(self.num_frames >= 1, f"--num-frames must be at least 1, got {self.num_frames}")
        need(self.frame_sampling in ("uniform", "dense"),
             f"--frame-sampling must be uniform or dense, got {self.frame_sampling!r}")
        need(self.frame_stride >= 1, f"--frame-stride must be at least 1, got {self.frame_stride}")
        need(self.test_clips >= 1 and self.test_crops >= 1,
             f"--test-clips and --test-crops must be at least 1, got {self.test_clips} and {self.test_crops}")
        need(self.sched != "multistep" or bool(self.decay_milestones),
             "--sched multistep needs --decay-milestones (epochs), e.g. --decay-milestones 11 14")
        need(all(0 < m <= self.epochs for m in self.decay_milestones or ()),
             f"--decay-milestones {self.decay_milestones} must lie within the run's {self.epochs} epochs")
        return out

    def augmentation(self) -> dict[str, Any]:
        """The training augmentation as :func:`locvit.data.loader.build_transform` takes it (timm's names)."""
        return dict(scale=self.scale, hflip=self.hflip, color_jitter=self.color_jitter, auto_augment=self.aa,
                    re_prob=self.reprob, re_mode=self.remode, re_count=self.recount,
                    train_interpolation=self.train_interpolation)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


FIELDS = TrainConfig.fields()


def resolve_config_path(name: str, folder: Path = CONFIG_DIR) -> Path:
    """A YAML path, or the name of a shipped recipe (``regionvit_in1k`` -> ``locvit/configs/regionvit_in1k.yaml``;
    the dense tasks' recipes live in ``folder`` = ``locvit/configs/dense``)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (folder / name, folder / f"{name}.yaml", folder / p.name):
        if cand.is_file():
            return cand
    shipped = ", ".join(sorted(q.stem for q in folder.glob("*.yaml")))
    raise FileNotFoundError(f"config {name!r} not found (shipped recipes: {shipped})")


def load_yaml(path: str | Path, fields: dict[str, Any] | None = None, folder: Path = CONFIG_DIR) -> dict[str, Any]:
    """A recipe file as a dict (its ``base:`` recipe, a path or a name shipped in ``folder``, merged under it),
    checked against ``fields`` (default: the :class:`TrainConfig` fields; the dense tasks pass theirs)."""
    fields = FIELDS if fields is None else fields
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of field: value")
    base = data.pop("base", None)  # recipes may inherit another recipe
    if base:
        data = {**load_yaml(resolve_config_path(base, folder), fields, folder), **data}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown config fields {unknown}; valid fields: {sorted(fields)}")
    return data


def family_recipe(model: str) -> dict[str, Any]:
    """The recipe shipped for a model's family and size class, when there is one."""
    from locvit.models import family_of, resolve_alias  # here: the command line's parser reads this module

    fam = family_of(model)
    name = resolve_alias(model)
    if fam is None:
        return {}
    size = next((s for s in ("tiny", "small", "medium", "large", "base") if f"_{s}" in name), "")
    for cand in (f"{fam}_{size}_in1k", f"{fam}_in1k"):
        p = CONFIG_DIR / f"{cand}.yaml"
        if p.is_file():
            return load_yaml(p)
    return {}


def build_config(config: str | None = None, overrides: dict[str, Any] | None = None,
                 run: dict[str, Any] | None = None) -> TrainConfig:
    """``locvit train``'s configuration: :meth:`RunConfig.build` of :class:`TrainConfig` (the model family's recipe
    first)."""
    return TrainConfig.build(config, overrides, run)


def check_log(log: list[str], tensorboard: bool) -> list[str]:
    """What is wrong with a ``--log`` choice (empty when nothing): unknown targets, or ``--log tensorboard`` with
    ``--no-tensorboard``. Shared by the classification and the dense configurations."""
    problems = []
    unknown = [t for t in log if t not in LOG_TARGETS]
    if unknown:
        problems.append(f"--log takes {', '.join(LOG_TARGETS)}; got {', '.join(map(repr, unknown))}")
    if "tensorboard" in log and not tensorboard:
        problems.append("--log tensorboard contradicts --no-tensorboard (tensorboard: false): pass one of them")
    return problems
