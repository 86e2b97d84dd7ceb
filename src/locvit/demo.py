"""``make demo``: train a small model of each family on the embedded digits dataset, evaluate them and compare.

Everything runs on the CPU from what installs with the project (scikit-learn's 1,797 handwritten digits,
upsampled to 32x32); nothing is downloaded. The table (top-1, params, GMACs, images/s) is printed and written
with a plot to the run directory.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from locvit.bench.flops import count_flops
from locvit.bench.throughput import BenchSpec, benchmark
from locvit.engine.config import build_config
from locvit.engine.train import train
from locvit.files import atomic_write, atomic_write_text
from locvit.models import DEMO_MODELS, create_model

IMG = 32
RECIPE = "digits"  # the shipped recipe (locvit/configs/digits.yaml), as `locvit train --config digits` uses it


def run_demo(output: str | Path = "runs/demo", epochs: int | None = None, families: list[str] | None = None,
             ) -> list[dict[str, Any]]:
    """Train, evaluate and compare; returns the table rows. Each family's run goes to ``output/<family>``,
    replacing the run an earlier demo left there (``overwrite``)."""
    out = Path(output)
    rows = []
    for fam, spec in DEMO_MODELS.items():
        if families and fam.lower() not in [f.lower() for f in families]:
            continue
        print(f"\n== {fam}: {spec['model']} (small) on digits {IMG}x{IMG}", flush=True)
        cfg = build_config(RECIPE, dict(model=spec["model"], model_kwargs=spec["model_kwargs"],
                                        output=str(out / fam.lower()), epochs=epochs, tensorboard=False,
                                        warmup_epochs=0 if epochs == 1 else None,
                                        overwrite=True))  # a rerun replaces the demo's own earlier runs
        t0 = time.time()
        metrics = train(cfg)
        train_s = time.time() - t0
        model = create_model(spec["model"], num_classes=10, img_size=IMG, **spec["model_kwargs"])
        fc = count_flops(model, (3, IMG, IMG))
        speed = benchmark(BenchSpec(spec["model"], 64, (IMG, IMG), "infer",
                                    model_kwargs=dict(spec["model_kwargs"], num_classes=10, img_size=IMG)),
                          warmup=1, runs=3, memory=False)
        rows.append(dict(family=fam, model=spec["model"], top1=metrics["top1"], top5=metrics["top5"],
                         params_k=fc.params / 1e3, mmacs=fc.flops / 2e6, images_per_s=speed.images_per_s,
                         train_s=train_s))
    table = format_table(rows)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / "results.json", json.dumps(rows, indent=1))
    plot = plot_results(rows, out / "results.png")
    print(f"\ntable: {out / 'results.md'}   plot: {plot}")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| family | model (small config) | top-1 (%) | params (K) | MMACs | images/s (CPU) | train time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['model']} | {r['top1']:.2f} | {r['params_k']:.0f} | {r['mmacs']:.1f} | "
                     f"{r['images_per_s']:.0f} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def plot_results(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = [r["family"] for r in rows]
    for ax, key, label in zip(axes, ("top1", "mmacs", "images_per_s"),
                              ("top-1 on held-out digits (%)", "MMACs per image", "images/s (CPU, batch 64)")):
        ax.bar(names, [r[key] for r in rows], color=["#4C72B0", "#DD8452", "#55A868", "#C44E52"][: len(rows)])
        ax.set_title(label)
        if key == "top1":
            ax.set_ylim(min(80, *(r["top1"] for r in rows)) - 2, 100)
        for i, r in enumerate(rows):
            ax.text(i, r[key], f"{r[key]:.1f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"locvit demo: four locality mechanisms on scikit-learn digits ({IMG}x{IMG})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
