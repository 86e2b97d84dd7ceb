"""A/B timings of the CPU fast paths against their plain expressions: the measurements behind the settings of
:mod:`locvit.layers.fastpath`.

Each case runs the shortcut and the plain expression on the same input, interleaved round by round (the order
alternates), and reports the median time of each and their ratio, so a noisy machine hits both sides alike::

    python -m locvit.bench.fastpaths --threads 2 --rounds 7 --json docs/benchmarks/runs/fastpaths.json

Cases (batch 8, float32, shapes of the named models at 224x224):

* ``mlp``: the token MLP in cache-sized row blocks (``layers.token_mlp``) vs ``x + mlp(norm(x))``, at map sizes above
  and below the ``MLP_*`` thresholds (``default`` says whether the default settings block that shape).
* ``ffn_groups``: the fused locality feed-forward a group of images at a time vs the whole batch at once.
* ``se_gate``: the SE gate folded into per-image projection weights vs applied to the hidden map.
* ``vvt_chunks``: ``vvt_tiny`` inference with its stages run a few images at a time vs whole batches.
* ``sdpa_bias``: a training step (forward + backward) of windowed attention with a learned bias through the
  explicit softmax (what :func:`~locvit.layers.attention.attend` does on the CPU) vs ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from functools import partial
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from locvit.files import atomic_write_text
from locvit.layers import fastpath, token_mlp
from locvit.layers.attention import attend
from locvit.layers.locality_ffn import LocalityFeedForward
from locvit.models import create_model

CASES = ("mlp", "ffn_groups", "se_gate", "vvt_chunks", "sdpa_bias")

# (where the shape occurs, rows = batch x tokens, dim, hidden)
MLP_SHAPES = [
    ("regionvit_tiny stage 1", 8 * 3200, 64, 256),
    ("pvt_tiny / vvt_tiny stage 1", 8 * 3136, 64, 512),
    ("focal_tiny stage 2", 8 * 784, 192, 768),
    ("t2t_vit_7 token layer", 8 * 3136, 64, 64),
    ("regionvit_tiny stage 2", 8 * 800, 128, 512),
    ("pvt_tiny stage 3", 8 * 196, 320, 1280),
    ("t2t_vit_7 block", 8 * 197, 256, 512),
]
# (where, dim, expand ratio, map side)
FFN_GROUP_SHAPES = [
    ("localvit_pvt_tiny stage 1", 64, 8, 56),
    ("localvit_swin_tiny stage 1", 96, 4, 56),
    ("localvit_tiny (1 MB groups)", 192, 4, 14),
]
# (where, dim, expand ratio, map side): tokens x hidden -> dim
SE_SHAPES = [
    ("localvit_tiny: 196 x 768 -> 192", 192, 4, 14),
    ("localvit_swin_tiny stage 4: 49 x 3072 -> 768", 768, 4, 7),
    ("localvit_pvt_tiny stage 2: 784 x 1024 -> 128", 128, 8, 28),
    ("localvit_pvt_tiny stage 1: 3136 x 512 -> 64", 64, 8, 56),
]


def ab(fast: Callable[[], Any], plain: Callable[[], Any], rounds: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of ``fast`` and ``plain`` over interleaved rounds, and ``speedup = plain / fast``."""
    times: dict[str, list[float]] = {"fast": [], "plain": []}
    for r in range(warmup + rounds):
        order = [("fast", fast), ("plain", plain)] if r % 2 == 0 else [("plain", plain), ("fast", fast)]
        for key, fn in order:
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[key].append(time.perf_counter() - t0)
    fast_ms, plain_ms = (1e3 * statistics.median(times[k]) for k in ("fast", "plain"))
    return {"fast_ms": fast_ms, "plain_ms": plain_ms, "speedup": plain_ms / fast_ms,
            "speedup_best": min(times["plain"]) / min(times["fast"])}


@contextlib.contextmanager
def _settings(**values: Any) -> Iterator[None]:
    old = {k: getattr(fastpath, k) for k in values}
    for k, v in values.items():
        setattr(fastpath, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(fastpath, k, v)


def _ffn(dim: int, ratio: int) -> LocalityFeedForward:
    ffn = LocalityFeedForward(dim, ratio, "hs+se", 4).eval()
    for m in ffn.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    return ffn


def _map(dim: int, side: int, batch: int = 8) -> torch.Tensor:
    # the token-view layout the models pass (channels-last strides)
    return torch.randn(batch, side * side, dim).transpose(1, 2).reshape(batch, dim, side, side)


def _plain_mlp(x: torch.Tensor, norm: nn.Module, mlp: nn.Module) -> torch.Tensor:
    return x + mlp(norm(x))


def bench_mlp(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for where, n, dim, hidden in MLP_SHAPES:
        norm, mlp, x = nn.LayerNorm(dim).eval(), Mlp(dim, hidden).eval(), torch.randn(1, n, dim)
        r = ab(partial(token_mlp._blocked, x, norm, mlp, None), partial(_plain_mlp, x, norm, mlp), rounds)
        rows.append({"case": "mlp", "where": where, "shape": f"{n} x {dim} -> {hidden}",
                     "hidden_mb": 4 * n * hidden / 2 ** 20, "default": token_mlp._large(n, hidden), **r})
    return rows


def bench_ffn_groups(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for where, dim, ratio, side in FFN_GROUP_SHAPES:
        ffn, x = _ffn(dim, ratio), _map(dim, side)
        forced = {"FFN_GROUP_MIN_BYTES": 0, "FFN_GROUP_BYTES": 1 << 20} if "1 MB" in where else {}

        def grouped(ffn: LocalityFeedForward = ffn, x: torch.Tensor = x, forced: dict = forced) -> torch.Tensor:
            with _settings(**forced):
                return ffn._forward_fused(x)

        r = ab(grouped, lambda ffn=ffn, x=x: ffn._forward_fused_group(x), rounds)
        rows.append({"case": "ffn_groups", "where": where,
                     "hidden_mb_per_image": 4 * side * side * dim * ratio / 2 ** 20, **r})
    return rows


def bench_se_gate(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for where, dim, ratio, side in SE_SHAPES:
        ffn, x = _ffn(dim, ratio), _map(dim, side)

        def run(per_image: bool, ffn: LocalityFeedForward = ffn, x: torch.Tensor = x) -> torch.Tensor:
            with _settings(FFN_SE_PER_IMAGE_RATIO=0 if per_image else 1 << 30):
                return ffn._forward_fused_group(x)

        r = ab(lambda run=run: run(True), lambda run=run: run(False), rounds)
        default = side * side > fastpath.FFN_SE_PER_IMAGE_RATIO * dim
        rows.append({"case": "se_gate", "where": where, "fast": "per-image weights", "plain": "gate on the map",
                     "default": "per-image weights" if default else "gate on the map", **r})
    return rows


def bench_vvt_chunks(rounds: int) -> list[dict[str, Any]]:
    model, x = create_model("vvt_tiny").eval(), torch.randn(8, 3, 224, 224)

    def run(chunk: int) -> torch.Tensor:
        with _settings(VVT_CHUNK_TOKENS=chunk):
            return model(x)

    return [{"case": "vvt_chunks", "where": "vvt_tiny, batch 8, 224x224",
             "chunk_tokens": fastpath.VVT_CHUNK_TOKENS,
             **ab(lambda: run(fastpath.VVT_CHUNK_TOKENS), lambda: run(0), rounds)}]


def bench_sdpa_bias(rounds: int) -> list[dict[str, Any]]:
    # regionvit_small's local attention at 224: 8 images x 64 windows, 3 heads, 1 + 7x7 tokens, head dim 32
    q, k, v = (torch.randn(8 * 64, 3, 50, 32, requires_grad=True) for _ in range(3))
    bias = (0.1 * torch.randn(1, 3, 50, 50)).requires_grad_()

    def step(fn: Callable[[], torch.Tensor]) -> None:
        fn().sum().backward()

    explicit = lambda: step(lambda: attend(q, k, v, bias))  # noqa: E731
    fused = lambda: step(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias))  # noqa: E731
    return [{"case": "sdpa_bias", "where": "regionvit_small local attention, training step",
             "fast": "explicit softmax", "plain": "F.scaled_dot_product_attention", **ab(explicit, fused, rounds)}]


def run(cases: tuple[str, ...] = CASES, rounds: int = 7) -> list[dict[str, Any]]:
    """All requested cases, inference cases under ``torch.inference_mode``."""
    out: list[dict[str, Any]] = []
    fns = {"mlp": bench_mlp, "ffn_groups": bench_ffn_groups, "se_gate": bench_se_gate, "vvt_chunks": bench_vvt_chunks}
    for case in cases:
        if case == "sdpa_bias":
            rows = bench_sdpa_bias(rounds)
        else:
            with torch.inference_mode():
                rows = fns[case](rounds)
        for row in rows:
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        out += rows
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the rows (and the settings) to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = run(tuple(args.cases), args.rounds)
    if args.json:
        settings = {k: getattr(fastpath, k) for k in fastpath.__all__ if k.isupper()}
        payload = {"threads": torch.get_num_threads(), "rounds": args.rounds, "torch": torch.__version__,
                   "settings": settings, "rows": rows}
        atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
