"""Scaled dot-product attention with a fused path and an explicit path that are numerically equal.

The fused path (``F.scaled_dot_product_attention``) is the default. The explicit path (logits, softmax,
dropout, weighted sum) is used inside :func:`explicit_attention` -- for FLOP counting, where every matmul
must be visible -- and inside :func:`record_attention`, which also hands the attention probabilities of
every call to the caller (visualisation). Neither context changes results.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import Tensor, nn

from locvit.layers import fastpath

_recorders: list[dict[nn.Module | None, list[Tensor]]] = []

#: Run every locvit attention through the explicit softmax path (and every other fast path as its plain expression)
#: while the context is active: :func:`locvit.layers.fastpath.record` under its attention name.
explicit_attention = fastpath.record


@contextlib.contextmanager
def record_attention() -> Iterator[dict[nn.Module | None, list[Tensor]]]:
    """Collect attention probabilities: yields a dict ``{owner module: [probs of each call]}``.

    Probabilities are detached and have shape ``(..., queries, keys)`` as the calling mechanism lays them
    out (windows folded into the batch). Implies :func:`explicit_attention`.
    """
    store: dict[nn.Module | None, list[Tensor]] = {}
    _recorders.append(store)
    try:
        with fastpath.record():
            yield store
    finally:
        _recorders.remove(store)


@register_notrace_function  # chooses its kernel from the inputs' autograd state and device
def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    owner: nn.Module | None = None,
) -> Tensor:
    """``softmax(q kᵀ · scale + bias) v`` over the last two dims.

    Args:
        q: ``(..., Lq, d)``.
        k: ``(..., Lk, d)``.
        v: ``(..., Lk, dv)``.
        bias: additive logits bias (relative position tables, masks), broadcastable to ``(..., Lq, Lk)``.
        scale: logit scale, ``d ** -0.5`` when None.
        dropout_p: attention dropout (pass 0 in eval).
        owner: the calling module, used as the key under :func:`record_attention`.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    # SDPA's fused CPU kernel takes no gradient for attn_mask: with a learned bias (relative positions) in
    # training it falls back to its math kernel, which is slower than the explicit path (docs/benchmarks/README.md,
    # CPU fast paths); the numbers are the same either way
    learned_bias_cpu = bias is not None and fastpath.needs_grad(bias) and q.device.type == "cpu"
    if not fastpath.recording() and not learned_bias_cpu:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    probs = logits.softmax(dim=-1)
    for store in _recorders:
        store.setdefault(owner, []).append(probs.detach())
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (DeiT/timm key layout: ``qkv``, ``proj``).

    ``forward(x, bias)`` accepts an additive logits bias (relative positions, masks) broadcastable to
    ``B x heads x N x N``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = attend(q, k, v, bias, self.scale, self.attn_drop if self.training else 0.0, owner=self)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))
