"""Non-overlapping windows on ``B x H x W x C`` maps: padding to a multiple, partition and its inverse."""
from __future__ import annotations

import torch
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


def shifted_window_mask(
    H: int,
    W: int,
    window: int | tuple[int, int],
    shift: int | tuple[int, int] = 0,
    value: float = -100.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor | None:
    """Swin's additive attention mask for (shifted) windows on an ``H x W`` map, padded bottom/right to window
    multiples before the cyclic shift.

    Tokens that the shift wrapped around from the other border get ``value`` (Swin: -100) towards the tokens
    they do not neighbour, as in Swin (regions ``[0, -ws)``, ``[-ws, -shift)``, ``[-shift, end)`` of the padded,
    shifted map). Keys that are padding get ``value`` too, so they never contribute (upstream Swin pads without
    masking). Windows are ordered as :func:`window_partition` of the padded, shifted map.

    Returns:
        ``windows x (wh * ww) x (wh * ww)``, or None when nothing is masked (no shift, no padding).
    """
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (shift, shift) if isinstance(shift, int) else shift
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    if not (sh or sw) and (Hp, Wp) == (H, W):
        return None
    region = torch.zeros(1, Hp, Wp, 1)
    if sh or sw:
        rows = (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)) if sh else (slice(None),)
        cols = (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)) if sw else (slice(None),)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                region[:, r, c] = i * 3 + j
    region = window_partition(region, (wh, ww)).flatten(1)
    mask = torch.where(region[:, None, :] != region[:, :, None], value, 0.0)
    if (Hp, Wp) != (H, W):
        pad = torch.ones(1, Hp, Wp, 1)
        pad[:, :H, :W] = 0
        pad = window_partition(torch.roll(pad, (-sh, -sw), dims=(1, 2)), (wh, ww)).flatten(1)
        mask = mask + torch.where(pad[:, None, :] > 0, value, 0.0)
    return mask.to(device=device, dtype=dtype)


def window_gather_index(H: int, W: int, window: int | tuple[int, int], shift: int | tuple[int, int] = 0
                        ) -> tuple[Tensor, Tensor]:
    """Indices that do Swin's cyclic shift and window partition of an ``H x W`` map (window multiples) in one
    gather, and undo both in another.

    ``x.flatten(1, 2).index_select(1, index)`` equals ``window_partition(torch.roll(x, (-sh, -sw), (1, 2)))``
    flattened to ``B x (windows * wh * ww) x C``; ``index_select(1, inverse)`` on that maps it back. Two copies
    of the map instead of six (``torch.roll`` copies once per dimension).
    """
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (shift, shift) if isinstance(shift, int) else shift
    rows = ((torch.arange(H) + sh) % H).view(H // wh, wh)
    cols = ((torch.arange(W) + sw) % W).view(W // ww, ww)
    index = (rows[:, None, :, None] * W + cols[None, :, None, :]).reshape(-1)  # window row, window col, r, c
    return index, torch.argsort(index)
