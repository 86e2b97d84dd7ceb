"""Reading, converting and strictly loading checkpoints (the authors' files and ours).

* ``.safetensors`` is locvit's own format (plain tensors, nothing executable).
* ``.pth``/``.pt``/``.bin`` are read with ``torch.load(weights_only=True)``. The authors' training scripts
  pickle their ``argparse.Namespace`` next to the weights; that class is allow-listed because rebuilding it
  runs no code. Anything else that is pickled (e.g. Focal's yacs config) is refused with an error naming the
  object, unless the caller passes ``trust_pickle=True`` (CLI: ``--trust-checkpoint``), which falls back to
  full unpickling -- only for files from a source you trust.
* Every family declares a ``checkpoint_filter_fn(state_dict, model)`` in its ``ModelSpec`` that maps official
  keys to ours (and resizes tables/embeddings to the target model). :func:`load_checkpoint` finds it through the
  model registry (:func:`find_filter_fn`); timm's own models use the filter of the timm module that registers
  them, so they load their official files too.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from locvit._io import sha256_file

StateDict = dict[str, torch.Tensor]
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_EMA_KEYS = ("model_ema", "state_dict_ema", "ema")


class CheckpointError(ValueError):
    """A checkpoint could not be read or does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a complete checkpoint (truncated, corrupt, a web page, or not a checkpoint at all)."""


class UntrustedPickleError(CheckpointError):
    """The file pickles Python objects besides its tensors and ``trust_pickle`` was not given."""


class NonFiniteWeightsError(CheckpointError):
    """The weights hold NaN/inf. ``summary`` says which tensors of which source, without advice (callers that load
    differently give their own)."""

    def __init__(self, message: str, summary: str = ""):
        super().__init__(message)
        self.summary = summary or message


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did: keys loaded, model keys left as initialised, checkpoint keys dropped."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    source: str = "<state dict>"
    sha256: str | None = None  # of the file the weights came from

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        if self.sha256:
            lines.append(f"  file sha256 {self.sha256}")
        if self.mismatched:
            lines.append(f"  skipped {len(self.mismatched)} with another shape (left as initialised): "
                         + _fmt([f"{k} {tuple(a)}->{tuple(b)}" for k, a, b in self.mismatched]))
        if self.missing:
            lines.append(f"  newly initialised ({len(self.missing)}): " + _fmt(self.missing))
        if self.unexpected:
            lines.append(f"  dropped from the checkpoint ({len(self.unexpected)}): " + _fmt(self.unexpected))
        return "\n".join(lines)


def _fmt(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def read_checkpoint(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    use_ema: bool = False,
    map_location: str | torch.device = "cpu",
) -> StateDict:
    """Read a checkpoint file and return its state dict (unwrapped from ``{'model': ...}`` and friends).

    Args:
        path: ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file.
        trust_pickle: allow full unpickling when the file pickles more than tensors and ``argparse.Namespace``.
        use_ema: prefer the EMA weights when the file holds them.
        map_location: device for the tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except SafetensorError as e:
            raise CorruptCheckpointError(f"{path} is not a readable safetensors file ({e}); download or export it "
                                         "again") from e
    if not zipfile.is_zipfile(path) and path.stat().st_size < 64:
        raise CorruptCheckpointError(f"{path} is too small to be a checkpoint ({path.stat().st_size} bytes)")
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if head[:1] == b"<":
        raise CorruptCheckpointError(f"{path} is a web page (HTML), not a checkpoint: the download returned a page "
                                     "instead of the file; download the file itself (a direct link) and pass that")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = _unsupported_global(str(e))
        if culprit is None:  # not a refused class: the bytes themselves are not a valid pickle
            raise _corrupt(path, e) from None
        if not trust_pickle:
            raise UntrustedPickleError(
                f"{path} pickles {culprit} besides its tensors, so it is not loaded by default "
                "(unpickling can run code). If you trust the file's source, pass trust_pickle=True "
                "(CLI: --trust-checkpoint)."
            ) from None
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - zip, EOF, key and decode errors all mean a damaged file
        raise _corrupt(path, e) from e
    return unwrap_state_dict(obj, use_ema=use_ema, source=str(path))


def _corrupt(path: Path, e: BaseException) -> CorruptCheckpointError:
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return CorruptCheckpointError(f"{path} is not a valid PyTorch checkpoint: the file is truncated, corrupt or of "
                                  f"another kind ({type(e).__name__}: {detail}); download or copy it again")


def _unsupported_global(msg: str) -> str | None:
    """The class a weights-only load refused (``Unsupported global: GLOBAL mod.Cls``), ``None`` for other errors."""
    if "Unsupported global" not in msg:
        return None
    return msg.split("GLOBAL ", 1)[1].split()[0].rstrip(".,") if "GLOBAL " in msg else "Python objects"


def unwrap_state_dict(obj: Any, use_ema: bool = False, source: str = "<object>") -> StateDict:
    """Strip the wrappers the authors' and timm's training scripts put around a state dict."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")
    if use_ema:
        for k in _EMA_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    for k in _WRAPPER_KEYS:
        if k in obj and isinstance(obj[k], Mapping):
            obj = obj[k]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source} contains no tensors (keys: {_fmt(list(obj))})")
    if all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def head_classes(state: Mapping[str, torch.Tensor] | None) -> int | None:
    """Classes of a checkpoint's classifier (a 2-D ``head``/``fc``/``classifier`` weight), when it has one."""
    if not state:
        return None
    for key in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight"):
        if key in state and state[key].ndim == 2:
            return int(state[key].shape[0])
    return None


def find_filter_fn(model: nn.Module) -> Callable[[StateDict, nn.Module], StateDict] | None:
    """The checkpoint filter of ``model``: its :class:`~locvit.models._registry.ModelSpec`'s (found by the
    architecture its pretrained cfg names, else by its class), or, for timm's own models, the
    ``checkpoint_filter_fn`` of the module that registers the architecture (timm's convention)."""
    from timm.models import is_model, model_entrypoint

    from locvit.models import spec_for_model

    spec = spec_for_model(model)
    if spec is not None:
        return spec.filter_fn
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch and is_model(arch):
        module = importlib.import_module(model_entrypoint(arch).__module__)
        return getattr(module, "checkpoint_filter_fn", None)
    return None


def _unwrap_model(model: nn.Module) -> nn.Module:
    # timm's feature wrappers (features_only=True) keep the network in `.model`
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(model, "feature_info") else model


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    strict: bool = True,
    filter_fn: Callable | None | str = "auto",
    trust_pickle: bool = False,
    use_ema: bool = False,
    allow_nonfinite: bool = False,
    source: str | None = None,
) -> LoadReport:
    """Load a checkpoint (path or dict; official or locvit format) into ``model``.

    The state dict goes through the model family's ``checkpoint_filter_fn`` (official key names -> ours,
    tables and embeddings resized to the model), then is compared key by key with the model.

    Args:
        model: the target model (a ``features_only`` wrapper is unwrapped).
        checkpoint: file path, or a (possibly wrapped) state dict.
        strict: raise :class:`CheckpointError` naming every missing, unexpected and mis-shaped key. With
            ``strict=False`` what fits is loaded and the rest is reported (fine-tuning, backbones).
        filter_fn: ``'auto'`` (the family's filter), ``None`` (keys used as they are) or a callable.
        trust_pickle: see :func:`read_checkpoint`.
        use_ema: prefer EMA weights when present.
        allow_nonfinite: load tensors holding NaN/inf (refused by default: such a model outputs NaN).
        source: how to name a state-dict argument in messages (e.g. the file it was read from).

    Returns:
        A :class:`LoadReport`.
    """
    target = _unwrap_model(model)
    sha256 = None
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        sd = read_checkpoint(checkpoint, trust_pickle=trust_pickle, use_ema=use_ema)
        sha256 = sha256_file(checkpoint)
    else:
        source = source or "<state dict>"
        sd = unwrap_state_dict(checkpoint, use_ema=use_ema)
    if filter_fn == "auto":
        filter_fn = find_filter_fn(target)
    if filter_fn is not None:
        sd = filter_fn(dict(sd), target)

    if not allow_nonfinite:
        bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            summary = f"{source} holds NaN/inf values in {len(bad)} tensors ({_fmt(bad, 5)})"
            raise NonFiniteWeightsError(
                f"{summary}: it comes from a diverged run or is damaged, and the model would output NaN. Use an "
                "earlier checkpoint; to inspect this one anyway, load it in Python with allow_nonfinite=True "
                "(locvit.create_model(..., checkpoint=..., allow_nonfinite=True) or locvit.load_checkpoint)", summary)
    own = target.state_dict()
    report = LoadReport(source=source, sha256=sha256)
    report.missing = [k for k in own if k not in sd]
    report.unexpected = [k for k in sd if k not in own]
    report.mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
                         if k in sd and sd[k].shape != own[k].shape]
    if strict and not report.exact:
        problems = []
        if report.missing:
            problems.append(f"missing keys ({len(report.missing)}): {_fmt(report.missing)}")
        if report.unexpected:
            problems.append(f"unexpected keys ({len(report.unexpected)}): {_fmt(report.unexpected)}")
        if report.mismatched:
            problems.append(f"shape mismatches ({len(report.mismatched)}): "
                            + _fmt([f"{k}: checkpoint {a} vs model {b}" for k, a, b in report.mismatched]))
        raise CheckpointError(
            f"{source} does not fit {type(target).__name__}:\n  " + "\n  ".join(problems)
            + "\n(Is it another model's checkpoint? Pass strict=False to load what fits, e.g. to fine-tune "
            "with a new head.)"
        )
    bad = {k for k, _, _ in report.mismatched}
    usable = {k: v for k, v in sd.items() if k in own and k not in bad}
    target.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report


def save_checkpoint(obj: Mapping[str, Any] | nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, rename over ``path``).

    A model or a flat tensor dict with a ``.safetensors`` suffix is written as safetensors; anything else
    (e.g. a training state with optimizer and scheduler) with ``torch.save``. A kill at any moment leaves
    either the previous file or the complete new one, never a half-written file.
    """
    from locvit._io import atomic_write

    path = Path(path)
    sd = obj.state_dict() if isinstance(obj, nn.Module) else obj

    def write(f) -> None:
        if path.suffix == ".safetensors":
            from safetensors.torch import save

            # safetensors refuses shared storage; contiguous clones keep the file self-contained
            tensors = {k: v.detach().contiguous().clone() for k, v in sd.items()}
            f.write(save(tensors, metadata={k: str(v) for k, v in (metadata or {}).items()}))
        else:
            torch.save(sd, f)

    return atomic_write(path, write)
