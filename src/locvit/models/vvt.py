"""Vicinity Vision Transformer, VVT (Sun et al., "Vicinity Vision Transformer", TPAMI 2023).

VVT is a PVT-v2-like four-stage pyramid (overlapping conv patch embeddings, an FFN with a depth-wise conv)
whose attention is *linear*: ReLU feature maps instead of a softmax, re-weighted by 2-D position so that
tokens close on the grid weigh more. Token ``n`` of an ``H x W`` map (row ``r``, column ``c``, row-major)
gets two angles, ``alpha = pi/2 * r / H`` and ``beta = pi/2 * c / W``. The weight between a query ``n`` and a
key ``m`` is

    relu(q_n) . relu(k_m) * (cos(alpha_n - alpha_m) + cos(beta_n - beta_m)),

which falls off with the row and the column distance (the paper's "Manhattan" vicinity). Because
``cos(a - b) = cos a cos b + sin a sin b``, it factorises: expand every query and key to four copies scaled by
``cos alpha, sin alpha, cos beta, sin beta`` (:func:`vicinity_features`, width ``4d``); the dot product of two
expansions is exactly the weight above. Linear attention's reordering then applies,
``out_n = phi(q_n) (sum_m phi(k_m)^T v_m) / (phi(q_n) . sum_m phi(k_m) + eps)``, which costs
``O(N * 4d * d)`` per head: no ``N x N`` matrix ever exists, so time and memory grow linearly with pixels.

Around that core (:class:`VicinityAttention`):

* feature reduction (FRA): q, k, v are projected to ``C / fr`` channels and the output projection maps back
  to ``C`` (linear attention is quadratic in the feature width);
* the feature preserving connection (FPC): an SE-style channel gate computed from the attention *input*,
  ``y = o + o * s`` with ``s = sigmoid(W2 relu(W1 mean_n(x)))`` (bias-free, hidden ``C / se_ratio``);
* spatial reduction (``sr_ratio > 1``, unused by the registered models): keys and values come from a strided
  conv + LayerNorm of the input, and the keys' angles come from the reduced grid.

Official behaviour reproduced (``OpenNLPLab/Vicinity-Vision-Transformer classification/vvt.py``):

* ``abs_clamp``: magnitudes forced into ``[1e-4, 1e4]`` keeping the sign, exact zeros staying zero, at six
  points: ``sum_m phi(k_m)^T v_m``, ``1 / (den + 1e-4)``, the numerator, numerator x ``1 / den``, the output
  projection and the gated output. There is no ``1/sqrt(d)`` scale and no softmax. ``clamp=False`` is an
  opt-in that drops the clamps (it changes outputs of the released weights).
* The angles are computed in float32 with the official expressions whatever the model's dtype
  (``pi/2 * row / H``, dividing by ``H`` and ``W``, not ``H - 1``); a float64 model takes the cos/sin of those
  float32 angles in float64, as the official code does. In the spatial-reduction path the key at row ``r`` of
  the reduced grid sits at ``pi/2 * r / (H / sr)`` with the official float ``H / sr``. The official code only
  runs when ``H`` and ``W`` are multiples of ``sr`` (otherwise its angle and key counts disagree); there the
  two agree, and at other sizes the same formula places the reduced keys where their pixels are.
* LayerNorm eps 1e-6 in the blocks and stage norms, the default 1e-5 in the patch embeddings and after the
  spatial-reduction conv; the q/k/v projections always have a bias (the official ``qkv_bias`` is ignored);
  ``drop_rate`` is the dropout inside the MLP (the official model has no head dropout).

Nothing depends on the input size: there is no position embedding and the angle tables depend only on the
grid shape (cached per shape, never stored in the state dict), so any image size works, odd and non-square
included, and the 384 configurations differ from the 224 ones only in their pretrained cfg.

Softmax attention (``locvit.layers.attend``) does not apply: VVT has no attention matrix to normalise.
:func:`vicinity_weights` computes, for chosen queries, the normalised weights the linear attention
implicitly applies (for visualisation and tests).

Speed, with the same numbers: the numerator and denominator come out of one product with ``[kv | k_sum]``;
consecutive clamps around a positive factor share one sign; without autograd, temporaries are updated in place
and CPU inference runs the high-resolution stages a few images at a time (:class:`VicinityStage`); in eager
training the attention core and the gated output have a hand-written backward that recomputes the 4x-wide
features instead of storing every element-wise step.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module, to_2tuple
from timm.models import checkpoint, generate_default_cfgs
from torch import Tensor, nn

from locvit.layers import fastpath
from locvit.models._registry import (
    DenseRecipe,
    ModelSpec,
    norm_eps,
    pop_unused,
    register_family_model,
    register_official,
)
from locvit.models.args import (
    check_heads,
    check_hidden,
    check_img_size,
    check_int,
    check_ints,
    check_length,
    check_model_args,
)
from locvit.models.builder import build_model, init_linear_layernorm, make_cfg
from locvit.models.interface import PyramidStages

__all__ = [
    "VicinityVisionTransformer", "VicinityAttention", "VicinityBlock", "abs_clamp", "angle_table",
    "vicinity_attention", "vicinity_features", "vicinity_weights",
]

CLAMP_MIN, CLAMP_MAX = 1e-4, 1e4  # official abs_clamp magnitudes
DENOM_EPS = 1e-4  # official epsilon added to the linear-attention denominator


# --------------------------------------------------------------------------------------------------------------
# Vicinity attention, the core op
# --------------------------------------------------------------------------------------------------------------
def _build_angle_table(grid: tuple[int, int], extent: tuple[float, float], device: torch.device | None,
                       dtype: torch.dtype) -> Tensor:
    rows, cols = grid
    # official arithmetic: float32 angles pi/2 * index / extent, on the CPU
    alpha = (math.pi / 2) * torch.arange(rows, dtype=torch.float32) / extent[0]
    beta = (math.pi / 2) * torch.arange(cols, dtype=torch.float32) / extent[1]
    # cos/sin in the model's precision (float64 for a float64 model), never below float32
    work = torch.float64 if dtype == torch.float64 else torch.float32
    alpha, beta = alpha.to(work), beta.to(work)
    table = torch.stack([
        alpha.cos()[:, None].expand(rows, cols), alpha.sin()[:, None].expand(rows, cols),
        beta.cos()[None, :].expand(rows, cols), beta.sin()[None, :].expand(rows, cols),
    ], dim=-1)
    return table.reshape(rows * cols, 4).to(device=device, dtype=dtype)


_ANGLE_TABLES = fastpath.ShapeCache()  # shared by every VVT model: the tables depend only on their key


def angle_table(grid: tuple[int, int], extent: tuple[float, float] | None = None,
                device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(rows * cols) x 4`` table ``[cos alpha, sin alpha, cos beta, sin beta]`` of a row-major token grid.

    ``alpha = pi/2 * row / extent[0]`` and ``beta = pi/2 * col / extent[1]``; ``extent`` defaults to the grid
    (spatial reduction passes the unreduced size divided by ``sr``). The table depends only on these shapes:
    it is cached per (shape, device, dtype) outside the state dict (:class:`~locvit.layers.fastpath.ShapeCache`), and
    rebuilt inline while tracing or compiling so exported graphs stay shape-generic.
    """
    extent = grid if extent is None else extent
    if fastpath.tracing():
        return _build_angle_table(grid, extent, device, dtype)
    grid, extent = (int(grid[0]), int(grid[1])), (float(extent[0]), float(extent[1]))
    return _ANGLE_TABLES.get_or_build((grid, extent, device, dtype),
                                      lambda: _build_angle_table(grid, extent, device, dtype))


def vicinity_features(x: Tensor, table: Tensor) -> Tensor:
    """``phi(x) = [relu(x) cos alpha, relu(x) sin alpha, relu(x) cos beta, relu(x) sin beta]``.

    Args:
        x: ``(..., N, d)`` queries or keys of one grid.
        table: ``N x 4`` from :func:`angle_table`.

    Returns:
        ``(..., N, 4d)``, the four copies concatenated in that order (official layout).
    """
    x = F.relu(x)
    return (x.unsqueeze(-2) * table.unsqueeze(-1)).flatten(-2)


def abs_clamp(t: Tensor, inplace: bool = False) -> Tensor:
    """``sign(t) * clamp(|t|, 1e-4, 1e4)``: magnitudes into ``[1e-4, 1e4]``, exact zeros stay zero (official).

    Args:
        t: any tensor.
        inplace: overwrite ``t`` (only for temporaries that autograd does not need).
    """
    sign = t.sign()
    if inplace:
        return t.abs_().clamp_(CLAMP_MIN, CLAMP_MAX).mul_(sign)
    return t.abs().clamp(CLAMP_MIN, CLAMP_MAX) * sign


def _clamp_scale_clamp(t: Tensor, scale: Tensor, gate: bool, inplace: bool) -> Tensor:
    """``abs_clamp(c * scale)`` (``gate=False``) or ``abs_clamp(c + c * scale)`` (``gate=True``) with
    ``c = abs_clamp(t)``, for a non-negative ``scale``.

    Because ``scale >= 0`` keeps the sign, both clamps act on the magnitudes and the sign is applied once: the
    same numbers as the two official clamps in fewer passes over memory.
    """
    sign = t.sign()
    if inplace:
        mag = t.abs_().clamp_(CLAMP_MIN, CLAMP_MAX)
        mag = mag.addcmul_(mag, scale) if gate else mag.mul_(scale)
        return mag.clamp_(CLAMP_MIN, CLAMP_MAX).mul_(sign)
    mag = t.abs().clamp(CLAMP_MIN, CLAMP_MAX)
    mag = mag + mag * scale if gate else mag * scale
    return mag.clamp(CLAMP_MIN, CLAMP_MAX) * sign


def _may_update_in_place(*tensors: Tensor) -> bool:
    """Whether temporaries may be overwritten in place: autograd does not need them and no graph is being traced.

    In a traced graph an in-place op is functionalised; on a view (the numerator ``out[..., :d]`` of
    :func:`_linear_terms`) each one becomes a copy of the whole base tensor written back by ``slice_scatter``
    (``ScatterND`` in ONNX, a full pass per clamp step), where the out-of-place expression is one element-wise node
    that the runtimes plan memory for themselves.
    """
    return not fastpath.tracing() and not fastpath.needs_grad(*tensors)


def vicinity_attention(q: Tensor, k: Tensor, v: Tensor, q_table: Tensor, k_table: Tensor,
                       clamp: bool = True) -> Tensor:
    """Linear vicinity attention with the official clamps.

    Args:
        q: ``B x h x N x d`` query projections (before the ReLU feature map).
        k: ``B x h x S x d`` key projections (before the ReLU).
        v: ``B x h x S x d`` values.
        q_table: ``N x 4`` angle table of the query grid; ``k_table``: ``S x 4`` of the key grid.
        clamp: apply ``abs_clamp`` at the official points.

    Returns:
        ``B x h x N x d``.
    """
    if clamp and fastpath.eager_autograd(q, k, v):
        return _VicinityAttentionFn.apply(q, k, v, q_table, k_table)
    inplace = _may_update_in_place(q, k, v)
    terms = _linear_terms(q, k, v, q_table, k_table, clamp, inplace)
    if not clamp:
        return terms.num * terms.z_raw.unsqueeze(-1)
    return _clamped_output(terms, inplace)


class _LinearTerms(NamedTuple):
    """What linear vicinity attention computes before its output clamps: ``kvs = [clamp(kv) | k_sum]``
    (``B x h x 4d x (d+1)``), the numerator ``num`` and ``z_raw = 1 / (den + eps)``; ``kv_mask``: where the kv clamp
    passes gradient (kept for the hand-written backward only, else None)."""

    kvs: Tensor
    num: Tensor
    z_raw: Tensor
    kv_mask: Tensor | None


def _linear_terms(q: Tensor, k: Tensor, v: Tensor, q_table: Tensor, k_table: Tensor, clamp: bool, inplace: bool,
                  keep_kv_mask: bool = False) -> _LinearTerms:
    """The linear-attention products of :func:`vicinity_attention`: one matmul for the key summary, one for the
    numerator and denominator together."""
    d = v.shape[-1]
    qf = vicinity_features(q, q_table)  # B h N 4d
    kf = vicinity_features(k, k_table)  # B h S 4d
    kv = kf.transpose(-2, -1) @ v  # B h 4d d: sum_m phi(k_m)^T v_m, the reordering that makes it linear
    kv_mask = _in_range(kv) if keep_kv_mask else None
    if clamp:
        kv = abs_clamp(kv, inplace)
    k_sum = kf.sum(dim=-2).unsqueeze(-1)  # B h 4d 1
    del kf
    # numerator and denominator in one product: phi(q_n) [kv | sum_m phi(k_m)]
    kvs = torch.cat([kv, k_sum], dim=-1)
    out = qf @ kvs  # B h N d+1
    del qf
    num, den = out[..., :d], out[..., d]
    z_raw = torch.reciprocal(den + DENOM_EPS)  # den >= 0: relu features and non-negative angle weights
    return _LinearTerms(kvs, num, z_raw, kv_mask)


def _clamped_output(terms: _LinearTerms, inplace: bool) -> Tensor:
    """The official ``abs_clamp(abs_clamp(num) * abs_clamp(z))``; ``z > 0``, so one sign suffices."""
    z = abs_clamp(terms.z_raw, inplace=False)
    return _clamp_scale_clamp(terms.num, z.unsqueeze(-1), gate=False, inplace=inplace)


def vicinity_weights(q: Tensor, k: Tensor, q_table: Tensor, k_table: Tensor, query_index: Tensor | list[int],
                     eps: float = DENOM_EPS) -> Tensor:
    """Normalised weights that vicinity attention gives each key, for the chosen queries.

    ``w[n, m] = phi(q_n) . phi(k_m) / (sum_m' phi(q_n) . phi(k_m') + eps)`` with
    ``phi(q_n) . phi(k_m) = relu(q_n) . relu(k_m) * (cos(alpha_n - alpha_m) + cos(beta_n - beta_m))``.
    Without the clamps, ``vicinity_attention`` returns exactly ``w @ v``; the clamps change it only where
    magnitudes leave ``[1e-4, 1e4]``. Memory is ``O(len(query_index) * S)``.

    Args:
        q: ``B x h x N x d`` query projections (before the ReLU); ``k``: ``B x h x S x d`` keys.
        q_table, k_table: angle tables of the query and key grids.
        query_index: flat (row-major) indices of the queries to explain.

    Returns:
        ``B x h x len(query_index) x S``.
    """
    idx = torch.as_tensor(query_index, device=q.device, dtype=torch.long)
    qf = vicinity_features(q.index_select(-2, idx), q_table.index_select(0, idx))
    scores = qf @ vicinity_features(k, k_table).transpose(-2, -1)
    return scores / (scores.sum(dim=-1, keepdim=True) + eps)


# --------------------------------------------------------------------------------------------------------------
# Training: the attention's backward written out (eager mode)
# --------------------------------------------------------------------------------------------------------------
class _VicinityAttentionFn(torch.autograd.Function):
    """Autograd of :func:`vicinity_attention` (clamps on) written out. It keeps q, k, v, the ``4d x (d+1)``
    summary and the numerator, and recomputes the 4x-wide features in backward, instead of autograd's record of every
    element-wise step: much less memory traffic in training, same gradients (a clamp passes gradient where the
    magnitude is inside ``[1e-4, 1e4]``, bounds included, as torch's clamp does)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, q_table: Tensor, k_table: Tensor) -> Tensor:
        terms = _linear_terms(q, k, v, q_table, k_table, clamp=True, inplace=True, keep_kv_mask=True)
        ctx.save_for_backward(q, k, v, q_table, k_table, terms.kvs, terms.kv_mask, terms.num, terms.z_raw)
        return _clamped_output(terms, inplace=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_o: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, q_table, k_table, kvs, kv_mask, num, z_raw = ctx.saved_tensors
        d = v.shape[-1]
        qf = vicinity_features(q, q_table)
        z_mask = _in_range(z_raw)
        z = abs_clamp(z_raw).unsqueeze(-1)
        c1 = abs_clamp(num)
        g_p = g_o * _in_range(c1 * z)  # o = abs_clamp(p), p = c1 * z
        g_z = (g_p * c1).sum(dim=-1)
        g_num = (g_p * z).mul_(_in_range(num))
        g_den = (g_z * z_mask).mul_(z_raw.square()).neg_()  # d(1/(den+eps))/d(den) = -(1/(den+eps))^2
        g_out = torch.cat([g_num, g_den.unsqueeze(-1)], dim=-1)  # B h N d+1
        g_qf = g_out @ kvs.transpose(-2, -1)  # B h N 4d
        g_kvs = qf.transpose(-2, -1) @ g_out  # B h 4d d+1
        del qf, g_out
        g_kv = g_kvs[..., :d] * kv_mask
        kf = vicinity_features(k, k_table)
        g_v = kf @ g_kv
        g_kf = torch.baddbmm(g_kvs[..., d:].transpose(-2, -1).flatten(0, 1), v.flatten(0, 1).to(g_kv.dtype),
                             g_kv.transpose(-2, -1).flatten(0, 1)).view(kf.shape)  # v g_kv^T + 1 g_ksum^T
        return _feature_grad(g_qf, q, q_table), _feature_grad(g_kf, k, k_table), g_v, None, None


class _GatedClampFn(torch.autograd.Function):
    """Autograd of the gated output ``abs_clamp(c + c * g)``, ``c = abs_clamp(p)``, for ``p``: ``B x N x C`` and a
    gate ``g >= 0``: ``B x 1 x C``, written out: saves ``p`` and ``g`` only."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, g: Tensor) -> Tensor:
        ctx.save_for_backward(p, g)
        return _clamp_scale_clamp(p, g, gate=True, inplace=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_y: Tensor) -> tuple[Tensor, Tensor]:
        p, g = ctx.saved_tensors
        c = abs_clamp(p)
        g_u = g_y * _in_range(c + c * g)  # y = abs_clamp(u), u = c + c * g
        g_g = (g_u * c).sum(dim=1, keepdim=True)
        return g_u.mul_(g + 1).mul_(_in_range(p)), g_g


def _feature_grad(g_f: Tensor, x: Tensor, table: Tensor) -> Tensor:
    """Gradient through :func:`vicinity_features`: sum the four copies weighted by the table, then the ReLU."""
    g = (g_f.unflatten(-1, (4, x.shape[-1])) * table.unsqueeze(-1)).sum(dim=-2)
    return g.mul_(x > 0)


def _in_range(t: Tensor) -> Tensor:
    """Where ``abs_clamp`` passes gradient: ``1e-4 <= |t| <= 1e4``."""
    a = t.abs()
    return (a >= CLAMP_MIN) & (a <= CLAMP_MAX)


# --------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------
class TokenGate(nn.Module):
    """SE-style channel gate over tokens, ``sigmoid(fc2(relu(fc1(mean_n x))))`` (bias-free; the FPC)."""

    def __init__(self, dim: int, reduction: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // reduction, bias=False)
        self.fc2 = nn.Linear(dim // reduction, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``B x N x C`` -> ``B x 1 x C`` gate in ``(0, 1)``."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=1, keepdim=True)))))


class VicinityAttention(nn.Module):
    """Vicinity attention with feature reduction, the SE feature-preserving connection and optional spatial
    reduction. ``forward(x, (H, W))`` takes the normalised ``B x N x C`` tokens of an ``H x W`` map.

    Args:
        dim: channels ``C``.
        num_heads: heads ``h``; each works on ``(C / h) / fr`` channels.
        fr_ratio: feature reduction: q/k/v are ``C / fr`` wide.
        sr_ratio: spatial reduction of keys/values (conv with kernel = stride = ``sr`` + LayerNorm).
        se_ratio: SE gate reduction.
        clamp: the official ``abs_clamp`` calls (``False`` is an opt-in that changes results).
    """

    def __init__(self, dim: int, num_heads: int, fr_ratio: int = 2, sr_ratio: int = 1, se_ratio: int = 1,
                 clamp: bool = True):
        super().__init__()
        head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim // fr_ratio
        self.inner_dim = dim // fr_ratio
        if dim % num_heads or self.head_dim * num_heads != self.inner_dim or self.head_dim < 1:
            raise ValueError(f"VVT attention needs dim divisible by num_heads and (dim / num_heads) by fr_ratio: "
                             f"dim={dim}, num_heads={num_heads}, fr_ratio={fr_ratio}")
        self.sr_ratio = sr_ratio
        self.clamp = clamp
        # one projection for q, k, v (rows q | k | v); with spatial reduction k, v use the reduced tokens
        self.qkv = nn.Linear(dim, 3 * self.inner_dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)
        else:
            self.sr = self.sr_norm = None
        self.proj = nn.Linear(self.inner_dim, dim)
        self.se = TokenGate(dim, se_ratio)

    def _project(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q, k, v as ``B x h x tokens x d`` and the angle tables of the query and key grids."""
        B, N, C = x.shape
        H, W = hw
        h, d, inner = self.num_heads, self.head_dim, self.inner_dim
        q_table = angle_table((H, W), None, x.device, x.dtype)
        if self.sr is None:
            q, k, v = _heads_first(self.qkv(x).view(B, N, 3, h, d).permute(2, 0, 3, 1, 4)).unbind(0)
            return q, k, v, q_table, q_table
        w, b = self.qkv.weight, self.qkv.bias
        q = _heads_first(F.linear(x, w[:inner], b[:inner]).view(B, N, h, d).transpose(1, 2))
        r = self.sr(x.transpose(1, 2).reshape(B, C, H, W))
        Hr, Wr = r.shape[-2:]
        r = self.sr_norm(r.flatten(2).transpose(1, 2))
        kv = F.linear(r, w[inner:], b[inner:]).view(B, Hr * Wr, 2, h, d)
        k, v = _heads_first(kv.permute(2, 0, 3, 1, 4)).unbind(0)
        k_table = angle_table((Hr, Wr), (H / self.sr_ratio, W / self.sr_ratio), x.device, x.dtype)
        return q, k, v, q_table, k_table

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, _ = x.shape
        gate = self.se(x)  # from the uncompressed input: the feature preserving connection
        q, k, v, q_table, k_table = self._project(x, hw)
        o = vicinity_attention(q, k, v, q_table, k_table, self.clamp)
        o = self.proj(o.transpose(1, 2).reshape(B, N, self.inner_dim))
        if not self.clamp:
            return o + o * gate
        if fastpath.eager_autograd(o, gate):
            return _GatedClampFn.apply(o, gate)
        # official: abs_clamp(c + c * gate) with c = abs_clamp(o); the gate is positive
        return _clamp_scale_clamp(o, gate, gate=True, inplace=_may_update_in_place(o, gate))

    @torch.no_grad()
    def attention_weights(self, x: Tensor, hw: tuple[int, int], query_index: Tensor | list[int]) -> Tensor:
        """Normalised weights (:func:`vicinity_weights`) of the chosen queries over the keys, ``B x h x Q x S``,
        for the normalised block input ``x`` of an ``H x W`` map."""
        q, k, _, q_table, k_table = self._project(x, hw)
        return vicinity_weights(q, k, q_table, k_table, query_index)


def _heads_first(t: Tensor) -> Tensor:
    """Lay out ``(..., h, tokens, d)`` head-major in memory: one copy here saves the batched matmuls a copy of
    every 4x-wide feature tensor (a single head is already laid out right)."""
    return t if t.shape[-3] == 1 else t.contiguous()


class DWConvMlp(nn.Module):
    """``fc2(drop(GELU(DWConv3x3(fc1(x)))))`` on the tokens of an ``H x W`` map (PVT-v2 style)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, _ = x.shape
        x = self.fc1(x)
        # the token layout is channels-last, which the conv takes without a copy
        hidden = x.shape[-1]
        x = self.dwconv(x.view(B, hw[0], hw[1], hidden).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(B, N, hidden)
        if _may_update_in_place(x):
            x = torch.ops.aten.gelu_(x)  # the conv output is a temporary: saves one large allocation
        else:
            x = self.act(x)
        return self.drop(self.fc2(self.drop(x)))


class VicinityBlock(nn.Module):
    """``x + DP(attn(LN(x)))``, then ``x + DP(mlp(LN(x)))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, fr_ratio: int = 2, sr_ratio: int = 1,
                 se_ratio: int = 1, norm_eps: float = 1e-6, drop: float = 0.0, drop_path: float = 0.0,
                 clamp: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = VicinityAttention(dim, num_heads, fr_ratio, sr_ratio, se_ratio, clamp)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = DWConvMlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class OverlapPatchEmbed(nn.Module):
    """Conv (kernel ``k``, stride ``s``, padding ``k // 2``), then LayerNorm: ``B x C x H x W`` -> ``B x H' x W' x D``
    (channels-last output, the token layout)."""

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel, stride, kernel // 2)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


@register_notrace_module  # CPU inference in image groups sized by the map: a leaf for torch.fx
class VicinityStage(nn.Module):
    """Optional downsampling embed, ``depth`` blocks, then the stage LayerNorm; ``B x H x W x C`` maps in/out.

    CPU inference (:func:`~locvit.layers.fastpath.eager_cpu_inference`) runs the stage on groups of images of about
    ``chunk_tokens`` tokens: every op in VVT is per image, so the results are the same, and the 8x-wide MLP
    activations of the high-resolution stages stay cache-sized instead of being allocated for the whole batch.
    ``chunk_tokens`` (per stage) defaults to ``locvit.layers.fastpath.VVT_CHUNK_TOKENS``; 0 turns it off.
    """

    chunk_tokens: int | None = None

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, num_heads: int, mlp_ratio: float,
                 fr_ratio: int, sr_ratio: int, se_ratio: int, norm_eps: float, drop: float,
                 drop_path: list[float], clamp: bool):
        super().__init__()
        self.downsample = OverlapPatchEmbed(in_dim, dim, 3, 2) if downsample else None
        self.blocks = nn.ModuleList([
            VicinityBlock(dim, num_heads, mlp_ratio, fr_ratio, sr_ratio, se_ratio, norm_eps, drop, drop_path[j],
                          clamp)
            for j in range(depth)
        ])
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        n = self._images_per_chunk(x)
        if n < x.shape[0]:
            return torch.cat([self._forward(c) for c in x.split(n)])
        return self._forward(x)

    def _images_per_chunk(self, x: Tensor) -> int:
        B, H, W, _ = x.shape
        chunk = fastpath.VVT_CHUNK_TOKENS if self.chunk_tokens is None else self.chunk_tokens
        if not fastpath.eager_cpu_inference(x) or chunk <= 0:
            return B
        tokens = (-(-H // 2) * -(-W // 2)) if self.downsample is not None else H * W
        return max(1, chunk // tokens)

    def _forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2))
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, (H, W))
            else:
                x = blk(x, (H, W))
        return self.norm(x).reshape(B, H, W, C)


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------
class VicinityVisionTransformer(PyramidStages, nn.Module):
    """The VVT pyramid: conv stem (k7 s4) and three k3 s2 embeds, vicinity-attention blocks, mean-pooled head.

    Args:
        img_size: default input size (recorded only: nothing in the model depends on it).
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``'avg'`` (official) or ``''``.
        embed_dims, num_heads, mlp_ratios, depths: per-stage widths, heads, MLP ratios and depths.
        sr_ratios: per-stage spatial reduction of keys/values (1 = none).
        fr_ratios: per-stage feature reduction of q/k/v.
        se_ratio: reduction of the SE gate.
        norm_eps: LayerNorm epsilon of the blocks and stage norms (patch embeddings use 1e-5).
        drop_rate: dropout inside the MLPs (official meaning).
        drop_path_rate: stochastic depth, linear over all blocks.
        clamp: the official ``abs_clamp`` calls; ``False`` is an opt-in that changes results.
        dynamic_img_size: accepted for timm compatibility; VVT always takes any size.
    """

    output_fmt = "NCHW"  # forward_features: the last stage's normed map
    group_stage_end = "norm"  # each stage ends with its own LayerNorm (the official norm{i})

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: tuple[int, ...] = (96, 160, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        sr_ratios: tuple[int, ...] = (1, 1, 1, 1),
        fr_ratios: tuple[int, ...] = (2, 2, 2, 2),
        se_ratio: int = 1,
        norm_eps: float = 1e-6,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        clamp: bool = True,
        dynamic_img_size: bool = True,
    ):
        super().__init__()
        check_model_args(num_classes=num_classes, in_chans=in_chans, global_pool=global_pool, pools=self.global_pools,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        n = len(check_ints(depths, "depths"))
        embed_dims = check_ints(embed_dims, "embed_dims", n)
        fr_ratios = check_ints(fr_ratios, "fr_ratios", n)
        check_ints(sr_ratios, "sr_ratios", n)
        check_ints(num_heads, "num_heads", n)
        check_length(mlp_ratios, "mlp_ratios", n)
        check_int(se_ratio, "se_ratio")
        for i in range(n):
            heads = check_heads(embed_dims[i], num_heads[i], f"embed_dims[{i}]", f"num_heads[{i}]")
            reduced = embed_dims[i] // heads // fr_ratios[i]
            if reduced < 1 or reduced * heads != embed_dims[i] // fr_ratios[i]:
                raise ValueError(f"stage {i}: feature reduction fr_ratios[{i}]={fr_ratios[i]} does not split the "
                                 f"reduced width embed_dims[{i}] / fr = {embed_dims[i] // fr_ratios[i]} evenly into "
                                 f"num_heads[{i}]={heads} heads; use a fr_ratio dividing the head width "
                                 f"{embed_dims[i] // heads}")
            check_hidden(embed_dims[i], mlp_ratios[i], f"mlp_ratios[{i}]")
            if embed_dims[i] < se_ratio:
                raise ValueError(f"se_ratio={se_ratio} leaves no hidden unit in the SE gate of stage {i} "
                                 f"(embed_dims[{i}]={embed_dims[i]}); use se_ratio <= {embed_dims[i]}")
        check_img_size(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size)
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        # stage i runs on ceil(H / 2^(i+2)) rows, and a spatial-reduction conv needs at least sr of them
        self.min_size = max(2 ** (i + 2) * (sr - 1) + 1 for i, sr in enumerate(sr_ratios))
        self.min_input_size = (self.min_size, self.min_size)

        self.patch_embed = OverlapPatchEmbed(in_chans, embed_dims[0], 7, 4)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, self.feature_info, cur = [], [], 0
        for i in range(n):
            stages.append(VicinityStage(
                embed_dims[i - 1] if i else embed_dims[0], embed_dims[i], depths[i], i > 0, num_heads[i],
                mlp_ratios[i], fr_ratios[i], sr_ratios[i], se_ratio, norm_eps, drop_rate,
                dpr[cur:cur + depths[i]], clamp,
            ))
            cur += depths[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=2 ** (i + 2), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # --- timm contract ---------------------------------------------------------------------------------------
    def set_input_size(self, img_size: int | tuple[int, int] | None = None, **kwargs: Any) -> None:
        """Record a new default input size (e.g. 384). VVT has no size-dependent state, so nothing is resampled:
        the angle tables follow every input's grid."""
        if img_size is not None:
            self.img_size = to_2tuple(img_size)

    # --- forward -----------------------------------------------------------------------------------------------
    def _stem(self, x: Tensor) -> Tensor:
        return self.patch_embed(x)

    def _stage_map(self, i: int, x: Tensor, norm: bool) -> Tensor:
        """Stage ``i``'s output, after its own LayerNorm (the official ``norm{i}``; ``norm`` has nothing to add)."""
        return x

    def _features(self, x: Tensor, final: bool) -> Tensor:
        """``B x C x H x W``: the (normalised) last stage map."""
        return x.permute(0, 3, 1, 2)


def _init_weights(m: nn.Module) -> None:
    """Official init: Linear trunc-normal(0.02)/0, LayerNorm 1/0, Conv normal(0, sqrt(2 / fan_out))/0."""
    init_linear_layernorm(m)
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------
# Official checkpoints and constructor arguments
# --------------------------------------------------------------------------------------------------------------
_OFFICIAL_RENAMES = (
    (".attn.out_proj.", ".attn.proj."),
    (".attn.se_fc.0.", ".attn.se.fc1."),
    (".attn.se_fc.2.", ".attn.se.fc2."),
    (".attn.norm.", ".attn.sr_norm."),
    (".mlp.dwconv.dwconv.", ".mlp.dwconv."),
)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: VicinityVisionTransformer) -> dict[str, Tensor]:
    """Official VVT keys -> ours: ``patch_embed1`` -> ``patch_embed``, ``patch_embed{i}`` / ``block{i}.{j}`` /
    ``norm{i}`` -> ``stages.{i-1}.downsample`` / ``.blocks.{j}`` / ``.norm``, ``q_proj``/``k_proj``/``v_proj``
    concatenated into ``qkv``, ``out_proj`` -> ``proj``, ``se_fc.0/2`` -> ``se.fc1/fc2``, ``dwconv.dwconv`` ->
    ``dwconv``. A state dict already in our layout passes through. Nothing is resized: VVT has no
    size-dependent tensors."""
    import re

    if not any(k.startswith(("patch_embed1.", "block1.")) for k in state_dict):
        return state_dict
    out: dict[str, Tensor] = {}
    qkv_parts: dict[str, dict[str, Tensor]] = {}
    for k, v in state_dict.items():
        k = re.sub(r"^patch_embed1\.", "patch_embed.", k)
        k = re.sub(r"^patch_embed(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.", k)
        k = re.sub(r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.", k)
        k = re.sub(r"^norm(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm.", k)
        for old, new in _OFFICIAL_RENAMES:
            k = k.replace(old, new)
        m = re.match(r"^(.*\.attn\.)([qkv])_proj\.(weight|bias)$", k)
        if m:
            qkv_parts.setdefault(m.group(1) + "qkv." + m.group(3), {})[m.group(2)] = v
            continue
        out[k] = v
    for k, parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"checkpoint has only {sorted(parts)} of the q/k/v projections for {k}")
        out[k] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# the official class's own defaults (vvt_test relies on fr_ratios and qkv_bias defaults)
_OFFICIAL_DEFAULTS = dict(
    img_size=224, in_chans=3, num_classes=1000, embed_dims=[64, 128, 256, 512], num_heads=[1, 2, 4, 8],
    mlp_ratios=[4, 4, 4, 4], drop_rate=0.0, drop_path_rate=0.0, depths=[3, 4, 6, 3], sr_ratios=[8, 4, 2, 1],
    fr_ratios=[1, 2, 2, 4], se_ratio=1,
)


VVT = ModelSpec(
    VicinityVisionTransformer,
    filter_fn=checkpoint_filter_fn,
    feature_cfg=dict(out_indices=(0, 1, 2, 3)),
    dense=DenseRecipe({}, False, "stage outputs after each stage's LayerNorm (the PVT Semantic FPN protocol the "
                                 "paper's ADE20K results follow; inferred: no dense code was released)"),
)


@register_official(VVT, "vvt.VicinityVisionTransformer")
def _from_official(kw: dict[str, Any]) -> dict[str, Any]:
    norm_layer = kw.pop("norm_layer", nn.LayerNorm)
    # arguments the official model ignores (qkv_bias: q/k/v always have a bias; patch_size only sized an
    # unused sequence length; the attention dropout is never applied)
    pop_unused(kw, {"qkv_bias": ..., "qk_scale": ..., "attn_drop_rate": ..., "patch_size": ..., "prod_types": ...,
                    "linear": False})
    num_stages = kw.pop("num_stages", 4)
    args = dict(_OFFICIAL_DEFAULTS, **kw)
    if num_stages != 4 or len(args["depths"]) != 4:
        raise ValueError(f"the official VVT has 4 stages (num_stages={num_stages}, depths={args['depths']})")
    return dict(norm_eps=norm_eps(norm_layer, 1e-5), **args)


# --------------------------------------------------------------------------------------------------------------
# Registered models
# --------------------------------------------------------------------------------------------------------------
def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    return build_model(VVT, variant, pretrained, **kwargs)


_README = "https://github.com/OpenNLPLab/Vicinity-Vision-Transformer#weight"


def _cfg(page: str = "", **kwargs: Any) -> dict[str, Any]:
    # every size works; the zoo tests run at a small one. The authors share the weights as OneDrive pages (no
    # direct link): provenance only.
    return make_cfg(origin_url=page, repo="OpenNLPLab/Vicinity-Vision-Transformer", license="apache-2.0",
                    paper_ids="arXiv:2206.10552", paper_name="Vicinity Vision Transformer",
                    min_input_size=(3, 1, 1), test_input_size=(3, 32, 32), **{"pool_size": (7, 7), **kwargs})


def _cfg384(**kwargs: Any) -> dict[str, Any]:
    return _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0, **kwargs)


_ONEDRIVE = "the official README links a OneDrive page (no direct download)"
default_cfgs = generate_default_cfgs({
    "vvt_tiny.in1k": _cfg("https://1drv.ms/u/s!Ak3sXyXVg781gtRFwwHih3Yu9G3FGg?e=yHKvuc", top1=79.2, notes=(_ONEDRIVE,)),
    "vvt_small.in1k": _cfg("https://1drv.ms/u/s!Ak3sXyXVg781gtREWfCdlLJVy1IgpA?e=l4h3Wi", top1=82.6,
                           notes=(_ONEDRIVE,)),
    "vvt_medium.in1k": _cfg("https://1drv.ms/u/s!Ak3sXyXVg781gtRG4lD_uEVyj7cPYw?e=ihjjtO", top1=83.8,
                            notes=(_ONEDRIVE,)),
    "vvt_large.in1k": _cfg("https://1drv.ms/u/s!Ak3sXyXVg781gtRHmfu0BybCZ8k1FQ?e=fLskgG", top1=84.1,
                           notes=(_ONEDRIVE,)),
    "vvt_test": _cfg(notes=("official debug configuration; no weights",)),
    "vvt_tiny_384": _cfg384(notes=(f"80.3 top-1 at 384 (README); no weights published, see {_README}",)),
    "vvt_small_384": _cfg384(notes=(f"83.4 top-1 at 384 (README); no weights published, see {_README}",)),
    "vvt_medium_384": _cfg384(notes=(f"84.5 top-1 at 384 (README); no weights published, see {_README}",)),
    "vvt_large_384": _cfg384(notes=(f"84.7 top-1 at 384 (README); no weights published, see {_README}",)),
})

_BASE = dict(embed_dims=(96, 160, 320, 512), num_heads=(1, 2, 5, 8), sr_ratios=(1, 1, 1, 1),
             fr_ratios=(2, 2, 2, 2), se_ratio=1, norm_eps=1e-6)
_TINY = dict(_BASE, mlp_ratios=(8, 8, 4, 4), depths=(2, 2, 2, 2))
_SMALL = dict(_BASE, mlp_ratios=(8, 8, 4, 4), depths=(3, 3, 9, 3))
_MEDIUM = dict(_BASE, mlp_ratios=(8, 8, 4, 4), depths=(3, 3, 27, 3))
_LARGE = dict(_BASE, mlp_ratios=(4, 4, 4, 4), depths=(4, 4, 36, 4))


@register_family_model("vvt", VVT)
def vvt_tiny(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-tiny: dims 96/160/320/512, heads 1/2/5/8, MLP 8/8/4/4, depths 2/2/2/2 (12.9M)."""
    return _create("vvt_tiny", pretrained, **dict(_TINY, **kwargs))


@register_family_model("vvt", VVT)
def vvt_small(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-small: as tiny with depths 3/3/9/3 (25.5M)."""
    return _create("vvt_small", pretrained, **dict(_SMALL, **kwargs))


@register_family_model("vvt", VVT)
def vvt_medium(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-medium: as tiny with depths 3/3/27/3 (47.9M)."""
    return _create("vvt_medium", pretrained, **dict(_MEDIUM, **kwargs))


@register_family_model("vvt", VVT)
def vvt_large(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-large: MLP ratio 4 everywhere, depths 4/4/36/4 (61.8M)."""
    return _create("vvt_large", pretrained, **dict(_LARGE, **kwargs))


@register_family_model("vvt", VVT)
def vvt_test(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """The official debug configuration: width 32 and one head and block per stage, feature reduction
    1/2/2/4 (the official class default), MLP ratio 1 (0.09M)."""
    args = dict(embed_dims=(32, 32, 32, 32), num_heads=(1, 1, 1, 1), mlp_ratios=(1, 1, 1, 1), depths=(1, 1, 1, 1),
                sr_ratios=(1, 1, 1, 1), fr_ratios=(1, 2, 2, 4), se_ratio=1, norm_eps=1e-6)
    return _create("vvt_test", pretrained, **dict(args, **kwargs))


@register_family_model("vvt", VVT)
def vvt_tiny_384(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-tiny configured for 384x384 input (the same model; only the pretrained cfg differs)."""
    return _create("vvt_tiny_384", pretrained, **dict(_TINY, img_size=384) | kwargs)


@register_family_model("vvt", VVT)
def vvt_small_384(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-small configured for 384x384 input."""
    return _create("vvt_small_384", pretrained, **dict(_SMALL, img_size=384) | kwargs)


@register_family_model("vvt", VVT)
def vvt_medium_384(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-medium configured for 384x384 input."""
    return _create("vvt_medium_384", pretrained, **dict(_MEDIUM, img_size=384) | kwargs)


@register_family_model("vvt", VVT)
def vvt_large_384(pretrained: bool = False, **kwargs: Any) -> VicinityVisionTransformer:
    """VVT-large configured for 384x384 input."""
    return _create("vvt_large_384", pretrained, **dict(_LARGE, img_size=384) | kwargs)
