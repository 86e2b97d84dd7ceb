"""Parameter and FLOP counts with ``torch.utils.flop_counter`` on the explicit attention path.

``torch.utils.flop_counter`` counts matmuls, convolutions and attention as 2 FLOPs per multiply-add and ignores
element-wise ops; the papers report multiply-adds ("GFLOPs" in their tables are GMACs, as fvcore counts), so
``gmacs = flops / 2``. Attention runs through the explicit softmax path so every attention matmul is visible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from locvit.layers.attention import explicit_attention

COUNTER = "torch.utils.flop_counter (matmul/conv/attention; 1 MAC = 2 FLOPs; element-wise ops not counted)"


@dataclass
class FlopCount:
    params: int
    flops: int
    input_size: tuple[int, int, int]
    by_module: dict[str, int]

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def count_params(model: nn.Module) -> int:
    """Parameters counted once each (shared modules are not double counted), as the official model counts them: the
    official parameters that are never trained and are buffers here (``official_parameter_buffers``, e.g. T2T's
    fixed position table) count too."""
    buffers = dict(model.named_buffers())
    frozen = sum(buffers[k].numel() for k in getattr(model, "official_parameter_buffers", ()))
    return sum(p.numel() for p in model.parameters()) + frozen


@torch.no_grad()
def flop_count(fn: Callable[..., Any], *args: Any, module: nn.Module | None = None, **kwargs: Any) -> FlopCounterMode:
    """Run ``fn(*args, **kwargs)`` under the FLOP counter with every attention on its explicit path (locvit's via
    :func:`explicit_attention`, timm's through their ``fused_attn`` switch on ``module``)."""
    counter = FlopCounterMode(display=False, depth=2)
    fused = [m for m in (module.modules() if module is not None else []) if getattr(m, "fused_attn", False) is True]
    # the counter's module tracker hooks autograd on inputs that require grad; views of parameters taken under
    # no_grad (a class token expanded to the batch) would trip it, and counting needs no gradients anyway
    frozen = [p for p in (module.parameters() if module is not None else []) if p.requires_grad]
    for m in fused:
        m.fused_attn = False
    for p in frozen:
        p.requires_grad_(False)
    try:
        with explicit_attention(), counter:
            fn(*args, **kwargs)
    finally:
        for m in fused:
            m.fused_attn = True
        for p in frozen:
            p.requires_grad_(True)
    return counter


def count_flops(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), batch_size: int = 1) -> FlopCount:
    """FLOPs of one forward pass in eval mode at ``input_size`` (C, H, W), per image."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *input_size, device=next(model.parameters()).device)
    try:
        counter = flop_count(model, x, module=model)
    finally:
        model.train(was_training)
    by_module = {k: int(sum(v.values())) // batch_size for k, v in counter.get_flop_counts().items()}
    return FlopCount(count_params(model), int(counter.get_total_flops()) // batch_size, tuple(input_size), by_module)
