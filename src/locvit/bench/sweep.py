"""Resolution sweeps: FLOPs, time and peak memory against the number of pixels, with the fitted growth exponent
(``cost ~ pixels ** k``: k = 1 is linear, global attention tends to 2)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from locvit.bench.flops import count_flops
from locvit.bench.throughput import BenchSpec, benchmark
from locvit.files import atomic_write, atomic_write_text


def fit_exponent(pixels: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(pixels)."""
    pts = [(math.log(p), math.log(v)) for p, v in zip(pixels, values) if v and v > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p for p, _ in pts) / len(pts)
    my = sum(v for _, v in pts) / len(pts)
    num = sum((p - mx) * (v - my) for p, v in pts)
    den = sum((p - mx) ** 2 for p, _ in pts)
    return num / den


def resolution_sweep(models: list[str], sizes: list[int], batch_size: int = 1, runs: int = 3, warmup: int = 1,
                     device: str = "cpu", threads: int | None = None,
                     model_kwargs: dict[str, dict[str, Any]] | None = None, progress: bool = True) -> list[dict]:
    """One row per (model, size): GMACs, ms per image, images/s and peak activation memory."""
    from locvit.bench.throughput import create_at_size

    rows = []
    for name in models:
        kw = (model_kwargs or {}).get(name, {})
        for s in sizes:
            model, kw_s = create_at_size(name, s, kw)
            gmacs = count_flops(model, (3, s, s)).gmacs
            del model
            res = benchmark(BenchSpec(name, batch_size, (s, s), "infer", device, threads, model_kwargs=kw_s),
                            warmup=warmup, runs=runs)
            row = dict(model=name, img_size=s, pixels=s * s, gmacs=gmacs, ms_per_image=res.step_ms / batch_size,
                       images_per_s=res.images_per_s, peak_mem_mb=res.peak_mem_mb)
            rows.append(row)
            if progress:
                print(f"{name:32s} {s:5d}  {gmacs:8.2f} GMACs  {row['ms_per_image']:9.1f} ms/img  "
                      f"{row['peak_mem_mb']:9.1f} MB", flush=True)
    return rows


def exponents(rows: list[dict]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == name]
        px = [r["pixels"] for r in rs]
        out[name] = {k: fit_exponent(px, [r[k] for r in rs]) for k in ("gmacs", "ms_per_image", "peak_mem_mb")}
    return out


def write_csv(rows: list[dict], path: str | Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_sweep(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Three log-log panels (GMACs, time, memory against pixels), one line per model with its exponent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = exponents(rows)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, key, label in zip(axes, ("gmacs", "ms_per_image", "peak_mem_mb"),
                              ("GMACs", "forward time (ms / image)", "peak activation memory (MB)")):
        for name in ex:
            rs = [r for r in rows if r["model"] == name]
            ax.plot([r["pixels"] / 1e6 for r in rs], [r[key] for r in rs], marker="o",
                    label=f"{name} (k={ex[name][key]:.2f})")
        ax.set(xscale="log", yscale="log", xlabel="megapixels", ylabel=label, title=f"{label} vs pixels")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))
