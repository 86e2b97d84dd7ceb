"""locvit: locality-aware vision transformers as faithful, tested timm models.

Importing the package registers every model into timm's registry, so ``timm.create_model(name)``
and :func:`locvit.create_model` build the same thing.
"""
from locvit import models as _models  # noqa: F401  (registers the model zoo)
from locvit._registry import ALIASES, create_model, family_of, list_models, resolve_alias
from locvit.checkpoint import CheckpointError, LoadReport, load_checkpoint, read_checkpoint, save_checkpoint
from locvit.localize import localize
from locvit.official import from_official, official_classes, official_model_args
from locvit.predict import Prediction, Predictor
from locvit.runtime import tune_cpu_allocator

__version__ = "0.1.0"

__all__ = [
    "ALIASES",
    "CheckpointError",
    "LoadReport",
    "Prediction",
    "Predictor",
    "__version__",
    "create_model",
    "family_of",
    "from_official",
    "list_models",
    "load_checkpoint",
    "localize",
    "official_classes",
    "official_model_args",
    "read_checkpoint",
    "resolve_alias",
    "save_checkpoint",
    "tune_cpu_allocator",
]
