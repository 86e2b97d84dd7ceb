#!/usr/bin/env python
"""The deployment benchmark of docs/benchmarks/README.md (*Deployment runtimes*), as one command, and its tables.

Run it on an otherwise idle machine (absolute images/s mean nothing on a busy one; the ratios are measured side by
side in one process either way)::

    python scripts/bench_deploy.py --official-root OFFICIAL --threads 2          # all three parts, then --render
    python scripts/bench_deploy.py --render                                      # tables from the saved JSON only

Parts (``--parts``; each writes JSON into ``--runs``, default docs/benchmarks/runs/):

``speed``
    ``scripts/bench_official.py --backend eager onnxruntime openvino openvino-int8`` for :data:`SPEED_MODELS` at
    224x224, batch 1 (latency) and batch 8 (throughput): the official eager model, locvit eager, ONNX Runtime fp32,
    OpenVINO fp32 and OpenVINO INT8 (speed only: calibrated on random inputs), round-robin in one process per batch
    size, every exported file checked against eager before timing -> ``deploy_bs1.json``, ``deploy_bs8.json``.
``int8``
    per family, the README's quick training on the digits (``locvit train --config digits``, 5 epochs; the model
    sizes of :data:`DIGITS_MODELS`), then ``locvit export --int8 --calib digits --max-drop 0.5`` on the held-out
    digits: top-1 fp32 and INT8, agreement, passed or refused -> ``deploy_int8.json``.
``sweep``
    ``locvit bench --backend onnxruntime openvino`` for VVT, Focal and RegionViT at 224-1024, batch 1 ->
    ``deploy_sweep.json`` (time per image and the fitted exponent of time against pixels, per backend).

``--render`` writes the tables between ``<!-- deploy:start -->`` and ``<!-- deploy:end -->`` of
docs/benchmarks/README.md (``--print``: to stdout instead).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
DOC = REPO / "docs" / "benchmarks" / "README.md"
START, END = "<!-- deploy:start -->", "<!-- deploy:end -->"

#: the models of the speed tables (the families' models of the official-code comparison)
SPEED_MODELS = ("regionvit_tiny", "regionvit_small", "focal_tiny", "vvt_tiny", "vvt_small", "localvit_tiny",
                "localvit_small", "localvit_pvt_tiny")
BACKENDS = ("eager", "onnxruntime", "openvino", "openvino-int8")
#: the digits-trained model of each family: LocalViT as the README trains it, the others at make demo's sizes
#: (locvit.demo.DEMO_MODELS), all with the shipped digits recipe at 32x32
DIGITS_MODELS = {
    "localvit": ("localvit_tiny", ["patch_size=4", "depth=2"]),
    "regionvit": ("regionvit_tiny", ["embed_dim=[32,64,128,128]", "depth=[1,1,2,1]", "num_heads=[2,2,4,4]",
                                     "window_size=4"]),
    "focal": ("focal_tiny", ["embed_dim=32", "depths=[1,1,2,1]", "num_heads=[2,2,4,4]", "window_size=4",
                             "focal_windows=[3,3,1,1]", "expand_sizes=[1,1,1,1]"]),
    "vvt": ("vvt_tiny", ["embed_dims=[32,64,96,128]", "num_heads=[1,2,3,4]", "depths=[1,1,2,1]",
                         "mlp_ratios=[4,4,4,4]"]),
}
SWEEP_MODELS = ("vvt_tiny", "focal_tiny", "regionvit_tiny")
SWEEP_SIZES = (224, 384, 512, 768, 1024)


def _run(cmd: list[str], env: dict[str, str]) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env, cwd=REPO)


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


def run_speed(args: argparse.Namespace) -> int:
    rc = 0
    for bs in (1, 8):
        rc |= _run([sys.executable, str(SCRIPTS / "bench_official.py"), "--official-root", str(args.official_root),
                    "--threads", str(args.threads), "--backend", *BACKENDS, "--batch-size", str(bs),
                    "--warmup", "3", "--rounds", str(args.rounds), "--models", *args.models,
                    "--json", str(args.runs / f"deploy_bs{bs}.json")], _env(args.threads))
    return rc


def run_int8(args: argparse.Namespace) -> int:
    work = Path(args.work)
    rows = []
    for family, (model, kwargs) in DIGITS_MODELS.items():
        out = work / f"digits_{family}"
        env = _env(args.threads)
        t0 = time.perf_counter()
        rc = _run([sys.executable, "-m", "locvit", "train", "--config", "digits", "--model", model, "--output",
                   str(out), "--model-kwargs", *kwargs], env)
        train_s = time.perf_counter() - t0
        if rc:
            rows.append(dict(family=family, model=model, error=f"training exited {rc}"))
            continue
        report = out / "int8_gate.json"
        report.unlink(missing_ok=True)
        rc = _run([sys.executable, "-m", "locvit", "export", "--model", model, "--checkpoint",
                   str(out / "best.safetensors"), "--img-size", "32", "32", "--model-kwargs", *kwargs, "--int8",
                   "--calib", "digits", "--max-drop", "0.5", "--output", str(out / "int8.xml"), "--report",
                   str(report)], env)
        row = dict(family=family, model=model, model_kwargs=kwargs, train_s=round(train_s, 1), export_rc=rc)
        if report.is_file():
            row.update(json.loads(report.read_text()))
        else:
            row["error"] = f"locvit export exited {rc} before the gate"
        rows.append(row)
    _write(args.runs / "deploy_int8.json", dict(_meta(args), rows=rows))
    return 0 if all("error" not in r for r in rows) else 1


def run_sweep(args: argparse.Namespace) -> int:
    return _run([sys.executable, "-m", "locvit", "bench", "--model", *SWEEP_MODELS, "--img-size",
                 *map(str, SWEEP_SIZES), "--batch-size", "1", "--threads", str(args.threads), "--backend",
                 "onnxruntime", "openvino", "--runs", "5", "--warmup", "2", "--json",
                 str(args.runs / "deploy_sweep.json")], _env(args.threads))


def _meta(args: argparse.Namespace) -> dict:
    import torch

    return dict(date=datetime.date.today().isoformat(), threads=args.threads, torch=torch.__version__,
                command="python scripts/bench_deploy.py " + " ".join(sys.argv[1:]))


def _write(path: Path, obj: dict) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from locvit.files import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


# --- tables ---------------------------------------------------------------------------------------------------------
def speed_tables(runs: Path) -> str:
    sys.path.insert(0, str(SCRIPTS))
    import bench_official

    saved = [json.loads(p.read_text()) for p in (runs / "deploy_bs1.json", runs / "deploy_bs8.json") if p.is_file()]
    if not saved:
        return "_not measured yet: `python scripts/bench_deploy.py --official-root OFFICIAL --parts speed`_\n"
    head = "; ".join(f"batch {r['batch']}: `{r['command']}` ({r['date']}, {r['threads']} threads, torch {r['torch']})"
                     for r in saved)
    return f"{head}\n\n{bench_official.backend_markdown(saved)}\n"


def int8_table(runs: Path) -> str:
    p = runs / "deploy_int8.json"
    if not p.is_file():
        return "_not measured yet: `python scripts/bench_deploy.py --parts int8`_\n"
    run = json.loads(p.read_text())
    lines = [f"`{run['command']}` ({run['date']}, {run['threads']} threads)", "",
             "| family | model (digits-trained) | top-1 fp32 | top-1 INT8 | drop (pt) | agreement | gate (0.5 pt) |",
             "|---|---|---|---|---|---|---|"]
    for r in run["rows"]:
        if "top1_fp32" not in r:
            lines.append(f"| {r['family']} | `{r['model']}` | | | | | {r.get('error', '-')} |")
            continue
        lines.append(f"| {r['family']} | `{r['model']}` | {r['top1_fp32']:.2f}% | {r['top1_int8']:.2f}% | "
                     f"{r['drop']:+.2f} | {r['agreement']:.2f}% | {'passed' if r['passed'] else 'refused'} |")
    return "\n".join(lines) + "\n"


def sweep_table(runs: Path) -> str:
    p = runs / "deploy_sweep.json"
    if not p.is_file():
        return "_not measured yet: `python scripts/bench_deploy.py --parts sweep`_\n"
    sys.path.insert(0, str(REPO / "src"))
    from locvit.bench.sweep import fit_exponent

    rows = json.loads(p.read_text())
    sizes = sorted({int(r["img_size"].split("x")[0]) for r in rows})
    keys = list(dict.fromkeys((r["model"], r["backend"]) for r in rows))
    lines = ["ms per image (batch 1); k: fitted exponent of time against pixels", "",
             "| model | backend | " + " | ".join(map(str, sizes)) + " | k |", "|---|---|" + "---|" * (len(sizes) + 1)]
    for model, backend in keys:
        ms = {int(r["img_size"].split("x")[0]): r["step_ms"] / r["batch_size"] for r in rows
              if r["model"] == model and r["backend"] == backend}
        k = fit_exponent([s * s for s in ms], list(ms.values())) if len(ms) > 1 else float("nan")
        lines.append(f"| `{model}` | {backend} | " + " | ".join(f"{ms[s]:.0f}" if s in ms else "-" for s in sizes)
                     + f" | {k:.2f} |")
    return "\n".join(lines) + "\n"


def render(runs: Path) -> str:
    return (f"#### Speed at 224x224 against the official code\n\n{speed_tables(runs)}\n"
            f"#### INT8 accuracy gate on digits-trained models\n\n{int8_table(runs)}\n"
            f"#### Resolution sweep (VVT against Focal and RegionViT)\n\n{sweep_table(runs)}")


def update_doc(text: str, doc: Path = DOC) -> None:
    src = doc.read_text()
    if START not in src or END not in src:
        raise SystemExit(f"{doc} has no {START} ... {END} markers")
    head, rest = src.split(START, 1)
    _, tail = rest.split(END, 1)
    sys.path.insert(0, str(REPO / "src"))
    from locvit.files import atomic_write_text

    atomic_write_text(doc, f"{head}{START}\n{text}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-root", type=Path, help="the official checkouts (scripts/make_conformance.py)")
    parser.add_argument("--parts", nargs="+", choices=("speed", "int8", "sweep"), default=["speed", "int8", "sweep"])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every backend (default 2)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of the speed part (default 10)")
    parser.add_argument("--models", nargs="+", default=list(SPEED_MODELS), help="models of the speed part")
    parser.add_argument("--runs", type=Path, default=REPO / "docs" / "benchmarks" / "runs", help="JSON folder")
    parser.add_argument("--work", default="runs/deploy", help="training runs and INT8 files of the int8 part")
    parser.add_argument("--render", action="store_true", help="only write the tables from the saved JSON")
    parser.add_argument("--print", action="store_true", help="with --render: print instead of updating the doc")
    args = parser.parse_args(argv)
    if not args.render:
        if "speed" in args.parts and (args.official_root is None or not args.official_root.is_dir()):
            parser.error("the speed part needs --official-root (the official checkouts; scripts/make_conformance.py)")
        rc = 0
        for part in args.parts:
            rc |= {"speed": run_speed, "int8": run_int8, "sweep": run_sweep}[part](args)
        if rc:
            print("some part failed; the tables show what was measured", file=sys.stderr)
    text = render(args.runs)
    if args.print:
        print(text)
    else:
        update_doc(text)
        print(f"updated {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
