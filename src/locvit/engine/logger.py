"""What a run leaves in its directory besides checkpoints: a CSV row per evaluation, a PNG of the training curves,
and, as ``--log`` says, TensorBoard event files (``tensorboard/``: the rows' metrics and, every ``log_interval``
optimiser steps, the running training loss, learning rate and throughput) and a Weights & Biases run."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from locvit.files import atomic_write, atomic_write_text


def log_targets(cfg: Any) -> dict[str, Any]:
    """Where a run configured by ``cfg`` (``log`` and ``tensorboard`` fields) logs besides ``metrics.csv``:
    ``{'tensorboard': True | False | 'auto', 'wandb': bool}``. Without ``--log``, TensorBoard when it is installed
    (``--no-tensorboard``: not at all); an explicit ``--log tensorboard`` or ``--log wandb`` needs its package."""
    log = list(getattr(cfg, "log", None) or [])
    if not log:
        return dict(tensorboard="auto" if cfg.tensorboard else False, wandb=False)
    return dict(tensorboard="tensorboard" in log, wandb="wandb" in log)


class RunLogger:
    """Rank-0 logger; ``history`` (one dict per epoch) is also stored in checkpoints so a resumed run keeps it."""

    def __init__(self, run_dir: str | Path, targets: dict[str, Any] | bool = True,
                 history: list[dict[str, Any]] | None = None, x_key: str = "epoch",
                 panels: list[tuple[str, str, list[tuple[str, str]]]] | None = None, config: dict | None = None):
        """``targets``: :func:`log_targets` (a bool: TensorBoard when installed, or not); ``x_key``: the column rows
        are keyed and plotted by (``'iter'`` for the dense tasks); ``panels``: the curves, as ``(title, y label,
        [(column, legend), ...])`` per subplot (default: loss and accuracy); ``config``: the run's settings, for
        W&B.

        Raises ``ValueError`` naming the ``pip install`` when a logger asked for by name is not installed."""
        self.dir = Path(run_dir)
        self.x_key = x_key
        self.panels = panels or [
            ("loss", "loss", [("train_loss", "train"), ("val_loss", "val")]),
            ("validation accuracy", "accuracy (%)", [("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1")]),
        ]
        self.history: list[dict[str, Any]] = list(history or [])
        if isinstance(targets, bool):
            targets = dict(tensorboard="auto" if targets else False, wandb=False)
        self.tb = None
        self.wandb = None
        if targets.get("tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if targets["tensorboard"] != "auto":  # asked for by name
                    raise ValueError("--log tensorboard needs the tensorboard package: pip install tensorboard "
                                     "(or pip install 'locvit[test]')") from None
            else:
                # a resumed run appends to the same folder; TensorBoard shows the latest value of a repeated step
                self.tb = SummaryWriter(str(self.dir / "tensorboard"))
        if targets.get("wandb"):
            try:
                import wandb
            except ImportError:
                raise ValueError("--log wandb needs the wandb package: pip install wandb (locvit runs without "
                                 "it; leave out --log wandb)") from None
            self.wandb = wandb.init(dir=str(self.dir), name=self.dir.name, config=config or {}, resume="allow",
                                    id=_wandb_id(self.dir))

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.history = [r for r in self.history if r[self.x_key] != row[self.x_key]] + [row]
        self._write_csv()
        self._scalars({k: v for k, v in row.items() if k != self.x_key}, row[self.x_key], prefix=f"{self.x_key}/")
        self.plot()

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Running values at optimiser step ``step`` (``train/<name>``) for TensorBoard and W&B; not in the CSV."""
        self._scalars(scalars, step, prefix="train/")

    def _scalars(self, values: dict[str, Any], x: int | float, prefix: str) -> None:
        values = {prefix + k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, x)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(dict(values, **{prefix.rstrip("/"): x}))

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.dir / "metrics.csv", buf.getvalue())

    def plot(self) -> Path | None:
        """``curves.png``: the panels' curves per row (skipped without matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        if not self.history:
            return None
        ep = [r[self.x_key] for r in self.history]
        fig, axes = plt.subplots(1, len(self.panels), figsize=(5 * len(self.panels), 4), squeeze=False)
        for ax, (title, ylabel, curves) in zip(axes[0], self.panels):
            for key, label in curves:
                if any(key in r for r in self.history):
                    ax.plot(ep, [r.get(key) for r in self.history], marker="o", label=label)
            ax.set(xlabel=self.x_key, ylabel=ylabel, title=title)
            ax.legend()
        fig.tight_layout()
        path = self.dir / "curves.png"
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        return path

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_id(run_dir: Path) -> str:
    """A W&B run id kept in the run directory, so a resumed run continues the same W&B run."""
    import uuid

    path = run_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:16]
    atomic_write_text(path, run_id + "\n")
    return run_id
