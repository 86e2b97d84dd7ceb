"""scripts/bench_official.py: the official-vs-locvit harness end to end on a stand-in checkout, and the documented
tables against the raw runs they are printed from."""
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH_DOCS = REPO / "docs" / "benchmarks"

# a stand-in for the VVT checkout: an entry point found and imported the way the official ones are (timm's old
# registry path served by the shims), building a tiny model in locvit's own key format, which the family's filter
# also takes; SHIFT is added to its logits, as an implementation that disagrees would
STAND_IN = '''
from timm.models.registry import register_model

import locvit

SHIFT = {shift}

@register_model
def vvt_test(pretrained=False, **kwargs):
    model = locvit.create_model("vvt_test", drop_path_rate=0.1)
    if SHIFT:
        model.register_forward_hook(lambda module, args, out: out + SHIFT)
    return model
'''


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts scripts/ on sys.path
    spec = importlib.util.spec_from_file_location("bench_official", REPO / "scripts" / "bench_official.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    for name in ("vvt", "make_conformance"):
        sys.modules.pop(name, None)


def stand_in_root(root: Path, shift: float = 0.0) -> Path:
    pkg = root / "Vicinity-Vision-Transformer" / "classification"
    pkg.mkdir(parents=True)
    (pkg / "vvt.py").write_text(STAND_IN.format(shift=shift))
    return root


def test_harness_end_to_end(bench, tmp_path, capsys):
    out = tmp_path / "run.json"
    args = ["--official-root", str(stand_in_root(tmp_path / "official")), "--models", "vvt_test", "--mode", "infer",
            "train", "--img-size", "32", "--batch-size", "2", "--warmup", "1", "--rounds", "3", "--json", str(out),
            "--profile", "3"]
    assert bench.main(args) == 0
    run = json.loads(out.read_text())
    assert (run["batch"], run["img_size"], run["rounds"], run["tune_malloc"]) == (2, 32, 3, False)
    assert run["peak_gflops"] > 0
    assert [r["mode"] for r in run["rows"]] == ["infer", "train"]
    for r in run["rows"]:
        assert r["model"] == r["official"] == "vvt_test"
        assert r["max_abs_diff"] < 1e-6 and r["drop_path_rate"] == pytest.approx(0.1)
        assert len(r["ours_s"]) == len(r["official_s"]) == 3
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert 0 < r["ours_peak_share"] and 0 < r["official_peak_share"]
    printed = capsys.readouterr().out
    assert "| `vvt_test` | vvt_test |" in printed and "3 rounds" in printed
    assert printed.count("self CPU time by op") == 4  # each implementation, each mode

    # GMACs of the official models with locvit's counter, added to an existing counts file
    counts = tmp_path / "gmacs.json"
    counts.write_text('{"other_model": 1.5}')
    assert bench.main([*args[:2], "--models", "vvt_test", "--img-size", "224", "--gmacs", str(counts)]) == 0
    import locvit
    from locvit.bench.flops import count_flops

    expected = round(count_flops(locvit.create_model("vvt_test")).gmacs, 4)
    assert json.loads(counts.read_text()) == {"other_model": 1.5, "vvt_test": expected}



@pytest.mark.slow
def test_backends_against_the_official_model(bench, tmp_path, capsys):
    """--backend: locvit eager and its exported ONNX/OpenVINO files against the official eager model in one
    round-robin; the per-family table is rendered from the saved run."""
    pytest.importorskip("openvino")
    out = tmp_path / "run.json"
    assert bench.main(["--official-root", str(stand_in_root(tmp_path / "official")), "--models", "vvt_test",
                       "--img-size", "32", "--batch-size", "2", "--warmup", "1", "--rounds", "2", "--threads", "1",
                       "--backend", "onnxruntime", "openvino", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["backend"] for r in rows] == ["eager", "onnxruntime", "openvino", "official eager"]
    assert rows[-1]["ratio_vs_official"] == 1.0 and rows[0]["ratio_vs_eager"] == 1.0
    assert all(r["export_max_abs_diff"] <= 1e-4 and r["ratio_vs_official"] > 0 for r in rows[1:3])
    capsys.readouterr()
    assert bench.main(["--table", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model | batch | official eager | locvit eager | ORT fp32 | OpenVINO fp32 |" in printed
    assert re.search(r"\| `vvt_test` \| 2 \| [\d.]+ \(\*\*1.00x\*\*\) \|", printed)


def test_deploy_tables_render_from_the_saved_runs(tmp_path, monkeypatch):
    """scripts/bench_deploy.py --render: the per-family speed table, the INT8 gate table and the sweep table come from
    the JSON files the benchmark writes, between the doc's markers (the rest of the doc untouched)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("bench_deploy", REPO / "scripts" / "bench_deploy.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    from locvit.deploy import Int8Report

    runs = tmp_path / "runs"
    runs.mkdir()
    meta = dict(date="2026-12-07", threads=2, torch="2.14.1", command="scripts/bench_official.py ...")
    speed = [dict(model="vvt_tiny", official="vvt_tiny", backend=b, batch=8, img_s=v, ratio_vs_official=r)
             for b, v, r in (("eager", 20.0, 1.4), ("openvino", 30.0, 2.1), ("official eager", 14.0, 1.0))]
    (runs / "deploy_bs8.json").write_text(json.dumps(dict(meta, batch=8, rows=speed)))
    gate = Int8Report(images=360, top1_fp32=97.5, top1_int8=97.2, agreement=99.4, max_drop=0.5, calibration_images=300)
    (runs / "deploy_int8.json").write_text(json.dumps(dict(meta, rows=[dict(gate.as_dict(), family="vvt",
                                                                            model="vvt_tiny")])))
    sweep = [dict(model="vvt_tiny", backend="openvino", img_size=f"{s}x{s}", step_ms=s * s / 1000, batch_size=1)
             for s in (224, 448)]
    (runs / "deploy_sweep.json").write_text(json.dumps(sweep))
    text = deploy.render(runs)
    assert "| `vvt_tiny` | 8 | 14.0 (**1.00x**) | 20.0 (**1.40x**) | 30.0 (**2.10x**) |" in text
    assert "| model | batch | official eager | locvit eager | OpenVINO fp32 |" in text
    assert "| vvt | `vvt_tiny` | 97.50% | 97.20% | +0.30 | 99.40% | passed |" in text
    assert "| `vvt_tiny` | openvino | 50 | 201 | 1.00 |" in text  # time linear in pixels: k = 1
    doc = tmp_path / "README.md"
    doc.write_text(f"before\n{deploy.START}\nold\n{deploy.END}\nafter\n")
    deploy.update_doc(text, doc)
    assert doc.read_text() == f"before\n{deploy.START}\n{text}{deploy.END}\nafter\n"


def test_disagreeing_logits_are_reported_and_not_timed(bench, tmp_path, capsys):
    root = stand_in_root(tmp_path / "official", shift=1.0)
    out = tmp_path / "run.json"
    assert bench.main(["--official-root", str(root), "--models", "vvt_test", "--img-size", "32", "--batch-size", "2",
                       "--json", str(out)]) == 1
    assert "FAIL vvt_test vs vvt_test: max |logit diff| 1.00e+00" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert "error" in row and "ours_img_s" not in row


def test_missing_checkout_is_one_clear_error(bench, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert bench.main(["--official-root", str(tmp_path / "empty"), "--models", "vvt_tiny", "--check-only"]) == 2
    assert "OpenNLPLab/Vicinity-Vision-Transformer as" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench.main(["--official-root", str(tmp_path), "--models", "no_such_model"])
    assert e.value.code == 2


def test_official_names_come_from_the_alias_registry(bench):
    assert bench.official_name("focal_tiny") == ("focal_tiny", "focal_tiny_patch4_window7_224")
    assert bench.official_name("focal_tiny_patch4_window7_224") == ("focal_tiny", "focal_tiny_patch4_window7_224")
    assert bench.official_name("vvt_tiny") == ("vvt_tiny", "vvt_tiny")  # no alias: the official name is the same


@pytest.mark.parametrize("run", sorted(p.name for p in (BENCH_DOCS / "runs").glob("official_*.json")))
def test_documented_tables_are_the_saved_runs(bench, run, capsys):
    """Every row `--table` prints for a saved run is in docs/benchmarks/README.md, as printed."""
    assert bench.main(["--table", str(BENCH_DOCS / "runs" / run)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| `", line)]
    docs = (BENCH_DOCS / "README.md").read_text()
    assert rows and [r for r in rows if r not in docs] == []
