"""What every training step shares, for classification (``engine/train.py``) and the dense tasks
(``engine/loop.py``): the per-step seed, the mixed-precision context, one optimiser step."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch
from timm.utils import NativeScaler

from locvit.runtime import seed_all


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed every generator for global step ``step`` of process ``rank``: a resumed run draws what the uninterrupted
    one drew at that step."""
    seed_all((seed * 1_000_003 + step * 7919 + rank) % (2**31))


def mixed_precision(amp: str, device: torch.device) -> tuple[Callable[[], Any], NativeScaler | None]:
    """(context factory, grad scaler) for the precision ``amp`` (``auto``, ``bf16``, ``fp16``, ``off``) on
    ``device``; ``auto`` is bf16 (fp16 where bf16 is unsupported) on CUDA and off on the CPU."""
    mode = amp
    if mode == "auto":
        mode = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "off"
    if mode == "off":
        return contextlib.nullcontext, None
    if mode not in ("bf16", "fp16"):
        raise ValueError(f"amp must be auto, bf16, fp16 or off, got {amp!r}")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = NativeScaler(device=device.type) if mode == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any, clip_grad: float | None,
                   parameters: Iterable[torch.nn.Parameter]) -> None:
    """Zero the gradients, back-propagate ``loss`` (through timm's ``NativeScaler`` when mixed precision needs
    one), clip the gradient norm to ``clip_grad`` when set, and step ``optimizer``."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler(loss, optimizer, clip_grad=clip_grad, parameters=parameters)
        return
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    optimizer.step()
