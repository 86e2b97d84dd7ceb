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

import pytest
import torch

import locvit
from conftest import DISTINCT, SMALL_SIZE, every_model
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
