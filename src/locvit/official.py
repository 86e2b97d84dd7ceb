"""Build the locvit model configured like an official class, from that class's constructor arguments.

Each family module registers a translator with :func:`register_official`: it receives the official
keyword arguments (callables already decoded) and returns the equivalent locvit model. The state dict,
in official key names, then goes through the same ``checkpoint_filter_fn`` that loads released weights.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Mapping

from torch import nn

_TRANSLATORS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_official(*official_classes: str) -> Callable:
    """Decorator: ``fn(kwargs) -> model`` builds our model for an official class name."""

    def wrap(fn: Callable[[dict[str, Any]], nn.Module]) -> Callable[[dict[str, Any]], nn.Module]:
        for name in official_classes:
            _TRANSLATORS[name] = fn
        return fn

    return wrap


def official_classes() -> list[str]:
    """Official class names that :func:`from_official` can translate."""
    return sorted(_TRANSLATORS)


def decode_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the conformance encoding of callables (``{'__partial__': 'dotted.name', 'kwargs': {...}}``) back
    into ``functools.partial`` objects; everything else is passed through (lists stay lists)."""

    def decode(v: Any) -> Any:
        if isinstance(v, Mapping) and "__partial__" in v:
            module, _, attr = v["__partial__"].rpartition(".")
            obj = getattr(importlib.import_module(module), attr)
            kw = v.get("kwargs") or {}
            return functools.partial(obj, **kw) if kw else obj
        if isinstance(v, Mapping):
            return {k: decode(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(decode(x) for x in v)
        return v

    return {k: decode(v) for k, v in kwargs.items()}


def norm_eps(norm_layer: Any, default: float) -> float:
    """The ``eps`` an official ``norm_layer`` argument (a class or a partial of one) stands for."""
    if norm_layer is None:
        return default
    if isinstance(norm_layer, functools.partial):
        return float(norm_layer.keywords.get("eps", default if norm_layer.func is not nn.LayerNorm else 1e-5))
    if norm_layer is nn.LayerNorm:
        return 1e-5
    raise ValueError(f"unsupported norm_layer {norm_layer!r}: only nn.LayerNorm (optionally with eps) is used "
                     "by the official models")


def from_official(
    official_class: str,
    constructor_kwargs: Mapping[str, Any],
    state_dict: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build the locvit equivalent of ``official_class(**constructor_kwargs)`` and load an official state dict.

    Args:
        official_class: ``<module path in the official repo>.<ClassName>``, e.g. ``regionvit.regionvit.RegionViT``.
        constructor_kwargs: the official constructor's keyword arguments (conformance encoding accepted).
        state_dict: optional state dict in official key names, loaded strictly through the family's filter.
        **overrides: extra locvit-side keyword arguments (e.g. ``drop_path_rate``).
    """
    import locvit.models  # noqa: F401  (registers the translators)

    if official_class not in _TRANSLATORS:
        raise ValueError(f"no locvit translation for official class {official_class!r}; "
                         f"known: {', '.join(official_classes())}")
    kwargs = decode_kwargs(constructor_kwargs)
    kwargs.update(overrides)
    model = _TRANSLATORS[official_class](kwargs)
    if state_dict is not None:
        from locvit.checkpoint import load_checkpoint

        load_checkpoint(model, state_dict, strict=True)
    return model


def pop_unused(kwargs: dict[str, Any], allowed_defaults: Mapping[str, Any]) -> None:
    """Remove official arguments that do not change the model, refusing any that is set to a value we do not
    implement (so a translation never silently ignores a real configuration difference)."""
    for name, default in allowed_defaults.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if default is not ... and value != default and not (value is None and default is None):
                raise ValueError(f"official argument {name}={value!r} is not supported (only {default!r})")
