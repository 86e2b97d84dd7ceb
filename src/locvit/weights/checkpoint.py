"""Reading, converting and strictly loading checkpoints (the authors' files and ours).

* ``.safetensors`` is locvit's own format (plain tensors, nothing executable).
* ``.pth``/``.pt``/``.bin`` are read with ``torch.load(weights_only=True)``. The authors' training scripts
  pickle their ``argparse.Namespace`` next to the weights; that class is allow-listed because rebuilding it
  runs no code. Anything else that is pickled (e.g. Focal's yacs config) is refused with an error naming the
  object, unless the caller passes ``trust_pickle=True`` (CLI: ``--trust-checkpoint``), which falls back to
  full unpickling -- only for files from a source you trust.
* :func:`load_weights` compares a state dict key by key with a model (strictly unless told otherwise), after an
  optional ``filter_fn``; :func:`load_converted` loads another model's checkpoint and reports key by key what was
  taken, converted, left and dropped. Every family's ``checkpoint_filter_fn`` (official keys -> ours, tables
  resized) lives with its model; :func:`locvit.load_checkpoint` (:mod:`locvit.models.factory`) finds it and calls
  :func:`load_weights`. Nothing in this package knows a model family.
"""
from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from locvit.files import atomic_write, sha256_file

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
    """What loading a checkpoint did, key by key (keys are the target model's state-dict names).

    Attributes:
        loaded: tensors taken from the checkpoint (:func:`load_converted`: as they are, possibly renamed).
        converted: tensors the family's ``checkpoint_filter_fn`` computed for this model (tables, kernels and
            embeddings resized for another window or input size; merged projections). Filled by
            :func:`load_converted`; :func:`load_weights` counts them as ``loaded``.
        missing: parameters left as initialised (not in the checkpoint, zero-filled by the filter for a part the
            checkpoint's geometry lacks, or skipped for another shape); also called ``new``.
        rebuilt: buffers (index tables) the model computes for its own geometry instead of taking the checkpoint's.
        unexpected: checkpoint tensors the model has no use for (classifier, final norm...); also ``dropped``.
        mismatched: ``(key, checkpoint shape, model shape)`` of tensors skipped for their shape.
        adapter_new: modules an adapter adds on top of the model (an FPN...), always newly initialised.
        source: the file (or ``<state dict>``); sha256: the file's hash; model: the architecture's name.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    source: str = "<state dict>"
    sha256: str | None = None  # of the file the weights came from
    converted: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    adapter_new: list[str] = field(default_factory=list)
    model: str | None = None

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.rebuilt)

    @property
    def new(self) -> list[str]:
        return self.missing

    @property
    def dropped(self) -> list[str]:
        return self.unexpected

    def __str__(self) -> str:
        n = len(self.loaded) + len(self.converted)
        lines = [f"{self.model + ': ' if self.model else ''}loaded {n} tensors from {self.source}"]
        if self.sha256:
            lines.append(f"  file sha256 {self.sha256}")
        if self.converted:
            lines.append(f"  of which resized/converted by the family's checkpoint filter ({len(self.converted)}): "
                         + _fmt(self.converted))
        if self.mismatched:
            lines.append(f"  skipped {len(self.mismatched)} with another shape (left as initialised): "
                         + _fmt([f"{k} {tuple(a)}->{tuple(b)}" for k, a, b in self.mismatched]))
        if self.missing:
            lines.append(f"  newly initialised ({len(self.missing)}): " + _fmt(self.missing))
        if self.rebuilt:
            lines.append(f"  buffers rebuilt for this model ({len(self.rebuilt)}): " + _fmt(self.rebuilt))
        if self.unexpected:
            lines.append(f"  dropped from the checkpoint ({len(self.unexpected)}): " + _fmt(self.unexpected))
        if self.adapter_new:
            lines.append(f"  adapter modules, newly initialised: {', '.join(self.adapter_new)}")
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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside timm's feature wrapper (``features_only=True`` keeps it in ``.model``), else ``model``."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(model, "feature_info") else model


def load_weights(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    strict: bool = True,
    filter_fn: Callable[[StateDict, nn.Module], StateDict] | None = None,
    trust_pickle: bool = False,
    use_ema: bool = False,
    allow_nonfinite: bool = False,
    source: str | None = None,
) -> LoadReport:
    """Load a checkpoint (path or dict; official or locvit format) into ``model``.

    The state dict goes through ``filter_fn`` when one is given (a family's ``checkpoint_filter_fn``: official key
    names -> ours, tables and embeddings resized to the model), then is compared key by key with the model.
    :func:`locvit.load_checkpoint` is this function with the model family's filter found for you.

    Args:
        model: the target model (a ``features_only`` wrapper is unwrapped).
        checkpoint: file path, or a (possibly wrapped) state dict.
        strict: raise :class:`CheckpointError` naming every missing, unexpected and mis-shaped key. With
            ``strict=False`` what fits is loaded and the rest is reported (fine-tuning, backbones).
        filter_fn: ``None`` (keys used as they are) or ``filter_fn(state_dict, model) -> state_dict``.
        trust_pickle: see :func:`read_checkpoint`.
        use_ema: prefer EMA weights when present.
        allow_nonfinite: load tensors holding NaN/inf (refused by default: such a model outputs NaN).
        source: how to name a state-dict argument in messages (e.g. the file it was read from).

    Returns:
        A :class:`LoadReport`.
    """
    target = unwrap_model(model)
    sha256 = None
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(checkpoint)
        sd = read_checkpoint(checkpoint, trust_pickle=trust_pickle, use_ema=use_ema)
        sha256 = sha256_file(checkpoint)
    else:
        source = source or "<state dict>"
        sd = unwrap_state_dict(checkpoint, use_ema=use_ema)
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


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr() if t.numel() else 0


def load_converted(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    filter_fn: Callable[[StateDict, nn.Module], StateDict] | None,
    *,
    trust_pickle: bool = False,
    use_ema: bool = False,
) -> LoadReport:
    """Load another model's checkpoint (a classification checkpoint into a backbone) non-strictly through
    ``filter_fn``, and say for every key whether it was taken as it is (``loaded``), computed by the filter
    (``converted``), left as initialised (``missing``; ``rebuilt`` for buffers) or dropped (``unexpected``).

    A tensor counts as taken when the filter returned the checkpoint's own storage, as left when it returned the
    model's own tensor or an all-zero one (a part the checkpoint's geometry lacks), as converted otherwise."""
    target = unwrap_model(model)
    if isinstance(checkpoint, (str, os.PathLike)):
        source, raw = str(checkpoint), read_checkpoint(checkpoint, trust_pickle=trust_pickle, use_ema=use_ema)
    else:
        source, raw = "<state dict>", unwrap_state_dict(checkpoint, use_ema=use_ema)
    own_storage = {k: _storage(v) for k, v in target.state_dict().items()}
    sd = filter_fn(dict(raw), target) if filter_fn is not None else dict(raw)
    raw_storage = {_storage(v) for v in raw.values()} - {0}
    report = load_weights(target, sd, strict=False, source=source)
    if isinstance(checkpoint, (str, os.PathLike)):
        report.sha256 = sha256_file(checkpoint)
    report.model = (getattr(target, "pretrained_cfg", None) or {}).get("architecture") or type(target).__name__
    new, taken = list(report.missing) + [k for k, _, _ in report.mismatched], []
    for k in report.loaded:
        t, ptr = sd[k], _storage(sd[k])
        if ptr and ptr == own_storage.get(k):  # the filter handed back the model's own tensor
            new.append(k)
        elif ptr in raw_storage:
            taken.append(k)
        elif t.is_floating_point() and t.numel() and not bool(t.any()):
            new.append(k)  # zero-filled for a part the checkpoint's geometry lacks
        else:
            report.converted.append(k)
    params = {n for n, _ in target.named_parameters()}
    report.loaded = taken
    report.missing = [k for k in new if k in params]
    report.rebuilt = [k for k in new if k not in params]
    return report


def save_checkpoint(obj: Mapping[str, Any] | nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, rename over ``path``).

    A model or a flat tensor dict with a ``.safetensors`` suffix is written as safetensors; anything else
    (e.g. a training state with optimizer and scheduler) with ``torch.save``. A kill at any moment leaves
    either the previous file or the complete new one, never a half-written file.
    """
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
