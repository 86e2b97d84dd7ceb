"""locvit: locality-aware vision transformers as faithful, tested timm models.

Importing the package registers every model into timm's registry, so ``timm.create_model(name)``
and :func:`locvit.create_model` build the same thing. The rest of the public API is imported on first use
(PEP 562), so ``import locvit`` costs what importing timm and the model zoo cost, and nothing more.

The ``locvit`` console script (``_locvit_cli``) parses its command line before torch, timm and the zoo are imported
(``locvit --help`` answers at once); it sets ``_LOCVIT_DEFER_IMPORTS`` for that import only, and calls
:func:`register_models` before a command runs.
"""
from __future__ import annotations

import importlib
import os
import sys

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "ALIASES": "locvit._registry",
    "create_model": "locvit._registry",
    "family_of": "locvit._registry",
    "list_models": "locvit._registry",
    "resolve_alias": "locvit._registry",
    "CheckpointError": "locvit.checkpoint",
    "LoadReport": "locvit.checkpoint",
    "load_checkpoint": "locvit.checkpoint",
    "read_checkpoint": "locvit.checkpoint",
    "save_checkpoint": "locvit.checkpoint",
    "LocalityError": "locvit.models.localize",
    "localize": "locvit.models.localize",
    "from_official": "locvit.official",
    "official_classes": "locvit.official",
    "official_model_args": "locvit.official",
    "Prediction": "locvit.predict",
    "Predictor": "locvit.predict",
    "tune_cpu_allocator": "locvit.runtime",
}

__all__ = ["__version__", "register_models", *sorted(_API)]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'locvit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


def register_models() -> None:
    """Register every locvit model with timm (what ``import locvit`` does; idempotent)."""
    importlib.import_module("locvit.models")
    # deprecated: the module's path before it joined models/ (0.1), kept for one release; ``locvit.localize`` itself
    # is the function
    sys.modules.setdefault("locvit.localize", importlib.import_module("locvit.models.localize"))


if not os.environ.get("_LOCVIT_DEFER_IMPORTS"):
    register_models()
