"""Data loaders: timm transforms, deterministic (resumable, distributed) sampling, a collate that skips and counts
unreadable images."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from timm.data import auto_augment, create_transform
from torch.utils.data import DataLoader, IterableDataset, Sampler

from locvit.data.datasets import SeededDataset, Unreadable
from locvit.runtime import default_workers  # noqa: F401  (the loaders' default, importable from here)


class DataError(ValueError):
    """A sample no run can use (a label outside the classes...): unlike an unreadable one it is not skipped, the run
    stops with the file and the fix (the CLI prints it as one line)."""


@dataclass(frozen=True)
class Refused(Unreadable):
    """Stands in for a sample that decodes but must stop the run; ``reason`` names the file, the problem and the fix.

    Datasets return it instead of raising: an exception raised in a DataLoader worker reaches the main process
    re-wrapped in the worker's traceback, not as the one line written for the user. Collates keep it with the
    unreadable samples; :meth:`Batch.refuse` raises it in the main process."""


class Batch(tuple):
    """``(images, targets)`` plus ``unreadable``: the samples of this batch that could not be decoded (and any
    :class:`Refused` one).

    A tuple, so ``images, targets = batch`` works; it crosses from DataLoader worker processes by pickle, hence
    :meth:`__reduce__` (a tuple subclass with extra constructor arguments does not unpickle by default)."""

    unreadable: tuple[Unreadable, ...]

    def __new__(cls, images: torch.Tensor, targets: torch.Tensor, unreadable: Sequence[Unreadable] = ()):
        obj = super().__new__(cls, (images, targets))
        obj.unreadable = tuple(unreadable)
        return obj

    def __reduce__(self):
        return (type(self), (self[0], self[1], self.unreadable))

    @property
    def skipped(self) -> int:
        return len(self.unreadable)

    def refuse(self) -> None:
        """Raise :class:`DataError` for the first :class:`Refused` sample of the batch, if any."""
        refused = [u for u in self.unreadable if isinstance(u, Refused)]
        if refused:
            raise DataError(refused[0].reason + (f" ({len(refused) - 1} more such samples in the same batch)"
                                                 if len(refused) > 1 else ""))


def skip_unreadable_collate(samples: Sequence[tuple[Any, int]]) -> Batch:
    good = [(img, t) for img, t in samples if not isinstance(img, Unreadable)]
    bad = [img for img, _ in samples if isinstance(img, Unreadable)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad)
    images = torch.stack([img for img, _ in good])
    return Batch(images, torch.tensor([t for _, t in good], dtype=torch.long), bad)


class EpochSampler(Sampler[int]):
    """Deterministic order per ``(seed, epoch)``, sharded across ``world`` ranks as ``order[rank::world]``, with
    optional repeated augmentation (each index ``repeats`` times, DeiT's RASampler) and a ``start`` offset to
    resume mid-epoch. Rank ``r``'s ``s``-th batch is the ``r``-th stride of the single-process ``s``-th batch of
    ``world`` times the size, so one process and ``world`` processes see the same global batches."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world: int = 1,
                 repeats: int = 1, drop_last_multiple: int = 1):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world, self.repeats = rank, world, max(1, repeats)
        self.epoch, self.start = 0, 0
        # every rank gets the same number of samples, a multiple of the global batch when training
        total = n * self.repeats
        per_rank = total // world
        if drop_last_multiple > 1:
            per_rank = per_rank // drop_last_multiple * drop_last_multiple
        self.num_samples = per_rank

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` samples of this rank."""
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            idx = torch.randperm(self.n, generator=g)
        else:
            idx = torch.arange(self.n)
        if self.repeats > 1:
            idx = idx.repeat_interleave(self.repeats)
        return idx[self.rank::self.world][: self.num_samples].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op as the papers ran it: keeping 0 bits gave a black image with the Pillow of 2021, while
    Pillow >= 13 refuses ``bits=0`` ("bits must be between or equal to 1 and 8")."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep)


def guard_augment_ops(transform: Any) -> Any:
    """Replace the augmentation ops of ``transform`` whose arguments the installed Pillow rejects at some
    magnitudes (RandAugment's 'PosterizeIncreasing' reaches ``bits=0`` at magnitude 10, which
    ``rand-m9-mstd0.5`` draws a few times in a thousand) by versions that keep the old result. Returns it."""
    for t in getattr(transform, "transforms", [transform]):
        for op in getattr(t, "ops", ()):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


def build_transform(data_cfg: dict[str, Any], training: bool, aug: dict[str, Any] | None = None):
    """timm's ``create_transform`` with the model's data config (size, crop, interpolation, mean/std) and, when
    training, the recipe's augmentation (RandAugment, colour jitter, random erasing...)."""
    aug = dict(aug or {}) if training else {}
    return guard_augment_ops(create_transform(
        input_size=data_cfg["input_size"],
        is_training=training,
        interpolation=aug.pop("train_interpolation", None) or data_cfg.get("interpolation", "bicubic"),
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        crop_pct=data_cfg.get("crop_pct", 0.875),
        crop_mode=data_cfg.get("crop_mode", "center"),
        **aug,
    ))


def eval_transform(model: torch.nn.Module, img_size: int | None = None) -> tuple[dict[str, Any], Any]:
    """The evaluation preprocessing of ``model``: timm's ``resolve_data_config`` on its pretrained cfg (``img_size``
    replacing the input size) and :func:`build_transform`. ``locvit eval`` and ``locvit predict`` both take it from
    here, so a file predicted alone gives the logits its evaluation computed. Returns ``(data_cfg, transform)``."""
    from timm.data import resolve_data_config

    data_cfg = resolve_data_config({"input_size": (3, img_size, img_size)} if img_size else {}, model=model)
    return data_cfg, build_transform(data_cfg, training=False)


def build_loader(dataset: SeededDataset, batch_size: int, training: bool, workers: int = 0, seed: int = 0,
                 rank: int = 0, world: int = 1, repeats: int = 1, pin_memory: bool = False,
                 collate_fn: Any = skip_unreadable_collate, grad_accum: int = 1) -> DataLoader:
    """A DataLoader over an :class:`EpochSampler`; training drops the samples after the last whole optimiser step
    (``grad_accum`` batches), so every epoch is whole steps. ``collate_fn`` builds a :class:`Batch` (the dense tasks
    pass theirs). Streamed shards (:class:`locvit.data.shards.ShardDataset`) order themselves instead."""
    if isinstance(dataset, IterableDataset):
        dataset.configure(training, batch_size, rank, world, repeats, multiple=batch_size * grad_accum)
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_fn,
                          pin_memory=pin_memory, persistent_workers=False)
    sampler = EpochSampler(len(dataset), shuffle=training, seed=seed, rank=rank, world=world,
                           repeats=repeats if training else 1,
                           drop_last_multiple=batch_size * grad_accum if training else 1)
    if training and sampler.num_samples < batch_size:
        step = f"one optimiser step of {grad_accum} x {batch_size}" if grad_accum > 1 else f"one batch of {batch_size}"
        raise ValueError(f"the training set has {len(dataset)} images: fewer than {step} per process; lower "
                         f"--batch-size{' or --grad-accum-steps' if grad_accum > 1 else ''}")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, drop_last=training,
                      persistent_workers=False)


def set_loader_epoch(loader: DataLoader, epoch: int, start: int = 0) -> None:
    """Select ``epoch``'s order and augmentation and skip its first ``start`` samples of this rank (a resumed run)."""
    if isinstance(loader.dataset, IterableDataset):
        loader.dataset.set_epoch(epoch, start=start)
        return
    loader.sampler.set_epoch(epoch, start=start)
    loader.dataset.set_epoch(epoch)


def steps_per_epoch(loader: DataLoader) -> int:
    """Batches of this rank in an epoch (training: whole optimiser steps' worth)."""
    if isinstance(loader.dataset, IterableDataset):
        return loader.dataset.batches()
    sampler: EpochSampler = loader.sampler  # type: ignore[assignment]
    return math.floor(sampler.num_samples / loader.batch_size) if loader.drop_last else math.ceil(
        sampler.num_samples / loader.batch_size)
