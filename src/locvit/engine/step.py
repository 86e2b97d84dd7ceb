"""One optimiser step, shared by classification (``engine/train.py``) and the dense tasks (``engine/loop.py``)."""
from __future__ import annotations

from typing import Any, Iterable

import torch


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
