"""The training loop: the DeiT/Swin recipe, every piece delegated to timm; the loop itself stays small.

Nothing is lost on a kill: the training state (model, optimiser, scheduler, EMA, scaler, position in the epoch,
metrics history) is written atomically to ``last.pth`` every ``checkpoint_interval`` steps and at the end of
each epoch, and ``resume`` continues from it. All randomness of a step -- augmentation (seeded per sample by
``(seed, epoch, index)``), mixup and drop-path (seeded per step) -- is a function of the step's position, so a
resumed run on CPU reproduces an uninterrupted one bit for bit. An ``--output`` that already holds a run is
refused before any work unless ``--resume`` or ``--overwrite`` says what to do with it (:mod:`locvit.engine.run`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from locvit.data.datasets import build_dataset, check_readable
from locvit.data.loader import build_loader, build_transform, set_loader_epoch, steps_per_epoch
from locvit.data.video import build_video_dataset, clip_eval_transform, clip_train_transform
from locvit.engine.config import TrainConfig
from locvit.engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    cleanup,
    every_rank,
    init_distributed,
)
from locvit.engine.evaluate import evaluate
from locvit.engine.logger import RunLogger, log_targets
from locvit.engine.optim import build_epoch_scheduler, build_optimizer, scaled_lrs
from locvit.engine.run import (
    NonFiniteLossError,  # noqa: F401  (its home before engine/run.py; importable from here for one release)
    RunStart,
    check_finite,
    prepare_output,
    read_state,
    restore_state,
    start_run,
)
from locvit.engine.step import GradAccumulator, mixed_precision, seed_step
from locvit.engine.video import check_task, mix_batch, video_data_kwargs
from locvit.files import atomic_write_text, check_writable
from locvit.labels import label_metadata
from locvit.models import create_model, load_checkpoint
from locvit.weights import save_checkpoint


@dataclass
class EpochTotals:
    """One rank's running totals of an epoch. Saved with a mid-epoch checkpoint, so the metrics row of an epoch that
    was interrupted and resumed covers the whole epoch, as in an uninterrupted run."""

    seen: int = 0
    loss_sum: float = 0.0
    unreadable: dict[int, str] = field(default_factory=dict)  # index -> file of each unreadable training image
    started: float = field(default_factory=time.time)  # wall clock of the epoch's start (shifted on resume)

    def elapsed(self) -> float:
        return time.time() - self.started

    def state(self) -> dict[str, Any]:
        return dict(seen=self.seen, loss_sum=self.loss_sum, seconds=self.elapsed(),
                    unreadable={str(i): p for i, p in self.unreadable.items()})

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> EpochTotals:
        state = state or {}
        return cls(state.get("seen", 0), state.get("loss_sum", 0.0),
                   {int(i): p for i, p in (state.get("unreadable") or {}).items()},
                   time.time() - state.get("seconds", 0.0))


def _disk_need(model: nn.Module, ema: bool) -> int:
    """Bytes this run's files take at most: last.pth (model, AdamW's two moments, EMA) twice while it is replaced,
    plus the model, best and EMA safetensors."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state = weights * (3 + int(ema))
    return 2 * state + weights * (2 + int(ema))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train ``cfg.model`` as configured; returns the final metrics. Run under ``torchrun`` for DDP."""
    dist = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        return _train(cfg, dist)
    finally:
        cleanup()


def _train(cfg: TrainConfig, dist: DistInfo) -> dict[str, Any]:
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    cfg.validate()
    # refuse before any work: a run of another command or with other settings to resume, a run in --output
    run_start = start_run(cfg, dist.world)
    if dist.main:
        prepare_output(Path(cfg.output))
    seed_step(cfg.seed, 0, dist.rank)
    data = _Data.build(cfg)
    model = _build_model(cfg, dist, data.num_classes, resume=run_start.resume_from is not None)
    if dist.main:
        check_writable(Path(cfg.output), _disk_need(model, cfg.model_ema))
    return _Run(cfg, dist, run_start, data, model).fit()


@dataclass
class _Data:
    """The training and validation sets (classes first: they size the head) and the names that travel with the
    weights (safetensors metadata, last.pth; ``locvit predict`` and ``locvit convert`` read them): a head sized
    otherwise (``--num-classes``) gets none rather than wrong ones."""

    train: Any
    val: Any
    num_classes: int
    class_names: list[str] | None
    video: bool

    @classmethod
    def build(cls, cfg: TrainConfig) -> _Data:
        video = check_task(cfg.task)
        make_dataset = build_video_dataset if video else build_dataset
        vkw = video_data_kwargs(cfg.num_frames, cfg.frame_sampling, cfg.frame_stride) if video else {}
        train_set = make_dataset(cfg.data, "train", seed=cfg.seed, **vkw)
        val_set = make_dataset(cfg.data, "val", seed=cfg.seed, class_to_idx=getattr(train_set, "class_to_idx", None),
                               **vkw)
        check_readable(train_set)
        num_classes = cfg.num_classes or len(train_set.classes)
        names = list(train_set.classes) if len(train_set.classes) == num_classes else None
        return cls(train_set, val_set, num_classes, names, video)

    def loaders(self, cfg: TrainConfig, dist: DistInfo, model: nn.Module) -> tuple[Any, Any]:
        """The two loaders with the model's data config (size, mean, std, interpolation) and the recipe's
        augmentation; for clips, the same augmentation draws for every frame, one centre view per validation video."""
        data_cfg = resolve_data_config({"input_size": (3, cfg.img_size, cfg.img_size)} if cfg.img_size else {},
                                       model=model)
        self.train.transform = build_transform(data_cfg, True, cfg.augmentation())
        self.val.transform = build_transform(data_cfg, False)
        if self.video:
            self.train.transform = clip_train_transform(self.train.transform)
            self.val.transform = clip_eval_transform(self.val.transform)
        train = build_loader(self.train, cfg.batch_size, True, cfg.workers, cfg.seed, dist.rank, dist.world,
                             repeats=cfg.repeated_aug, grad_accum=cfg.grad_accum_steps)
        val = build_loader(self.val, cfg.batch_size, False, cfg.workers, cfg.seed, dist.rank, dist.world)
        return train, val


def _build_model(cfg: TrainConfig, dist: DistInfo, num_classes: int, resume: bool) -> nn.Module:
    """The configured model with its initial weights (``--pretrained`` or ``--checkpoint``; not when resuming), on
    its device. Under DDP the main process downloads the published weights into the cache first."""
    kwargs = dict(cfg.model_kwargs)
    if cfg.img_size:
        kwargs["img_size"] = cfg.img_size
    if cfg.task == "video":
        kwargs.setdefault("num_frames", cfg.num_frames)
    pretrained = cfg.pretrained and not resume
    if pretrained and dist.distributed and not dist.main:
        barrier()  # the main process downloads into the cache first; the others then read the cached file
    model = create_model(cfg.model, pretrained=pretrained, num_classes=num_classes, drop_path_rate=cfg.drop_path,
                         drop_rate=cfg.drop, trust_pickle=cfg.trust_checkpoint, **kwargs)
    if pretrained and dist.distributed and dist.main:
        barrier()
    if pretrained and dist.main:
        print(model.load_report)
    if cfg.checkpoint and not resume:
        report = load_checkpoint(model, cfg.checkpoint, strict=False, trust_pickle=cfg.trust_checkpoint)
        if dist.main:
            print(report)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(dist.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _objective(cfg: TrainConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """Mixup/CutMix (with label smoothing in its soft targets) and the matching loss."""
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing > 0 else nn.CrossEntropyLoss()


class _Run:
    """One ``locvit train`` run once its data and model are ready: optimiser, schedule, EMA, DDP, resume, and the
    epoch loop (:meth:`fit`), one epoch (:meth:`train_epoch`), its evaluation (:meth:`end_epoch`)."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo, run_start: RunStart, data: _Data, model: nn.Module):
        self.cfg, self.dist, self.run_start, self.data, self.model = cfg, dist, run_start, data, model
        self.run_dir, self.main, self.device = Path(cfg.output), dist.main, dist.device
        self.names = label_metadata(data.class_names)
        self.train_loader, self.val_loader = data.loaders(cfg, dist, model)
        self.accum = cfg.grad_accum_steps
        self.n_steps = steps_per_epoch(self.train_loader) // self.accum  # every epoch holds whole windows
        # the recipe: lr scaled by the global batch, AdamW without decay on norms/biases/tables, warmup + cosine
        self.global_batch = cfg.batch_size * dist.world * self.accum
        self.optimizer = build_optimizer(cfg, model, scaled_lrs(cfg, self.global_batch)[0])
        self.scheduler, self.num_epochs = build_epoch_scheduler(cfg, self.optimizer, self.n_steps, self.global_batch)
        self.autocast, self.scaler = mixed_precision(cfg.amp, self.device)
        self.mixup, self.criterion = _objective(cfg, data.num_classes)
        self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        horizon, steps = 1 / (1 - cfg.model_ema_decay), self.num_epochs * self.n_steps
        if self.ema is not None and self.main and steps < horizon:
            print(f"warning: --model-ema-decay {cfg.model_ema_decay} averages over the last ~{horizon:,.0f} steps but "
                  f"this run has {steps:,}: model_ema.safetensors and ema_top1 will stay close to the initial "
                  f"weights; pass a smaller --model-ema-decay (e.g. {1 - 10 / steps:.4g}) or --no-model-ema",
                  flush=True)
        self.net: nn.Module = model
        if dist.distributed:
            # The papers trained BatchNorm models (LocalViT) with per-device statistics; sync_bn (CUDA only) makes
            # BN see the global batch instead.
            if cfg.sync_bn and self.device.type == "cuda":
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.start_epoch, self.start_step, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best = -math.inf
        self.partial: dict[str, Any] = {}  # the interrupted epoch's running totals, so its row covers all of it

    def resume(self, path: Path) -> None:
        """Continue from a saved state, at the position in the epoch in samples (so a changed batch size, when
        allowed, restarts at the right place), with every rank's running totals of the interrupted epoch."""
        state, saved, dist = read_state(path), self.run_start.saved or {}, self.dist
        restore_state(state, path, self.model, self.optimizer, self.scheduler, self.scaler, self.ema,
                      what=self.cfg.model)
        self.start_epoch, self.global_step = state["epoch"], state["global_step"]
        samples = state.get("samples_in_epoch", state["step_in_epoch"] * saved.get("batch_size", self.cfg.batch_size)
                            * saved["world_size"])
        self.start_step = samples // self.global_batch
        self.history, self.best = state.get("history", []), state.get("best", -math.inf)
        parts = state.get("epoch_totals") or [None]
        self.partial = dict((parts[dist.rank] if len(parts) == dist.world else parts[0] if self.main else None)
                            or {})
        if self.start_step >= self.n_steps:
            self.start_epoch, self.start_step, self.partial = self.start_epoch + 1, 0, {}
        if self.main:
            print(f"resumed from {path}: epoch {self.start_epoch + 1}, step {self.start_step} of {self.n_steps}")

    def save_state(self, epoch: int, step_in_epoch: int, totals: dict[str, Any] | None = None) -> None:
        totals = all_gather_objects(totals)  # every rank's running totals of an unfinished epoch
        if not self.main:
            return
        state = dict(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                     scheduler=self.scheduler.state_dict(),
                     ema=self.ema.state_dict() if self.ema is not None else None,
                     scaler=self.scaler.state_dict() if self.scaler is not None else None, epoch=epoch,
                     step_in_epoch=step_in_epoch, samples_in_epoch=step_in_epoch * self.global_batch,
                     global_step=self.global_step, history=self.logger.history, best=self.best,
                     config=self.cfg.to_dict(), world_size=self.dist.world, epoch_totals=totals,
                     label_names=self.data.class_names)
        save_checkpoint(state, self.run_dir / "last.pth")

    def fit(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.main
        if self.run_start.resume_from is not None:
            self.resume(self.run_start.resume_from)
        if main:
            self.run_start.begin()  # --overwrite: the old run's files move to replaced_run/ before this run writes
        self.logger = RunLogger(self.run_dir, log_targets(cfg), self.history) if main else None
        if main:
            cfg.save(self.run_dir / "config.yaml")
        metrics: dict[str, Any] = self.history[-1] if self.history else {}
        # checkpoints are written after optimiser steps only, so a run resumes at the start of an accumulation window
        self.stepper = GradAccumulator(self.net, self.optimizer, self.scaler, cfg.clip_grad, self.model.parameters(),
                                       self.accum)
        for epoch in range(self.start_epoch, self.num_epochs):
            tot, step_in_epoch, stop = self.train_epoch(epoch)
            metrics = self.end_epoch(epoch, tot, step_in_epoch) or metrics
            barrier()
            if stop:
                break
        if main:
            meta = dict(model=cfg.model, **self.names)
            save_checkpoint(self.model, self.run_dir / "model.safetensors", metadata=meta)
            if self.ema is not None:
                save_checkpoint(self.ema.module, self.run_dir / "model_ema.safetensors", metadata=meta)
            self.logger.close()
            self.run_start.finish()
        return metrics

    def train_epoch(self, epoch: int) -> tuple[EpochTotals, int, bool]:
        """One epoch from ``start_step``: returns its running totals, the optimiser steps it reached and whether
        ``--max-steps`` stopped the run."""
        cfg, dist, stepper, mixup = self.cfg, self.dist, self.stepper, self.mixup
        set_loader_epoch(self.train_loader, epoch, start=self.start_step * self.accum * cfg.batch_size)
        self.net.train()
        tot = EpochTotals.from_state(self.partial)
        self.partial = {}
        bar = tqdm(total=self.n_steps, initial=self.start_step, desc=f"epoch {epoch + 1}/{self.num_epochs}",
                   disable=not self.main, dynamic_ncols=True, leave=False)
        step_in_epoch, stop = self.start_step, False
        for images, targets in _with_unreadable(self.train_loader, tot):
            seed_step(cfg.seed, self.global_step * self.accum + stepper.micro, dist.rank)
            # a batch with no readable image (or a single one, under mixup's pairs) is skipped by every rank at once
            if every_rank(images.shape[0] >= (2 if mixup is not None else 1), self.device):
                images = images.to(self.device, non_blocking=True)
                targets = targets.to(self.device, non_blocking=True)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                if mixup is not None:
                    if images.shape[0] % 2:  # mixup pairs samples: drop one after skipped unreadable images
                        images, targets = images[:-1], targets[:-1]
                    images, targets = mix_batch(mixup, images, targets)
                with stepper.context():
                    with self.autocast():
                        loss = self.criterion(self.net(images), targets)
                    if torch.isfinite(loss).all():
                        stepper.backward(loss)
                check_finite(loss, f"epoch {epoch + 1}, step {step_in_epoch + 1} (global step "
                                   f"{self.global_step + 1})", self.run_dir)
                tot.loss_sum += loss.item() * images.shape[0]
                tot.seen += images.shape[0]
            if not stepper.step():
                continue
            if self.ema is not None:
                self.ema.update(self.model, step=self.global_step)
            step_in_epoch += 1
            self.global_step += 1
            self.scheduler.step_update(num_updates=self.global_step)
            if self.main:
                bar.update(1)
                if step_in_epoch % max(1, cfg.log_interval) == 0 or step_in_epoch == self.n_steps:
                    self._log_step(bar, tot)
            if cfg.checkpoint_interval and self.global_step % cfg.checkpoint_interval == 0:
                self.save_state(epoch, step_in_epoch, tot.state())
            if cfg.max_steps and self.global_step >= cfg.max_steps:
                stop = True
                break
        bar.close()
        self.start_step = 0
        return tot, step_in_epoch, stop

    def _log_step(self, bar: Any, tot: EpochTotals) -> None:
        ips = tot.seen * self.dist.world / max(tot.elapsed(), 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{tot.loss_sum / max(tot.seen, 1):.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
        self.logger.log_step(self.global_step, dict(train_loss=tot.loss_sum / max(tot.seen, 1), images_per_s=ips,
                                                    lr=lr))

    def end_epoch(self, epoch: int, tot: EpochTotals, step_in_epoch: int) -> dict[str, Any] | None:
        """Step the schedule, evaluate when due (the metrics row, best.safetensors, unreadable.txt), save the state;
        returns the row when there is one."""
        cfg, main = self.cfg, self.main
        epoch_time = tot.elapsed()
        totals = all_reduce_sum(torch.tensor([tot.loss_sum, tot.seen], dtype=torch.float64))
        for part in all_gather_objects(tot.unreadable):
            tot.unreadable.update(part)
        finished = step_in_epoch >= self.n_steps
        epoch_lr = self.optimizer.param_groups[0]["lr"]  # the lr this epoch ended with (logged), not the next's
        if finished:  # a run stopped inside the epoch (--max-steps) resumes on this epoch's schedule
            self.scheduler.step(epoch + 1)
        metrics = None
        if finished and ((epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == self.num_epochs):
            val = evaluate(self.model, self.val_loader, self.device, self.autocast, channels_last=cfg.channels_last)
            bad = dict(tot.unreadable)
            for part in all_gather_objects({u.index: u.path for u in val["unreadable"]}):
                bad.update({-1 - i: p for i, p in part.items()})  # val indices apart from train's
            metrics = dict(epoch=epoch + 1, train_loss=totals[0].item() / max(totals[1].item(), 1), lr=epoch_lr,
                           val_loss=val["loss"], top1=val["top1"], top5=val["top5"],
                           images_per_s=totals[1].item() / max(epoch_time, 1e-9), skipped=len(bad),
                           epoch_time_s=epoch_time)
            if self.ema is not None:
                metrics["ema_top1"] = evaluate(self.ema.module, self.val_loader, self.device, self.autocast)["top1"]
            if main:
                self._report_epoch(epoch, metrics, val, bad)
        self.save_state(epoch, step_in_epoch if not finished else self.n_steps, None if finished else tot.state())
        return metrics

    def _report_epoch(self, epoch: int, metrics: dict[str, Any], val: dict[str, Any], bad: dict[int, str]) -> None:
        self.logger.log_epoch(metrics)
        msg = (f"epoch {epoch + 1}: train loss {metrics['train_loss']:.4f}  val loss {val['loss']:.4f}  "
               f"top-1 {val['top1']:.2f}  top-5 {val['top5']:.2f}")
        if bad:
            files = sorted(set(bad.values()))
            listed = self.run_dir / "unreadable.txt"
            old = set(listed.read_text().splitlines()) if listed.is_file() else set()
            atomic_write_text(listed, "".join(f"{f}\n" for f in sorted(old | set(files))))
            msg += (f"  ({len(bad)} unreadable images skipped: {', '.join(files[:3])}"
                    f"{', ...' if len(files) > 3 else ''}; all listed in {listed})")
        print(msg, flush=True)
        if val["top1"] > self.best:
            self.best = val["top1"]
            save_checkpoint(self.model, self.run_dir / "best.safetensors",
                            metadata=dict(epoch=epoch + 1, top1=self.best, **self.names))


def _with_unreadable(loader: Any, tot: EpochTotals) -> Any:
    """The loader's ``(images, targets)``, each batch's unreadable files noted in ``tot``."""
    for batch in loader:
        tot.unreadable.update((u.index, u.path) for u in batch.unreadable)
        yield batch[0], batch[1]
