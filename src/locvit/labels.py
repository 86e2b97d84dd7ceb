"""Class names that travel with the weights.

A classifier's outputs are only indices; the names of the classes they stand for are kept next to the weights, in the
places timm and the hub look for them:

* ``locvit train`` writes the names of its data (folder names, CIFAR's names, the digits '0'..'9') into the
  metadata of the run's safetensors files (key ``label_names``, a JSON list) and into ``last.pth``;
* ``locvit convert`` carries them into ``config.json`` as ``label_names``, the field of timm's hub configs, from where
  ``timm.create_model('local-dir:DIR' / 'hf-hub:ORG/NAME')`` puts them into ``model.pretrained_cfg``;
* weights with a 1000-class ImageNet head get ImageNet's names from timm's own label info
  (:class:`timm.data.ImageNetInfo`: the WordNet synset and its lemmas), not from a copied list.

A model whose names are unknown is described by index (``'class 17'``), never by a guessed name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["LABEL_KEY", "check_label_names", "class_name", "imagenet_label_names", "label_metadata",
           "label_names_of", "read_label_names"]

LABEL_KEY = "label_names"


def label_metadata(names: Sequence[str] | None) -> dict[str, str]:
    """The safetensors metadata entry that records ``names`` (empty when there are none)."""
    return {LABEL_KEY: json.dumps([str(n) for n in names])} if names else {}


def _as_list(names: Any, source: str) -> list[str]:
    """``names`` as a list indexed by class: a list/tuple, or a ``{index: name}`` dict without gaps (timm allows
    both in ``config.json``)."""
    if isinstance(names, Mapping):
        idx = sorted(int(k) for k in names)
        if idx != list(range(len(idx))):
            raise ValueError(f"the label names of {source} skip class indices ({idx[:5]}...): expected 0..N-1")
        return [str(names[k] if k in names else names[str(k)]) for k in range(len(idx))]
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    raise ValueError(f"the label names of {source} are a {type(names).__name__}, expected a list of strings")


def read_label_names(path: str | os.PathLike) -> list[str] | None:
    """The class names recorded in a weights file: a ``.safetensors`` file's metadata, or a ``.pth`` training state's
    ``label_names`` entry; ``None`` when it records none (the authors' files, older runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(LABEL_KEY)
        if not raw:
            return None
        try:
            return _as_list(json.loads(raw), str(path))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: its '{LABEL_KEY}' metadata is not a JSON list ({e})") from None
    if path.suffix == ".pth":
        import argparse
        import pickle

        import torch

        try:  # the authors' files may pickle more, or be broken: loading the weights says so, names are none here
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError):
            return None
        names = state.get(LABEL_KEY) if isinstance(state, dict) else None
        return _as_list(names, str(path)) if names else None
    return None


def imagenet_label_names(num_classes: int) -> tuple[list[str], list[str]] | None:
    """``(synsets, descriptions)`` of the ImageNet subset with ``num_classes`` classes (1000: ImageNet-1k), from
    timm's label info; ``None`` for other class counts."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return list(info.label_names()), list(info.label_descriptions())


def label_names_of(model: Any, num_classes: int, *, imagenet: bool) -> list[str] | None:
    """The class names a model carries: its pretrained cfg's ``label_names`` (a ``local-dir:`` / ``hf-hub:`` folder
    written by ``locvit convert``, or timm's hub models) -- ImageNet synsets turned into their lemmas -- else, when
    ``imagenet`` (the weights are the authors' ImageNet weights), ImageNet's names for an ImageNet-sized head."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get(LABEL_KEY)
    if names:
        names = _as_list(names, cfg.get("architecture", "the model"))
        if len(names) == num_classes:
            info = imagenet_label_names(num_classes)
            if info is not None and names == info[0]:  # synsets: show the words
                return info[1]
            return names
    if imagenet:
        info = imagenet_label_names(num_classes)
        if info is not None:
            return info[1]
    return None


def check_label_names(names: Sequence[str], num_classes: int, source: str) -> list[str]:
    """``names`` when there is one per class of the head; ``ValueError`` naming both counts otherwise."""
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise ValueError(f"{source} gives {len(names)} class names but the model's head has {num_classes} classes: "
                         "pass the names of the data these weights were trained on (one per class, in index order)")
    return names


def class_name(names: Sequence[str] | None, index: int) -> str:
    """The name of class ``index``, or ``'class <index>'`` when the names are unknown."""
    return names[index] if names else f"class {index}"
