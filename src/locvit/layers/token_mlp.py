"""The pre-norm MLP residual ``x + DP(γ · mlp(norm(x)))`` of a transformer block, with a cache-sized
inference path.

On the high-resolution stages of the pyramid models the MLP's hidden tensor is tens of megabytes (RegionViT-Ti
stage 1: 25,600 tokens x 256 channels; VVT/PVT: 25,088 x 512) and every step of ``LN -> fc1 -> GELU -> fc2 ->
+`` streams it through main memory, with narrow GEMMs (64 in or out channels) that cannot hide it. The MLP is
token-wise, so in inference the tokens are taken a block of rows at a time, sized so that the block's hidden
activations stay in the core's cache, and the residual is accumulated by ``fc2``'s GEMM (what it gains, by shape:
``docs/benchmarks/README.md``, *CPU fast paths*). Only where
:func:`~locvit.layers.fastpath.eager_cpu_inference` holds and the map is large (the ``MLP_*`` settings of
:mod:`locvit.layers.fastpath`); training, autograd, ``torch.compile``/export tracing and non-CPU devices take the
plain expression (the compiler fuses on its own; a GPU has no such cache cliff).
"""
from __future__ import annotations

import torch
from timm.layers import register_notrace_function
from torch import Tensor, nn

from locvit.layers import fastpath


@register_notrace_function  # chooses the blocked path from the input's device and size
def residual_mlp(x: Tensor, norm: nn.Module, mlp: nn.Module, drop_path: nn.Module | None = None,
                 gamma: Tensor | None = None) -> Tensor:
    """``x + drop_path(gamma * mlp(norm(x)))`` over the last dim of ``x`` (``gamma``: optional layer scale).

    ``mlp`` is a timm-style ``Mlp`` (``fc1``, ``act``, ``fc2``; its dropouts and ``norm`` are applied as the
    module would). The blocked path needs the plain ``Linear -> act -> Linear`` form and eval-mode modules; any
    other MLP, or training, runs the expression as written.
    """
    if _blockable(x, norm, mlp):
        return _blocked(x, norm, mlp, gamma)
    y = mlp(norm(x))
    if gamma is not None:
        y = gamma * y
    return x + (y if drop_path is None else drop_path(y))


def _blockable(x: Tensor, norm: nn.Module, mlp: nn.Module) -> bool:
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    return (
        isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity)
        and fastpath.eager_cpu_inference(x)
        and not mlp.training and not norm.training
        and _large(x.numel() // x.shape[-1], fc1.out_features)
    )


def _large(rows: int, hidden: int) -> bool:
    return rows >= 2 * _rows_per_block(hidden) and (
        rows >= fastpath.MLP_MIN_TOKENS or 4 * rows * hidden >= fastpath.MLP_MIN_HIDDEN_BYTES)


def _rows_per_block(hidden: int) -> int:
    return max(fastpath.MLP_MIN_ROWS, fastpath.MLP_BLOCK_BYTES // (4 * hidden))


def _blocked(x: Tensor, norm: nn.Module, mlp: nn.Module, gamma: Tensor | None) -> Tensor:
    fc1, fc2 = mlp.fc1, mlp.fc2
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(flat)
    w2 = fc2.weight.t()
    step = _rows_per_block(fc1.out_features)
    for start in range(0, flat.shape[0], step):
        xs, dst = flat[start:start + step], out[start:start + step]
        h = mlp.act(fc1(norm(xs)))
        if gamma is None:
            torch.addmm(xs, h, w2, out=dst)  # the residual rides in the GEMM's accumulator
            if fc2.bias is not None:
                dst.add_(fc2.bias)
        else:
            y = torch.matmul(h, w2) if fc2.bias is None else torch.addmm(fc2.bias, h, w2)
            torch.addcmul(xs, gamma, y, out=dst)
    return out.view(x.shape)
