"""LocalViT's locality feed-forward: an inverted-residual block (1x1 expand, depth-wise 3x3, 1x1 project,
each with BatchNorm) that replaces a transformer's MLP *and* its pre-norm, with the residual inside.

The layer keeps the official ``nn.Sequential`` layout, so state-dict keys read ``conv.N.*`` exactly as in
the authors' checkpoints: 0 1x1 conv, 1 BN, 2 act, 3 depth-wise conv, 4 BN, 5 act, [6 SE/ECA], then the
projecting 1x1 conv and its BN (``dp_first`` / ``wo_dp_conv`` move or drop the depth-wise triple).
"""
from __future__ import annotations

import math

import torch
from timm.layers import EcaModule
from torch import Tensor, nn

# The official models select the activation by an integer code.
ACT_CODES = {1: "relu6", 2: "hs", 3: "hs+se", 4: "hs+eca", 5: "hs+ecah"}


def act_from_code(code: int | str) -> str:
    """Official ``act`` argument -> activation string (any code above 4 means ``'hs+ecah'``, as upstream)."""
    if isinstance(code, str):
        return code
    return ACT_CODES.get(int(code), "hs+ecah")


class SqueezeExcite(nn.Module):
    """SE gate with a hard-sigmoid: pool, Linear(C, C // reduction), ReLU, Linear, h_sigmoid, scale.

    ``reduction`` divides the channel count (``reduction=192`` on 768 channels leaves 4 hidden units).
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"SE reduction {reduction} leaves no hidden unit for {channels} channels")
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Hardsigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA's adaptive kernel: the odd number nearest above ``|log2(C) + b| / gamma`` (no lower bound of 3)."""
    t = int(abs((math.log(channels, 2) + beta) / gamma))
    return t if t % 2 else t + 1


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
        if dp_first and hidden != dim:
            raise ValueError("dp_first=True needs expand_ratio=1 (the depth-wise conv would see the unexpanded "
                             f"{dim} channels but is declared for {hidden})")
        act_layer = nn.Hardswish if "hs" in act else nn.ReLU6
        layers: list[nn.Module] = [nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act_layer()]
        if not wo_dp_conv:
            dw = [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act_layer()]
            layers = dw + layers if dp_first else layers + dw
        if "+" in act:
            gate = act.split("+", 1)[1]
            if gate == "se":
                layers.append(SqueezeExcite(hidden, reduction))
            elif gate in ("eca", "ecah"):
                layers.append(EcaModule(hidden, kernel_size=eca_kernel_size(hidden),
                                        gate_layer="sigmoid" if gate == "eca" else "hard_sigmoid"))
            else:
                raise ValueError(f"unknown locality FFN gate {gate!r} in act={act!r}; use se, eca or ecah")
        layers += [nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


def tokens_through_map(fn: nn.Module, x: Tensor, grid: tuple[int, int], num_prefix: int = 0) -> Tensor:
    """Apply a map-to-map module to the image tokens of ``B x (P + H*W) x C`` (row-major); the ``P`` prefix
    (class/distillation) tokens bypass it unchanged, as in every LocalViT host."""
    B, N, C = x.shape
    H, W = grid
    if N != num_prefix + H * W:
        raise ValueError(f"expected {num_prefix} prefix tokens plus a {H}x{W} grid, got {N} tokens")
    prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
    tokens = fn(tokens.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
    return torch.cat([prefix, tokens], dim=1) if num_prefix else tokens
