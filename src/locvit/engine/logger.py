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

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, history: list[dict[str, Any]] | None = None):
        self.dir = Path(run_dir)
        self.history: list[dict[str, Any]] = list(history or [])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]
        self._write_csv()
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["epoch"])
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
        """``curves.png``: loss and accuracy per epoch (skipped without matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        if not self.history:
            return None
        ep = [r["epoch"] for r in self.history]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("train_loss", "train"), ("val_loss", "val")):
            if any(key in r for r in self.history):
                a.plot(ep, [r.get(key) for r in self.history], marker="o", label=label)
        a.set(xlabel="epoch", ylabel="loss", title="loss")
        a.legend()
        for key, label in (("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1")):
            if any(key in r for r in self.history):
                b.plot(ep, [r.get(key) for r in self.history], marker="o", label=label)
        b.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
        b.legend()
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
