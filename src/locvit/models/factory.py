"""Building and loading models by name: locvit's canonical timm-style names and the official names that alias
them, :func:`create_model`, and :func:`load_checkpoint` with the family's checkpoint filter.

Every model is registered with :func:`timm.models.register_model` when :mod:`locvit.models` is imported (the
tables live with the models, in :mod:`locvit.models._registry`), so timm and everything that consumes timm
backbones sees it. An official name is registered as a thin entrypoint that calls the canonical one, which means
the model it builds carries the canonical name's pretrained cfg.
"""
from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
from typing import Any, Callable, Mapping

import timm
from timm.models import parse_model_name
from torch import nn

from locvit.files import sha256_file
from locvit.models._registry import ALIASES, FAMILIES, OFFICIAL_HOMONYMS, spec_for_model, spec_of
from locvit.weights.checkpoint import (
    LoadReport,
    StateDict,
    head_classes,
    load_weights,
    read_checkpoint,
    unwrap_model,
    unwrap_state_dict,
)

__all__ = ["ALIASES", "OFFICIAL_HOMONYMS", "create_model", "family_of", "find_filter_fn", "list_models",
           "load_checkpoint", "resolve_alias"]


def resolve_alias(name: str) -> str:
    """Return the canonical locvit name for ``name`` (itself when it is not an alias)."""
    return ALIASES.get(name, name)


def family_of(name: str) -> str | None:
    """Family tag of a locvit model name or alias, ``None`` for names locvit does not own."""
    return FAMILIES.get(resolve_alias(name))


def list_models(pattern: str | list[str] = "*", include_aliases: bool = False, family: str | None = None) -> list[str]:
    """Names of locvit's models matching a wildcard ``pattern`` (or a list of them).

    Args:
        pattern: shell-style wildcard(s), e.g. ``'regionvit*'``.
        include_aliases: also list the official names that alias canonical ones.
        family: keep only models of this family.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = list(FAMILIES)
    if include_aliases:
        names += [a for a, c in ALIASES.items() if c in FAMILIES]
    out = []
    for name in names:
        if family is not None and FAMILIES.get(resolve_alias(name)) != family:
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            out.append(name)
    return sorted(set(out), key=_natural_key)


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s.lower())]


def create_model(name: str, pretrained: bool = False, checkpoint: str | Any | None = None, *,
                 num_classes: int | None = None, img_size: int | tuple[int, int] | None = None, strict: bool = True,
                 trust_pickle: bool = False, use_ema: bool = False, allow_nonfinite: bool = False, **kwargs: Any):
    """Build a model by name (canonical, official alias, or any timm name) and optionally load a checkpoint: the one
    place where the CLI commands, export, viz and the dense adapters build their models.

    Official names that timm registers for another architecture build the official model (see
    :data:`OFFICIAL_HOMONYMS`); every other name builds what ``timm.create_model(name)`` builds.

    Args:
        name: model name; ``hf-hub:ORG/NAME`` and ``local-dir:FOLDER`` load hub-style folders (``locvit convert``).
        pretrained: load the weights the pretrained cfg names (downloaded and cached on first use; override with
            ``pretrained_cfg_overlay=dict(file=...)`` or ``dict(url=...)``).
        checkpoint: a checkpoint file or state dict (official or locvit format), loaded after building; the
            report of what was loaded is kept as ``model.load_report``.
        num_classes: classifier size; with a checkpoint, defaults to the checkpoint's classifier.
        img_size: input size the model is built for (position embeddings and tables are resized on load).
        strict: with a checkpoint: every key must fit (``False``: load what fits, e.g. to fine-tune with a new head).
        trust_pickle, use_ema: see :func:`locvit.read_checkpoint` (``trust_pickle`` also for ``pretrained=True``).
        allow_nonfinite: load a ``checkpoint`` holding NaN/inf (refused by default; see :func:`locvit.load_checkpoint`).
        **kwargs: forwarded to the model (``drop_path_rate``, architecture options, ...).
    """
    name = OFFICIAL_HOMONYMS.get(name, name)
    source, _ = parse_model_name(name)
    if source is None and not timm.is_model(name):
        close = fnmatch.filter(list_models(include_aliases=True), f"*{name.split('_')[0]}*")[:8]
        hint = f" Similar: {', '.join(close)}." if close else " See `locvit models`."
        raise ValueError(f"unknown model {name!r}.{hint}")
    state = None
    if checkpoint is not None:
        state = (read_checkpoint(checkpoint, trust_pickle=trust_pickle, use_ema=use_ema)
                 if isinstance(checkpoint, (str, os.PathLike)) else unwrap_state_dict(checkpoint, use_ema=use_ema))
        if num_classes is None:
            num_classes = head_classes(state)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    if pretrained and trust_pickle and (source is not None or spec_of(name) is not None):
        kwargs["trust_pickle"] = True  # locvit's entrypoints read the weights' file themselves
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except json.JSONDecodeError as e:  # timm reads a hub folder's config.json without naming it
        if source is None:
            raise
        where = (os.path.join(name.split(":", 1)[1], "config.json") if source == "local-dir"
                 else f"config.json of {name}")
        raise ValueError(f"{where} is not valid JSON ({e.msg}, line {e.lineno} column {e.colno}): write the folder "
                         "again with `locvit convert`, or fix the file") from None
    if state is not None:
        is_file = isinstance(checkpoint, (str, os.PathLike))
        model.load_report = load_checkpoint(model, state, strict=strict, allow_nonfinite=allow_nonfinite,
                                            source=str(checkpoint) if is_file else None)
        if is_file:
            model.load_report.sha256 = sha256_file(checkpoint)
    return model


def find_filter_fn(model: nn.Module) -> Callable[[StateDict, nn.Module], StateDict] | None:
    """The checkpoint filter of ``model``: its :class:`~locvit.models.ModelSpec`'s (found by the architecture its
    pretrained cfg names, else by its class), or, for timm's own models, the ``checkpoint_filter_fn`` of the module
    that registers the architecture (timm's convention, so they load their official files too)."""
    from timm.models import is_model, model_entrypoint

    spec = spec_for_model(model)
    if spec is not None:
        return spec.filter_fn
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch and is_model(arch):
        module = importlib.import_module(model_entrypoint(arch).__module__)
        return getattr(module, "checkpoint_filter_fn", None)
    return None


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    strict: bool = True,
    filter_fn: Callable[[StateDict, nn.Module], StateDict] | None | str = "auto",
    trust_pickle: bool = False,
    use_ema: bool = False,
    allow_nonfinite: bool = False,
    source: str | None = None,
) -> LoadReport:
    """Load a checkpoint (path or dict; official or locvit format) into ``model``: the state dict goes through the
    model family's ``checkpoint_filter_fn`` (``filter_fn='auto'``, :func:`find_filter_fn`; official key names ->
    ours, tables and embeddings resized to the model), then :func:`locvit.weights.load_weights` compares it key
    by key with the model (see there for the other arguments; ``filter_fn=None`` uses the keys as they are)."""
    if filter_fn == "auto":
        filter_fn = find_filter_fn(unwrap_model(model))
    return load_weights(model, checkpoint, strict=strict, filter_fn=filter_fn, trust_pickle=trust_pickle,
                        use_ema=use_ema, allow_nonfinite=allow_nonfinite, source=source)
