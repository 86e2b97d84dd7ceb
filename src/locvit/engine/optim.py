"""Optimiser and learning-rate schedules of both training loops, all timm's.

* :func:`build_optimizer` -- ``cfg.opt`` (AdamW by default) with ``opt_eps`` / ``opt_betas`` / ``momentum``, on
  the model (timm's default groups: no weight decay on norms, biases and the model's ``no_weight_decay`` tables) or
  on explicit parameter groups (:func:`build_param_groups`, the dense tasks').
* :func:`build_epoch_scheduler` -- ``locvit train``'s DeiT/Swin schedule: the lr scaled by the global batch / 512,
  warm-up, then cosine / step / multi-step, per epoch or per update.
* :func:`build_iter_scheduler` -- the dense tasks' per-iteration schedule: linear warm-up, then multi-step
  (Detectron2 / mmdetection) or polynomial (mmsegmentation).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["build_epoch_scheduler", "build_iter_scheduler", "build_optimizer", "build_param_groups", "scaled_lrs",
           "timm_milestones"]


def build_optimizer(cfg: Any, params: nn.Module | list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` for ``cfg`` (a :class:`~locvit.engine.config.RunConfig`) at ``lr``."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = dict(eps=cfg.opt_eps) if cfg.opt.lower().endswith("adamw") else {}
    if cfg.opt_betas:
        kwargs["betas"] = tuple(cfg.opt_betas)
    return create_optimizer_v2(params, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               **kwargs)


def build_param_groups(model: nn.Module, weight_decay: float, no_decay: set[str]) -> list[dict[str, Any]]:
    """Two AdamW groups: decay on weights, none on norms, biases and the backbone's position tables."""
    from timm.optim import param_groups_weight_decay

    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay)


def scaled_lrs(cfg: Any, global_batch: int) -> tuple[float, float, float]:
    """``(lr, warmup_lr, min_lr)`` of ``locvit train``: with ``scale_lr`` and no absolute ``--lr``, ``blr``,
    ``warmup_lr`` and ``min_lr`` are scaled by ``global_batch / 512`` (DeiT's rule); an absolute ``--lr`` is used
    as it is and scales nothing."""
    scale = global_batch / 512 if cfg.scale_lr else 1.0
    lr = cfg.lr if cfg.lr is not None else cfg.blr * scale
    rest = scale if cfg.scale_lr and cfg.lr is None else 1.0
    return lr, cfg.warmup_lr * rest, cfg.min_lr * rest


def timm_milestones(milestones: list[int], updates_per_epoch: int = 1) -> list[float]:
    """``--decay-milestones`` (epochs) as timm's ``MultiStepLRScheduler`` takes them.

    locvit's milestones follow PyTorch's ``MultiStepLR`` and pyslowfast's ``steps_with_relative_lrs``: milestone
    ``m`` is the first epoch trained at the decayed lr. timm applies milestone ``m`` one scheduler step early (its
    documented historical convention: at ``t == m - 1``), so each is moved one scheduler step later: one epoch when
    the schedule steps per epoch, one update (``1 / updates_per_epoch`` of an epoch; timm multiplies milestones by
    ``updates_per_epoch``) when it steps per update."""
    return [m + 1 / updates_per_epoch for m in milestones]


def build_epoch_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, updates_per_epoch: int,
                          global_batch: int) -> tuple[Any, int]:
    """``locvit train``'s scheduler and its number of epochs (timm's ``create_scheduler_v2``)."""
    from timm.scheduler import create_scheduler_v2

    _, warmup_lr, min_lr = scaled_lrs(cfg, global_batch)
    milestones = (dict(decay_milestones=timm_milestones(cfg.decay_milestones,
                                                        updates_per_epoch if cfg.sched_on_updates else 1))
                  if cfg.decay_milestones else {})
    return create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                               warmup_lr=warmup_lr, min_lr=min_lr, step_on_epochs=not cfg.sched_on_updates,
                               updates_per_epoch=updates_per_epoch, decay_rate=cfg.decay_rate, **milestones)


def build_iter_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total: int, steps_per_unit: int):
    """timm's per-iteration scheduler for ``cfg.sched``: ``'step'`` (x ``lr_gamma`` at each of ``lr_steps``,
    Detectron2/mmdetection) or ``'poly'`` (``(1 - t/total) ** poly_power`` down to ``min_lr``, mmsegmentation),
    both after a linear warm-up from ``lr * warmup_ratio`` over ``warmup_iters`` steps."""
    from timm.scheduler import MultiStepLRScheduler, PolyLRScheduler

    warmup = dict(warmup_t=min(cfg.warmup_iters, total), warmup_lr_init=cfg.lr * cfg.warmup_ratio,
                  warmup_prefix=False, t_in_epochs=False)
    if cfg.sched == "poly":
        return PolyLRScheduler(optimizer, t_initial=total, power=cfg.poly_power, lr_min=cfg.min_lr, **warmup)
    # timm decays once t + 1 reaches a milestone: shift by one so the decay starts at the milestone's step
    return MultiStepLRScheduler(optimizer, decay_t=[s * steps_per_unit + 1 for s in cfg.lr_steps],
                                decay_rate=cfg.lr_gamma, **warmup)
