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


def head_scale(dim: int, num_heads: int, qk_scale: float | None = None) -> float:
    """The logit scale of ``num_heads`` heads over ``dim`` channels: ``qk_scale`` or ``head_dim ** -0.5``, as the
    official code of every family computes it; a ``ValueError`` unless ``num_heads`` divides ``dim``."""
    if dim % num_heads:
        raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    return qk_scale or (dim // num_heads) ** -0.5


def split_heads(x: Tensor, parts: int, num_heads: int) -> tuple[Tensor, ...]:
    """``B x N x (parts * C)`` projections (``q | k | v`` stacked, each split into ``num_heads`` heads of ``C /
    num_heads`` channels) as ``parts`` tensors of ``B x heads x N x d``."""
    B, N, C = x.shape
    return x.reshape(B, N, parts, num_heads, C // (parts * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)


def attend_windows(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float, dropout_p: float = 0.0,
                   owner: nn.Module | None = None) -> Tensor:
    """:func:`attend` for the windows of a batch, ``(B * windows) x heads x N x d`` (windows batch-major), with a
    per-window bias of ``windows x heads x Nq x Nk``: the windows are folded into the head axis (the same memory
    order), so that the bias broadcasts over the batch in one fused call, without a ``B``-fold copy of it.

    Returns ``(B * windows) x heads x Nq x d``."""
    nw, h, nq, nk = bias.shape
    B = q.shape[0] // nw
    q, k, v = (t.reshape(B, nw * h, t.shape[-2], t.shape[-1]) for t in (q, k, v))
    out = attend(q, k, v, bias.reshape(1, nw * h, nq, nk), scale, dropout_p, owner=owner)
    return out.view(B * nw, h, nq, out.shape[-1])


class HeadsAttention(nn.Module):
    """The set-up every multi-head attention of locvit repeats, written once.

    ``__init__`` checks that ``num_heads`` divides the width and sets ``num_heads``, ``head_dim`` and the logit
    ``scale`` (:func:`head_scale`). :meth:`_add_projections` then adds, where the subclass's key layout puts them, the
    input projections under the names its official code gives them, ``attn_drop`` (a probability that :meth:`_attend`
    applies in training), ``proj`` and ``proj_drop``; :meth:`_heads`, :meth:`_attend` and :meth:`_merge` are the way
    from tokens into heads, through :func:`attend` and back.
    """

    def __init__(self, dim: int, num_heads: int, qk_scale: float | None = None):
        super().__init__()
        self.scale = head_scale(dim, num_heads, qk_scale)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads

    def _add_projections(self, dim: int, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0,
                         **inputs: int) -> None:
        """``inputs``: name -> how many ``dim``-wide projections the Linear of that name stacks, in key order
        (``qkv=3``; ``q=1, kv=2``; ``qk=2, v=1``)."""
        for name, parts in inputs.items():
            setattr(self, name, nn.Linear(dim, parts * dim, bias=qkv_bias))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: Tensor, parts: int = 3) -> tuple[Tensor, ...]:
        """:func:`split_heads` with this module's heads."""
        return split_heads(x, parts, self.num_heads)

    def _dropout_p(self) -> float:
        return self.attn_drop if self.training else 0.0

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        """:func:`attend` with this module's scale, dropout (in training) and name under :func:`record_attention`."""
        return attend(q, k, v, bias, self.scale, self._dropout_p(), owner=self)

    def _merge(self, x: Tensor) -> Tensor:
        """``B x heads x N x d`` -> ``proj_drop(proj(B x N x C))``."""
        B, h, N, d = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, h * d)))


class Attention(HeadsAttention):
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
        super().__init__(dim, num_heads, qk_scale)
        self._add_projections(dim, qkv_bias, attn_drop, proj_drop, qkv=3)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        q, k, v = self._heads(self.qkv(x))
        return self._merge(self._attend(q, k, v, bias))
