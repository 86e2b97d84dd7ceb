"""Every registered model compiles as one graph, exports with torch.export, and (per mechanism) runs in ONNX Runtime
with the eager outputs.

Models are built at a small size: their own widths, heads, windows, stems and options, 64x64 input, at most two
blocks per stage (what is exported does not depend on how many identical blocks follow each other; the
full-depth models at their default size are checked by ``locvit export``, see docs/export.md).

``make test`` runs one model per distinct forward (every stem, attention kind, token-to-token module and feed-forward
variant) and ONNX for one model per family; every other registered model is marked ``heavy`` and runs in
``make test-heavy``, which CI runs after ``make test`` (about 12 minutes on 2 cores).
"""
from __future__ import annotations

import re

import pytest
import torch

import locvit
from conftest import DISTINCT, SMALL_SIZE, every_model, in_fresh_interpreter
from conftest import small_model as _small_model
from locvit.export import ExportError, check_compile, export, export_program, max_abs_diff

SIZE = SMALL_SIZE
ATOL = 1e-4


def small_model(name: str) -> torch.nn.Module:
    return _small_model(name, num_classes=10).eval()


def batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ONNX translation is the slow step (10-40 s a model here): one model per family in make test
ONNX_DEFAULT = ["localvit_tiny", "regionvit_tiny", "focal_tiny", "vvt_tiny"]


@pytest.mark.parametrize("name", every_model(DISTINCT))
def test_compile_fullgraph_and_torch_export_match_eager(name):
    model = small_model(name)
    x = batch()
    # fullgraph=True raises on any graph break; the eager backend keeps this about tracing, not code generation
    assert check_compile(model, x, backend="eager") <= ATOL
    program = export_program(model, x, dynamic_batch=True)
    exported = program.module()
    with torch.no_grad():
        for inp in (x, batch(1, seed=1), batch(3, seed=2)):  # the batch dimension is symbolic
            assert max_abs_diff(model(inp), exported(inp)) <= ATOL


@pytest.mark.slow
@pytest.mark.parametrize("name", every_model(ONNX_DEFAULT))
def test_onnx_matches_eager(name, tmp_path):
    res = export(small_model(name), "onnx", output=tmp_path / f"{name}.onnx", batch_size=2)
    assert res.path.exists() and res.path.stat().st_size > 0
    assert res.max_abs_diff <= ATOL and res.dynamic_batch
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # no temporary file left behind
    if locvit.family_of(name) == "vvt":
        # eager's in-place clamps on the numerator view traced to a slice_scatter copy per step (ScatterND: 20 in
        # a four-block model, with their Shape/Range index arithmetic); traced, VVT computes out of place
        import onnx

        ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
        assert not ops & {"ScatterND", "ScatterElements"}, sorted(ops)


def test_default_selection_covers_every_family():
    families = {locvit.family_of(n) for n in locvit.list_models()}
    assert {locvit.family_of(n) for n in DISTINCT} == families
    assert {locvit.family_of(n) for n in ONNX_DEFAULT} == {"localvit", "regionvit", "focal", "vvt"}


def test_pt2_round_trip_by_name(tmp_path):
    res = export("localvit_tiny", "pt2", output=tmp_path / "m.pt2", img_size=SIZE, num_classes=10,
                 model_kwargs=dict(depth=1, img_size=SIZE))
    assert res.format == "pt2" and res.input_shape == (1, 3, SIZE, SIZE) and res.max_abs_diff <= ATOL
    loaded = torch.export.load(str(res.path)).module()
    torch.manual_seed(0)  # what export() builds for a name: random init from seed 0
    ref = locvit.create_model("localvit_tiny", num_classes=10, img_size=SIZE, depth=1).eval()
    with torch.no_grad():
        assert max_abs_diff(ref(batch(4)), loaded(batch(4))) <= ATOL


def test_export_of_a_checkpoint_is_the_trained_model_at_its_size(tmp_path):
    """`--img-size` builds the model at that size, so a checkpoint trained at 32x32 is exported as it was trained (it
    was once loaded into a 224 model, position embedding resized 65 -> 3,137 tokens, and checked against that)."""
    torch.manual_seed(3)
    trained = locvit.create_model("localvit_tiny", num_classes=10, img_size=32, patch_size=4, depth=1).eval()
    locvit.save_checkpoint(trained, tmp_path / "w.safetensors")
    res = export("localvit_tiny", "pt2", output=tmp_path / "m.pt2", checkpoint=str(tmp_path / "w.safetensors"),
                 img_size=(32, 32), model_kwargs=dict(patch_size=4, depth=1))
    loaded = torch.export.load(str(res.path)).module()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert max_abs_diff(trained(x), loaded(x)) <= ATOL


def test_export_that_does_not_match_writes_nothing(tmp_path):
    target = tmp_path / "m.pt2"
    with pytest.raises(ExportError, match="differs from eager PyTorch.*nothing written"):
        export(small_model("pvt_tiny"), "pt2", output=target, atol=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match="unknown format 'tflite'; choose one of onnx, pt2"):
        export("localvit_tiny", "tflite")


def test_cli_export_onnx_verifies(tmp_path, capsys):
    from locvit.cli import main

    out = tmp_path / "t2t.onnx"
    rc = main(["export", "--model", "t2t_vit_7", "--format", "onnx", "--img-size", "64", "64", "--num-classes", "10",
               "--output", str(out), "--model-kwargs", "depth=1"])
    assert rc == 0 and out.stat().st_size > 0
    text = capsys.readouterr().out
    assert "verified against eager" in text and f"-> {out}" in text


@pytest.mark.heavy
def test_inductor_compile_matches_eager():
    """Real code generation (inductor, C++ on CPU) on one model of each mechanism kind that needs it."""
    pytest.importorskip("torch._inductor")
    for name in ("focalv2_tiny_useconv", "vvt_tiny"):
        model = small_model(name)
        assert check_compile(model, batch(), backend="inductor") <= ATOL, name


# --- OpenVINO, the Runtime, INT8 (locvit.deploy) ------------------------------------------------------------------
def tiny_localvit(size: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return locvit.create_model("localvit_tiny", num_classes=10, img_size=size, patch_size=4, depth=1, embed_dim=48,
                               num_heads=2).eval()


@pytest.mark.slow
def test_openvino_ir_is_verified_and_runs_in_the_runtime(tmp_path):
    pytest.importorskip("openvino")
    in_fresh_interpreter(_openvino_ir_case, tmp_path)


def _openvino_ir_case(tmp_path):
    from locvit.deploy import Runtime, load_exported

    model = tiny_localvit()
    res = export(model, "openvino", output=tmp_path / "m.xml", img_size=32, batch_size=2)
    assert res.format == "openvino" and res.max_abs_diff <= ATOL and res.int8 is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # nothing temporary left behind
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    for rt in (load_exported(res.path, threads=1), Runtime(tmp_path / "m.xml", "openvino")):
        assert rt.input_shape == (None, 3, 32, 32)
        assert max_abs_diff(ref, rt(x)) <= ATOL and max_abs_diff(ref, rt(x.numpy())) <= ATOL
        with pytest.raises(ValueError, match=r"m.xml takes inputs of shape Bx3x32x32; got 1x3x64x64.*--img-size 64 64"):
            rt(torch.randn(1, 3, 64, 64))


def _digits_trained(steps: int = 60) -> torch.nn.Module:
    """A tiny LocalViT trained a few dozen steps on the digits (well above chance), for the INT8 gate."""
    from locvit.deploy import image_batches

    model = tiny_localvit().train()
    batches = list(image_batches("digits", "train", model, (32, 32), 64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _white_class_folder(root, n: int = 8):
    from PIL import Image

    (root / "blank").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (255, 255, 255)).save(root / "blank" / f"{i}.png")
    return root


@pytest.mark.slow
def test_int8_export_passes_the_gate_or_refuses_with_the_measured_drop(tmp_path):
    """Calibrated on the digits, the INT8 IR passes a generous budget and is written; calibrated on blank images its
    activation ranges are wrong, and a tiny budget refuses it, naming the drop, with nothing written."""
    pytest.importorskip("nncf")
    in_fresh_interpreter(_int8_gate_case, tmp_path)


def _int8_gate_case(tmp_path):
    import contextlib
    import io

    from locvit.deploy import Runtime

    model = _digits_trained()
    res = export(model, "openvino", output=tmp_path / "ok" / "q.xml", img_size=32, batch_size=2, int8=True,
                 calib="digits", calib_images=64, val_images=160, max_drop=100)
    rep = res.int8
    assert rep.images == 160 and rep.calibration_images == 64 and rep.top1_fp32 > 40  # trained: far above chance
    assert 0 <= rep.agreement <= 100 and f"drop {rep.drop:+.2f} pt" in rep.summary()
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["q.bin", "q.xml"]
    logits = Runtime(res.path)(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)

    # the command line, from a checkpoint: blank calibration images, a tiny budget -> refused, measured drop named
    import json

    from locvit.cli import main

    blank = _white_class_folder(tmp_path / "blank")
    locvit.save_checkpoint(model, tmp_path / "w.safetensors")
    (tmp_path / "no").mkdir()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        rc = main(["export", "--model", "localvit_tiny", "--checkpoint", str(tmp_path / "w.safetensors"),
                   "--img-size", "32", "32", "--model-kwargs", "patch_size=4", "depth=1", "embed_dim=48", "num_heads=2",
                   "--int8", "--calib", str(blank), "--val", "digits", "--val-images", "160", "--max-drop", "0.01",
                   "--output", str(tmp_path / "no" / "q.xml"), "--report", str(tmp_path / "gate.json")])
    err = stderr.getvalue()
    assert rc == 2 and re.search(r"locvit export: error: INT8 model refused: top-1 fp32 .*drop \+\d+\.\d\d pt, "
                                 r"budget 0.01 pt.*nothing written", err), err
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert gate["passed"] is False and gate["drop"] > 0.01 and gate["output"] is None
    assert gate["top1_fp32"] == pytest.approx(rep.top1_fp32)  # the same model and validation images as above
    assert list((tmp_path / "no").iterdir()) == []


def test_accuracy_gate_counts_top1_drop_and_agreement():
    import numpy as np

    from locvit.deploy import Int8Refused, accuracy_gate

    labels = np.arange(10) % 2
    val = [(np.zeros((10, 1), np.float32) + labels[:, None], labels)]
    right = lambda x: np.eye(2)[x[:, 0].astype(int)]  # noqa: E731  (always right)
    wrong_twice = lambda x: np.eye(2)[np.r_[1 - x[:2, 0], x[2:, 0]].astype(int)]  # noqa: E731  (2 of 10 wrong)
    rep = accuracy_gate(right, wrong_twice, val, max_drop=20, calibration_images=5)
    assert (rep.top1_fp32, rep.top1_int8, rep.drop, rep.agreement) == (100, 80, 20, 80)
    with pytest.raises(Int8Refused, match=r"top-1 fp32 100.00%, int8 80.00% \(drop \+20.00 pt, budget 19.9 pt\)"):
        accuracy_gate(right, wrong_twice, val, max_drop=19.9, calibration_images=5)


def test_int8_bad_inputs_are_named_before_any_tracing(tmp_path, monkeypatch):
    import locvit.export as ex

    def no_tracing(*a, **k):
        raise AssertionError("traced although the arguments were refused")

    monkeypatch.setattr(ex, "export_program", no_tracing)
    model = tiny_localvit()
    with pytest.raises(ValueError, match="--max-drop must be a non-negative number of top-1 points, got -1"):
        export(model, "openvino", output=tmp_path / "q.xml", int8=True, calib="digits", max_drop=-1)
    with pytest.raises(ValueError, match="INT8 export writes OpenVINO IR .*--format openvino"):
        export(model, "onnx", output=tmp_path / "q.onnx", int8=True, calib="digits")
    with pytest.raises(ValueError, match="needs calibration images: --calib"):
        export(model, "openvino", output=tmp_path / "q.xml", int8=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="calibration images --calib .*empty.*no 'train' split"):
        export(model, "openvino", output=tmp_path / "q.xml", int8=True, calib=str(tmp_path / "empty"))
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "a.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="calibration images --calib .*no readable image"):
        export(model, "openvino", output=tmp_path / "q.xml", int8=True, calib=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="should end in .xml"):
        export(model, "openvino", output=tmp_path / "q.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty"]


def test_missing_runtime_names_the_extra(tmp_path, monkeypatch):
    import sys

    from locvit.deploy import Runtime

    f = tmp_path / "m.xml"
    f.write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(ValueError, match=r"needs the Python package 'openvino'.*pip install 'locvit\[deploy\]'"):
        Runtime(f)
    with pytest.raises(ValueError, match=r"pip install 'locvit\[deploy\]'"):
        export(tiny_localvit(), "openvino", output=tmp_path / "x.xml")
    (tmp_path / "m.tflite").write_text("")
    with pytest.raises(ValueError, match="unknown exported file type '.tflite'"):
        Runtime(tmp_path / "m.tflite", threads=1)
