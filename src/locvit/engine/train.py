"""The training loop: the DeiT/Swin recipe, every piece delegated to timm; the loop itself stays small.

Nothing is lost on a kill: the training state (model, optimiser, scheduler, EMA, scaler, position in the epoch,
metrics history) is written atomically to ``last.pth`` every ``checkpoint_interval`` steps and at the end of
each epoch, and ``resume`` continues from it. All randomness of a step -- augmentation (seeded per sample by
``(seed, epoch, index)``), mixup and drop-path (seeded per step) -- is a function of the step's position, so a
resumed run on CPU reproduces an uninterrupted one bit for bit. An ``--output`` that already holds a run is
refused before any work unless ``--resume`` or ``--overwrite`` says what to do with it (:mod:`locvit.engine.rundir`).
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
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from locvit._io import atomic_write_text, check_writable, remove_stale_temp_files
from locvit._registry import create_model
from locvit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from locvit.data.datasets import build_dataset, check_readable
from locvit.data.loader import build_loader, build_transform, set_loader_epoch, steps_per_epoch
from locvit.data.video import build_video_dataset, clip_eval_transform, clip_train_transform
from locvit.engine.config import TrainConfig, save_config
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
from locvit.engine.rundir import find_resume, run_config, start_run  # noqa: F401 (importable from here too)
from locvit.engine.step import GradAccumulator, mixed_precision, seed_step
from locvit.engine.video import check_task, mix_batch, video_data_kwargs
from locvit.labels import label_metadata


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept (the CLI prints this as one line)."""


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


def timm_milestones(milestones: list[int], updates_per_epoch: int = 1) -> list[float]:
    """``--decay-milestones`` (epochs) as timm's ``MultiStepLRScheduler`` takes them.

    locvit's milestones follow PyTorch's ``MultiStepLR`` and pyslowfast's ``steps_with_relative_lrs``: milestone
    ``m`` is the first epoch trained at the decayed lr. timm applies milestone ``m`` one scheduler step early (its
    documented historical convention: at ``t == m - 1``), so each is moved one scheduler step later: one epoch when
    the schedule steps per epoch, one update (``1 / updates_per_epoch`` of an epoch; timm multiplies milestones by
    ``updates_per_epoch``) when it steps per update."""
    return [m + 1 / updates_per_epoch for m in milestones]


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
    device, main = dist.device, dist.main
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    cfg.validate()
    run_dir = Path(cfg.output)
    # refuse before any work: a run of another command or with other settings to resume, a run in --output
    run_start = start_run(cfg, dist.world)
    resume_from, saved = run_start.resume_from, run_start.saved
    if main:
        check_writable(run_dir)
        remove_stale_temp_files(run_dir)  # temp files of writes a kill interrupted
    seed_step(cfg.seed, 0, dist.rank)

    # data (classes first: they size the head)
    video = check_task(cfg.task)
    make_dataset = build_video_dataset if video else build_dataset
    vkw = video_data_kwargs(cfg.num_frames, cfg.frame_sampling, cfg.frame_stride) if video else {}
    train_set = make_dataset(cfg.data, "train", seed=cfg.seed, **vkw)
    class_to_idx = getattr(train_set, "class_to_idx", None)
    val_set = make_dataset(cfg.data, "val", seed=cfg.seed, class_to_idx=class_to_idx, **vkw)
    check_readable(train_set)
    num_classes = cfg.num_classes or len(train_set.classes)
    # the names of the data's classes travel with the weights (safetensors metadata, last.pth): `locvit predict`
    # and `locvit convert` read them; a head sized otherwise (--num-classes) gets none rather than wrong ones
    class_names = list(train_set.classes) if len(train_set.classes) == num_classes else None
    names = label_metadata(class_names)

    # model
    kwargs = dict(cfg.model_kwargs)
    if cfg.img_size:
        kwargs["img_size"] = cfg.img_size
    if video:
        kwargs.setdefault("num_frames", cfg.num_frames)
    pretrained = cfg.pretrained and resume_from is None
    if pretrained and dist.distributed and not main:
        barrier()  # the main process downloads into the cache first; the others then read the cached file
    model = create_model(cfg.model, pretrained=pretrained, num_classes=num_classes, drop_path_rate=cfg.drop_path,
                         drop_rate=cfg.drop, trust_pickle=cfg.trust_checkpoint, **kwargs)
    if pretrained and dist.distributed and main:
        barrier()
    if pretrained and main:
        print(model.load_report)
    if cfg.checkpoint and resume_from is None:
        report = load_checkpoint(model, cfg.checkpoint, strict=False, trust_pickle=cfg.trust_checkpoint)
        if main:
            print(report)
    if main:
        check_writable(run_dir, _disk_need(model, cfg.model_ema))
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    data_cfg = resolve_data_config({"input_size": (3, cfg.img_size, cfg.img_size)} if cfg.img_size else {},
                                   model=model)
    train_set.transform = build_transform(data_cfg, True, cfg.augmentation())
    val_set.transform = build_transform(data_cfg, False)
    if video:  # the same augmentation draws for every frame of a clip; validation: one centre view per video
        train_set.transform = clip_train_transform(train_set.transform)
        val_set.transform = clip_eval_transform(val_set.transform)
    accum = cfg.grad_accum_steps
    train_loader = build_loader(train_set, cfg.batch_size, True, cfg.workers, cfg.seed, dist.rank, dist.world,
                                repeats=cfg.repeated_aug, grad_accum=accum)
    val_loader = build_loader(val_set, cfg.batch_size, False, cfg.workers, cfg.seed, dist.rank, dist.world)
    n_steps = steps_per_epoch(train_loader) // accum  # optimiser steps: every epoch holds whole windows

    # recipe: lr scaled by the global batch, AdamW without decay on norms/biases/tables, warmup + cosine
    global_batch = cfg.batch_size * dist.world * accum
    scale = global_batch / 512 if cfg.scale_lr else 1.0
    lr = cfg.lr if cfg.lr is not None else cfg.blr * scale
    opt_kwargs: dict[str, Any] = dict(eps=cfg.opt_eps) if cfg.opt.lower().endswith("adamw") else {}
    if cfg.opt_betas:
        opt_kwargs["betas"] = tuple(cfg.opt_betas)
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, **opt_kwargs)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr * (scale if cfg.scale_lr and cfg.lr is None else 1.0),
        min_lr=cfg.min_lr * (scale if cfg.scale_lr and cfg.lr is None else 1.0),
        step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=n_steps, decay_rate=cfg.decay_rate,
        **(dict(decay_milestones=timm_milestones(cfg.decay_milestones, n_steps if cfg.sched_on_updates else 1))
           if cfg.decay_milestones else {}))
    autocast, scaler = mixed_precision(cfg.amp, device)
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                      num_classes=num_classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    horizon = 1 / (1 - cfg.model_ema_decay)
    if ema is not None and main and num_epochs * n_steps < horizon:
        print(f"warning: --model-ema-decay {cfg.model_ema_decay} averages over the last ~{horizon:,.0f} steps but "
              f"this run has {num_epochs * n_steps:,}: model_ema.safetensors and ema_top1 will stay close to the "
              f"initial weights; pass a smaller --model-ema-decay (e.g. {1 - 10 / (num_epochs * n_steps):.4g}) or "
              "--no-model-ema", flush=True)

    net: nn.Module = model
    if dist.distributed:
        # The papers trained BatchNorm models (LocalViT) with per-device statistics; sync_bn (CUDA only) makes BN
        # see the global batch instead.
        if cfg.sync_bn and device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    # resume
    start_epoch, start_step, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    best = -math.inf
    partial: dict[str, Any] = {}  # the interrupted epoch's running totals, so its metrics row covers all of it
    if resume_from is not None:
        state = torch.load(resume_from, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{resume_from} does not fit {cfg.model} as configured now "
                                  f"({str(e).splitlines()[0][:200]}); resume with the run's model settings") from None
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        start_epoch, global_step = state["epoch"], state["global_step"]
        # the position in the epoch in samples, so a changed batch size (when allowed) restarts at the right place
        samples = state.get("samples_in_epoch", state["step_in_epoch"] * saved.get("batch_size", cfg.batch_size)
                            * saved["world_size"])
        start_step = samples // global_batch
        history, best = state.get("history", []), state.get("best", -math.inf)
        parts = state.get("epoch_totals") or [None]
        partial = dict((parts[dist.rank] if len(parts) == dist.world else parts[0] if main else None) or {})
        if start_step >= n_steps:
            start_epoch, start_step, partial = start_epoch + 1, 0, {}
        if main:
            print(f"resumed from {resume_from}: epoch {start_epoch + 1}, step {start_step} of {n_steps}")
    if main:
        run_start.begin()  # --overwrite: the old run's files move to replaced_run/ before this run writes any
    logger = RunLogger(run_dir, log_targets(cfg), history) if main else None
    if main:
        save_config(cfg, run_dir / "config.yaml")
    def save_state(epoch: int, step_in_epoch: int, totals: dict[str, Any] | None = None) -> None:
        totals = all_gather_objects(totals)  # every rank's running totals of an unfinished epoch
        if not main:
            return
        state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     ema=ema.state_dict() if ema is not None else None,
                     scaler=scaler.state_dict() if scaler is not None else None, epoch=epoch,
                     step_in_epoch=step_in_epoch, samples_in_epoch=step_in_epoch * global_batch,
                     global_step=global_step, history=logger.history, best=best, config=cfg.to_dict(),
                     world_size=dist.world, epoch_totals=totals, label_names=class_names)
        save_checkpoint(state, run_dir / "last.pth")

    metrics: dict[str, Any] = history[-1] if history else {}
    stop = False
    # checkpoints are written after optimiser steps only, so a run resumes at the start of an accumulation window
    stepper = GradAccumulator(net, optimizer, scaler, cfg.clip_grad, model.parameters(), accum)
    for epoch in range(start_epoch, num_epochs):
        set_loader_epoch(train_loader, epoch, start=start_step * accum * cfg.batch_size)
        net.train()
        tot = EpochTotals.from_state(partial)
        partial = {}
        bar = tqdm(total=n_steps, initial=start_step, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not main,
                   dynamic_ncols=True, leave=False)
        step_in_epoch = start_step
        for batch in train_loader:
            images, targets = batch
            tot.unreadable.update((u.index, u.path) for u in batch.unreadable)
            seed_step(cfg.seed, global_step * accum + stepper.micro, dist.rank)
            # a batch with no readable image (or a single one, under mixup's pairs) is skipped by every rank at once
            if every_rank(images.shape[0] >= (2 if mixup is not None else 1), device):
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                if mixup is not None:
                    if images.shape[0] % 2:  # mixup pairs samples: drop one after skipped unreadable images
                        images, targets = images[:-1], targets[:-1]
                    images, targets = mix_batch(mixup, images, targets)
                with stepper.context():
                    with autocast():
                        loss = criterion(net(images), targets)
                    if torch.isfinite(loss).all():
                        stepper.backward(loss)
                if not torch.isfinite(loss).all():
                    last = run_dir / "last.pth"
                    kept = (f"the last good checkpoint is {last} (resume from it with --resume and a lower --lr)"
                            if last.is_file() else "no checkpoint was written before it")
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step_in_epoch + 1} (global step "
                        f"{global_step + 1}); training stopped, {kept}. Lower --lr, set --clip-grad or check the "
                        "data")
                tot.loss_sum += loss.item() * images.shape[0]
                tot.seen += images.shape[0]
            if not stepper.step():
                continue
            if ema is not None:
                ema.update(model, step=global_step)
            step_in_epoch += 1
            global_step += 1
            scheduler.step_update(num_updates=global_step)
            if main:
                bar.update(1)
                if step_in_epoch % max(1, cfg.log_interval) == 0 or step_in_epoch == n_steps:
                    ips = tot.seen * dist.world / max(tot.elapsed(), 1e-9)
                    bar.set_postfix(loss=f"{tot.loss_sum / max(tot.seen, 1):.4f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.2e}", img_s=f"{ips:.0f}")
                    logger.log_step(global_step, dict(train_loss=tot.loss_sum / max(tot.seen, 1), images_per_s=ips,
                                                      lr=optimizer.param_groups[0]["lr"]))
            if cfg.checkpoint_interval and global_step % cfg.checkpoint_interval == 0:
                save_state(epoch, step_in_epoch, tot.state())
            if cfg.max_steps and global_step >= cfg.max_steps:
                stop = True
                break
        bar.close()
        start_step = 0
        epoch_time = tot.elapsed()
        totals = all_reduce_sum(torch.tensor([tot.loss_sum, tot.seen], dtype=torch.float64))
        for part in all_gather_objects(tot.unreadable):
            tot.unreadable.update(part)
        finished_epoch = step_in_epoch >= n_steps
        epoch_lr = optimizer.param_groups[0]["lr"]  # the lr this epoch ended with (logged), not the next epoch's
        if finished_epoch:  # a run stopped inside the epoch (--max-steps) resumes on this epoch's schedule
            scheduler.step(epoch + 1)
        if finished_epoch and ((epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == num_epochs):
            val = evaluate(model, val_loader, device, autocast, channels_last=cfg.channels_last)
            bad = dict(tot.unreadable)
            for part in all_gather_objects({u.index: u.path for u in val["unreadable"]}):
                bad.update({-1 - i: p for i, p in part.items()})  # val indices apart from train's
            metrics = dict(epoch=epoch + 1, train_loss=totals[0].item() / max(totals[1].item(), 1),
                           lr=epoch_lr, val_loss=val["loss"], top1=val["top1"],
                           top5=val["top5"], images_per_s=totals[1].item() / max(epoch_time, 1e-9),
                           skipped=len(bad), epoch_time_s=epoch_time)
            if ema is not None:
                metrics["ema_top1"] = evaluate(ema.module, val_loader, device, autocast)["top1"]
            if main:
                logger.log_epoch(metrics)
                msg = (f"epoch {epoch + 1}: train loss {metrics['train_loss']:.4f}  val loss {val['loss']:.4f}  "
                       f"top-1 {val['top1']:.2f}  top-5 {val['top5']:.2f}")
                if bad:
                    files = sorted(set(bad.values()))
                    listed = run_dir / "unreadable.txt"
                    old = set(listed.read_text().splitlines()) if listed.is_file() else set()
                    atomic_write_text(listed, "".join(f"{f}\n" for f in sorted(old | set(files))))
                    msg += (f"  ({len(bad)} unreadable images skipped: {', '.join(files[:3])}"
                            f"{', ...' if len(files) > 3 else ''}; all listed in {listed})")
                print(msg, flush=True)
                if val["top1"] > best:
                    best = val["top1"]
                    save_checkpoint(model, run_dir / "best.safetensors",
                                    metadata=dict(epoch=epoch + 1, top1=best, **names))
        save_state(epoch, step_in_epoch if not finished_epoch else n_steps, None if finished_epoch else tot.state())
        barrier()
        if stop:
            break

    if main:
        save_checkpoint(model, run_dir / "model.safetensors", metadata=dict(model=cfg.model, **names))
        if ema is not None:
            save_checkpoint(ema.module, run_dir / "model_ema.safetensors", metadata=dict(model=cfg.model, **names))
        logger.close()
        run_start.finish()
    return metrics

