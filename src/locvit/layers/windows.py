"""Non-overlapping windows on ``B x H x W x C`` maps: padding to a multiple, partition and its inverse."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, multiple: int | tuple[int, int]) -> tuple[Tensor, int, int]:
    """Zero-pad a ``B x H x W x C`` map at the bottom and right so H and W are multiples.

    Returns the padded map and the bottom/right padding ``(pad_b, pad_r)``.
    """
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    H, W = x.shape[1], x.shape[2]
    pad_b, pad_r = (-H) % mh, (-W) % mw
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x, pad_b, pad_r


def window_partition(x: Tensor, ws: int | tuple[int, int]) -> Tensor:
    """``B x H x W x C`` -> ``(B * nH * nW) x wh x ww x C``, windows row-major, batch-major."""
    wh, ww = (ws, ws) if isinstance(ws, int) else ws
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh, ww, C)


def window_reverse(windows: Tensor, ws: int | tuple[int, int], H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition` for a ``H x W`` map."""
    wh, ww = (ws, ws) if isinstance(ws, int) else ws
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)
