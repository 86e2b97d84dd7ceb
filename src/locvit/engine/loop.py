"""The iteration-based training loop of the dense tasks (``locvit detect`` / ``locvit segment``).

It runs on the classification engine's machinery -- per-step seeding, autocast and the grad scaler, the run
directory's rules (:mod:`locvit.engine.run`: what to resume, a run in ``--output`` refused unless ``--overwrite``,
the saved state, the non-finite stop), the optimiser and schedules (:mod:`locvit.engine.optim`), the deterministic
resumable :class:`~locvit.data.loader.EpochSampler`, atomic checkpoints (:func:`locvit.save_checkpoint`), the
:class:`~locvit.engine.logger.RunLogger`, torchrun/DDP glue -- and leaves the task to a :class:`Task` object: how a
batch becomes a loss, and how the model is scored. The schedule is counted in optimiser steps (Detectron2's and
mmsegmentation's iterations; an epoch schedule is converted with the loader's steps per epoch), with timm's
multi-step or polynomial scheduler and a linear warm-up.

A run directory gets the resolved ``config.yaml``, ``metrics.csv`` (a row per evaluation), ``curves.png``,
``last.pth`` (the whole training state: model, optimiser, scheduler, scaler, position, running sums, history),
``best.safetensors`` and ``model.safetensors``, every file written atomically. ``resume`` continues bit for bit on
CPU: all randomness of a step (augmentation seeded per sample, the model's sampling and drop-path per step) is a
function of the step's position.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from locvit.data.loader import DataError, set_loader_epoch, steps_per_epoch
from locvit.engine.distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, every_rank
from locvit.engine.logger import RunLogger, log_targets
from locvit.engine.optim import build_iter_scheduler, build_optimizer, build_param_groups
from locvit.engine.run import RunStart, check_finite, prepare_output, read_state, restore_state
from locvit.engine.step import GradAccumulator, mixed_precision, seed_step
from locvit.weights import save_checkpoint

__all__ = ["Task", "fit"]


class Task(Protocol):
    """What :func:`fit` needs from a task."""

    model: nn.Module                      # on its device
    train_loader: Any                     # a DataLoader over an EpochSampler, batches are locvit Batch tuples
    key_metric: str                       # the score that selects best.safetensors (higher is better)
    panels: list                          # RunLogger panels (curves.png)
    find_unused_parameters: bool          # for DDP
    unused_reason: str                    # why loss() may use fewer images than the batch holds (for errors)

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """(total loss, its named parts, images that contributed to it) for one training batch."""
        ...

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Scores on the validation split (called on every rank; returns the same numbers everywhere)."""
        ...

    def summary(self, scores: dict[str, Any]) -> str:
        """One line of the scores that matter."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Full parameter names without weight decay (beyond 1-D parameters)."""
        ...


def fit(cfg: Any, task: Task, dist: DistInfo, run_start: RunStart) -> dict[str, Any]:
    """Train ``task.model`` as ``cfg`` says (a :class:`locvit.dense.config.DenseConfig`); returns the last
    evaluation's row. ``run_start`` is what :func:`locvit.engine.run.start_run` decided about ``cfg.output``, before
    the task read its data (the state to resume, the run ``--overwrite`` replaces)."""
    device, main = dist.device, dist.main
    run_dir = Path(cfg.output)
    if main:
        prepare_output(run_dir)
    model, loader = task.model, task.train_loader
    accum = cfg.grad_accum_steps
    n_steps = steps_per_epoch(loader) // accum  # optimiser steps: the loader holds whole accumulation windows
    unit = n_steps if cfg.epochs is not None else 1  # optimiser steps per schedule unit
    total = cfg.epochs * n_steps if cfg.epochs is not None else cfg.iters
    eval_every = (cfg.eval_interval or 1) * unit if cfg.epochs is not None or cfg.eval_interval else total
    total_run = min(total, cfg.max_steps) if cfg.max_steps else total
    eval_every = min(eval_every, total_run)

    optimizer = build_optimizer(cfg, build_param_groups(model, cfg.weight_decay, task.no_weight_decay()), cfg.lr)
    scheduler = build_iter_scheduler(cfg, optimizer, total, unit)
    autocast, scaler = mixed_precision(cfg.amp, device)
    net: nn.Module = model
    if dist.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=task.find_unused_parameters)

    global_step, history, best = 0, [], -math.inf
    running = _fresh_sums()
    if run_start.resume_from is not None:
        state = read_state(run_start.resume_from)
        restore_state(state, run_start.resume_from, model, optimizer, scheduler, scaler, what=cfg.model)
        global_step, history, best = state["global_step"], state.get("history", []), state.get("best", -math.inf)
        # every rank's own running sums (a checkpoint before this fix holds rank 0's only)
        ranks = state.get("running_ranks") or []
        running = ranks[dist.rank] if len(ranks) == dist.world else state.get("running", running)
        if main:
            print(f"resumed from {run_start.resume_from}: iteration {global_step} of {total}", flush=True)
    scheduler.step_update(num_updates=global_step)
    if main:
        run_start.begin()  # --overwrite: the old run's files move to replaced_run/ before this run writes any
    logger = (RunLogger(run_dir, log_targets(cfg), history, x_key="iter", panels=task.panels, config=cfg.to_dict())
              if main else None)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")

    def save_state() -> None:
        ranks = all_gather_objects(running)  # so each rank's part of the next row survives a resume
        if main:
            save_checkpoint(dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                 scheduler=scheduler.state_dict(),
                                 scaler=scaler.state_dict() if scaler is not None else None, global_step=global_step,
                                 history=logger.history, best=best, running=running, running_ranks=ranks,
                                 config=cfg.to_dict(), world_size=dist.world),
                            run_dir / "last.pth")

    metrics: dict[str, Any] = history[-1] if history else {}
    bar = tqdm(total=total_run, initial=global_step, desc="train", disable=not main, dynamic_ncols=True)
    t0 = time.time()
    # checkpoints are written after optimiser steps only, so a run resumes at the start of an accumulation window
    stepper = GradAccumulator(net, optimizer, scaler, cfg.clip_grad, model.parameters(), accum)
    while global_step < total_run:
        epoch, start = divmod(global_step, n_steps)
        set_loader_epoch(loader, epoch, start=start * accum * loader.batch_size)
        net.train()
        for batch in loader:
            seed_step(cfg.seed, global_step * accum + stepper.micro, dist.rank)
            _step(task, net, batch, stepper, autocast, running, device, f"iteration {global_step + 1}", run_dir)
            if not stepper.step():
                continue
            global_step += 1
            scheduler.step_update(num_updates=global_step)
            if main:
                bar.update(1)
                if global_step % max(1, cfg.log_interval) == 0:
                    lr = optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{running['loss'] / max(running['images'], 1):.4f}", lr=f"{lr:.2e}")
                    seconds = running["t"] + time.time() - t0
                    logger.log_step(global_step, dict(train_loss=running["loss"] / max(running["images"], 1), lr=lr,
                                                      images_per_s=running["images"] * dist.world / max(seconds, 1e-9)))
            if global_step % eval_every == 0 or global_step == total_run:
                running["t"] += time.time() - t0
                metrics = _evaluate(task, model, optimizer, running, global_step, n_steps, metrics.get("iter", 0))
                t0 = time.time()
                if main:
                    logger.log_epoch(metrics)
                    bar.write(f"iteration {global_step}/{total}: train loss {metrics['train_loss']:.4f}  "
                              + task.summary(metrics)
                              + (f"  ({metrics['skipped']} unreadable images skipped)" if metrics["skipped"] else ""))
                    score = metrics.get(task.key_metric, -math.inf)
                    if score > best:
                        best = score
                        save_checkpoint(model, run_dir / "best.safetensors",
                                        metadata={"iter": global_step, task.key_metric: score})
                running = _fresh_sums()
                save_state()
                net.train()
            elif cfg.checkpoint_interval and global_step % cfg.checkpoint_interval == 0:
                running["t"] += time.time() - t0
                t0 = time.time()
                save_state()
            if global_step >= total_run:
                break
        barrier()
    bar.close()
    if main:
        save_checkpoint(model, run_dir / "model.safetensors", metadata=dict(model=cfg.model, iter=global_step))
        logger.close()
        run_start.finish()
    return metrics


def _fresh_sums() -> dict[str, Any]:
    """The running sums of one evaluation interval (loss, images, skipped, the loss's parts, seconds)."""
    return dict(loss=0.0, images=0, skipped=0, parts={}, t=0.0)


def _step(task: Task, net: nn.Module, batch: Any, stepper: GradAccumulator, autocast: Any, running: dict[str, Any],
          device: torch.device, where: str, run_dir: Path) -> None:
    """One micro-batch: its forward and backward (skipped by every rank at once when one rank has no image), its
    sums added to ``running``."""
    batch.refuse()  # a sample that must stop the run (locvit.data.loader.Refused), raised here
    running["skipped"] += batch.skipped
    if batch.unreadable and not running.get("first_skipped"):
        running["first_skipped"] = f"{batch.unreadable[0].path} ({batch.unreadable[0].reason})"
    if not every_rank(len(batch[0]) > 0, device):  # all ranks step or none (engine.distributed.every_rank)
        return
    with stepper.context():
        with autocast():
            loss, parts, n = task.loss(net, batch)
        if torch.isfinite(loss).all():
            stepper.backward(loss)
    check_finite(loss, where, run_dir, f"; {({k: round(v.item(), 4) for k, v in parts.items()})}")
    running["loss"] += loss.item() * n
    running["images"] += n
    running["unused"] = running.get("unused", 0) + len(batch[0]) - n
    for k, v in parts.items():
        running["parts"][k] = running["parts"].get(k, 0.0) + v.item() * n


def _evaluate(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, running: dict[str, Any],
              global_step: int, n_steps: int, since: int) -> dict[str, Any]:
    """The metrics row of iteration ``global_step``: the running training sums since iteration ``since`` (all
    ranks), the task's scores. An interval in which no training image was used is an error, not a row: the
    weights would be the untrained ones (every image unreadable, or, say, every pixel ignored)."""
    keys = sorted(running["parts"])
    totals = all_reduce_sum(torch.tensor([running["loss"], running["images"], running["skipped"],
                                          running.get("unused", 0)] + [running["parts"][k] for k in keys],
                                         dtype=torch.float64))
    if totals[1].item() == 0:
        why = []
        if totals[2].item():
            first = f" (first: {running['first_skipped']})" if running.get("first_skipped") else ""
            why.append(f"{int(totals[2].item())} could not be read and were skipped{first}: replace them with "
                       "readable ones")
        if totals[3].item():
            why.append(f"{int(totals[3].item())} {task.unused_reason}")
        raise DataError(f"no training image was used in iterations {since + 1}..{global_step}, so nothing was "
                        f"trained: {'; '.join(why)}")
    n = totals[1].item()
    scores = task.evaluate(model)
    row: dict[str, Any] = dict(iter=global_step, epoch=round(global_step / n_steps, 3),
                               train_loss=totals[0].item() / n, lr=optimizer.param_groups[0]["lr"])
    row.update({k: totals[4 + i].item() / n for i, k in enumerate(keys)})
    row.update({k: v for k, v in scores.items() if not isinstance(v, dict)})
    row["skipped"] = int(totals[2].item()) + int(scores.get("skipped", 0))
    row["images_per_s"] = totals[1].item() / max(running["t"], 1e-9)
    return row
