"""README.md is executed: every code block marked ``<!-- readme: runs -->`` runs as written, in order, in a fresh
folder, with the ``locvit`` command of this environment on the PATH (what ``source .venv/bin/activate`` gives), on
the defaults users get. What the README claims about their results is checked against what they produced."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- readme: runs -->"


def marked_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block that directly follows the marker."""
    pattern = re.compile(re.escape(MARK) + r"\s*\n```(\w+)\n(.*?)\n```", re.S)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(text)]


def shell_commands(code: str) -> list[str]:
    """Commands of a shell block: comments dropped, backslash continuations joined."""
    out, cur = [], ""
    for line in code.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not line and not cur:
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append((cur + line).strip())
        cur = ""
    return [c for c in out if c]


def test_marked_blocks_exist():
    kinds = [k for k, _ in marked_blocks(README.read_text())]
    assert kinds.count("bash") >= 1 and kinds.count("python") >= 1, kinds


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run every marked block once; returns the folder they ran in and what each command printed."""
    work = tmp_path_factory.mktemp("readme")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    outputs: dict[str, str] = {}
    for lang, code in marked_blocks(README.read_text()):
        if lang == "bash":
            for cmd in shell_commands(code):
                proc = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True)
                assert proc.returncode == 0, (f"README command failed: {cmd}\n{proc.stdout[-2000:]}\n"
                                              f"{proc.stderr[-3000:]}")
                outputs[cmd] = proc.stdout
        elif lang == "python":
            proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, f"README Python block failed:\n{code}\n{proc.stderr[-3000:]}"
            outputs[code] = proc.stdout
        else:
            raise AssertionError(f"a marked README block in {lang!r}: mark only bash or python blocks")
    return work, outputs


def _output_of(outputs: dict[str, str], prefix: str) -> str:
    hits = [out for cmd, out in outputs.items() if cmd.startswith(prefix)]
    assert hits, f"the README runs no `{prefix}` command"
    return hits[0]


def test_readme_runs_and_its_claims_hold(executed):
    work, outputs = executed
    text = README.read_text()
    run = work / "runs" / "try"
    # the quick training: the files the README lists, and the accuracy it states
    for name in ("config.yaml", "metrics.csv", "curves.png", "last.pth", "model.safetensors", "best.safetensors"):
        assert (run / name).is_file(), f"the README's run directory lacks {name}"
    rows = (run / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    top1 = [float(r.split(",")[head.index("top1")]) for r in rows[1:]]
    claimed = float(re.search(r"reaches ([\d.]+)% top-1", text).group(1))
    assert top1[-1] >= 90, f"the README's quick training ends at {top1[-1]:.2f}% top-1 (< 90%)"
    assert abs(top1[-1] - claimed) <= 3, f"README says {claimed}% top-1, the run reached {top1[-1]:.2f}%"
    # its eval command reproduces the best epoch
    out = _output_of(outputs, "locvit eval")
    assert f"top-1 {max(top1):.2f}" in out, out
    # export verifies the file against the trained model at its own size
    out = _output_of(outputs, "locvit export")
    assert "input (1, 3, 32, 32)" in out and (work / "localvit_tiny.onnx").is_file()
    diff = float(re.search(r"max \|diff\| ([\d.e+-]+)", out).group(1))
    assert diff <= 1e-4
    # the model table lists weights and sizes
    out = _output_of(outputs, "locvit models")
    assert "regionvit_small" in out and "GMACs" in out
    # viz wrote its pictures
    assert len(list((work / "figs").glob("*.png"))) >= 2


def test_readme_predict_section(executed):
    """The Predict section: names '0'..'9' from the run's weights, the pictures it shows, the names carried through
    `convert` into `local-dir:`, and the Grad-CAM map."""
    import json

    work, outputs = executed
    digits = [str(i) for i in range(10)]
    rows = [json.loads(line) for line in (work / "preds" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(set(r["names"]) <= set(digits) for r in rows)
    right = sum(r["names"][0] == re.search(r"_is_(\d)", r["source"]).group(1) for r in rows)
    assert right >= 13, f"the README's trained model names {right} of 16 held-out digits"
    assert (work / "preds" / "contact_sheet.png").is_file() and len(list((work / "preds" / "images").iterdir())) == 16
    assert (README.parent / "docs" / "images" / "predict_digits.png").is_file()
    assert json.loads((work / "hub" / "digits" / "config.json").read_text())["label_names"] == digits
    out = _output_of(outputs, "locvit predict --model local-dir:hub/digits")
    assert re.search(r"03_is_\d\.png: \d \d+\.\d%", out) and "evidence for '" in out, out
    assert len(list((work / "explained" / "explain").glob("*.png"))) == 1
    python_block = next(out for code, out in outputs.items() if "locvit.Predictor" in code)
    assert re.search(r"digits/00_is_\d\.png \['\d', '\d', '\d'\]", python_block), python_block
