"""Throughput, latency and peak memory of models, measured so that results survive a noisy machine.

Every measurement warms up, then times several runs and reports the median with its spread (min..max of the
timed runs). ``--vs`` interleaves two models run by run in one process, so a slowdown of the machine hits both
and their ratio stays meaningful. Peak memory is the largest amount of tensor memory alive during one step
beyond what was allocated before it: from the CUDA allocator on GPUs, from the profiler's allocation events on
the CPU.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from locvit.runtime import allocator_settings


@dataclass
class BenchSpec:
    model: str
    batch_size: int = 8
    img_size: tuple[int, int] = (224, 224)
    mode: str = "infer"                 # infer | train
    device: str = "cpu"
    threads: int | None = None
    channels_last: bool = False
    compile: bool = False
    amp: str | None = None              # None | bf16 | fp16
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_frames: int | None = None       # video models: frames per clip (default: the model's)


@dataclass
class BenchResult:
    model: str
    mode: str
    batch_size: int
    img_size: str
    device: str
    threads: int
    amp: str
    compile: bool
    channels_last: bool
    images_per_s: float
    spread: tuple[float, float]         # images/s of the slowest and fastest timed run
    step_ms: float
    runs: int
    peak_mem_mb: float | None = None
    params_m: float | None = None
    malloc_tuned: bool = False          # locvit.runtime.tune_cpu_allocator was in effect
    num_frames: int | None = None       # video models: frames per clip; images_per_s then counts clips
    input_shape: tuple[int, ...] = ()   # one sample: (C, H, W) or (C, T, H, W)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["spread"] = f"{self.spread[0]:.1f}..{self.spread[1]:.1f}"
        return d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model prepared for repeated timed steps (inference or a full training step).

    Args:
        spec: what to run; ``spec.model`` names the model to build.
        model: an already built model to run instead of building ``spec.model`` (which then only labels the
            results), e.g. another implementation of the same architecture.
    """

    def __init__(self, spec: BenchSpec, model: nn.Module | None = None):
        from locvit._registry import create_model

        self.spec = spec
        self.device = torch.device(spec.device)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        if model is None:
            model = create_model(spec.model, **spec.model_kwargs)
        model = model.to(self.device)
        self.params = sum(p.numel() for p in model.parameters())
        fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
        if spec.channels_last:
            model = model.to(memory_format=torch.channels_last)
        from locvit.models import clip_length

        self.num_frames = (spec.num_frames or clip_length(model)) if clip_length(model) else None
        self.input_shape = (3, self.num_frames, *spec.img_size) if self.num_frames else (3, *spec.img_size)
        x = torch.randn(spec.batch_size, *self.input_shape, device=self.device)
        self.x = x if self.num_frames else x.contiguous(memory_format=fmt)
        self.autocast: Callable[[], Any] = contextlib.nullcontext
        if spec.amp:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[spec.amp]
            self.autocast = lambda: torch.autocast(self.device.type, dtype=dtype)
        self.model = model
        fwd = torch.compile(model) if spec.compile else model
        if spec.mode == "train":
            model.train()
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
            self.y = torch.randint(0, model.num_classes, (spec.batch_size,), device=self.device)

            def step() -> None:
                with self.autocast():
                    loss = nn.functional.cross_entropy(fwd(self.x), self.y)
                loss.backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        elif spec.mode == "infer":
            model.eval()

            def step() -> None:
                with torch.inference_mode(), self.autocast():
                    fwd(self.x)
        else:
            raise ValueError(f"mode must be 'infer' or 'train', got {spec.mode!r}")
        self.step = step

    def time_once(self) -> float:
        _sync(self.device)
        t = time.perf_counter()
        self.step()
        _sync(self.device)
        return time.perf_counter() - t

    def peak_memory_mb(self) -> float:
        """Peak tensor memory of one step beyond what was already allocated (MB)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            self.step()
            _sync(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        deltas = []
        for e in prof.events():
            if e.name == "[memory]":
                deltas.append((e.time_range.start, e.cpu_memory_usage))
            elif e.self_cpu_memory_usage > 0:
                deltas.append((e.time_range.start, e.self_cpu_memory_usage))
        cur = peak = 0
        for _, d in sorted(deltas, key=lambda t: t[0]):
            cur += d
            peak = max(peak, cur)
        return peak / 2**20


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler back-end's C++ log lines (it writes them to fd 2 whatever its log level)."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _result(r: Runner, times: list[float], mem: float | None) -> BenchResult:
    s = r.spec
    med = statistics.median(times)
    return BenchResult(
        model=s.model, mode=s.mode, batch_size=s.batch_size, img_size=f"{s.img_size[0]}x{s.img_size[1]}",
        device=str(r.device), threads=torch.get_num_threads(), amp=s.amp or "fp32", compile=s.compile,
        channels_last=s.channels_last, images_per_s=s.batch_size / med,
        spread=(s.batch_size / max(times), s.batch_size / min(times)), step_ms=1000 * med, runs=len(times),
        peak_mem_mb=mem, params_m=r.params / 1e6, malloc_tuned=allocator_settings() is not None,
        num_frames=r.num_frames, input_shape=r.input_shape)


def benchmark(spec: BenchSpec, warmup: int = 2, runs: int = 5, memory: bool = True) -> BenchResult:
    """Time ``runs`` steps after ``warmup`` steps; median images/s and spread."""
    r = Runner(spec)
    for _ in range(warmup):
        r.step()
    times = [r.time_once() for _ in range(runs)]
    return _result(r, times, r.peak_memory_mb() if memory else None)


def interleave(ra: Runner, rb: Runner, warmup: int = 2, runs: int = 5) -> tuple[list[float], list[float]]:
    """Warm both runners up, then time one step of each per round, alternating which goes first so neither always
    runs on a warmer cache; returns the seconds of A's and of B's steps, round by round."""
    for _ in range(warmup):
        ra.step()
        rb.step()
    ta, tb = [], []
    for i in range(runs):
        first, second = (ra, rb) if i % 2 == 0 else (rb, ra)
        t1, t2 = first.time_once(), second.time_once()
        ta.append(t1 if first is ra else t2)
        tb.append(t2 if first is ra else t1)
    return ta, tb


def benchmark_pair(a: BenchSpec, b: BenchSpec, warmup: int = 2, runs: int = 5,
                   memory: bool = False) -> tuple[BenchResult, BenchResult, float]:
    """Interleave two models run by run; returns both results and the ratio of A's to B's images/s (median of
    the per-round ratios, robust to the machine's speed changing between rounds)."""
    ra, rb = Runner(a), Runner(b)
    ta, tb = interleave(ra, rb, warmup, runs)
    ratio = statistics.median(y / x for x, y in zip(ta, tb))  # (b time / a time) = a speed / b speed
    res_a = _result(ra, ta, ra.peak_memory_mb() if memory else None)
    res_b = _result(rb, tb, rb.peak_memory_mb() if memory else None)
    return res_a, res_b, ratio


def matmul_peak_gflops(n: int = 2048, runs: int = 5, device: str = "cpu") -> float:
    """The fp32 matmul rate this machine reaches now (GFLOP/s), the denominator of "share of peak"."""
    dev = torch.device(device)
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    a @ b
    times = []
    for _ in range(runs):
        _sync(dev)
        t = time.perf_counter()
        a @ b
        _sync(dev)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9
