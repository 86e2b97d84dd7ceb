"""oneDNN convolution with its activation fused as a post-op (the kernels Inductor emits on CPU), for the eager
float32 CPU inference paths: the activation is applied while the output tile is still in cache, instead of in a
second pass over a map that is often megabytes wide.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from locvit.layers import fastpath

try:  # absent in builds without oneDNN
    _conv_pointwise = torch.ops.mkldnn._convolution_pointwise.default
except (AttributeError, RuntimeError):  # pragma: no cover
    _conv_pointwise = None


def fusable(x: Tensor) -> bool:
    """Whether the fused convolutions apply to ``x``: :func:`~locvit.layers.fastpath.eager_cpu_inference` (which
    also keeps FLOP counting on plain convolutions), float32, and oneDNN present and enabled."""
    return (
        fastpath.eager_cpu_inference(x)
        and _conv_pointwise is not None
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def conv2d_act(x: Tensor, weight: Tensor, bias: Tensor | None, conv: nn.Conv2d, act: str) -> Tensor:
    """``act(conv2d(x, weight, bias))`` with ``conv``'s padding/stride/dilation/groups as one oneDNN call.

    ``act``: ``'hardswish'``, ``'relu6'`` or ``'gelu'`` (exact, erf). Only where :func:`fusable` holds; channels-last
    input gives channels-last output.
    """
    attr, scalars, algorithm = {
        "hardswish": ("hardswish", [], ""),
        "relu6": ("hardtanh", [0.0, 6.0], ""),
        "gelu": ("gelu", [], "none"),
    }[act]
    return _conv_pointwise(x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                           attr, scalars, algorithm)
