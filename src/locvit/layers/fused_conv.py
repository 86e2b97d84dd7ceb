"""oneDNN convolution with its activation fused as a post-op (the kernels Inductor emits on CPU), for the eager
float32 CPU inference paths: the activation is applied while the output tile is still in cache, instead of in a
second pass over a map that is often megabytes wide.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from locvit.layers.attention import fused_enabled

try:  # absent in builds without oneDNN
    _conv_pointwise = torch.ops.mkldnn._convolution_pointwise.default
except (AttributeError, RuntimeError):  # pragma: no cover
    _conv_pointwise = None


def fusable(x: Tensor) -> bool:
    """Whether a fused inference path applies to ``x``: float32 on CPU with oneDNN, autograd off, plain eager, and
    no :func:`~locvit.layers.attention.explicit_attention` context (FLOP counting must see plain convolutions)."""
    # tracing/compiling is tested first: Dynamo refuses to trace torch.backends.mkldnn.is_available (a graph
    # break under torch.compile(fullgraph=True)), and a traced graph must not hold the oneDNN-only ops anyway
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and _conv_pointwise is not None
        and fused_enabled()
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
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
