"""Absolute position tables on a token grid: one resize for every model, at forward (:func:`resize_pos_embed`), in
``set_input_size`` (:func:`resize_pos_table`) and in the checkpoint filters."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from timm.layers import register_notrace_function, resample_abs_pos_embed
from torch import Tensor, nn


@register_notrace_function  # compares grid sizes: a leaf call for torch.fx
def resize_pos_embed(pos: Tensor, grid: Sequence[int], old_grid: Sequence[int] | None = None,
                     num_prefix_tokens: int = 0, name: str = "position table") -> Tensor:
    """A ``1 x (P + h*w) x C`` position table made for ``old_grid`` (``h x w``), resampled (bicubic, timm's
    :func:`~timm.layers.resample_abs_pos_embed`) to ``grid``; ``pos`` itself when the grids agree. The first
    ``num_prefix_tokens`` rows (class tokens) are kept as they are.

    ``old_grid=None`` (a checkpoint's table): the square grid its rows form, as every official checkpoint's do; a
    ``ValueError`` naming it ``name`` when they form none, since the grid it was trained on cannot be inferred then.
    """
    if old_grid is None:
        n = pos.shape[1] - num_prefix_tokens
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{name}: cannot infer the trained grid of a {n}-token position table (not square); "
                             "build the model at the checkpoint's size, load it, then call set_input_size")
        old_grid = (side, side)
    if tuple(grid) == tuple(old_grid):
        return pos
    return resample_abs_pos_embed(pos, list(grid), list(old_grid), num_prefix_tokens=num_prefix_tokens)


def resize_pos_table(table: Tensor, grid: Sequence[int], old_grid: Sequence[int], num_prefix_tokens: int = 0) -> Tensor:
    """A model's own table (a parameter or a buffer) made the table of a new default ``grid``, as ``set_input_size``
    does: :func:`resize_pos_embed` outside autograd, a new ``nn.Parameter`` when the table was one; the table itself
    (the same object, so an optimiser keeps it) when the grids agree."""
    if tuple(grid) == tuple(old_grid):
        return table
    with torch.no_grad():
        out = resize_pos_embed(table, grid, old_grid, num_prefix_tokens)
    return nn.Parameter(out) if isinstance(table, nn.Parameter) else out
