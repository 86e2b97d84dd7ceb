"""What ``locvit detect`` and ``locvit segment`` share beyond the training loop: backbone arguments, optimiser
groups, evaluation loaders, trained-weight loading, the ``eval`` command's configuration, and which command a run
directory belongs to (also for ``locvit train`` / ``locvit eval``)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from locvit.data.loader import build_loader
from locvit.dense.config import DenseConfig, build_task_config
from locvit.engine.distributed import DistInfo, cleanup, init_distributed
from locvit.engine.run import EVAL_COMMAND, check_scorer, open_run
from locvit.engine.step import seed_step

C = TypeVar("C", bound=DenseConfig)


@contextlib.contextmanager
def session(cfg: DenseConfig) -> Iterator[DistInfo]:
    """torchrun's process group (when there is one) and the device, determinism and initial seed of ``cfg``."""
    dist = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_step(cfg.seed, 0, dist.rank)
        yield dist
    finally:
        cleanup()


def report_size(model: nn.Module, what: str, dist: DistInfo) -> None:
    if dist.main:
        print(f"{what}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)


def no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters the locvit backbone inside ``model`` excludes from weight decay (position
    tables, relative-position biases...)."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        names = getattr(module, "no_weight_decay", None)
        if prefix and callable(names):
            out |= {f"{prefix}.{n}" for n in names()}
    return out


def train_loader(dataset: Any, cfg: DenseConfig, dist: DistInfo, collate: Callable) -> DataLoader:
    """The resumable, sharded training loader (:func:`locvit.data.loader.build_loader`) with the task's collate."""
    return build_loader(dataset, cfg.batch_size, True, cfg.workers, cfg.seed, dist.rank, dist.world,
                        collate_fn=collate, grad_accum=cfg.grad_accum_steps)


def eval_loader(dataset: Any, batch_size: int, workers: int, dist: DistInfo, collate: Callable) -> DataLoader:
    """Every sample once: rank ``r`` takes samples ``r, r + world, ...`` (no padding, so nothing is scored twice)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=list(range(dist.rank, len(dataset), dist.world)),
                      num_workers=workers, collate_fn=collate)


def eval_config(cls: type[C], config: str | None, overrides: dict[str, Any]) -> tuple[C, Path | None]:
    """The configuration of an ``eval`` command and the weights to score.

    ``--checkpoint`` may name a run directory: its ``config.yaml`` is the base (flags still win) and its
    ``best.safetensors`` (else ``model.safetensors``) the weights.
    """
    ckpt = overrides.get("checkpoint")
    weights = Path(ckpt) if ckpt else None
    base: dict[str, Any] = {}
    scorer = EVAL_COMMAND[cls.COMMAND]
    if weights is not None:  # a run, or a run's weights file: refuse another command's run
        check_scorer(weights if weights.is_dir() else weights.parent, scorer)
    if weights is not None and weights.is_dir():
        base, weights = open_run(weights)
    elif weights is not None and not weights.is_file():
        raise FileNotFoundError(f"checkpoint {weights} does not exist")
    if config:
        base.update(cls.load_recipe(config))
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    # the trained weights replace the backbone's initial ones; the schedule does not matter for scoring
    merged.update(checkpoint=None, pretrained=False, resume=None)
    if merged.get("epochs") is None and merged.get("iters") is None:
        merged["iters"] = 1
    return build_task_config(cls, None, merged), weights
