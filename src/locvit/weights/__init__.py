"""Weights: reading, unwrapping, strict loading and saving checkpoints (:mod:`.checkpoint`), and the published
weights' sources, download and cache (:mod:`.pretrained`), with one :class:`LoadReport` for every load.

This package knows no model family: a family's ``checkpoint_filter_fn`` is passed in by the caller
(:func:`locvit.load_checkpoint` in :mod:`locvit.models.factory` finds it in the model registry).
"""
from locvit.weights.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    LoadReport,
    NonFiniteWeightsError,
    StateDict,
    UntrustedPickleError,
    head_classes,
    load_converted,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    unwrap_model,
    unwrap_state_dict,
)

__all__ = ["CheckpointError", "CorruptCheckpointError", "LoadReport", "NonFiniteWeightsError", "StateDict",
           "UntrustedPickleError", "head_classes", "load_converted", "load_weights", "read_checkpoint",
           "save_checkpoint", "unwrap_model", "unwrap_state_dict"]
