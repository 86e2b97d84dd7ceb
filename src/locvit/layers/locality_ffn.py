"""LocalViT's locality feed-forward: an inverted-residual block (1x1 expand, depth-wise 3x3, 1x1 project,
each with BatchNorm) that replaces a transformer's MLP *and* its pre-norm, with the residual inside.

The layer keeps the official ``nn.Sequential`` layout, so state-dict keys read ``conv.N.*`` exactly as in
the authors' checkpoints: 0 1x1 conv, 1 BN, 2 act, 3 depth-wise conv, 4 BN, 5 act, [6 SE/ECA], then the
projecting 1x1 conv and its BN (``dp_first`` / ``wo_dp_conv`` move or drop the depth-wise triple).

Inference is bound by memory traffic on large early-stage maps, not by arithmetic, so eval mode takes shortcuts
that give the same result up to float rounding: the BatchNorms are folded into the convolutions before them;
with autograd off, activations, the SE gate and the residual work in place; and for float32 CPU inputs of the
standard layout, the activations are fused into the convolutions (oneDNN post-ops, the kernels
``torch.compile`` uses on CPU), the SE gate is folded into the projecting 1x1 convolution's per-image weights
and the residual into its accumulator, so the wide hidden map is written twice and read three times in all; a
batch whose hidden maps outgrow the last-level cache is taken a group of images at a time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import EcaModule, register_notrace_module
from torch import Tensor, nn

from locvit.layers import fastpath
from locvit.layers.fused_conv import conv2d_act, fusable

# The official models select the activation by an integer code.
ACT_CODES = {1: "relu6", 2: "hs", 3: "hs+se", 4: "hs+eca", 5: "hs+ecah"}


def act_from_code(code: int | str) -> str:
    """Official ``act`` argument -> activation string (any other code means ``'hs+ecah'``, as upstream's
    if/elif chain). Strings are ``'relu6'`` or ``'hs'``, optionally with a ``'+se'``, ``'+eca'`` or ``'+ecah'``
    gate."""
    if isinstance(code, str):
        base, _, gate = code.partition("+")
        if base not in ("relu6", "hs") or gate not in ("", "se", "eca", "ecah"):
            raise ValueError(f"act must be one of {sorted(ACT_CODES.values())} (or an official code 1-5), got {code!r}")
        return code
    if isinstance(code, bool) or not isinstance(code, int):
        raise ValueError(f"act must be an activation name or an official integer code, got {code!r}")
    return ACT_CODES.get(code, "hs+ecah")


class SqueezeExcite(nn.Module):
    """SE gate with a hard-sigmoid: pool, Linear(C, C // reduction), ReLU, Linear, h_sigmoid, scale.

    ``reduction`` divides the channel count (``reduction=192`` on 768 channels leaves 4 hidden units).
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        if reduction < 1 or channels // reduction < 1:
            raise ValueError(f"SE reduction {reduction} leaves no hidden unit for {channels} channels; use a reduction "
                             f"between 1 and {channels}")
        hidden = channels // reduction
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Hardsigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class EfficientChannelAttention(EcaModule):
    """ECA gate (timm's ``EcaModule`` parameters and keys: a 1-D conv across the pooled channels, then the gate),
    with explicit shapes, so an empty batch passes."""

    def forward(self, x: Tensor) -> Tensor:
        B, C = x.shape[:2]
        y = self.gate(self.conv(x.mean((2, 3)).view(B, 1, C)))
        return x * y.view(B, C, 1, 1)


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA's adaptive kernel: the odd number nearest above ``|log2(C) + b| / gamma`` (no lower bound of 3)."""
    t = int(abs((math.log(channels, 2) + beta) / gamma))
    return t if t % 2 else t + 1


class InvertedResidualLayers(nn.Sequential):
    """The layers of a :class:`LocalityFeedForward` in the official order (state-dict keys ``conv.N.*``), each also
    named by its role: ``expand``, ``expand_norm``, ``expand_act``, ``depthwise``, ``depthwise_norm``,
    ``depthwise_act``, ``gate``, ``project``, ``project_norm`` (:meth:`part`)."""

    def __init__(self, parts: list[tuple[str, nn.Module]]):
        super().__init__(*(m for _, m in parts))
        self.roles = {role: i for i, (role, _) in enumerate(parts)}

    def part(self, role: str) -> nn.Module | None:
        """The layer playing ``role``, or None when this layout has none (no gate, no depth-wise conv)."""
        i = self.roles.get(role)
        return None if i is None else self[i]


@register_notrace_module  # its inference shortcuts depend on the input's device, dtype and size
class LocalityFeedForward(nn.Module):
    """``x + BN(1x1(attn(act(BN(dw3x3(act(BN(1x1(x)))))))))`` on a ``B x C x H x W`` map.

    Args:
        dim: input and output channels.
        expand_ratio: hidden channels = ``int(dim * expand_ratio)``.
        act: ``'relu6'``, ``'hs'`` (h_swish), ``'hs+se'``, ``'hs+eca'`` (sigmoid gate), ``'hs+ecah'`` (h_sigmoid
            gate), or an official integer code 1-5.
        reduction: SE divisor.
        stride: depth-wise conv stride (1 in every official model).
        wo_dp_conv: drop the depth-wise conv (an ablation).
        dp_first: put the depth-wise conv first; like upstream, only valid when ``expand_ratio == 1``.
    """

    def __init__(
        self,
        dim: int,
        expand_ratio: float = 4.0,
        act: str | int = "hs+se",
        reduction: int = 4,
        stride: int = 1,
        wo_dp_conv: bool = False,
        dp_first: bool = False,
    ):
        super().__init__()
        act = act_from_code(act)
        hidden = int(dim * expand_ratio)
        if dim < 1 or hidden < 1:
            raise ValueError(f"the locality feed-forward needs at least one channel (dim={dim}, expand_ratio="
                             f"{expand_ratio})")
        if dp_first and hidden != dim:
            raise ValueError("dp_first=True needs expand_ratio=1 (the depth-wise conv would see the unexpanded "
                             f"{dim} channels but is declared for {hidden})")
        act_layer = nn.Hardswish if "hs" in act else nn.ReLU6
        parts = [("expand", nn.Conv2d(dim, hidden, 1, bias=False)), ("expand_norm", nn.BatchNorm2d(hidden)),
                 ("expand_act", act_layer())]
        if not wo_dp_conv:
            dw = [("depthwise", nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)),
                  ("depthwise_norm", nn.BatchNorm2d(hidden)), ("depthwise_act", act_layer())]
            parts = dw + parts if dp_first else parts + dw
        gate = act.partition("+")[2]
        if gate == "se":
            parts.append(("gate", SqueezeExcite(hidden, reduction)))
        elif gate:
            parts.append(("gate", EfficientChannelAttention(kernel_size=eca_kernel_size(hidden),
                                                            gate_layer="sigmoid" if gate == "eca" else "hard_sigmoid")))
        parts += [("project", nn.Conv2d(hidden, dim, 1, bias=False)), ("project_norm", nn.BatchNorm2d(dim))]
        self.conv = InvertedResidualLayers(parts)

        self._standard = not (dp_first or wo_dp_conv) and stride == 1  # the layout the fused path expects

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return x + self.conv(x)
        if self._standard and fusable(x) and not any(m.training for m in self.conv):  # BNs all in eval mode
            return self._forward_fused(x)
        return self._forward_eval(x)

    def _forward_fused(self, x: Tensor) -> Tensor:
        """Inference with conv + BN + activation as one oneDNN call per convolution, the SE gate folded into
        per-image projection weights, and the residual accumulated by the projection (float32 CPU, no autograd).

        A batch whose hidden maps would outgrow the last-level cache goes through in groups of images that fit
        it (every step is per image): see ``FFN_GROUP_MIN_BYTES`` and ``FFN_GROUP_BYTES`` in
        :mod:`locvit.layers.fastpath`."""
        B, _, H, W = x.shape
        per_image = 4 * H * W * self.conv.part("expand").out_channels
        if B > 1 and B * per_image >= fastpath.FFN_GROUP_MIN_BYTES:
            n = max(1, fastpath.FFN_GROUP_BYTES // per_image)
            if n < B:
                return torch.cat([self._forward_fused_group(g) for g in x.split(n)])
        return self._forward_fused_group(x)

    def _forward_fused_group(self, x: Tensor) -> Tensor:
        part = self.conv.part
        expand, bn1, dw, bn2 = part("expand"), part("expand_norm"), part("depthwise"), part("depthwise_norm")
        gate, proj, bn3 = part("gate"), part("project"), part("project_norm")
        act = "hardswish" if isinstance(part("expand_act"), nn.Hardswish) else "relu6"
        if not (x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous()):
            x = x.contiguous(memory_format=torch.channels_last)
        w, b = fold_batchnorm(expand, bn1)
        y = conv2d_act(x, w, b, expand, act)
        w, b = fold_batchnorm(dw, bn2)
        y = conv2d_act(y, w, b, dw, act)
        B, Ch, H, W = y.shape
        w, b = fold_batchnorm(proj, bn3)
        w = w.flatten(1)  # C x Ch
        if isinstance(gate, SqueezeExcite) and H * W > fastpath.FFN_SE_PER_IMAGE_RATIO * w.shape[0]:
            # per-image weights (B x C x Ch) much smaller than the map: scale them instead of the map. Where they
            # are not, one shared-weight GEMM beats B small ones even after scaling the map
            w = w.unsqueeze(0) * gate.fc(y.mean((2, 3))).unsqueeze(1)
        elif isinstance(gate, SqueezeExcite):
            y = y.mul_(gate.fc(y.mean((2, 3)))[:, :, None, None])
        elif gate is not None:
            y = gate(y)
        y = y.permute(0, 2, 3, 1)  # B x H x W x Ch, a plain view of the channels-last maps the convs return
        out = x.permute(0, 2, 3, 1) + b  # the residual plus the projection's bias, accumulated into below
        w = w.transpose(-1, -2)
        C = out.shape[-1]
        if w.ndim == 3:
            out = out.reshape(B, H * W, C).baddbmm_(y.reshape(B, H * W, Ch), w)
        else:
            out = out.reshape(B * H * W, C).addmm_(y.reshape(B * H * W, Ch), w)
        return out.reshape(B, H, W, C).permute(0, 3, 1, 2)

    def _forward_eval(self, x: Tensor) -> Tensor:
        inplace = not torch.is_grad_enabled()
        layers = list(self.conv)
        y, i = x, 0
        while i < len(layers):
            m = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and not nxt.training \
                    and nxt.running_var is not None:
                w, b = fold_batchnorm(m, nxt)
                y = F.conv2d(y, w, b, m.stride, m.padding, m.dilation, m.groups)
                i += 2
                continue
            fresh = inplace and y is not x
            if fresh and isinstance(m, nn.Hardswish):
                y = F.hardswish(y, inplace=True)
            elif fresh and isinstance(m, nn.ReLU6):
                y = F.relu6(y, inplace=True)
            elif fresh and isinstance(m, SqueezeExcite):
                y = y.mul_(m.fc(y.mean((2, 3)))[:, :, None, None])
            else:
                y = m(y)
            i += 1
        return y.add_(x) if inplace and y is not x else x + y



def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``conv`` followed by ``bn`` in eval mode as one convolution."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


def tokens_through_map(fn: nn.Module, x: Tensor, grid: tuple[int, int], num_prefix: int = 0) -> Tensor:
    """Apply a map-to-map module to the image tokens of ``B x (P + H*W) x C`` (row-major); the ``P`` prefix
    (class/distillation) tokens bypass it unchanged, as in every LocalViT host."""
    B, N, C = x.shape
    H, W = grid
    torch._assert(N == num_prefix + H * W, "the tokens are not the prefix tokens plus the grid")
    prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
    tokens = fn(tokens.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
    return torch.cat([prefix, tokens], dim=1) if num_prefix else tokens
