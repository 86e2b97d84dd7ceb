"""Build the locvit model configured like an official class, from that class's constructor arguments.

Each family file registers a translator (:func:`locvit.models._registry.register_official`) that turns the
official keyword arguments (callables already decoded) into its constructor's. The state dict, in official key
names, then goes through the family's ``checkpoint_filter_fn``, the one that loads released weights.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Mapping

from torch import nn

from locvit.models import names_of, official_translator, translated_classes
from locvit.weights import load_weights


def official_classes() -> list[str]:
    """Official class names that :func:`from_official` can translate."""
    return translated_classes()


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
    spec, translate = official_translator(official_class)
    kwargs = translate(decode_kwargs(constructor_kwargs))
    kwargs.update(overrides)
    model = spec.model_cls(**kwargs)
    if state_dict is not None:
        load_weights(model, state_dict, strict=True, filter_fn=spec.filter_fn)
    return model


def official_model_args(official_class: str, constructor_kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A registered model name and keyword arguments that build ``official_class(**constructor_kwargs)``.

    ``timm.create_model(name, **kwargs)`` then builds the same model as :func:`from_official` -- through the
    registered entrypoint, so ``pretrained=True``, ``features_only=True`` and every timm option apply to an
    official configuration. Every constructor argument is stated (the entrypoint's own defaults never leak in),
    except those whose value is ``None``, which timm drops. (The T2T-ViT entrypoints apply the released weights'
    legacy ``qk_scale`` with ``pretrained=True``; add ``legacy_qk_scale=False`` for the official configuration.)

    Args:
        official_class: as for :func:`from_official`.
        constructor_kwargs: the official constructor's keyword arguments (conformance encoding accepted).
    """
    spec, translate = official_translator(official_class)
    names = names_of(spec)
    if not names:
        raise ValueError(f"{official_class} translates to a class no registered model builds")
    kwargs = translate(decode_kwargs(constructor_kwargs))
    cls = spec.classes[0] if spec.classes else spec.model_cls
    defaults = {p.name: p.default for p in inspect.signature(cls).parameters.values()
                if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names[0], {**defaults, **kwargs}
