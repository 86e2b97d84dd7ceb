"""Model names: locvit's canonical timm-style names and the official names that alias them.

Every model is registered with :func:`timm.models.register_model`, so timm and everything that
consumes timm backbones sees it. An official name is registered as a thin entrypoint that calls the
canonical one, which means the model it builds carries the canonical name's pretrained cfg.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Any, Callable

import timm
from timm.models import register_model
from timm.models._registry import _model_entrypoints

# alias -> canonical name
ALIASES: dict[str, str] = {}
# canonical name -> family ('regionvit', 'focal', 'vvt', 'localvit', 'pvt', 't2t', ...)
_FAMILY: dict[str, str] = {}
# official name -> the model locvit builds for it, where timm registers the same name for another architecture
# (e.g. the LocalViT repository's tnt_s_patch16_224 is timm's tnt_s_legacy_patch16_224). timm.create_model keeps
# timm's meaning of such a name; locvit.create_model, whose contract is that official names build the official
# model, follows this table.
OFFICIAL_HOMONYMS: dict[str, str] = {}


def register_family_model(family: str, aliases: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Register ``fn`` with timm under its own name, tag it with ``family`` and add official aliases."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        register_model(fn)
        _FAMILY[fn.__name__] = family
        for alias in aliases:
            _register_alias(alias, fn)
        return fn

    return wrap


def _register_alias(alias: str, fn: Callable[..., Any]) -> None:
    if alias in _model_entrypoints and not _model_entrypoints[alias].__module__.startswith("locvit."):
        raise RuntimeError(f"alias {alias!r} would shadow timm's own model of that name")

    def entry(pretrained: bool = False, **kwargs: Any):
        return fn(pretrained=pretrained, **kwargs)

    entry.__name__ = alias
    entry.__qualname__ = alias
    entry.__module__ = fn.__module__
    entry.__doc__ = f"Official name for :func:`{fn.__name__}` (same model)."
    register_model(entry)
    ALIASES[alias] = fn.__name__


def register_official_homonym(official: str, target: str) -> None:
    """Make :func:`create_model` build ``target`` for the official name ``official``, which timm registers for a
    different architecture (timm's own meaning of the name is left untouched)."""
    OFFICIAL_HOMONYMS[official] = target


def resolve_alias(name: str) -> str:
    """Return the canonical locvit name for ``name`` (itself when it is not an alias)."""
    return ALIASES.get(name, name)


def family_of(name: str) -> str | None:
    """Family tag of a locvit model name or alias, ``None`` for names locvit does not own."""
    return _FAMILY.get(resolve_alias(name))


def list_models(pattern: str | list[str] = "*", include_aliases: bool = False, family: str | None = None) -> list[str]:
    """Names of locvit's models matching a wildcard ``pattern`` (or a list of them).

    Args:
        pattern: shell-style wildcard(s), e.g. ``'regionvit*'``.
        include_aliases: also list the official names that alias canonical ones.
        family: keep only models of this family.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = list(_FAMILY)
    if include_aliases:
        names += [a for a, c in ALIASES.items() if c in _FAMILY]
    out = []
    for name in names:
        if family is not None and _FAMILY.get(resolve_alias(name)) != family:
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            out.append(name)
    return sorted(set(out), key=_natural_key)


def _natural_key(s: str) -> list:
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s.lower())]


def create_model(name: str, pretrained: bool = False, checkpoint: str | Any | None = None, *,
                 num_classes: int | None = None, img_size: int | tuple[int, int] | None = None, strict: bool = True,
                 trust_pickle: bool = False, use_ema: bool = False, **kwargs: Any):
    """Build a model by name (canonical, official alias, or any timm name) and optionally load a checkpoint: the one
    place where the CLI commands, export, viz and the dense adapters build their models.

    Official names that timm registers for another architecture build the official model (see
    :data:`OFFICIAL_HOMONYMS`); every other name builds what ``timm.create_model(name)`` builds.

    Args:
        name: model name.
        pretrained: load the weights named by the pretrained cfg (``pretrained_cfg_overlay=dict(file=...)``).
        checkpoint: a checkpoint file or state dict (official or locvit format), loaded after building; the
            report of what was loaded is kept as ``model.load_report``.
        num_classes: classifier size; with a checkpoint, defaults to the checkpoint's classifier.
        img_size: input size the model is built for (position embeddings and tables are resized on load).
        strict: with a checkpoint: every key must fit (``False``: load what fits, e.g. to fine-tune with a new head).
        trust_pickle, use_ema: see :func:`locvit.read_checkpoint`.
        **kwargs: forwarded to the model (``drop_path_rate``, architecture options, ...).
    """
    name = OFFICIAL_HOMONYMS.get(name, name)
    if not timm.is_model(name):
        close = fnmatch.filter(list_models(include_aliases=True), f"*{name.split('_')[0]}*")[:8]
        hint = f" Similar: {', '.join(close)}." if close else " See `locvit models`."
        raise ValueError(f"unknown model {name!r}.{hint}")
    state = None
    if checkpoint is not None:
        from locvit.checkpoint import head_classes, read_checkpoint, unwrap_state_dict

        state = (read_checkpoint(checkpoint, trust_pickle=trust_pickle, use_ema=use_ema)
                 if isinstance(checkpoint, (str, os.PathLike)) else unwrap_state_dict(checkpoint, use_ema=use_ema))
        if num_classes is None:
            num_classes = head_classes(state)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if state is not None:
        from locvit.checkpoint import load_checkpoint

        model.load_report = load_checkpoint(model, state, strict=strict, source=str(checkpoint)
                                            if isinstance(checkpoint, (str, os.PathLike)) else None)
    return model
