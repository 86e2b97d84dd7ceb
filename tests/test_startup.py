"""First contact: the ``locvit`` console script parses its command line without importing torch, timm or the model
zoo; ``import locvit`` registers every model with timm and binds the rest of the API on first use."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "timm", "torchvision", "numpy", "PIL")


def _imported_after(argv: list[str]) -> tuple[list[str], str, int]:
    code = (
        "import sys, _locvit_cli\n"
        f"sys.argv = ['locvit', *{argv!r}]\n"
        "try:\n    rc = _locvit_cli.main()\nexcept SystemExit as e:\n    rc = e.code\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules), 'RC', rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY"))
    return eval(line.split("HEAVY ", 1)[1].split(" RC")[0]), proc.stdout + proc.stderr, proc.returncode


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["detect", "train", "--help"],
                                  ["segment", "eval", "--help"], ["train", "--no-such-flag"], []])
def test_help_and_usage_errors_import_no_framework(argv):
    heavy, out, _ = _imported_after(argv)
    assert heavy == [], f"locvit {' '.join(argv)} imported {heavy}"
    assert "usage: locvit" in out


def test_the_console_script_runs_commands():
    script = Path(sys.executable).with_name("locvit")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-c", "import _locvit_cli; _locvit_cli.main()"]
    proc = subprocess.run([*cmd, "models", "vvt_tiny", "--no-flops"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "vvt_tiny" in proc.stdout and "params (M)" in proc.stdout


def test_import_registers_the_models_and_binds_the_api_lazily():
    code = (
        "import sys, locvit, timm\n"
        "assert 'regionvit_small' in timm.list_models('regionvit*')\n"
        "assert callable(locvit.localize) and callable(locvit.create_model) and locvit.LoadReport\n"
        "from locvit import *\n"
        "assert callable(localize) and set(locvit.__all__) <= set(dir(locvit))\n"
        "from locvit.localize import LocalityError as old  # the deprecated module path still imports\n"
        "assert old is locvit.LocalityError\n"
        "mod = sys.modules['locvit.localize']\n"
        "assert locvit.localize is mod.localize\n"
        "try:\n    locvit.no_such_name\nexcept AttributeError as e:\n    print('OK', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "OK module 'locvit' has no attribute 'no_such_name'" in proc.stdout
