"""Relative-position bias tables: the Swin-style index between a query grid and a key grid, and table resizing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def relative_position_index(q_size: tuple[int, int], k_size: tuple[int, int] | None = None) -> Tensor:
    """Index of every (query, key) pair of two row-major grids into a table of displacements.

    The displacement ``(query - key)`` is shifted to be non-negative and flattened row-major over a
    ``(qh + kh - 1) x (qw + kw - 1)`` table: ``(dr + kh - 1) * (qw + kw - 1) + (dc + kw - 1)``. With equal grids
    this is Swin's index into a ``(2ws - 1)^2`` table. With different grids the two coordinate systems are simply
    overlaid at their top-left corners (Focal Transformer's query-to-pooled-window bias uses it that way).

    Args:
        q_size: query grid ``(qh, qw)``.
        k_size: key grid ``(kh, kw)``; the query grid when None.

    Returns:
        int64 ``(qh * qw) x (kh * kw)``.
    """
    kh, kw = k_size if k_size is not None else q_size
    qh, qw = q_size
    q = torch.stack(torch.meshgrid(torch.arange(qh), torch.arange(qw), indexing="ij")).flatten(1)
    k = torch.stack(torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij")).flatten(1)
    rel = q[:, :, None] - k[:, None, :]
    return (rel[0] + kh - 1) * (qw + kw - 1) + (rel[1] + kw - 1)


def resize_bias_grid(table: Tensor, new_size: tuple[int, int], old_size: tuple[int, int] | None = None) -> Tensor:
    """Bicubically resample a bias table laid out as a 2-D grid of displacements (per head).

    Args:
        table: ``(heads, old_h * old_w)`` (flat grid per head) or ``(heads, old_h, old_w)``.
        new_size: target grid ``(new_h, new_w)``.
        old_size: source grid; square (``sqrt`` of the flat length) when None.

    Returns:
        The table in the same layout with the new grid size.
    """
    flat = table.ndim == 2
    if old_size is None:
        side = int(round((table.shape[-1] if flat else table.shape[-1] * table.shape[-2]) ** 0.5))
        old_size = (side, side)
    grid = table.reshape(table.shape[0], *old_size) if flat else table
    if tuple(old_size) != tuple(new_size):
        grid = F.interpolate(grid[None].float(), size=tuple(new_size), mode="bicubic", align_corners=False)[0]
        grid = grid.to(table.dtype)
    return grid.reshape(table.shape[0], -1) if flat else grid
