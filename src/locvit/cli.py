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
