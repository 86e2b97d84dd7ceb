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

from locvit.runtime import lazy_api

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "ALIASES": "locvit.models",
    "create_model": "locvit.models",
    "family_of": "locvit.models",
    "list_models": "locvit.models",
    "load_checkpoint": "locvit.models",
    "resolve_alias": "locvit.models",
    "CheckpointError": "locvit.weights",
    "LoadReport": "locvit.weights",
    "read_checkpoint": "locvit.weights",
    "save_checkpoint": "locvit.weights",
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


__getattr__, __dir__ = lazy_api(__name__, _API)


# Deprecated module paths (0.1) -> their home now; importable for one release.
MOVED = {
    "locvit.checkpoint": "locvit.weights.checkpoint",
    "locvit.pretrained": "locvit.weights.pretrained",
    "locvit.tasks": "locvit.dense",
    "locvit.tasks.common": "locvit.dense.common",
    "locvit.tasks.config": "locvit.dense.config",
    "locvit.tasks.demo": "locvit.dense.demo",
    "locvit.tasks.detect": "locvit.dense.detect",
    "locvit.tasks.metrics": "locvit.dense.metrics",
    "locvit.tasks.segment": "locvit.dense.segment",
    "locvit.data.coco": "locvit.dense.coco",
    "locvit.data.segmentation": "locvit.dense.segmentation_data",
    "locvit.engine.rundir": "locvit.engine.run",
    "locvit.engine.demo": "locvit.demo",
}


class _MovedFinder:
    """Imports a :data:`MOVED` path as the module that replaced it (the same module object, with a warning)."""

    @staticmethod
    def find_spec(name: str, path=None, target=None):
        if name not in MOVED:
            return None
        import importlib.util
        import warnings

        warnings.warn(f"{name} moved to {MOVED[name]}; the old path goes in the next release", DeprecationWarning,
                      stacklevel=3)
        return importlib.util.spec_from_loader(name, _MovedFinder())

    @staticmethod
    def create_module(spec):
        return importlib.import_module(MOVED[spec.name])

    @staticmethod
    def exec_module(module) -> None:
        pass


def register_models() -> None:
    """Register every locvit model with timm (what ``import locvit`` does; idempotent)."""
    importlib.import_module("locvit.models")
    # ``locvit.localize`` is the function; its module's 0.1 path is put in place already imported, so importing it
    # never rebinds the package attribute to the module
    sys.modules.setdefault("locvit.localize", importlib.import_module("locvit.models.localize"))
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())


if not os.environ.get("_LOCVIT_DEFER_IMPORTS"):
    register_models()
