"""Reaching into a running model: pick a block by (stage, block) and record what a module receives or returns.

Hooks only read; they never change a result.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from torch import nn


def stages_of(model: nn.Module) -> list[nn.Module]:
    """The stages of a pyramid model (``stages`` or ``layers``, each with ``blocks``)."""
    for attr in ("stages", "layers"):
        stages = getattr(model, attr, None)
        if stages is not None and all(hasattr(s, "blocks") for s in stages):
            return list(stages)
    raise ValueError(f"{type(model).__name__} has no stages with blocks")


def pick_block(model: nn.Module, stage: int, block: int) -> tuple[nn.Module, nn.Module]:
    """``(stage module, block module)``; negative indices count from the end, as in Python."""
    stages = stages_of(model)
    if not -len(stages) <= stage < len(stages):
        raise ValueError(f"stage {stage} does not exist: the model has {len(stages)} stages (0-{len(stages) - 1})")
    st = stages[stage]
    blocks = list(st.blocks)
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(f"block {block} does not exist in stage {stage % len(stages)}, which has {len(blocks)} "
                         f"blocks (0-{len(blocks) - 1})")
    return st, blocks[block]


@contextlib.contextmanager
def capture(module: nn.Module, outputs: bool = False) -> Iterator[list[Any]]:
    """Record the positional inputs (``outputs=False``) or the outputs of every call of ``module``."""
    calls: list[Any] = []
    if outputs:
        handle = module.register_forward_hook(lambda m, args, out: calls.append(out))
    else:
        handle = module.register_forward_pre_hook(lambda m, args: calls.append(args))
    try:
        yield calls
    finally:
        handle.remove()
