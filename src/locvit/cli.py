"""``locvit <command>``: argument parsing only; the work happens in the library modules.

Each command registers itself with ``@command``; its function receives the parsed arguments.
Flag names are shared across commands: ``--model``, ``--checkpoint``, ``--data``, ``--img-size``,
``--batch-size``, ``--output``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None], str]]
_COMMANDS = {}


def command(name: str, help: str):
    """Decorator pair: ``@command(name, help)`` on a function ``add_args(parser)`` returning the runner."""

    def wrap(add_args: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int | None]]):
        _COMMANDS[name] = (add_args, None, help)  # type: ignore[assignment]
        return add_args

    return wrap


# --- locvit models ----------------------------------------------------------------------------------------------
@command("models", "list the model zoo with parameter counts, GMACs and default input sizes")
def _models(p: argparse.ArgumentParser):
    p.add_argument("pattern", nargs="*", default=["*"], help="wildcards, e.g. 'regionvit*'")
    p.add_argument("--aliases", action="store_true", help="also list the official names that alias models")
    p.add_argument("--no-flops", action="store_true", help="leave out the GMACs column")
    p.add_argument("--recount", action="store_true",
                   help="build and count each model instead of reading the shipped table (with --update-readme: "
                        "also rewrite the shipped table)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--update-readme", metavar="README", help="rewrite the model table between the README markers")

    def run(a: argparse.Namespace) -> int:
        from locvit.zoo import model_table, render_table, update_readme, write_stats

        if a.recount and a.update_readme:
            write_stats()
        rows = model_table(a.pattern, include_aliases=a.aliases, flops=not a.no_flops,
                           recount=a.recount and not a.update_readme)
        text = render_table(rows, markdown=a.markdown or bool(a.update_readme))
        if a.update_readme:
            update_readme(a.update_readme, text)
            print(f"updated the model table in {a.update_readme} ({len(rows)} models)")
        else:
            print(text)
        return 0

    return run


def _parse_kv(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.replace("-", "_")] = yaml.safe_load(v)
    return out


def _config_args(p: argparse.ArgumentParser, cls: type,
                 resume_help: str = "continue a run (default: OUTPUT/last.pth); settings not given are the run's own"
                 ) -> None:
    """One flag per field of the config dataclass ``cls`` (``--batch-size`` for ``batch_size``...), default None
    so that only what is given overrides the recipe; dict fields take KEY=VALUE items (YAML values)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    notes = _field_comments(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        note = notes.get(f.name)
        if "dict" in str(kind):
            p.add_argument(flag, nargs="*", metavar="KEY=VALUE", help=note or "(YAML values)")
        elif f.name == "resume":
            p.add_argument(flag, nargs="?", const="auto", default=None, metavar="RUN_DIR_OR_FILE",
                           help=resume_help)
        elif kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=note)
        elif "tuple" in str(kind):
            p.add_argument(flag, nargs=2, type=float, default=None, help=note)
        elif "list" in str(kind):
            item = float if "float" in str(kind) else str if "str" in str(kind) else int
            p.add_argument(flag, nargs="+", type=item, default=None, help=note)
        else:
            base = next((t for t in (int, float, str) if t in typing.get_args(kind) or kind is t), str)
            p.add_argument(flag, type=base, default=None, help=note)


def _field_comments(cls: type) -> dict[str, str]:
    """``--help`` text: the comment after each field in the config dataclasses' source (subclasses win)."""
    import inspect
    import re

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        out.update({m[1]: m[2].strip().replace("%", "%%")
                    for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", src, re.M)})
    return out


def _config_overrides(a: argparse.Namespace, cls: type) -> dict:
    """The flags of :func:`_config_args` as config overrides (KEY=VALUE lists parsed into dicts)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        v = getattr(a, f.name, None)
        is_dict = f.default_factory is not dataclasses.MISSING and isinstance(f.default_factory(), dict)
        out[f.name] = _parse_kv(v) if is_dict and v is not None else v
    return out


# --- locvit train -----------------------------------------------------------------------------------------------
@command("train", "train or fine-tune a model (the papers' DeiT/Swin recipe); run under torchrun for DDP")
def _train(p: argparse.ArgumentParser):
    from locvit.engine.config import TrainConfig

    p.add_argument("--config", help="YAML recipe (a path, or a shipped name such as regionvit_in1k)")
    _config_args(p, TrainConfig)

    def run(a: argparse.Namespace) -> int:
        from locvit.engine.config import TrainConfig, build_config
        from locvit.engine.run import run_config
        from locvit.engine.train import train

        overrides = _config_overrides(a, TrainConfig)
        saved = None
        if a.resume:
            # the interrupted run's settings are the base: `--resume` alone, or the same command again, continues it
            state_file, saved = run_config(a.resume, a.output or TrainConfig.output, TrainConfig.COMMAND)
            if a.output is None:
                overrides["output"] = str(state_file.parent)
        cfg = build_config(a.config, overrides, run=saved)
        metrics = train(cfg)
        if metrics and "top1" in metrics:
            print(f"done: top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  -> {cfg.output}")
        return 0

    return run


# --- locvit shards ----------------------------------------------------------------------------------------------
@command("shards", "write a dataset as WebDataset tar shards (train-NNNNNN.tar, val-NNNNNN.tar, _info.json) for "
                   "--data wds:OUTPUT")
def _shards(p: argparse.ArgumentParser):
    p.add_argument("--data", required=True, help="a folder with train/ and val/ class sub-folders, 'digits' or "
                   "'cifar10[:ROOT]' / 'cifar100[:ROOT]'")
    p.add_argument("--output", required=True, help="folder for the shards and _info.json")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--split", nargs="+", default=["train", "val"], choices=["train", "val"], help="splits to write")

    def run(a: argparse.Namespace) -> int:
        from locvit.data.shards import write_shards

        write_shards(a.data, a.output, a.shard_size, tuple(a.split), log=print)
        print(f"train or evaluate on them with --data wds:{a.output}")
        return 0

    return run


# --- locvit eval ------------------------------------------------------------------------------------------------
@command("eval", "top-1/top-5 and loss on a folder or CIFAR split with the model's own preprocessing")
def _eval(p: argparse.ArgumentParser):
    p.add_argument("--model", help="model name (default: the --config recipe's or the run's)")
    p.add_argument("--checkpoint", help="weights: the authors' release file or ours (.safetensors), or a run "
                   "directory (its config.yaml gives the flags not passed, its best.safetensors the weights)")
    p.add_argument("--config", help="a training recipe (path or shipped name): its model, data, input size and "
                   "test views are the defaults (e.g. regionvit_video_k400_timesformer: 1 clip x 3 crops)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that pickle Python objects")
    p.add_argument("--data", help="folder (its val/ split, or class folders), 'digits', "
                   "'cifar10[:ROOT]', 'cifar100[:ROOT]' or 'wds:SHARDS' (WebDataset shards: a folder or URL with "
                   "_info.json, or a pattern such as val-{000000..000009}.tar); with --task video a folder of clips "
                   "or 'motion'")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--img-size", type=int, help="input size (default: the model's pretrained cfg)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="DataLoader processes (default: min(4, CPU cores))")
    p.add_argument("--num-classes", type=int, help="default: the checkpoint's head, else the dataset's classes")
    p.add_argument("--device", default=None)
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE")
    _add_video_args(p, test=True, defaults=False)

    def run(a: argparse.Namespace) -> int:
        from pathlib import Path

        from locvit.engine.evaluate import evaluate_model, resolve_eval_args
        from locvit.engine.run import check_scorer
        from locvit.engine.video import check_task, video_data_kwargs

        if a.checkpoint:  # a detection / segmentation run's weights: say which command scores them
            ckpt = Path(a.checkpoint)
            check_scorer(ckpt if ckpt.is_dir() else ckpt.parent, "locvit eval")
        a = resolve_eval_args(a, _parse_kv(a.model_kwargs))
        video = None
        if check_task(a.task):
            video = dict(video_data_kwargs(a.num_frames, a.frame_sampling, a.frame_stride, a.test_clips),
                         crops=a.test_crops)
        res = evaluate_model(a.model, a.data, checkpoint=a.checkpoint, split=a.split, img_size=a.img_size,
                             batch_size=a.batch_size, workers=a.workers, num_classes=a.num_classes,
                             device=a.device, trust_pickle=a.trust_checkpoint,
                             model_kwargs=a.model_kwargs, progress=True, video=video)
        if video:
            print(f"{a.model} on {a.data} ({a.split}, {res['images']} videos, {a.test_clips} clips x {a.test_crops} "
                  f"crops of {a.num_frames} frames): top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}  "
                  f"loss {res['loss']:.4f}" + (f"  ({res['skipped']} unreadable videos skipped)" if res["skipped"]
                                               else ""))
            return 0
        print(f"{a.model} on {a.data} ({a.split}, {res['images']} images): top-1 {res['top1']:.2f}  "
              f"top-5 {res['top5']:.2f}  loss {res['loss']:.4f}"
              + (f"  ({res['skipped']} unreadable images skipped)" if res["skipped"] else ""))
        return 0

    return run


# --- locvit predict ---------------------------------------------------------------------------------------------
@command("predict", "top-k classes, with their names, of image files, folders or globs; --output writes "
                    "predictions.jsonl and pictures")
def _predict(p: argparse.ArgumentParser):
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (every image below them) or globs ('photos/**/*.jpg'); a run directory "
                        "given first stands for --checkpoint")
    p.add_argument("--model", help="model name (default: the run directory's)")
    p.add_argument("--checkpoint", help="weights (the authors' file or ours), or a `locvit train` run directory")
    p.add_argument("--pretrained", action="store_true", help="the authors' ImageNet weights (downloaded, cached)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that pickle Python objects")
    p.add_argument("--topk", type=int, help="classes shown per image (default: 5, at most the model's classes)")
    p.add_argument("--output", help="folder: predictions.jsonl (or .csv), images/ (each image with its top-k), "
                                    "contact_sheet.png")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="of the predictions file")
    p.add_argument("--no-pictures", action="store_true", help="with --output: only the predictions file")
    p.add_argument("--label-names", metavar="FILE",
                   help="class names, one a line in index order (default: the names the weights record; ImageNet's "
                        "for the authors' ImageNet heads; else 'class N')")
    p.add_argument("--explain", action="store_true",
                   help="with --output: a Grad-CAM map of the evidence for the predicted (or --target) class, drawn "
                        "over each image (explain/; docs/predict.md says what it shows)")
    p.add_argument("--target", help="with --explain: the class to explain (index or name; default: the predicted)")
    p.add_argument("--explain-stage", type=int, default=-1, metavar="I",
                   help="with --explain: the stage map to explain, as a forward_intermediates index (default -1, the "
                        "last; -2 is twice as fine on the pyramid models)")
    p.add_argument("--mechanism", action="store_true",
                   help="with --explain: also the family's own evidence as `locvit viz` draws it, at the map's peak "
                        "(mechanism/)")
    p.add_argument("--img-size", type=int, help="input size (default: the run's, else the model's pretrained cfg)")
    p.add_argument("--num-classes", type=int, help="default: the checkpoint's head")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, help="DataLoader processes (default: min(4, CPU cores))")
    p.add_argument("--device", default=None)
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--task", choices=["classify", "video"],
                   help="video: INPUTs are video files or frame folders, for a clip model (default: the run's task)")
    p.add_argument("--num-frames", type=int, help="video: frames per clip (default: the run's)")
    p.add_argument("--frame-sampling", choices=["uniform", "dense"], help="video: default the run's")
    p.add_argument("--frame-stride", type=int, help="video: frame step of dense sampling (default: the run's)")
    p.add_argument("--test-clips", type=int, default=1, help="video: temporal clips per video (scores averaged)")
    p.add_argument("--test-crops", type=int, default=1, help="video: spatial crops per clip (1 or 3)")

    def run(a: argparse.Namespace) -> int:
        from pathlib import Path

        from locvit.data.loader import default_workers
        from locvit.engine.run import is_run
        from locvit.predict import Predictor, expand_inputs

        inputs, checkpoint = list(a.inputs), a.checkpoint
        if checkpoint is None and len(inputs) > 1 and is_run(inputs[0]):
            checkpoint = inputs.pop(0)
        if a.pretrained and checkpoint:
            raise ValueError("--pretrained and --checkpoint both name weights: pass one of them")
        if not (a.pretrained or checkpoint):
            raise ValueError("no weights: pass --pretrained, --checkpoint FILE or a run directory (a model with "
                             "random weights predicts nothing)")
        if (a.explain or a.target is not None or a.mechanism) and not a.output:
            raise ValueError("--explain draws its maps into a folder: pass --output DIR")
        if (a.target is not None or a.mechanism or a.explain_stage != -1) and not a.explain:
            raise ValueError("--target, --explain-stage and --mechanism go with --explain")
        names = None
        if a.label_names:
            names = [n.strip() for n in Path(a.label_names).read_text().splitlines() if n.strip()]
        predictor = Predictor(a.model, checkpoint, pretrained=a.pretrained, label_names=names, img_size=a.img_size,
                              num_classes=a.num_classes, model_kwargs=_parse_kv(a.model_kwargs), device=a.device,
                              trust_pickle=a.trust_checkpoint, topk=a.topk, batch_size=a.batch_size,
                              workers=default_workers() if a.workers is None else a.workers, task=a.task,
                              num_frames=a.num_frames, frame_sampling=a.frame_sampling, frame_stride=a.frame_stride,
                              test_clips=a.test_clips, test_crops=a.test_crops)
        if a.explain and predictor.video:
            raise ValueError("--explain draws maps over images; it does not apply to clips (--task video)")
        files = expand_inputs(inputs, video=predictor.video)
        target = predictor.class_index(a.target)
        preds, unreadable = predictor.predict_files(files, progress=True)
        what = "a clip" if predictor.video else "an image"
        for u in unreadable:
            print(f"skipped {u.path}: not readable as {what} ({u.reason})", file=sys.stderr)
        if not preds:
            raise ValueError(f"none of the {len(files)} inputs could be read as {what}; nothing was predicted")
        for pr in preds:
            print(f"{pr.source}: " + ", ".join(f"{n} {100 * s:.1f}%" for n, s in zip(pr.names, pr.scores)))
        if a.output:
            from locvit.predict.output import write_outputs

            extra = None
            if a.explain:
                from locvit.predict.explain import write_explanations

                def extra(tmp):
                    for line in write_explanations(predictor, preds, tmp, target, mechanism=a.mechanism,
                                                   stage=a.explain_stage):
                        print(line)

            written = write_outputs(a.output, preds, unreadable, fmt=a.format, pictures=not a.no_pictures,
                                    extra=extra, picture=predictor.preview)
            print(f"wrote {len(written)} files to {a.output}")
        if unreadable:
            print(f"{len(preds)} of {len(files)} inputs predicted; {len(unreadable)} unreadable skipped",
                  file=sys.stderr)
        return 0

    return run


def _add_video_args(p: argparse.ArgumentParser, test: bool = False, defaults: bool = True) -> None:
    """``--task video`` and the clip sampling flags (``locvit.data.video``); defaults as in training
    (``defaults=False``: ``None``, for a command that fills them from a recipe or run first)."""
    from locvit.engine.config import TrainConfig as D

    def default(name: str):
        return getattr(D, name) if defaults else None

    p.add_argument("--task", default=default("task"), choices=["classify", "video"],
                   help="video: clips (folders of video files or frame folders, or 'motion') for a video model")
    p.add_argument("--num-frames", type=int, default=default("num_frames"), help="video: frames per clip")
    p.add_argument("--frame-sampling", default=default("frame_sampling"), choices=["uniform", "dense"],
                   help="video: one frame per equal segment (uniform) or frames --frame-stride apart (dense)")
    p.add_argument("--frame-stride", type=int, default=default("frame_stride"),
                   help="video: frame step of dense sampling")
    if test:
        p.add_argument("--test-clips", type=int, default=default("test_clips"),
                       help="video: temporal clips per video (scores averaged)")
        p.add_argument("--test-crops", type=int, default=default("test_crops"),
                       help="video: spatial crops per clip, spread along the longer side (3: both ends and the centre)")


def _expand_models(patterns: list[str]) -> list[str]:
    """Wildcards over locvit's models (and timm's, for peers such as deit_small_patch16_224)."""
    import timm

    import locvit

    names: list[str] = []
    for p in patterns:
        # wildcards expand to canonical names; an official alias or a timm name given exactly is taken as is
        found = locvit.list_models(p) or locvit.list_models(p, include_aliases=True) or timm.list_models(p)
        if not found:
            raise ValueError(f"no model matches {p!r}; `locvit models` lists locvit's, timm.list_models() timm's")
        names += [n for n in found if n not in names]
    return names


def _sizes(values: list[int] | None) -> list[tuple[int, int]]:
    return [(v, v) for v in values or [224]]


# --- locvit flops -----------------------------------------------------------------------------------------------
@command("flops", "parameters and FLOPs (GMACs, as the papers report) at any input size")
def _flops(p: argparse.ArgumentParser):
    p.add_argument("--model", nargs="+", required=True, help="names or wildcards")
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="square sides (default: model's)")
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames per clip for video models (default: the model's); FLOPs are per clip")
    p.add_argument("--csv", help="also write the table as CSV")
    p.add_argument("--paper-table", metavar="MD", help="write a markdown table against the official/README figures")
    p.add_argument("--official-counts", metavar="JSON",
                   help="GMACs counted on the official implementations with the same counter (name -> GMACs)")

    def run(a: argparse.Namespace) -> int:
        from locvit.bench.flops import COUNTER, count_flops
        from locvit.models import clip_length, create_model

        if a.paper_table:
            import json

            from locvit.bench.reference import COUNTER_NOTE, flops_table
            from locvit.files import atomic_write_text

            official = json.load(open(a.official_counts)) if a.official_counts else None
            table = flops_table(_expand_models(a.model), official)
            cmd = "locvit flops --model " + " ".join(f"'{m}'" for m in a.model) + f" --paper-table {a.paper_table}"
            if a.official_counts:
                cmd += f" --official-counts {a.official_counts}"
            atomic_write_text(a.paper_table, (
                "# Parameters and FLOPs against the official figures\n\n"
                f"Generated by `{cmd}`.\n\n"
                f"Counter: {COUNTER}. GMACs = multiply-adds, the unit the papers' 'GFLOPs' use. The 'official code, "
                "same counter' column counts the authors' implementations with this counter "
                "(`scripts/bench_official.py --gmacs`, from checkouts of the official repositories); the fvcore "
                "column is the conformance manifests' count of the same official models.\n\n"
                f"{COUNTER_NOTE}.\n\n{table}\n"))
            print(table)
            return 0

        rows = []
        for name in _expand_models(a.model):
            for size in a.img_size or [None]:
                kw = {"img_size": size} if size else {}
                model = create_model(name, **kw)
                res = model.pretrained_cfg["input_size"][-1] if size is None else size
                frames = (a.num_frames or clip_length(model)) if clip_length(model) else None
                fc = count_flops(model, (3, frames, res, res) if frames else (3, res, res))
                rows.append(dict(model=name, img_size=res, num_frames=frames or "",
                                 input=f"{frames}x{res}" if frames else str(res), params_m=round(fc.params / 1e6, 3),
                                 gmacs=round(fc.gmacs, 3), gflops=round(fc.gflops, 3)))
        print(f"counter: {COUNTER} (video models: per clip of T frames, input TxS)")
        print(f"{'model':36s} {'input':>7s} {'params (M)':>11s} {'GMACs':>9s} {'GFLOPs':>9s}")
        for r in rows:
            print(f"{r['model']:36s} {r['input']:>7s} {r['params_m']:11.2f} {r['gmacs']:9.2f} {r['gflops']:9.2f}")
        if a.csv:
            from locvit.bench.sweep import write_csv

            write_csv(rows, a.csv)
        return 0

    return run


# --- locvit bench -----------------------------------------------------------------------------------------------
@command("bench", "throughput, latency and peak memory; --vs for interleaved ratios, --sweep for resolution sweeps")
def _bench(p: argparse.ArgumentParser):
    p.add_argument("--model", nargs="+", required=True, help="names or wildcards (timm names work too)")
    p.add_argument("--vs", help="a second model run interleaved with each --model; prints speed ratios")
    p.add_argument("--img-size", type=int, nargs="+", default=[224], help="square sides")
    p.add_argument("--batch-size", type=int, nargs="+", default=[8])
    p.add_argument("--num-frames", type=int, default=None,
                   help="frames per clip for video models (default: the model's); rates are then clips/s")
    p.add_argument("--mode", nargs="+", default=["infer"], choices=["infer", "train", "latency"],
                   help="latency = inference at batch 1")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--backend", nargs="+", metavar="BACKEND",
                   choices=["eager", "compile", "onnxruntime", "openvino", "openvino-int8"],
                   help="time the model in these runtimes round-robin on one input (eager always included; exported "
                        "files checked against eager first; openvino-int8 is calibrated on random inputs: speed only, "
                        "see `locvit export --int8` for the accuracy gate); ratios vs eager and vs --vs")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--peak", action="store_true", help="also report the share of this CPU's fp32 matmul peak")
    p.add_argument("--sweep", action="store_true",
                   help="resolution sweep over --img-size: GMACs, time, memory and fitted exponents")
    p.add_argument("--csv", help="write results as CSV")
    p.add_argument("--json", help="write results as JSON")
    p.add_argument("--plot", help="write a PNG (sweep: three log-log panels; else images/s bars)")

    def run(a: argparse.Namespace) -> int:
        import json

        from locvit.bench import throughput as tp

        models = _expand_models(a.model)
        if a.sweep:
            from locvit.bench import sweep

            rows = sweep.resolution_sweep(models, a.img_size, batch_size=a.batch_size[0], runs=a.runs,
                                          warmup=a.warmup, device=a.device, threads=a.threads)
            ex = sweep.exponents(rows)
            print("\nfitted exponent k (cost ~ pixels^k):")
            for name, e in ex.items():
                print(f"  {name:32s} GMACs {e['gmacs']:.2f}  time {e['ms_per_image']:.2f}  "
                      f"memory {e['peak_mem_mb']:.2f}")
            if a.csv:
                sweep.write_csv(rows, a.csv)
            if a.plot:
                sweep.plot_sweep(rows, a.plot)
            if a.json:
                from locvit.files import atomic_write_text

                atomic_write_text(a.json, json.dumps(dict(rows=rows, exponents=ex), indent=1))
            return 0

        rows = []
        peak = tp.matmul_peak_gflops(device=a.device) if a.peak else None
        if peak:
            print(f"fp32 matmul peak now: {peak:.1f} GFLOP/s")
        for name in models:
            for size in _sizes(a.img_size):
                for mode in a.mode:
                    for bs in ([1] if mode == "latency" else a.batch_size):
                        m = "infer" if mode == "latency" else mode
                        spec = tp.BenchSpec(name, bs, size, m, a.device, a.threads, a.channels_last, a.compile,
                                            a.amp, num_frames=a.num_frames)
                        if a.backend:
                            vs = tp.BenchSpec(a.vs, bs, size, m, a.device, a.threads) if a.vs else None
                            for r in tp.benchmark_backends(spec, a.backend, vs, a.warmup, a.runs):
                                rows.append(r.row())
                                _print_backend_row(rows[-1])
                            continue
                        if a.vs:
                            vs = tp.BenchSpec(a.vs, bs, size, m, a.device, a.threads, a.channels_last, a.compile,
                                              a.amp, num_frames=a.num_frames)
                            ra, rb, ratio = tp.benchmark_pair(spec, vs, a.warmup, a.runs, not a.no_memory)
                            for r in (ra, rb):
                                row = r.row()
                                row["vs"] = a.vs if r is ra else name
                                row["ratio"] = ratio if r is ra else 1 / ratio
                                rows.append(row)
                        else:
                            rows.append(tp.benchmark(spec, a.warmup, a.runs, not a.no_memory).row())
                        if peak:
                            from locvit.bench.flops import count_flops
                            from locvit.models import create_model

                            gm = count_flops(create_model(name), rows[-1]["input_shape"]).gmacs
                            for r in rows[-2 if a.vs else -1:]:
                                if r["model"] == name:
                                    r["peak_share"] = 2 * gm * r["images_per_s"] / peak
                        _print_row(rows[-2] if a.vs else rows[-1], a.vs)
                        if a.vs:
                            _print_row(rows[-1], a.vs)
        if a.csv:
            from locvit.bench.sweep import write_csv

            write_csv(rows, a.csv)
        if a.json:
            from locvit.files import atomic_write_text

            atomic_write_text(a.json, json.dumps(rows, indent=1))
        return 0

    return run


def _print_backend_row(r: dict) -> None:
    diff = f"  max |d| vs eager {r['max_abs_diff']:.1e}" if r.get("max_abs_diff") is not None else ""
    vs = f"  x{r['ratio_vs']:.2f} vs --vs" if r.get("ratio_vs") is not None else ""
    print(f"{r['model']:28s} {r['backend']:13s} bs {r['batch_size']:3d} {r['img_size']:>9s}  "
          f"{r['images_per_s']:8.1f} img/s ({r['spread']})  x{r['ratio_vs_eager']:.2f} vs eager{vs}{diff}",
          flush=True)


def _print_row(r: dict, vs: str | None) -> None:
    extra = f"  x{r['ratio']:.2f} vs {r['vs']}" if vs else ""
    mem = f"  peak {r['peak_mem_mb']:.0f} MB" if r.get("peak_mem_mb") is not None else ""
    share = f"  {100 * r['peak_share']:.0f}% of matmul peak" if r.get("peak_share") else ""
    size, unit = r["img_size"], "img/s"
    if r.get("num_frames"):  # a video model: clips of T frames
        size, unit = f"{r['num_frames']}x{size}", "clip/s"
    print(f"{r['model']:34s} {r['mode']:5s} bs {r['batch_size']:3d} {size:>9s}  "
          f"{r['images_per_s']:8.1f} {unit} ({r['spread']})  {r['step_ms']:8.1f} ms/step{mem}{extra}{share}",
          flush=True)


# --- locvit detect / segment ----------------------------------------------------------------------------------
def _dense_command(p: argparse.ArgumentParser, task: str, example: str):
    """``locvit detect|segment train|eval|predict``: the task's config flags; the runner calls locvit.dense.<task>
    (predict: locvit.predict.dense)."""
    import importlib

    from locvit.dense.config import DetectConfig, SegmentConfig

    cls = DetectConfig if task == "detect" else SegmentConfig
    p.add_argument("action", choices=["train", "eval", "predict"],
                   help="train: a run directory as `locvit train` writes it; eval: score --checkpoint (a run "
                        "directory or its weights) on the validation split; predict: draw the predictions of "
                        "--checkpoint on INPUT images into --output")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="predict: image files, folders or globs")
    p.add_argument("--config", help=f"YAML recipe (a path, or a shipped name such as {example})")
    if task == "detect":
        p.add_argument("--save-results", metavar="FILE",
                       help="eval: also write the COCO results JSON here (always written to OUTPUT/results.json)")
        p.add_argument("--score-thr", type=float, default=0.5, help="predict: draw detections scoring at least this")
    _config_args(p, cls)

    def run(a: argparse.Namespace) -> int:
        from locvit.dense.common import eval_config
        from locvit.dense.config import build_task_config

        if a.inputs and a.action != "predict":
            raise ValueError(f"INPUT files are for `locvit {task} predict`; {a.action} reads --data")
        module = importlib.import_module(f"locvit.dense.{task}")
        overrides = _config_overrides(a, cls)
        if a.action == "predict":
            from locvit.predict.dense import predict_command

            if not a.output:
                raise ValueError(f"pass --output DIR: `locvit {task} predict` writes its pictures there")
            if not a.inputs:
                raise ValueError(f"pass the images to predict: locvit {task} predict --checkpoint RUN --output DIR "
                                 "INPUT...")
            cfg, weights = eval_config(cls, a.config, dict(overrides, output=None))
            predict_command(task, cfg, weights, a.inputs, a.output, score_thr=getattr(a, "score_thr", 0.5))
            return 0
        if a.action == "eval":
            extra = dict(save_results=a.save_results) if task == "detect" else {}
            module.evaluate_run(*eval_config(cls, a.config, overrides), **extra)
            return 0
        saved = None
        if a.resume:  # as `locvit train --resume`: the interrupted run's settings are the base
            from locvit.engine.run import run_config

            state_file, saved = run_config(a.resume, a.output or cls.output, cls.COMMAND)
            if a.output is None:
                overrides["output"] = str(state_file.parent)
        cfg = build_task_config(cls, a.config, overrides, run=saved)
        module.train_run(cfg)
        print(f"done -> {cfg.output}")
        return 0

    return run


@command("detect", "object / instance / keypoint detection: Mask R-CNN, Faster R-CNN, RetinaNet, Keypoint R-CNN on "
                   "a locvit backbone, COCO-format data, COCOeval AP")
def _detect(p: argparse.ArgumentParser):
    return _dense_command(p, "detect", "mask_rcnn_1x_coco")


@command("segment", "semantic segmentation: Semantic FPN or UperNet on a locvit encoder, ADE20K-style data, mIoU")
def _segment(p: argparse.ArgumentParser):
    return _dense_command(p, "segment", "upernet_160k_ade20k")


# --- locvit demo -------------------------------------------------------------------------------------------------
@command("demo", "train a small model of each family on generated or embedded data and compare them "
                 "(classification on digits, or --task detect / segment on generated shapes)")
def _demo(p: argparse.ArgumentParser):
    p.add_argument("--task", choices=["classify", "detect", "segment"], default="classify")
    p.add_argument("--output", default=None, help="default: runs/demo (classify), runs/demo_detect, runs/demo_segment; "
                   "a rerun replaces the runs an earlier demo left there (one sub-folder per family)")
    p.add_argument("--epochs", type=int, help="override the demo's epochs (quicker, less accurate)")
    p.add_argument("--family", nargs="*", help="only these families (RegionViT, Focal, VVT, LocalViT)")
    p.add_argument("--workers", type=int, help="DataLoader workers (dense tasks; default 2)")

    def run(a: argparse.Namespace) -> int:
        if a.task == "classify":
            from locvit.demo import run_demo

            run_demo(a.output or "runs/demo", epochs=a.epochs, families=a.family)
        else:
            from locvit.dense.demo import run_dense_demo

            run_dense_demo(a.task, a.output or f"runs/demo_{a.task}", epochs=a.epochs, families=a.family,
                           workers=a.workers)
        return 0

    return run


# --- locvit viz --------------------------------------------------------------------------------------------------
@command("viz", "pictures of each locality mechanism on a photo: attention maps per level, receptive fields")
def _viz(p: argparse.ArgumentParser):
    p.add_argument("--model", nargs="+", required=True,
                   help="names or wildcards; two or more also give an ERF grid comparing them")
    p.add_argument("--image", help="photo file (default: scikit-learn's bundled sample photo china.jpg)")
    p.add_argument("--query", type=int, nargs=2, metavar=("ROW", "COL"),
                   help="query pixel of the model input (the photo resized and centre-cropped); default: centre")
    p.add_argument("--output", default="figs", help="folder for the PNGs")
    p.add_argument("--checkpoint", nargs="+", help="weights, one file per --model (default: random init)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that pickle Python objects")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the model's)")
    p.add_argument("--stage", type=int, default=0, help="stage of the attention block shown (0-based; -1 = last)")
    p.add_argument("--block", type=int, default=0, help="block within the stage (0-based; -1 = last)")
    p.add_argument("--no-erf", action="store_true", help="skip the effective receptive fields")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")

    def run(a: argparse.Namespace) -> int:
        from locvit.viz.run import render

        paths = render(_expand_models(a.model), a.output, image=a.image, query=a.query, checkpoints=a.checkpoint,
                       img_size=a.img_size, stage=a.stage, block=a.block, erf=not a.no_erf, seed=a.seed,
                       trust_pickle=a.trust_checkpoint)
        print(f"wrote {len(paths)} figures to {a.output}")
        return 0

    return run


# --- locvit export -----------------------------------------------------------------------------------------------
@command("export", "export a model to ONNX, OpenVINO IR (fp32, or INT8 behind an accuracy gate) or a torch.export "
                   "program (.pt2), verified against eager PyTorch")
def _export(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True)
    p.add_argument("--format", choices=["onnx", "pt2", "openvino"], default=None,
                   help="default: onnx (openvino with --int8); openvino writes NAME.xml + NAME.bin")
    p.add_argument("--checkpoint", help="weights (official release file or ours); default: random init")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that pickle Python objects")
    p.add_argument("--img-size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=1, help="batch of the example input")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="let the exported file take any batch size (default: on)")
    p.add_argument("--num-classes", type=int, help="default: the checkpoint's head, else the model's")
    p.add_argument("--output", help="file to write (default: MODEL.onnx / MODEL.pt2 / MODEL.xml, MODEL_int8.xml)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |exported - eager| difference")
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--int8", action="store_true",
                   help="post-training static INT8 (NNCF, OpenVINO IR), written only if it passes the accuracy gate")
    p.add_argument("--calib", metavar="DATA",
                   help="calibration images: digits, cifar10:ROOT, or a folder (its train/ split, or class folders)")
    p.add_argument("--val", metavar="DATA", help="validation images for the gate (its val/ split; default: --calib's)")
    p.add_argument("--max-drop", type=float, default=0.5, help="largest accepted top-1 drop in points (default 0.5)")
    p.add_argument("--calib-images", type=int, default=300, help="at most this many calibration images")
    p.add_argument("--val-images", type=int, default=None, help="at most this many validation images (default all)")
    p.add_argument("--report", metavar="JSON",
                   help="with --int8: write the accuracy gate's measurements here (also when the model is refused)")

    def run(a: argparse.Namespace) -> int:
        from locvit.export import export

        fmt = a.format or ("openvino" if a.int8 else "onnx")
        if not a.int8 and (a.calib or a.val):
            raise ValueError("--calib/--val are the INT8 calibration and validation images: add --int8")
        import json

        from locvit.deploy import Int8Refused
        from locvit.files import atomic_write_text

        if a.report and not a.int8:
            raise ValueError("--report writes the INT8 accuracy gate's measurements: add --int8")

        def report(rep, path) -> None:
            if a.report:
                atomic_write_text(a.report, json.dumps(dict(rep.as_dict(), model=a.model, output=path,
                                                            checkpoint=a.checkpoint), indent=1) + "\n")

        try:
            res = export(a.model, fmt, output=a.output, checkpoint=a.checkpoint, img_size=a.img_size,
                         batch_size=a.batch_size, dynamic_batch=a.dynamic_batch, num_classes=a.num_classes,
                         atol=a.atol, trust_pickle=a.trust_checkpoint, model_kwargs=_parse_kv(a.model_kwargs),
                         log=print, int8=a.int8, calib=a.calib, val=a.val, max_drop=a.max_drop,
                         calib_images=a.calib_images, val_images=a.val_images)
        except Int8Refused as e:
            if e.report is not None:
                report(e.report, None)
            raise
        if res.int8 is not None:
            report(res.int8, str(res.path))
            print(f"exported {a.model} -> {res.path} (INT8 OpenVINO IR, input {res.input_shape}, "
                  f"{res.size_mb:.1f} MB); {res.int8.summary()}")
            return 0
        print(f"exported {a.model} -> {res.path} ({res.format}, input {res.input_shape}, "
              f"{res.size_mb:.1f} MB); verified against eager: max |diff| {res.max_abs_diff:.2e} "
              f"(atol {a.atol:g})")
        return 0

    return run

# --- locvit convert ----------------------------------------------------------------------------------------------
@command("convert", "turn the authors' weights into a hub-style folder (config.json, model.safetensors, model card)")
def _convert(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", help="the authors' file (default: download what pretrained=True loads)")
    p.add_argument("--output", required=True, help="folder to create (then timm.create_model('local-dir:FOLDER'))")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the folder to this Hugging Face repository")
    p.add_argument("--private", action="store_true", help="create the hub repository as private")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that pickle Python objects")
    p.add_argument("--num-classes", type=int, help="the checkpoint's class count when it is not 1000")
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE")

    def run(a: argparse.Namespace) -> int:
        from locvit.hub import convert, push_to_hub

        kwargs = _parse_kv(a.model_kwargs)
        if a.num_classes is not None:
            kwargs["num_classes"] = a.num_classes
        res = convert(a.model, a.checkpoint, a.output, trust_pickle=a.trust_checkpoint, model_kwargs=kwargs, log=print)
        print(f"wrote {res.output} ({', '.join(res.files)}); load it with "
              f"timm.create_model('local-dir:{res.output}', pretrained=True) after `import locvit`")
        if a.push_to_hub:
            url = push_to_hub(res.output, a.push_to_hub, private=a.private)
            print(f"pushed to {url}; load it with timm.create_model('hf-hub:{a.push_to_hub}', pretrained=True)")
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    import locvit

    parser = argparse.ArgumentParser(prog="locvit", description="Locality-aware vision transformers.")
    parser.add_argument("--version", action="version", version=f"locvit {locvit.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (add_args, _, help) in _COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(_run=add_args(p))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `locvit detect predict --checkpoint RUN IMG...`: argparse fills INPUT where the first positional stands;
        # inputs given after the options come back here and join them
        if isinstance(getattr(args, "inputs", None), list) and not any(e.startswith("-") for e in extra):
            args.inputs += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    import os

    import locvit
    from locvit.runtime import tune_from_env

    locvit.register_models()  # the console script parsed the command line before importing torch, timm and the zoo

    tune_from_env()  # freed activations stay in the process: no page faults on every forward (locvit.runtime)
    if os.environ.get("LOCVIT_DEBUG"):  # full tracebacks for bug reports
        return int(args._run(args) or 0)
    from locvit.engine.run import NonFiniteLossError
    from locvit.files import describe_os_error

    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"locvit {args.command}: error: {_user_message(e)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"locvit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a read-only folder: say which file and why (LOCVIT_DEBUG=1: traceback)
        print(f"locvit {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _user_message(e: BaseException) -> str:
    """The message of a user error; one raised in a DataLoader worker arrives wrapped with the worker's traceback
    ("Caught ValueError in DataLoader worker process 0. Original Traceback ..."): its last line is the message."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


if __name__ == "__main__":
    raise SystemExit(main())
