"""The registry the model files fill in when ``locvit.models`` is imported.

* :class:`ModelSpec` -- what every model built by one constructor shares: the constructor, the
  ``checkpoint_filter_fn`` that converts the authors' files (and ours) for it, timm's feature-extraction config
  and the settings of its dense-task (detection / segmentation) backbone.
* :func:`register_family_model` -- registers an entrypoint with timm, records its family tag and spec, and
  registers the official names that alias it.
* :func:`register_official` -- a translator from an official class's constructor arguments to the spec's
  constructor arguments (:func:`locvit.from_official` uses it).

Everything that needs a model's filter or recipe looks it up here (:func:`spec_of`, :func:`spec_for_model`),
so a new family is one model file that fills in these tables.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from timm.models import is_model, model_entrypoint, register_model
from torch import nn

StateDictFilter = Callable[[dict, nn.Module], dict]


@dataclass(frozen=True)
class DenseRecipe:
    """Architecture settings of a family's dense-task (detection / segmentation) backbone.

    Attributes:
        model_kwargs: keyword arguments for the model (e.g. RegionViT's ``det_norm=True``).
        out_norm: add a new LayerNorm per output level before the neck (Swin's dense-task convention).
        source: where the setting comes from (official config, or the recipe the paper follows -- inferred).
    """

    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    out_norm: bool = False
    source: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """What the models built by one constructor share.

    Attributes:
        model_cls: the constructor (a class, or a function building one) that ``build_model_with_cfg`` calls.
        filter_fn: ``checkpoint_filter_fn(state_dict, model)``: official (or our) keys -> this model's, tables and
            embeddings resized to it; every loading path (``pretrained=True``, :func:`locvit.load_checkpoint`,
            :func:`locvit.from_official`, the dense adapters) applies it.
        feature_cfg: timm's ``feature_cfg`` for ``features_only=True`` (``out_indices``; timm's getter wrapper).
        dense: the dense-task recipe (:func:`locvit.dense.dense_recipe`).
        classes: the classes whose instances this spec describes (default: ``model_cls`` when it is a class), so
            a model built without an entrypoint (e.g. by :func:`locvit.from_official`) finds its filter.
    """

    model_cls: Callable[..., nn.Module]
    filter_fn: StateDictFilter | None = None
    feature_cfg: Mapping[str, Any] = field(default_factory=dict)
    dense: DenseRecipe = field(default_factory=DenseRecipe)
    classes: tuple[type, ...] = ()

    def __post_init__(self) -> None:
        if not self.classes and isinstance(self.model_cls, type):
            object.__setattr__(self, "classes", (self.model_cls,))


# alias -> canonical name
ALIASES: dict[str, str] = {}
# canonical name -> family tag ('regionvit', 'focal', 'vvt', 'localvit', 'pvt', 't2t'); the zoo (list_models)
FAMILIES: dict[str, str] = {}
# every name registered here (zoo models and the timm-class hosts outside the zoo) -> its spec
_SPECS: dict[str, ModelSpec] = {}
# class -> spec (models built without an entrypoint)
_CLASS_SPECS: dict[type, ModelSpec] = {}
# official name -> the model locvit builds for it, where timm registers the same name for another architecture
# (e.g. the LocalViT repository's tnt_s_patch16_224 is timm's tnt_s_legacy_patch16_224). timm.create_model keeps
# timm's meaning of such a name; locvit.create_model, whose contract is that official names build the official
# model, follows this table.
OFFICIAL_HOMONYMS: dict[str, str] = {}
# official class ('<module path in the official repo>.<ClassName>') -> (spec, kwargs translator)
_TRANSLATORS: dict[str, tuple[ModelSpec, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


def register_family_model(family: str | None, spec: ModelSpec,
                          aliases: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorator: register the entrypoint ``fn`` with timm under its own name, with its spec and official aliases.

    Args:
        family: family tag of a zoo model; ``None`` registers a timm model outside locvit's zoo (a host baseline
            built from timm's class), which :func:`locvit.list_models` does not list.
        spec: the :class:`ModelSpec` of the models ``fn`` builds.
        aliases: official names that build the same model.
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        register_model(fn)
        _SPECS[fn.__name__] = spec
        for cls in spec.classes:
            _CLASS_SPECS.setdefault(cls, spec)
        if family is not None:
            FAMILIES[fn.__name__] = family
        for alias in aliases:
            _register_alias(alias, fn)
        return fn

    return wrap


def _register_alias(alias: str, fn: Callable[..., Any]) -> None:
    if is_model(alias) and not model_entrypoint(alias).__module__.startswith("locvit."):
        raise RuntimeError(f"alias {alias!r} would shadow timm's own model of that name")

    def entry(pretrained: bool = False, **kwargs: Any):
        return fn(pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = alias
    entry.__module__ = fn.__module__
    entry.__doc__ = f"Official name for :func:`{fn.__name__}` (same model)."
    register_model(entry)
    ALIASES[alias] = fn.__name__


def register_official_homonym(official: str, target: str) -> None:
    """Make :func:`locvit.create_model` build ``target`` for the official name ``official``, which timm registers
    for a different architecture (timm's own meaning of the name is left untouched)."""
    OFFICIAL_HOMONYMS[official] = target


def spec_of(name: str) -> ModelSpec | None:
    """The spec of a registered model name, official alias or homonym; ``None`` for names locvit does not own."""
    name = OFFICIAL_HOMONYMS.get(name, name)
    return _SPECS.get(ALIASES.get(name, name))


def spec_for_model(model: nn.Module) -> ModelSpec | None:
    """The spec of a built model: by the architecture its pretrained cfg names, else by its class."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    spec = spec_of(arch) if arch else None
    return spec if spec is not None else _CLASS_SPECS.get(type(model))


# --- official classes ---------------------------------------------------------------------------------------------
def register_official(spec: ModelSpec, *official_classes: str) -> Callable:
    """Decorator: ``fn(official_kwargs) -> kwargs of spec.model_cls`` translates these official classes."""

    def wrap(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        for name in official_classes:
            _TRANSLATORS[name] = (spec, fn)
        return fn

    return wrap


def official_translator(official_class: str) -> tuple[ModelSpec, Callable[[dict[str, Any]], dict[str, Any]]]:
    """``(spec, translator)`` for an official class name."""
    if official_class not in _TRANSLATORS:
        raise ValueError(f"no locvit translation for official class {official_class!r}; "
                         f"known: {', '.join(sorted(_TRANSLATORS))}")
    return _TRANSLATORS[official_class]


def translated_classes() -> list[str]:
    """Official class names that have a translator."""
    return sorted(_TRANSLATORS)


def names_of(spec: ModelSpec) -> list[str]:
    """Registered names (registration order) whose models ``spec`` describes."""
    return [name for name, s in _SPECS.items() if s is spec]


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


def pop_unused(kwargs: dict[str, Any], allowed_defaults: Mapping[str, Any]) -> None:
    """Remove official arguments that do not change the model, refusing any that is set to a value we do not
    implement (so a translation never silently ignores a real configuration difference)."""
    for name, default in allowed_defaults.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if default is not ... and value != default and not (value is None and default is None):
                raise ValueError(f"official argument {name}={value!r} is not supported (only {default!r})")
