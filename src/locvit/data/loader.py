"""Data loaders: timm transforms, deterministic (resumable, distributed) sampling, a collate that skips and counts
unreadable images."""
from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
from timm.data import create_transform
from torch.utils.data import DataLoader, Sampler

from locvit.data.datasets import SeededDataset


class Batch(tuple):
    """``(images, targets)`` plus ``skipped``: how many samples of this batch could not be decoded."""

    skipped: int

    def __new__(cls, images: torch.Tensor, targets: torch.Tensor, skipped: int):
        obj = super().__new__(cls, (images, targets))
        obj.skipped = skipped
        return obj

    def __getnewargs__(self) -> tuple[Any, Any, int]:  # batches cross process boundaries from DataLoader workers
        return (*self, self.skipped)


def skip_unreadable_collate(samples: Sequence[tuple[Any, int]]) -> Batch | None:
    good = [(img, t) for img, t in samples if img is not None]
    skipped = len(samples) - len(good)
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    images = torch.stack([img for img, _ in good])
    return Batch(images, torch.tensor([t for _, t in good], dtype=torch.long), skipped)


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


def build_transform(data_cfg: dict[str, Any], training: bool, aug: dict[str, Any] | None = None):
    """timm's ``create_transform`` with the model's data config (size, crop, interpolation, mean/std) and, when
    training, the recipe's augmentation (RandAugment, colour jitter, random erasing...)."""
    aug = dict(aug or {}) if training else {}
    return create_transform(
        input_size=data_cfg["input_size"],
        is_training=training,
        interpolation=aug.pop("train_interpolation", None) or data_cfg.get("interpolation", "bicubic"),
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        crop_pct=data_cfg.get("crop_pct", 0.875),
        crop_mode=data_cfg.get("crop_mode", "center"),
        **aug,
    )


def build_loader(dataset: SeededDataset, batch_size: int, training: bool, workers: int = 0, seed: int = 0,
                 rank: int = 0, world: int = 1, repeats: int = 1, pin_memory: bool = False,
                 collate_fn: Any = skip_unreadable_collate) -> DataLoader:
    """A DataLoader over an :class:`EpochSampler`; training drops the last incomplete global batch. ``collate_fn``
    builds a :class:`Batch` (the dense tasks pass theirs)."""
    sampler = EpochSampler(len(dataset), shuffle=training, seed=seed, rank=rank, world=world,
                           repeats=repeats if training else 1, drop_last_multiple=batch_size if training else 1)
    if training and sampler.num_samples < batch_size:
        raise ValueError(f"the training set has {len(dataset)} images: fewer than one batch of {batch_size} "
                         f"per process; lower --batch-size")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, drop_last=training,
                      persistent_workers=False)


def steps_per_epoch(loader: DataLoader) -> int:
    sampler: EpochSampler = loader.sampler  # type: ignore[assignment]
    return math.floor(sampler.num_samples / loader.batch_size) if loader.drop_last else math.ceil(
        sampler.num_samples / loader.batch_size)
