"""What ``locvit detect`` and ``locvit segment`` share beyond the training loop: backbone arguments, optimiser
groups, evaluation loaders, trained-weight loading, the ``eval`` command's configuration, and which command a run
directory belongs to (also for ``locvit train`` / ``locvit eval``)."""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from locvit.data.loader import build_loader
from locvit.engine.distributed import DistInfo, cleanup, init_distributed
from locvit.tasks.config import DenseConfig, DetectConfig, SegmentConfig, build_task_config

C = TypeVar("C", bound=DenseConfig)


@contextlib.contextmanager
def session(cfg: DenseConfig) -> Iterator[DistInfo]:
    """torchrun's process group (when there is one) and the device, determinism and initial seed of ``cfg``."""
    from locvit.engine.step import seed_step

    dist = init_distributed(cfg.device)
    try:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_step(cfg.seed, 0, dist.rank)
        yield dist
    finally:
        cleanup()


def report_size(model: nn.Module, what: str, dist: DistInfo) -> None:
    if dist.main:
        print(f"{what}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)


def backbone_kwargs(cfg: DenseConfig, build: Callable[..., Any]) -> dict[str, Any]:
    """``checkpoint`` / ``pretrained`` / ``trust_pickle`` / ``model_kwargs`` (with the recipe's drop path) for a
    ``locvit.dense`` builder; ``pretrained`` only where the builder offers it."""
    out: dict[str, Any] = dict(model_kwargs=dict(dict(drop_path_rate=cfg.drop_path), **cfg.model_kwargs),
                               trust_pickle=cfg.trust_checkpoint)
    if cfg.checkpoint:
        out["checkpoint"] = cfg.checkpoint
    if cfg.pretrained:
        if "pretrained" not in inspect.signature(build).parameters:
            raise ValueError(f"this locvit has no released dense-task weights for {cfg.model} yet: pass the "
                             "classification weights with --checkpoint FILE")
        out["pretrained"] = True
    return out


def no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters the locvit backbone inside ``model`` excludes from weight decay (position
    tables, relative-position biases...)."""
    out: set[str] = set()
    for prefix, module in model.named_modules():
        names = getattr(module, "no_weight_decay", None)
        if prefix and callable(names):
            out |= {f"{prefix}.{n}" for n in names()}
    return out


def train_loader(dataset: Any, cfg: DenseConfig, dist: DistInfo, collate: Callable) -> DataLoader:
    """The resumable, sharded training loader (:func:`locvit.data.loader.build_loader`) with the task's collate."""
    return build_loader(dataset, cfg.batch_size, True, cfg.workers, cfg.seed, dist.rank, dist.world,
                        collate_fn=collate)


def eval_loader(dataset: Any, batch_size: int, workers: int, dist: DistInfo, collate: Callable) -> DataLoader:
    """Every sample once: rank ``r`` takes samples ``r, r + world, ...`` (no padding, so nothing is scored twice)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=list(range(dist.rank, len(dataset), dist.world)),
                      num_workers=workers, collate_fn=collate)


def load_weights(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> None:
    """Trained task weights (a run's ``best.safetensors`` / ``model.safetensors`` / ``last.pth``), strictly."""
    from locvit.checkpoint import load_checkpoint

    load_checkpoint(model, path, strict=True, filter_fn=None, trust_pickle=trust_pickle)


def eval_config(cls: type[C], config: str | None, overrides: dict[str, Any]) -> tuple[C, Path | None]:
    """The configuration of an ``eval`` command and the weights to score.

    ``--checkpoint`` may name a run directory: its ``config.yaml`` is the base (flags still win) and its
    ``best.safetensors`` (else ``model.safetensors``) the weights.
    """
    ckpt = overrides.get("checkpoint")
    weights = Path(ckpt) if ckpt else None
    base: dict[str, Any] = {}
    command = "detect" if issubclass(cls, DetectConfig) else "segment"
    if weights is not None and weights.is_file():  # a run's weights file: refuse another command's run
        check_run_command(weights.parent, command, "eval")
    if weights is not None and weights.is_dir():
        saved = weights / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"{weights} is not a run directory (no config.yaml)")
        base = yaml.safe_load(saved.read_text()) or {}
        check_run_command(weights, command, "eval", base)
        found = [weights / n for n in ("best.safetensors", "model.safetensors", "last.pth") if (weights / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{weights} holds no weights (best.safetensors, model.safetensors, last.pth)")
        weights = found[0]
    elif weights is not None and not weights.is_file():
        raise FileNotFoundError(f"checkpoint {weights} does not exist")
    if config:
        from locvit.tasks.config import load_recipe

        base.update(load_recipe(config, {f: None for f in cls.__dataclass_fields__}))
    merged = {**base, **{k: v for k, v in overrides.items() if v is not None}}
    # the trained weights replace the backbone's initial ones; the schedule does not matter for scoring
    merged.update(checkpoint=None, pretrained=False, resume=None)
    if merged.get("epochs") is None and merged.get("iters") is None:
        merged["iters"] = 1
    return build_task_config(cls, None, merged), weights


# a field only each command's config.yaml has, shown in the message that names the run's command
_MARKS = {"detect": "detector", "segment": "head", "train": "task"}


def run_command(saved: dict[str, Any]) -> str | None:
    """The command that wrote the run configuration ``saved`` (a run's ``config.yaml``): ``'detect'``, ``'segment'``
    or ``'train'`` (classification, ``locvit train``); ``None`` unless its fields are those of exactly one."""
    from locvit.engine.config import FIELDS

    keys = set(saved)
    found = [name for name, fields in (("detect", DetectConfig.__dataclass_fields__),
                                       ("segment", SegmentConfig.__dataclass_fields__), ("train", FIELDS))
             if keys <= set(fields)]
    return found[0] if len(found) == 1 else None


def check_run_command(run_dir: str | Path, command: str, action: str, saved: dict[str, Any] | None = None) -> None:
    """Refuse a run directory written by a command other than ``locvit <command>`` (``'detect'``, ``'segment'`` or
    ``'train'`` for classification), naming the run's command and the one to use instead. ``action``: ``'eval'``
    (score the run) or ``'resume'`` (continue it). ``saved``: the run's configuration (default: read from
    ``run_dir/config.yaml``; a directory without one is left to the caller's own checks)."""
    run_dir = Path(run_dir)
    if saved is None:
        path = run_dir / "config.yaml"
        if not path.is_file():
            return
        saved = yaml.safe_load(path.read_text()) or {}
    if not isinstance(saved, dict):
        return
    kind = run_command(saved)
    if kind is None or kind == command:
        return
    mark = _MARKS[kind]
    if action == "resume":
        use = f"locvit {'train' if kind == 'train' else f'{kind} train'} --resume {run_dir}"
    elif kind != "train":
        use = f"locvit {kind} eval --checkpoint {run_dir}"
    else:  # classification is scored by `locvit eval`, from the run's settings
        weights = next((run_dir / n for n in ("best.safetensors", "model.safetensors") if (run_dir / n).is_file()),
                       run_dir / "best.safetensors")
        use = f"locvit eval --model {saved.get('model')} --checkpoint {weights} --data {saved.get('data') or 'DATA'}"
        if saved.get("img_size"):
            use += f" --img-size {saved['img_size']}"
        if saved.get("model_kwargs"):
            use += " --model-kwargs " + " ".join(f"{k}={_cli_value(v)}" for k, v in saved["model_kwargs"].items())
        if saved.get("task") == "video":
            use += (f" --task video --num-frames {saved.get('num_frames')} --frame-sampling "
                    f"{saved.get('frame_sampling')} --frame-stride {saved.get('frame_stride')}")
    if command == "train":
        this = "train" if action == "resume" else "eval"
    else:
        this = f"{command} {'train' if action == 'resume' else 'eval'}"
    raise ValueError(f"{run_dir} is a `locvit {kind}` run (its config.yaml has {mark}: {saved.get(mark)}), not one "
                     f"`locvit {this}` can {'continue' if action == 'resume' else 'score'}: use `{use}`")


def _cli_value(v: Any) -> str:
    """``v`` as one word that the CLI's ``KEY=VALUE`` items read back (JSON is YAML; no spaces)."""
    import json

    return json.dumps(v, separators=(",", ":"))
