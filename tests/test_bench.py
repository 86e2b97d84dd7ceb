"""FLOP counting against closed forms, and the bench/flops/models commands at tiny sizes."""
import json
import subprocess
import sys

import pytest
import torch

import locvit
from conftest import in_fresh_interpreter
from locvit.bench.flops import count_flops, flop_count
from locvit.bench.sweep import exponents, fit_exponent
from locvit.bench.throughput import BenchSpec, benchmark, benchmark_pair
from locvit.layers.attention import Attention


def test_mhsa_flops_closed_form():
    B, N, C, h = 2, 50, 64, 4
    attn = Attention(C, h, qkv_bias=True).eval()
    macs = flop_count(attn, torch.randn(B, N, C), module=attn).get_total_flops() / 2
    # qkv 3NC^2 + logits N^2 C + weighted sum N^2 C + projection NC^2
    assert macs == B * (4 * N * C * C + 2 * N * N * C)


def test_fused_attention_is_counted_in_timm_peers():
    import timm

    deit = timm.create_model("deit_tiny_patch16_224", img_size=64)
    fc = count_flops(deit, (3, 64, 64))
    N, C, depth = 17, 192, 12
    attn_macs = depth * 2 * N * N * C
    linear_macs = depth * N * (4 * C * C + 8 * C * C) + 16 * C * 3 * 256 + C * 1000
    assert fc.flops / 2 == attn_macs + linear_macs


def test_fit_exponent():
    px = [1e4, 4e4, 16e4]
    assert fit_exponent(px, [2 * p for p in px]) == pytest.approx(1.0)
    assert fit_exponent(px, [p**2 for p in px]) == pytest.approx(2.0)
    rows = [dict(model="m", pixels=p, gmacs=p, ms_per_image=p**1.5, peak_mem_mb=p) for p in px]
    assert exponents(rows)["m"]["ms_per_image"] == pytest.approx(1.5)


def test_benchmark_and_interleaved_pair():
    kw = dict(depth=1, embed_dim=32, num_heads=2, reduction=4, num_classes=3)
    a = BenchSpec("localvit_tiny", 2, (32, 32), model_kwargs=kw)
    r = benchmark(a, warmup=1, runs=2)
    assert r.images_per_s > 0 and r.spread[0] <= r.images_per_s <= r.spread[1] and r.peak_mem_mb > 0
    t = benchmark(BenchSpec("localvit_tiny", 2, (32, 32), mode="train", model_kwargs=kw), warmup=1, runs=2,
                  memory=False)
    assert t.images_per_s > 0
    ra, rb, ratio = benchmark_pair(a, BenchSpec("localvit_tiny", 2, (32, 32), model_kwargs=dict(kw, depth=2)),
                                   warmup=1, runs=3)
    assert ratio > 0 and ra.runs == rb.runs == 3


@pytest.mark.slow
def test_backends_are_verified_and_timed_round_robin():
    """eager + ONNX Runtime + OpenVINO on one tiny model: the exported outputs match eager on the timed input, every
    backend runs the same number of rounds, ratios are against eager (1.0 for itself) and against --vs."""
    pytest.importorskip("openvino")
    in_fresh_interpreter(_backends_case)


def _backends_case():
    from locvit.bench.throughput import benchmark_backends

    kw = dict(depth=1, embed_dim=32, num_heads=2, reduction=4, num_classes=3, patch_size=4)
    spec = BenchSpec("localvit_tiny", 2, (32, 32), threads=1, model_kwargs=kw)
    vs = BenchSpec("localvit_tiny", 2, (32, 32), threads=1, model_kwargs=dict(kw, depth=2))
    rows = benchmark_backends(spec, ["onnxruntime", "openvino"], vs, warmup=1, runs=2)
    assert [r.backend for r in rows] == ["eager", "onnxruntime", "openvino", "eager"]
    assert rows[0].ratio_vs_eager == 1.0 and rows[-1].ratio_vs == 1.0 and rows[0].max_abs_diff is None
    for r in rows[1:3]:
        assert r.max_abs_diff <= 1e-4 and r.ratio_vs_eager > 0 and r.ratio_vs > 0 and r.runs == 2
        assert r.img_size == "32x32" and r.threads == 1 and r.row()["backend"] == r.backend
    with pytest.raises(ValueError, match="backend onnxruntime times CPU inference of image models in fp32 only"):
        benchmark_backends(BenchSpec("localvit_tiny", 2, (32, 32), mode="train", model_kwargs=kw), ["onnxruntime"])


def _cli(*args):
    out = subprocess.run([sys.executable, "-m", "locvit", *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_cli_flops_bench_models(tmp_path):
    out = _cli("flops", "--model", "localvit_tiny", "--img-size", "64")
    assert "torch.utils.flop_counter" in out and "localvit_tiny" in out
    js = tmp_path / "b.json"
    _cli("bench", "--model", "localvit_tiny", "--img-size", "32", "--batch-size", "2", "--runs", "2", "--warmup", "1",
         "--threads", "1", "--json", js)
    rows = json.loads(js.read_text())
    assert rows[0]["model"] == "localvit_tiny" and rows[0]["images_per_s"] > 0
    out = _cli("models", "localvit_t*", "--no-flops", "--aliases")
    assert "localvit_tiny_mlp4_act3_r192" in out


def test_cli_sweep_writes_csv_and_plot(tmp_path):
    _cli("bench", "--model", "localvit_tiny", "--sweep", "--img-size", "32", "48", "--batch-size", "1", "--runs", "1",
         "--warmup", "1", "--csv", tmp_path / "s.csv", "--plot", tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 3


def test_sweep_takes_models_without_an_input_size_argument():
    """timm's PVT v2 takes no img_size: it is built once and run at every size."""
    from locvit.bench.sweep import resolution_sweep

    rows = resolution_sweep(["pvt_v2_b0"], [32, 64], batch_size=1, runs=1, warmup=0, progress=False)
    assert [r["img_size"] for r in rows] == [32, 64] and rows[1]["gmacs"] > 3 * rows[0]["gmacs"]


def test_model_table_skips_aliases_of_baselines_outside_the_zoo():
    """'*tnt*' also matches tnt_t_patch16_224, the official name of a host baseline that is not in the zoo list."""
    from locvit.zoo import model_table

    rows = model_table("*tnt*", flops=False)
    assert [r["name"] for r in rows] == [n for n in locvit.list_models() if "tnt" in n]


def test_models_table_answers_from_the_shipped_stats_without_building(monkeypatch):
    """`locvit models` took 83-108 s building and counting 52 models; the shipped table makes it instant. Every
    registered model must be in it (regenerate with `make readme` after adding one)."""
    import timm

    from locvit import zoo

    stats = zoo.load_stats()
    assert sorted(stats) == sorted(locvit.list_models()), "zoo_stats.json is stale: run `make readme`"

    def refuse(*a, **k):
        raise AssertionError("model_table built a model although its stats are shipped")

    monkeypatch.setattr(timm, "create_model", refuse)
    rows = zoo.model_table("*")
    assert len(rows) == len(stats) and all(r["gmacs"] > 0 and r["params_m"] > 0 for r in rows)
    text = zoo.render_table(rows)
    assert "official weights" in text and "GMACs" in text


@pytest.mark.parametrize("name", ["localvit_tiny", "vvt_test", "t2t_vit_7"])
def test_shipped_stats_match_live_counts(name):
    from locvit import zoo

    assert zoo.count_model(name) == zoo.load_stats()[name]
