"""What a run leaves in its directory besides checkpoints: a CSV row per epoch, TensorBoard scalars when
tensorboard is installed, and a PNG of the training curves."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from locvit._io import atomic_write, atomic_write_text


class RunLogger:
    """Rank-0 logger; ``history`` (one dict per epoch) is also stored in checkpoints so a resumed run keeps it."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, history: list[dict[str, Any]] | None = None,
                 x_key: str = "epoch", panels: list[tuple[str, str, list[tuple[str, str]]]] | None = None):
        """``x_key``: the column rows are keyed and plotted by (``'iter'`` for the dense tasks); ``panels``: the
        curves, as ``(title, y label, [(column, legend), ...])`` per subplot (default: loss and accuracy)."""
        self.dir = Path(run_dir)
        self.x_key = x_key
        self.panels = panels or [
            ("loss", "loss", [("train_loss", "train"), ("val_loss", "val")]),
            ("validation accuracy", "accuracy (%)", [("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1")]),
        ]
        self.history: list[dict[str, Any]] = list(history or [])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.history = [r for r in self.history if r[self.x_key] != row[self.x_key]] + [row]
        self._write_csv()
        if self.tb is not None:
            for k, v in row.items():
                if k != self.x_key and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row[self.x_key])
            self.tb.flush()
        self.plot()

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
