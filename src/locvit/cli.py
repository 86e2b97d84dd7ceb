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
    p.add_argument("--no-flops", action="store_true", help="skip the GMAC count (faster)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--update-readme", metavar="README", help="rewrite the model table between the README markers")

    def run(a: argparse.Namespace) -> int:
        from locvit.zoo import model_table, render_table, update_readme

        rows = model_table(a.pattern, include_aliases=a.aliases, flops=not a.no_flops)
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


# --- locvit train -----------------------------------------------------------------------------------------------
@command("train", "train or fine-tune a model (the papers' DeiT/Swin recipe); run under torchrun for DDP")
def _train(p: argparse.ArgumentParser):
    import dataclasses
    import typing

    from locvit.engine.config import TrainConfig

    p.add_argument("--config", help="YAML recipe (a path, or a shipped name such as regionvit_in1k)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if f.name == "model_kwargs":
            p.add_argument(flag, nargs="*", metavar="KEY=VALUE", help="extra model constructor arguments")
        elif f.name == "resume":
            p.add_argument(flag, nargs="?", const="auto", default=None, metavar="RUN_DIR_OR_FILE",
                           help="continue a run (default: OUTPUT/last.pth)")
        elif kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif "tuple" in str(kind):
            p.add_argument(flag, nargs=2, type=float, default=None)
        else:
            base = next((t for t in (int, float, str) if t in typing.get_args(kind) or kind is t), str)
            p.add_argument(flag, type=base, default=None)

    def run(a: argparse.Namespace) -> int:
        from locvit.engine.config import FIELDS, build_config
        from locvit.engine.train import train

        overrides = {k: getattr(a, k) for k in FIELDS if k != "model_kwargs"}
        if a.model_kwargs is not None:
            overrides["model_kwargs"] = _parse_kv(a.model_kwargs)
        cfg = build_config(a.config, overrides)
        metrics = train(cfg)
        if metrics and "top1" in metrics:
            print(f"done: top-1 {metrics['top1']:.2f}  top-5 {metrics['top5']:.2f}  -> {cfg.output}")
        return 0

    return run


# --- locvit eval ------------------------------------------------------------------------------------------------
@command("eval", "top-1/top-5 and loss on a folder or CIFAR split with the model's own preprocessing")
def _eval(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", help="weights: the authors' release file or ours (.safetensors)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that pickle Python objects")
    p.add_argument("--data", default="digits", help="folder (its val/ split, or class folders), 'digits', "
                   "'cifar10[:ROOT]' or 'cifar100[:ROOT]'")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--img-size", type=int, help="input size (default: the model's pretrained cfg)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--num-classes", type=int, help="default: the checkpoint's head, else the dataset's classes")
    p.add_argument("--device", default=None)
    p.add_argument("--model-kwargs", nargs="*", metavar="KEY=VALUE")

    def run(a: argparse.Namespace) -> int:
        from locvit.engine.evaluate import evaluate_model

        res = evaluate_model(a.model, a.data, checkpoint=a.checkpoint, split=a.split, img_size=a.img_size,
                             batch_size=a.batch_size, workers=a.workers, num_classes=a.num_classes,
                             device=a.device, trust_pickle=a.trust_checkpoint,
                             model_kwargs=_parse_kv(a.model_kwargs), progress=True)
        print(f"{a.model} on {a.data} ({a.split}, {res['images']} images): top-1 {res['top1']:.2f}  "
              f"top-5 {res['top5']:.2f}  loss {res['loss']:.4f}"
              + (f"  ({res['skipped']} unreadable images skipped)" if res["skipped"] else ""))
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
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"locvit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
