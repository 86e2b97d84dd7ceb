"""What every training step shares, for classification (``engine/train.py``) and the dense tasks
(``engine/loop.py``): the per-step seed, the mixed-precision context, optimiser steps with gradient accumulation."""
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


class GradAccumulator:
    """Optimiser steps of ``steps`` micro-batches each, the one place both training loops step the optimiser.

    With ``steps`` = N, N micro-batches of B images make one optimiser step with the gradient of the mean loss over
    the N x B images: each micro-batch's loss is divided by N before backward, DDP synchronises the gradients only in
    the last micro-batch of a window (``no_sync`` on the others), the fp16 grad scaler scales every backward and
    unscales once, the gradient norm is clipped on the accumulated gradient, and the gradients are cleared after the
    step. For a model without batch-dependent layers this is the update of one step on the whole batch (equal sizes
    of micro-batches; skipped unreadable images make a micro-batch's mean weigh as much as a full one's). The callers
    count their schedule, EMA, ``--max-steps`` and checkpoints in the optimiser steps :meth:`step` reports, so a
    checkpoint always lies on a window's boundary and a resumed run never starts inside one.
    """

    def __init__(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, clip_grad: float | None,
                 parameters: Iterable[torch.nn.Parameter], steps: int = 1):
        if steps < 1:
            raise ValueError(f"--grad-accum-steps must be at least 1, got {steps}")
        self.net, self.optimizer, self.scaler, self.clip_grad = net, optimizer, scaler, clip_grad
        self.parameters = list(parameters)
        self.steps = steps
        self.micro = 0          # micro-batches taken in the current window
        self.backwards = 0      # of them, those with a backward (a batch of only unreadable images has none)
        optimizer.zero_grad(set_to_none=True)

    def context(self) -> contextlib.AbstractContextManager:
        """Wrap the forward and backward of a micro-batch: DDP skips its all-reduce except on a window's last."""
        if self.micro < self.steps - 1 and isinstance(self.net, torch.nn.parallel.DistributedDataParallel):
            return self.net.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of ``loss`` (the mean over this micro-batch) into the window's gradient."""
        loss = loss / self.steps
        if self.scaler is not None:
            self.scaler(loss, self.optimizer, need_update=False)
        else:
            loss.backward()
        self.backwards += 1

    def step(self) -> bool:
        """End a micro-batch; at the end of a window clip, step the optimiser (and the scaler) and clear the
        gradients. True when the optimiser stepped (the callers' global step)."""
        self.micro += 1
        if self.micro < self.steps:
            return False
        if self.backwards:
            if self.scaler is not None:
                scaler = self.scaler._scaler  # timm's NativeScaler wraps torch's GradScaler; its __call__ needs a loss
                if self.clip_grad:
                    scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad)
                scaler.step(self.optimizer)
                scaler.update()
            else:
                if self.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad)
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.micro = self.backwards = 0
        return True
