"""The ``locvit`` console script.

It parses the command line before torch, timm and the model zoo are imported, so ``locvit --help`` and argument
errors answer at once; :func:`locvit.cli.main` registers the models before the chosen command runs.
"""
from __future__ import annotations

import os


def main() -> int:
    os.environ["_LOCVIT_DEFER_IMPORTS"] = "1"
    try:
        from locvit.cli import main as run
    finally:
        del os.environ["_LOCVIT_DEFER_IMPORTS"]  # child processes and later imports register as usual
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
