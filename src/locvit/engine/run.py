"""The run directory's rules, for both training loops: what a command finds in its ``--output`` before it starts
and what it replaces, what may be resumed, the state a run saves and restores, and the stop on a non-finite loss.

``locvit train`` (images and ``--task video``), ``locvit detect train`` and ``locvit segment train`` write the same
kind of run directory: ``config.yaml``, ``metrics.csv``, ``curves.png``, ``tensorboard/``, ``last.pth``,
``best.safetensors``, ``model.safetensors``, ``model_ema.safetensors``, ``unreadable.txt``. :func:`start_run` is the
one check both training loops (``engine/train.py``, ``engine/loop.py``) make before any data is read or model built:

* ``--resume`` continues the run that wrote the state file it names, when that run belongs to this command (a
  detection run is not continued by ``locvit train``; the error names the command that continues it) and has this
  command's settings (:func:`~locvit.engine.config.check_resume`);
* otherwise an ``--output`` that holds a run -- a run's ``config.yaml``, ``last.pth``, ``metrics.csv`` or weights --
  is refused, saying which run it holds and how far it got, unless ``--overwrite``; an empty folder, or one with
  unrelated files only, is used as it is.

``--overwrite`` never leaves a mix of two runs' files, and never loses the old run before the new one has its own:
when the new run is about to write its first file (:meth:`RunStart.begin`, after its data and model are ready), the
old run's files are moved, together, into ``OUTPUT/replaced_run/``; the new run deletes that folder when it ends
(:meth:`RunStart.finish`). A new run that is killed or fails (a non-finite loss...) before its end leaves
``replaced_run/`` in place, and a later ``--overwrite`` keeps it (it is still the last run no finished run
replaced) and discards the unfinished run's files.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from locvit.files import check_writable, remove_stale_temp_files
from locvit.weights import CheckpointError

__all__ = ["EVAL_COMMAND", "REPLACED", "RESUME_INVARIANTS", "RUN_FILES", "RUN_WEIGHTS", "NonFiniteLossError", "RunInfo",
           "RunStart", "check_finite", "check_resume", "check_scorer", "command_of", "find_resume", "is_run",
           "open_run", "prepare_output", "read_run", "read_state", "restore_state", "resume_differences",
           "run_config", "start_run"]

RUN_FILES = ("config.yaml", "last.pth", "metrics.csv", "curves.png", "tensorboard", "best.safetensors",
             "model.safetensors", "model_ema.safetensors", "unreadable.txt")
WEIGHTS = ("best.safetensors", "model.safetensors", "model_ema.safetensors")
REPLACED = "replaced_run"          # the run --overwrite replaced, until the new run ends
_STAGING = ".replaced_run.partial"  # filled file by file, then renamed to REPLACED: a kill never splits a run


def find_resume(resume: str, output: str | Path) -> Path:
    """The training-state file ``--resume`` names: ``'auto'`` = ``OUTPUT/last.pth``, a run directory's
    ``last.pth``, or a file. Raises ``FileNotFoundError`` when there is nothing to resume."""
    p = Path(output) / "last.pth" if resume == "auto" else Path(resume)
    if p.is_dir():
        p = p / "last.pth"
    if not p.is_file():
        where = p.parent
        found = "it holds no run" if not where.is_dir() or not any(where.iterdir()) else "it has no last.pth"
        raise FileNotFoundError(f"nothing to resume in {where}: {found}. Check the run directory (--output or "
                                f"--resume DIR), or start a new run without --resume")
    return p


def _load_state(path: Path) -> dict[str, Any] | None:
    """A ``last.pth`` memory-mapped (its tensors are not read), or None when it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a truncated or foreign file: the folder still holds a run, of unknown progress
        return None
    return state if isinstance(state, dict) else None


def command_of(config: Mapping[str, Any]) -> str:
    """The command that wrote a run with this configuration: the task configurations' own fields tell them apart
    (``detector``: :class:`~locvit.dense.config.DetectConfig`, ``head``: ``SegmentConfig``)."""
    if "detector" in config:
        return "locvit detect train"
    if "head" in config:
        return "locvit segment train"
    return "locvit train"


@dataclass
class RunInfo:
    """What a folder holds of a run: the command that wrote it (None when no configuration says), how far it got."""

    folder: Path
    command: str | None
    status: str                    # 'finished, 5 epochs' / 'partial: last.pth after epoch 3 of 5' / ...
    finished: bool
    resumable: bool = False        # an unfinished run with a readable last.pth
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The command as a user typed it (``locvit train --task video`` for a video run)."""
        if self.command is None:
            return "run"
        return self.command + (" --task video" if self.config.get("task") == "video" else "")

    def __str__(self) -> str:
        return f"a `{self.label}` run ({self.status})" if self.command else f"a run ({self.status})"


def _run_config_file(path: Path) -> dict[str, Any] | None:
    """A run's ``config.yaml`` (a mapping with the fields every run writes), or None for any other file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) and "model" in data and "output" in data else None


def _run_metrics_file(path: Path) -> bool:
    """Whether ``path`` is a run's ``metrics.csv`` (a row per epoch or evaluation, with the training loss)."""
    try:
        with open(path) as f:
            head = f.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return False
    return ("epoch" in head or "iter" in head) and "train_loss" in head


def _progress(command: str, state: dict[str, Any], config: Mapping[str, Any]) -> tuple[str, bool]:
    """``(status, finished)`` of a run from its ``last.pth``: epochs for ``locvit train``, iterations for the dense
    tasks (the loops save at the end of an epoch / evaluation and, mid-way, every ``--checkpoint-interval``)."""
    if command == "locvit train":
        total, epoch = config.get("epochs"), int(state.get("epoch", 0))
        if any(state.get("epoch_totals") or []):  # saved inside an epoch: its running totals travel along
            return f"partial: last.pth in epoch {epoch + 1} of {total}, step {state.get('step_in_epoch', 0)}", False
        done = epoch + 1
        if total is not None and done >= total:
            return f"finished, {done} epochs", True
        return f"partial: last.pth after epoch {done} of {total}", False
    step, rows = int(state.get("global_step", 0)), state.get("history") or []
    if config.get("iters"):
        if step >= config["iters"]:
            return f"finished, {step} iterations", True
        return f"partial: last.pth at iteration {step} of {config['iters']}", False
    epochs = config.get("epochs")
    if epochs and rows and rows[-1].get("iter") == step and rows[-1].get("epoch", 0) >= epochs - 1e-3:
        return f"finished, {epochs} epochs ({step} iterations)", True
    return f"partial: last.pth at iteration {step} of a {epochs}-epoch schedule", False


def read_run(folder: str | Path) -> RunInfo | None:
    """What run ``folder`` holds (its own files only, not ``replaced_run/``), or None when it holds none: no run's
    ``config.yaml``, ``last.pth``, ``metrics.csv`` or weights. Reads the configuration and ``last.pth``'s position,
    not its tensors."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    config = _run_config_file(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    last = folder / "last.pth"
    state = _load_state(last) if last.is_file() else None
    weights = [n for n in WEIGHTS if (folder / n).is_file()]
    metrics = (folder / "metrics.csv").is_file() and _run_metrics_file(folder / "metrics.csv")
    if config is None and not last.is_file() and not weights and not metrics:
        return None
    if config is None and state is not None:
        config = dict(state.get("config") or {})
    command = command_of(config) if config else None
    if state is not None and command is not None:
        status, finished = _progress(command, state, config)
    else:  # no readable last.pth: say what is there
        held = [n for n, ok in (("config.yaml", config), ("metrics.csv", metrics),
                                ("last.pth (unreadable)", last.is_file())) if ok] + weights
        status = f"partial: {', '.join(held)}" + ("" if last.is_file() else ", no last.pth")
        finished = False
    return RunInfo(folder, command, status, finished, state is not None and not finished, config or {})


def _check_command(path: Path, config: Mapping[str, Any], command: str) -> None:
    """Refuse to resume ``path`` with ``command`` when another command wrote it, naming the one that continues it."""
    theirs = command_of(config)
    if theirs != command:
        info = read_run(path.parent) or RunInfo(path.parent, theirs, f"state file {path.name}", False, True,
                                                dict(config))
        resume = f"continue it with `{theirs} --resume {path.parent}`, or " if info.resumable else ""
        raise ValueError(f"{path.parent} holds {info}, not a `{command}` run: {resume}start the `{command}` run "
                         "with another --output")


# a run's weights, in the order a command that scores or uses the run takes them
RUN_WEIGHTS = ("best.safetensors", "model.safetensors", "last.pth")


def open_run(folder: str | Path) -> tuple[dict[str, Any], Path]:
    """A run directory's settings (its ``config.yaml``) and its weights (``best.safetensors``, else
    ``model.safetensors``, else the training state ``last.pth``): what ``eval``, ``predict`` and the dense ``eval``
    commands read when ``--checkpoint`` names a run. Raises ``FileNotFoundError`` naming what is missing."""
    import yaml

    folder = Path(folder)
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a run directory (no config.yaml): pass a weights file, or the "
                                "folder a training command's --output wrote")
    found = [folder / n for n in RUN_WEIGHTS if (folder / n).is_file()]
    if not found:
        raise FileNotFoundError(f"{folder} holds no weights yet ({', '.join(RUN_WEIGHTS)}): the run has not "
                                "finished an epoch or an evaluation")
    return yaml.safe_load(config_file.read_text()) or {}, found[0]


def is_run(folder: str | Path) -> bool:
    """Whether ``folder`` is a run directory :func:`open_run` reads (a ``config.yaml`` and weights)."""
    folder = Path(folder)
    return (folder / "config.yaml").is_file() and any((folder / n).is_file() for n in RUN_WEIGHTS)


# the command that scores the runs each training command writes
EVAL_COMMAND = {"locvit train": "locvit eval", "locvit detect train": "locvit detect eval",
                "locvit segment train": "locvit segment eval"}


def check_scorer(folder: str | Path, command: str) -> None:
    """Refuse to score the run ``folder`` holds with the eval ``command`` (``'locvit eval'``, ``'locvit detect
    eval'``...) when another training command wrote it, naming the command that scores it; a folder that holds no
    run, or a run of this command, passes."""
    info = read_run(folder)
    if info is None or info.command is None or EVAL_COMMAND[info.command] == command:
        return
    raise ValueError(f"{Path(folder)} holds {info}, which `{command}` does not score: score it with "
                     f"`{EVAL_COMMAND[info.command]} --checkpoint {Path(folder)}`")


def run_config(resume: str, output: str | Path, command: str = "locvit train") -> tuple[Path, dict[str, Any]]:
    """The state file to resume and the configuration of the run that wrote it (its ``config.yaml``, else the
    configuration stored in the state); refused when ``command`` did not write that run."""
    p = find_resume(resume, output)
    saved = _run_config_file(p.parent / "config.yaml") if p.name == "last.pth" else None
    if saved is None:
        saved = dict((_load_state(p) or {}).get("config") or {})
    _check_command(p, saved, command)
    return p, saved


@dataclass
class RunStart:
    """What :func:`start_run` decided: the state file to resume (with the saved settings of its run, and its
    ``world_size``), and whether the run that ``output`` holds is to be replaced (``--overwrite``)."""

    output: Path
    resume_from: Path | None = None
    saved: dict[str, Any] | None = None
    replace: RunInfo | None = None

    def begin(self) -> None:
        """Called by the main process just before the run writes its first file: with ``--overwrite``, move the
        old run's files into ``replaced_run/`` (or, when an earlier ``--overwrite`` left one there, discard them:
        they belong to a run that stopped before its end)."""
        if self.replace is None:
            return
        kept, staging = self.output / REPLACED, self.output / _STAGING
        if not kept.exists():
            staging.mkdir(exist_ok=True)
        for name in RUN_FILES:
            p = self.output / name
            if not (p.exists() or p.is_symlink()):
                continue
            if kept.exists():
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            else:
                os.replace(p, staging / name)  # a rename within the folder: no copy, nothing half-written
        if not kept.exists():
            os.replace(staging, kept)
        print(f"--overwrite: {self.output} held {self.replace}; its files are in {kept} until this run ends",
              flush=True)

    def finish(self) -> None:
        """Called by the main process when the run has ended and written its weights: the replaced run goes."""
        for p in (self.output / REPLACED, self.output / _STAGING):
            if p.is_dir():
                shutil.rmtree(p)


def start_run(cfg: Any, world: int = 1) -> RunStart:
    """The check every training command makes before it reads data or builds a model (see the module docstring):
    ``cfg`` is a :class:`~locvit.engine.config.TrainConfig` or a dense task's configuration (its ``COMMAND`` names
    the command), ``world`` the number of processes. Raises ``ValueError`` / ``FileNotFoundError`` naming the
    folder, the run it holds and the flag that settles it."""
    command, out = cfg.COMMAND, Path(cfg.output)
    start = RunStart(out)
    if cfg.resume:
        start.resume_from = find_resume(cfg.resume, out)
        in_place = start.resume_from.parent.resolve() == out.resolve()
        if in_place and cfg.overwrite:
            raise ValueError(f"--resume continues the run in {out} and --overwrite starts it again: pass one of them")
        state = _load_state(start.resume_from)
        if state is None:
            raise ValueError(f"{start.resume_from} is not a training state that can be read (a truncated or foreign "
                             "file); resume another run, or start again with --overwrite")
        _check_command(start.resume_from, state.get("config") or {}, command)
        start.saved = check_resume(start.resume_from, state, cfg.to_dict(), world, cfg.allow_config_change)
        if in_place:
            return start
    found = read_run(out)
    if found is None:
        return start
    if not cfg.overwrite:
        if found.command is not None and found.command != command:
            raise ValueError(f"{out} holds {found}, not a `{command}` run; choose another --output, or pass "
                             f"--overwrite to replace it (its files are kept in {out / REPLACED} until the new run "
                             "ends)")
        hint = ("pass --resume to continue it or --overwrite to start again in it"
                if found.resumable and start.resume_from is None
                else "pass --overwrite to start again in it")
        raise ValueError(f"{out} already holds {found}; {hint}, or choose another --output")
    start.replace = found
    return start


# What must stay the same for a resumed run to continue the interrupted one (the order and content of its batches,
# the model whose state is restored).
RESUME_INVARIANTS = ("model", "model_kwargs", "data", "img_size", "num_classes", "batch_size", "grad_accum_steps",
                     "seed", "repeated_aug", "world_size", "task", "num_frames", "frame_sampling", "frame_stride")


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``'name: saved -> current'`` for each :data:`RESUME_INVARIANTS` entry that differs."""
    out = []
    for k in RESUME_INVARIANTS:
        a, b = saved.get(k), current.get(k)
        if k in saved and a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


def check_resume(path: str | Path, state: dict[str, Any], current: dict[str, Any], world: int,
                 allow: bool) -> dict[str, Any]:
    """Refuse to resume ``path`` (its loaded ``state``) with settings whose :func:`resume_differences` from the run
    that wrote it would make the resumed run another one, unless ``allow`` (``--allow-config-change``). Returns the
    run's saved settings (with its ``world_size``)."""
    saved = dict(state.get("config") or {}, world_size=state.get("world_size", 1))
    diffs = resume_differences(saved, dict(current, world_size=world))
    if diffs and not allow:
        raise ValueError(f"{path} belongs to a run with other settings ({'; '.join(diffs)}), so resuming "
                         "would not continue it: use the run's settings, another --output for a new run, or "
                         "--allow-config-change to resume anyway")
    return saved


# --- the run's state: output folder, last.pth, non-finite stop ----------------------------------------------------
class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept (the CLI prints this as one line)."""


def check_finite(loss: torch.Tensor, where: str, run_dir: Path, parts: str = "") -> None:
    """Raise :class:`NonFiniteLossError` when ``loss`` is NaN/inf, saying ``where`` (the step) and which
    checkpoint is the last good one in ``run_dir``."""
    if torch.isfinite(loss).all():
        return
    last = run_dir / "last.pth"
    kept = (f"the last good checkpoint is {last} (resume from it with --resume and a lower --lr)" if last.is_file()
            else "no checkpoint was written before it")
    raise NonFiniteLossError(f"non-finite loss ({loss.item()}{parts}) at {where}; training stopped, {kept}. Lower "
                             "--lr, set --clip-grad or check the data")


def prepare_output(run_dir: Path, need_bytes: int = 0) -> None:
    """On the main process, before a run writes: the folder is writable (with ``need_bytes`` free), and temp files
    of writes a kill interrupted are gone."""
    check_writable(run_dir, need_bytes)
    remove_stale_temp_files(run_dir)


def read_state(path: Path) -> dict[str, Any]:
    """A run's whole training state (``last.pth``: tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_state(state: dict[str, Any], path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any = None,
                  ema: Any = None, what: str = "the model") -> None:
    """Load a saved training state's model, optimiser, scheduler, grad scaler and EMA; a state that does not fit
    the model as configured now is a :class:`~locvit.weights.CheckpointError` naming the file."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} does not fit {what} as configured now ({str(e).splitlines()[0][:200]}); "
                              "resume with the run's model settings") from None
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
