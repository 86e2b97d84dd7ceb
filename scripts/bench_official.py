#!/usr/bin/env python
"""Time locvit against the official implementations, each locvit model carrying the official model's weights.

The official repositories are read from a directory you give (nothing from them is copied into this repository;
``scripts/make_conformance.py`` says how to check them out and supplies the import shims)::

    python scripts/bench_official.py --official-root OFFICIAL --threads 2 \\
        --json docs/benchmarks/runs/official_infer_plain.json
    python scripts/bench_official.py --official-root OFFICIAL --threads 2 --mode train --rounds 4 --tune-malloc \\
        --json docs/benchmarks/runs/official_train_tuned.json
    python scripts/bench_official.py --table docs/benchmarks/runs/official_infer_plain.json   # print a saved run

For each model, in one process:

1. the official model is built by its own entry point (``@register_model`` functions; Focal from its YAML config
   through its ``config.py`` and ``classification/build.py``, as its ``main.py`` does, which needs ``yacs``), with
   the official default initialisation;
2. the locvit model of the same name (official names are locvit aliases) is built with the official model's drop-path
   rate and loads the official state dict through :func:`locvit.load_checkpoint` (strict, the family's filter);
3. both run the same input in eval mode and their logits must agree within ``--atol`` (a model that disagrees is
   reported and not timed; the run then exits 1);
4. both are timed interleaved round by round (the order alternates; :func:`locvit.bench.throughput.interleave`):
   ``--warmup`` rounds, then ``--rounds`` timed rounds; the speed-up is the median of the per-round ratios, with
   their range. ``infer`` is a forward under ``torch.inference_mode``; ``train`` a forward, cross-entropy, backward
   and AdamW step in train mode.

``--backend onnxruntime openvino openvino-int8`` times, in the same round-robin, the files ``locvit export`` writes
from the locvit model (:func:`locvit.bench.throughput.benchmark_backends`; each checked against locvit's eager output
before timing): one row per backend with its speed-up over the official eager model and over locvit's eager model.
The INT8 row is a speed measurement (calibrated on random inputs); its accuracy is measured by ``locvit export --int8``
on digits-trained models (``scripts/bench_deploy.sh``).

"Peak share" is ``2 x MACs x images/s`` (``x 3`` for a training step) over the fp32 matmul rate measured at the
start of the run (:func:`locvit.bench.throughput.matmul_peak_gflops`), MACs counted on the locvit model
(:func:`locvit.bench.flops.count_flops`). ``--tune-malloc`` applies :func:`locvit.tune_cpu_allocator` to the whole
process, so to both implementations. Absolute images/s only mean something on an otherwise idle machine; the ratio
of two models timed in one run is what survives a busy one.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import io
import json
import re
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_conformance as mc  # noqa: E402  (the official import machinery: SOURCES, shims, commits)

# the models of docs/benchmarks/README.md's tables (locvit names; official names are accepted too)
INFER_MODELS = ("regionvit_tiny", "regionvit_small", "focal_tiny", "focalv2_tiny_useconv", "vvt_tiny", "vvt_small",
                "localvit_tiny", "localvit_small", "localvit_pvt_tiny", "localvit_swin_tiny", "localvit_tnt_tiny",
                "localvit_t2t_vit_7", "focal_tiny_useconv", "pvt_tiny", "t2t_vit_7")
TRAIN_MODELS = ("regionvit_small", "focal_small", "vvt_small", "localvit_small", "localvit_pvt_tiny")
FOCAL_REPO = mc.SOURCES["focal_transformer"][0]


class OfficialNotFound(FileNotFoundError):
    """The official checkout has no entry point or config for a model name."""


def official_name(model: str) -> tuple[str, str]:
    """``(locvit name, official name)`` for a locvit name or an official alias."""
    import locvit

    canonical = locvit.resolve_alias(model)
    if canonical not in locvit.list_models():
        raise ValueError(f"{model!r} is not a locvit model; see `locvit models`")
    aliases = [a for a, c in locvit.ALIASES.items() if c == canonical]
    return canonical, aliases[0] if aliases else canonical


def _register_model_module(root: Path, name: str) -> str | None:
    """The official module (dotted, as ``make_conformance.SOURCES`` puts it on ``sys.path``) whose
    ``@register_model`` function is called ``name``."""
    entry = re.compile(rf"^@register_model\s*\ndef {re.escape(name)}\(", re.MULTILINE)
    for prefix, (repo_dir, sub, _) in mc.SOURCES.items():
        base = root / repo_dir / sub
        files = [base / f"{prefix}.py", *sorted((base / prefix).rglob("*.py"))]
        for path in files:
            if path.is_file() and entry.search(path.read_text(errors="replace")):
                return ".".join(path.relative_to(base).with_suffix("").parts)
    return None


def _focal_from_config(root: Path, cfg_file: Path) -> nn.Module:
    """Focal's models have no entry points: its ``main.py`` merges a YAML file into the defaults of ``config.py``
    (yacs) and calls ``classification.build.build_model``; this does the same."""
    repo = root / FOCAL_REPO
    try:
        import yacs  # noqa: F401
    except ImportError as e:
        raise ImportError("the official Focal models are built from their yacs configs: pip install yacs") from e
    for top in ("config", "classification"):
        loaded = sys.modules.get(top)
        if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(str(repo)):
            raise RuntimeError(f"another module named {top!r} is already imported ({loaded}); run in a fresh process")
    with mc.official_imports(repo):
        config = importlib.import_module("config")
        build = importlib.import_module("classification.build")
    cfg = config._C.clone()
    with contextlib.redirect_stdout(io.StringIO()):
        config._update_config_from_file(cfg, str(cfg_file))
        return build.build_model(cfg)


def build_official(root: Path, name: str) -> nn.Module:
    """The official model ``name`` built by the official code under ``root``, as its training script builds it."""
    cfg_file = root / FOCAL_REPO / "configs" / f"{name}.yaml"
    if cfg_file.is_file():
        return _focal_from_config(root, cfg_file)
    module = _register_model_module(root, name)
    if module is None:
        repos = sorted({(root / s[0], s[2]) for s in mc.SOURCES.values()})
        missing = [f"{github} as {path}" for path, github in repos if not path.is_dir()]
        hint = f"; check out {', '.join(missing)}" if missing else ""
        raise OfficialNotFound(f"no official entry point or Focal config named {name!r} under {root}{hint}")
    fn = mc.official_class(root, f"{module}.{name}")
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def _drop_path_rate(model: nn.Module) -> float:
    # the stochastic-depth schedules end at drop_path_rate in the last block, in both implementations
    return round(max((float(m.drop_prob) for m in model.modules() if type(m).__name__ == "DropPath"), default=0.0), 6)


def compare(root: Path, model: str, modes: list[str], args: argparse.Namespace, peak: float) -> list[dict[str, Any]]:
    """Build both implementations of ``model``, check their logits, then time each mode; one row per mode."""
    import locvit
    from locvit.bench.flops import count_flops
    from locvit.bench.throughput import BenchSpec, Runner, interleave

    ours_name, off_name = official_name(model)
    torch.manual_seed(0)
    official = build_official(root, off_name)
    dpr = _drop_path_rate(official)
    ours = locvit.create_model(ours_name, drop_path_rate=dpr)
    locvit.load_checkpoint(ours, official.state_dict())
    size = (args.img_size, args.img_size)
    x = torch.randn(args.batch_size, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (ours.eval()(x) - official.eval()(x)).abs().max().item()
    base = {"model": ours_name, "official": off_name, "max_abs_diff": diff, "drop_path_rate": dpr}
    if not diff <= args.atol:
        print(f"FAIL {ours_name} vs {off_name}: max |logit diff| {diff:.2e} > {args.atol:g}; not timed", flush=True)
        return [dict(base, mode=m, error=f"logits differ by {diff:.2e}") for m in modes]
    if args.check_only:
        print(f"ok   {ours_name} vs {off_name}: max |logit diff| {diff:.1e}", flush=True)
        return []
    gmacs = count_flops(ours, (3, *size)).gmacs
    if not hasattr(official, "num_classes"):  # Runner draws training labels below num_classes
        official.num_classes = ours.num_classes
    rows = []
    if args.backend:
        return rows + backend_rows(ours, official, ours_name, off_name, base, args, size)
    for mode in modes:
        spec = dict(batch_size=args.batch_size, img_size=size, mode=mode, threads=args.threads)
        ra = Runner(BenchSpec(ours_name, **spec), model=ours)
        rb = Runner(BenchSpec(off_name, **spec), model=official)
        ta, tb = interleave(ra, rb, args.warmup, args.rounds)
        ratios = [b / a for a, b in zip(ta, tb)]
        ours_ips, off_ips = args.batch_size / statistics.median(ta), args.batch_size / statistics.median(tb)
        flops_per_image = 2 * gmacs * 1e9 * (3 if mode == "train" else 1)
        row = dict(base, mode=mode, ours_img_s=ours_ips, official_img_s=off_ips, ratio=statistics.median(ratios),
                   ratio_min=min(ratios), ratio_max=max(ratios), gmacs=gmacs,
                   ours_peak_share=flops_per_image * ours_ips / (peak * 1e9),
                   official_peak_share=flops_per_image * off_ips / (peak * 1e9),
                   ours_s=ta, official_s=tb)
        print(f"{mode:5s} {ours_name:22s} {row['ratio']:.2f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) "
              f"locvit {ours_ips:.2f} img/s, official {off_ips:.2f} img/s, max |logit diff| {diff:.1e}", flush=True)
        rows.append(row)
        if args.profile:
            for label, runner in (("locvit", ra), ("official", rb)):
                print(f"\n{label} {runner.spec.model}, one {mode} step: self CPU time by op\n"
                      f"{profile_step(runner.step, args.profile)}", flush=True)
    return rows


def backend_rows(ours: nn.Module, official: nn.Module, ours_name: str, off_name: str, base: dict[str, Any],
                 args: argparse.Namespace, size: tuple[int, int]) -> list[dict[str, Any]]:
    """locvit's eager model and its exported files in ``args.backend`` against the official eager model, all in one
    round-robin; one row per locvit backend, then the official model's."""
    from locvit.bench.throughput import BenchSpec, benchmark_backends

    spec = BenchSpec(ours_name, args.batch_size, size, threads=args.threads)
    vs = BenchSpec(off_name, args.batch_size, size, threads=args.threads)
    results = benchmark_backends(spec, args.backend, vs, args.warmup, args.rounds, vs_model=official, model=ours)
    rows = []
    for r in results:
        official_row = r is results[-1]
        row = dict(base, mode="infer", backend="official eager" if official_row else r.backend,
                   batch=args.batch_size, img_s=r.images_per_s, ratio_vs_official=r.ratio_vs,
                   ratio_vs_eager=r.ratio_vs_eager, spread=list(r.spread), export_max_abs_diff=r.max_abs_diff)
        rows.append(row)
        diff = f", max |d| vs eager {r.max_abs_diff:.1e}" if r.max_abs_diff is not None else ""
        print(f"bs {args.batch_size} {ours_name:22s} {row['backend']:14s} {r.images_per_s:8.2f} img/s  "
              f"x{r.ratio_vs:.2f} vs official, x{r.ratio_vs_eager:.2f} vs locvit eager{diff}", flush=True)
    return rows


BACKEND_COLUMNS = ("official eager", "eager", "onnxruntime", "openvino", "openvino-int8")
BACKEND_TITLES = {"official eager": "official eager", "eager": "locvit eager", "onnxruntime": "ORT fp32",
                  "openvino": "OpenVINO fp32", "openvino-int8": "OpenVINO INT8"}


def backend_markdown(runs: list[dict[str, Any]]) -> str:
    """One table per family from ``--backend`` runs (e.g. one at batch 1 and one at batch 8): a row per model and
    batch, a column per backend with images/s and the speed-up over the official eager model."""
    import locvit

    cells: dict[tuple[str, int], dict[str, str]] = {}
    for run in runs:
        for r in run["rows"]:
            if "backend" not in r:
                continue
            key = (r["model"], r["batch"])
            if "error" in r:
                cells.setdefault(key, {})["official eager"] = f"not timed: {r['error']}"
                continue
            cells.setdefault(key, {})[r["backend"]] = f"{r['img_s']:.1f} (**{r['ratio_vs_official']:.2f}x**)"
    out = []
    for family in dict.fromkeys(locvit.family_of(m) for m, _ in cells):
        members = {k: v for k, v in cells.items() if locvit.family_of(k[0]) == family}
        cols = [c for c in BACKEND_COLUMNS if any(c in v for v in members.values())]
        out += [f"**{family}** (images/s, speed-up over the official eager model)", "",
                "| model | batch | " + " | ".join(BACKEND_TITLES[c] for c in cols) + " |",
                "|---|---|" + "---|" * len(cols)]
        for (m, b), v in members.items():
            out.append(f"| `{m}` | {b} | " + " | ".join(v.get(c, "-") for c in cols) + " |")
        out.append("")
    return "\n".join(out)


def profile_step(step: Callable[[], Any], rows: int) -> str:
    """torch.profiler's table of one call of ``step``, the ``rows`` ops with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def official_gmacs(root: Path, names: list[str], img_size: int) -> dict[str, float]:
    """GMACs of the official models, counted like locvit's (:func:`locvit.bench.flops.count_flops`, batch 1)."""
    import locvit
    from locvit.bench.flops import count_flops

    known = set(locvit.list_models(include_aliases=True))
    out = {}
    for name in names:
        off = official_name(name)[1] if name in known else name  # any official entry point may be counted
        torch.manual_seed(0)
        try:
            official = build_official(root, off)
        except OfficialNotFound as e:  # e.g. locvit's 384 variants, which the authors build by arguments
            print(f"skipped: {e}", flush=True)
            continue
        out[off] = round(count_flops(official.eval(), (3, img_size, img_size)).gmacs, 4)
        print(f"{off}: {out[off]} GMACs", flush=True)
    if not out:
        raise OfficialNotFound(f"none of {', '.join(names)} was found under {root}")
    return out


def markdown(run: dict[str, Any], mode: str) -> str:
    """The docs' table for the ``mode`` rows of a run (a dict as written by ``--json``)."""
    decimals = 2 if mode == "train" else 1
    lines = ["| locvit model | official name | GMACs | locvit img/s | official img/s | speed-up (range) | "
             "peak share locvit | peak share official | max \\|logit diff\\| |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in run["rows"]:
        if r.get("mode") != mode:
            continue
        diff = r.get("max_abs_diff")
        diff = "-" if diff is None or diff != diff else f"{diff:.1e}"  # NaN: not checked in that run
        if "error" in r:
            lines.append(f"| `{r['model']}` | {r['official']} | | | | not timed: {r['error']} | | | {diff} |")
            continue
        lines.append(f"| `{r['model']}` | {r['official']} | {r['gmacs']:.2f} | {r['ours_img_s']:.{decimals}f} | "
                     f"{r['official_img_s']:.{decimals}f} | **{r['ratio']:.2f}x** ({r['ratio_min']:.2f}-"
                     f"{r['ratio_max']:.2f}) | {r['ours_peak_share']:.0%} | {r['official_peak_share']:.0%} | {diff} |")
    return "\n".join(lines)


def print_tables(run: dict[str, Any]) -> None:
    settings = (f"batch {run['batch']}, {run.get('img_size', 224)}x{run.get('img_size', 224)}, fp32, "
                f"{run['threads']} threads, allocator {'tuned' if run['tune_malloc'] else 'default'}, "
                f"matmul peak {run['peak_gflops']:.1f} GFLOP/s")
    if "rounds" in run:
        settings += f", {run['warmup']} warm-up + {run['rounds']} rounds"
    if any("backend" in r for r in run["rows"]):
        print(f"\nbackends ({settings})\n\n{backend_markdown([run])}")
        return
    for mode in dict.fromkeys(r["mode"] for r in run["rows"]):
        print(f"\n{mode} ({settings})\n\n{markdown(run, mode)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--official-root", type=Path, default=None,
                        help="directory holding the official checkouts: " +
                             ", ".join(sorted({s[0] for s in mc.SOURCES.values()})))
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"locvit or official names (default: infer {' '.join(INFER_MODELS)}; "
                             f"train {' '.join(TRAIN_MODELS)})")
    parser.add_argument("--mode", nargs="+", choices=("infer", "train"), default=["infer"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tune-malloc", action="store_true", help="locvit.tune_cpu_allocator() for the process")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest |logit diff| accepted (default 1e-4)")
    parser.add_argument("--check-only", action="store_true", help="build, load and compare logits; time nothing")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, print the N ops with the most self CPU time in one step of each model")
    parser.add_argument("--gmacs", type=Path, default=None, metavar="JSON",
                        help="instead of timing, count the official models' GMACs (locvit's counter, batch 1; "
                             "default models: every locvit model) and add them to this {official name: GMACs} file, "
                             "the input of `locvit flops --official-counts`")
    parser.add_argument("--backend", nargs="+", default=None,
                        choices=("eager", "compile", "onnxruntime", "openvino", "openvino-int8"),
                        help="time locvit's exported files in these runtimes (and locvit eager) against the official "
                             "eager model, round-robin; inference only")
    parser.add_argument("--json", type=Path, default=None, help="write the run (settings and rows) to this file")
    parser.add_argument("--table", type=Path, nargs="+", default=None, metavar="RUN_JSON",
                        help="print the tables of saved runs instead of measuring")
    args = parser.parse_args(argv)
    if args.backend and args.mode != ["infer"]:
        parser.error("--backend times inference only (leave out --mode train)")
    if args.table:
        for path in args.table:
            print(f"## {path}")
            print_tables(json.loads(path.read_text()))
        return 0
    if args.official_root is None or not args.official_root.is_dir():
        parser.error(f"--official-root {args.official_root} is not a directory (see scripts/make_conformance.py "
                     "for the checkouts)")
    if args.warmup < 0 or args.rounds < 1:
        parser.error("--warmup must be >= 0 and --rounds >= 1")
    if not args.gmacs:  # --gmacs also counts official models that locvit does not have
        for m in args.models or ():
            try:
                official_name(m)  # unknown names fail before anything is built
            except ValueError as e:
                parser.error(str(e))
    # the official Focal code calls torch.meshgrid without indexing= on every forward
    warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release")
    try:
        return run(args, argv)
    except FileNotFoundError as e:  # a checkout or an entry point is missing
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    import locvit
    from locvit.bench.throughput import matmul_peak_gflops
    from locvit.files import atomic_write_text

    if args.gmacs:
        counts = official_gmacs(args.official_root, args.models or locvit.list_models(), args.img_size)
        if args.gmacs.is_file():  # add to what is there, never drop a count
            counts = {**json.loads(args.gmacs.read_text()), **counts}
        atomic_write_text(args.gmacs, json.dumps(dict(sorted(counts.items())), indent=1) + "\n")
        return 0
    if args.tune_malloc and not locvit.tune_cpu_allocator():
        raise SystemExit("--tune-malloc: this C library has no mallopt (not glibc)")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = float("nan")
    if not args.check_only:
        peak = matmul_peak_gflops()
        print(f"fp32 matmul peak {peak:.1f} GFLOP/s, {torch.get_num_threads()} threads", flush=True)
    plan: dict[str, list[str]] = {}
    for mode in args.mode:
        for m in args.models or (TRAIN_MODELS if mode == "train" else INFER_MODELS):
            plan.setdefault(m, []).append(mode)
    rows = []
    for m, modes in plan.items():
        rows += compare(args.official_root, m, modes, args, peak)
    if args.check_only:
        return 1 if rows else 0
    result = {
        "peak_gflops": peak, "tune_malloc": args.tune_malloc, "threads": torch.get_num_threads(),
        "batch": args.batch_size, "img_size": args.img_size, "warmup": args.warmup, "rounds": args.rounds,
        "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "locvit": locvit.__version__, "command": " ".join(["scripts/bench_official.py", *(argv or sys.argv[1:])]),
        "official_commits": {s[2]: mc.official_commit(args.official_root, prefix) for prefix, s in mc.SOURCES.items()},
        "rows": sorted(rows, key=lambda r: args.mode.index(r["mode"])),
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    print_tables(result)
    return 1 if any("error" in r for r in rows) else 0

if __name__ == "__main__":
    sys.exit(main())
