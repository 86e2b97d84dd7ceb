"""Argument checks of the model constructors: each raises one ``ValueError`` that names the argument and says what
would be accepted, at construction, before a layer is built with a value it cannot take."""
from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

from timm.layers import to_2tuple

#: the ``global_pool`` choices of a model with a class token
GLOBAL_POOLS = ("token", "avg", "")


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int``; a ``ValueError`` naming ``name`` unless it is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_length(values: Any, name: str, length: int | None = None) -> list[Any]:
    """A sequence (one entry per stage when ``length`` is given) as a list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence, one entry per stage, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} needs one entry per stage ({length} stages), got {list(values)}")
    if not values:
        raise ValueError(f"{name} is empty: a model needs at least one stage")
    return list(values)


def check_ints(values: Any, name: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """A sequence of integers (one per stage when ``length`` is given), each at least ``minimum``."""
    return tuple(check_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(check_length(values, name, length)))


def per_stage(value: Any, num_stages: int) -> list[Any]:
    """One value for every stage (a scalar repeated) or a per-stage sequence, as a list."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * num_stages


def check_positive(value: Any, name: str) -> float:
    """A finite number above zero (expansion ratios)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def check_rate(value: Any, name: str) -> float:
    """A dropout / stochastic-depth probability in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def check_heads(dim: int, heads: Any, dim_name: str = "embed_dim", heads_name: str = "num_heads") -> int:
    """``heads`` attention heads that divide ``dim`` channels; the error names the nearest heads that would."""
    heads = check_int(heads, heads_name)
    if dim % heads:
        below = max(h for h in range(1, heads) if dim % h == 0)
        above = next(h for h in range(heads + 1, dim + 1) if dim % h == 0) if heads < dim else None
        near = f"{below} or {above}" if above else str(below)
        raise ValueError(f"{dim_name} ({dim}) is not divisible by {heads_name} ({heads}): use {heads_name}={near} "
                         f"(or a width that {heads} divides)")
    return heads


def check_hidden(dim: int, ratio: Any, name: str = "mlp_ratio") -> int:
    """Hidden width ``int(dim * ratio)`` of an MLP; at least one channel."""
    hidden = int(dim * check_positive(ratio, name))
    if hidden < 1:
        raise ValueError(f"{name}={ratio} leaves no hidden channel for width {dim}; use {name} >= {1 / dim:g}")
    return hidden


def check_img_size(img_size: Any, minimum: tuple[int, int] = (1, 1), why: str = "") -> tuple[int, int]:
    """``img_size`` (an int or ``(H, W)``) as a pair, at least ``minimum``; ``why`` says what needs that minimum."""
    size = to_2tuple(img_size)
    if len(size) != 2:
        raise ValueError(f"img_size must be an int or (height, width), got {img_size!r}")
    h, w = (check_int(v, "img_size") for v in size)
    if h < minimum[0] or w < minimum[1]:
        raise ValueError(f"img_size {h}x{w} is too small: {why or 'this model'} needs at least "
                         f"{minimum[0]}x{minimum[1]}; pass a larger img_size")
    return h, w


def check_model_args(*, num_classes: Any, in_chans: Any, global_pool: str, pools: Sequence[str] = ("avg", ""),
                     **rates: Any) -> None:
    """The arguments every locvit model shares: ``num_classes`` (0 for no classifier), ``in_chans``, the
    ``global_pool`` choice and the dropout/stochastic-depth rates passed by keyword (None skips one)."""
    check_num_classes(num_classes)
    check_int(in_chans, "in_chans")
    check_global_pool(global_pool, pools)
    for name, rate in rates.items():
        if rate is not None:
            check_rate(rate, name)


def check_transformer_args(*, embed_dim: Any, depth: Any, num_heads: Any, mlp_ratio: Any, **common: Any) -> None:
    """:func:`check_model_args` (``common``; token, mean or no pooling) and the width, depth, heads and MLP ratio of
    an isotropic transformer."""
    check_model_args(pools=GLOBAL_POOLS, **common)
    check_int(embed_dim, "embed_dim")
    check_int(depth, "depth")
    check_heads(embed_dim, num_heads)
    check_hidden(embed_dim, mlp_ratio)


def check_num_classes(num_classes: Any) -> int:
    """``num_classes`` as an ``int``: a classifier's width, or 0 for none."""
    return check_int(num_classes, "num_classes (0 builds no classifier)", 0)


_RATES = ("drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate")


def check_host_kwargs(kwargs: dict[str, Any], pools: Sequence[str], heads: Sequence[tuple[str, str]],
                      defaults: dict[str, Any]) -> None:
    """The checks of :func:`check_model_args` (plus widths, depth, patch size and heads) on the keyword arguments of a
    timm class that locvit registers as a host model, before timm builds it (timm asserts some, divides by others).
    ``defaults``: the entrypoint's architecture arguments, which ``kwargs`` override."""
    kw = {**defaults, **kwargs}
    check_model_args(num_classes=kw.get("num_classes", 1000), in_chans=kw.get("in_chans", 3),
                     global_pool=kw.get("global_pool", pools[0]), pools=pools,
                     **{k: kw[k] for k in _RATES if k in kw})
    for name in ("embed_dim", "inner_dim", "depth", "patch_size"):
        if name in kw:
            check_int(kw[name], name)
    for dim, num in heads:
        check_heads(kw[dim], kw[num], dim, num)
    if "mlp_ratio" in kw:
        check_hidden(kw["embed_dim"], kw["mlp_ratio"])
    if "img_size" in kw:
        patch = kw.get("patch_size", 16)
        check_img_size(kw["img_size"], (patch, patch), f"patch_size={patch}")


def check_global_pool(global_pool: str, pools: Sequence[str] = GLOBAL_POOLS) -> str:
    """``global_pool`` if it is one of ``pools``, else a ``ValueError`` listing them."""
    if global_pool not in pools:
        names = ", ".join(repr(p) for p in pools)
        raise ValueError(f"global_pool must be one of {names}; got {global_pool!r}")
    return global_pool

