"""Throughput, latency and peak memory of models, measured so that results survive a noisy machine.

Every measurement warms up, then times several runs and reports the median with its spread (min..max of the
timed runs). ``--vs`` interleaves two models run by run in one process, so a slowdown of the machine hits both
and their ratio stays meaningful. Peak memory is the largest amount of tensor memory alive during one step
beyond what was allocated before it: from the CUDA allocator on GPUs, from the profiler's allocation events on
the CPU.

``--backend`` times one model in several runtimes on the same input, round-robin in one process: eager PyTorch,
``torch.compile``, and the files ``locvit export`` writes run by :class:`locvit.deploy.Runtime` (ONNX Runtime,
OpenVINO fp32, OpenVINO INT8). Every backend gets the same number of intra-op threads, and each exported file's output
is compared with eager PyTorch on the timed input before timing (the largest absolute difference is reported).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from locvit.export import ExportError, export, max_abs_diff
from locvit.models import clip_length, create_model, family_of
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
    backend: str = "eager"              # eager | compile | onnxruntime | openvino | openvino-int8


#: ``--backend`` choices: torch in-process, or a file written by ``locvit export`` (format, INT8) and run by
#: :class:`locvit.deploy.Runtime`
BACKENDS = {"eager": None, "compile": None, "onnxruntime": ("onnx", False), "openvino": ("openvino", False),
            "openvino-int8": ("openvino", True)}


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
    backend: str = "eager"
    max_abs_diff: float | None = None   # exported backends: |output - eager| on the timed input
    ratio_vs_eager: float | None = None  # benchmark_backends: speed over eager PyTorch's, same rounds
    ratio_vs: float | None = None       # benchmark_backends: speed over the --vs model's, same rounds

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
        files: exported backends: the files already exported from ``model`` (shared by the runners of one model;
            see :meth:`_prepare_exported`).
    """

    def __init__(self, spec: BenchSpec, model: nn.Module | None = None, files: dict[str, Any] | None = None):
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
        self.num_frames = (spec.num_frames or clip_length(model)) if clip_length(model) else None
        self.input_shape = (3, self.num_frames, *spec.img_size) if self.num_frames else (3, *spec.img_size)
        x = torch.randn(spec.batch_size, *self.input_shape, device=self.device)
        self.x = x if self.num_frames else x.contiguous(memory_format=fmt)
        self.autocast: Callable[[], Any] = contextlib.nullcontext
        if spec.amp:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[spec.amp]
            self.autocast = lambda: torch.autocast(self.device.type, dtype=dtype)
        self.model = model
        self.max_abs_diff: float | None = None
        if spec.backend not in BACKENDS:
            raise ValueError(f"unknown backend {spec.backend!r}; choose from {', '.join(BACKENDS)}")
        if BACKENDS[spec.backend] is not None:
            if spec.mode != "infer" or self.device.type != "cpu" or spec.amp or self.num_frames:
                raise ValueError(f"backend {spec.backend} times CPU inference of image models in fp32 only "
                                 "(no --mode train, --device cuda, --amp or video models)")
            self._prepare_exported(model, files)
            return
        fwd = torch.compile(model) if (spec.compile or spec.backend == "compile") else model
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

    def _prepare_exported(self, model: nn.Module, files: dict[str, Any] | None = None) -> None:
        """Export ``model`` into a temporary folder, load the file in :class:`locvit.deploy.Runtime` with torch's
        thread count, and check its output on the timed input against eager PyTorch (fp32 files: at most 1e-4, as
        ``locvit export`` verifies; INT8: reported). ``files``, shared by the runners of one model, holds what is
        already exported, so ONNX is translated once: OpenVINO converts that file, INT8 quantizes that IR."""
        import tempfile

        from locvit import deploy

        fmt, int8 = BACKENDS[self.spec.backend]
        model.eval()
        files = {} if files is None else files
        if "dir" not in files:
            files["dir"] = tempfile.TemporaryDirectory(prefix="locvit-bench-")
        tmp = files["dir"].name
        if "onnx" not in files:  # written and verified against eager by locvit.export
            files["onnx"] = str(export(model, "onnx", output=f"{tmp}/model.onnx", img_size=self.spec.img_size,
                                       batch_size=max(2, self.spec.batch_size)).path)
        out = files["onnx"]
        if fmt == "openvino":
            if "openvino" not in files:
                files["openvino"] = str(deploy.save_openvino(deploy.openvino_model(out), f"{tmp}/model.xml")[0])
            out = files["openvino"]
        if int8:  # speed only: calibrated on the timed input's distribution (the accuracy gate is export --int8)
            gen = torch.Generator().manual_seed(1)
            calib = [torch.randn(self.spec.batch_size, *self.input_shape, generator=gen).numpy() for _ in range(4)]
            ov = deploy.require("openvino", "OpenVINO")
            quantized = deploy.quantize_int8(ov.Core().read_model(out), calib, _family(self.spec.model))
            out = str(deploy.save_openvino(quantized, f"{tmp}/model_int8.xml")[0])
        self._files = files  # keeps the folder alive as long as this runner
        self.runtime = deploy.Runtime(out, threads=torch.get_num_threads())
        x = self.x.numpy()
        with torch.inference_mode():
            self.max_abs_diff = max_abs_diff(model(self.x), self.runtime(x))
        if not int8 and not self.max_abs_diff <= 1e-4:
            raise ExportError(f"{self.spec.model}: {self.spec.backend} differs from eager PyTorch by "
                              f"{self.max_abs_diff:.3g} on the timed input (> 1e-4); not timed")
        self.params = sum(p.numel() for p in model.parameters())
        self.step = lambda: self.runtime(x)

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


def _family(name: str) -> str | None:
    try:
        return family_of(name)
    except (KeyError, ValueError):
        return None


def _result(r: Runner, times: list[float], mem: float | None) -> BenchResult:
    s = r.spec
    med = statistics.median(times)
    return BenchResult(
        model=s.model, mode=s.mode, batch_size=s.batch_size, img_size=f"{s.img_size[0]}x{s.img_size[1]}",
        device=str(r.device), threads=torch.get_num_threads(), amp=s.amp or "fp32", compile=s.compile,
        channels_last=s.channels_last, images_per_s=s.batch_size / med,
        spread=(s.batch_size / max(times), s.batch_size / min(times)), step_ms=1000 * med, runs=len(times),
        peak_mem_mb=mem, params_m=r.params / 1e6, malloc_tuned=allocator_settings() is not None,
        num_frames=r.num_frames, input_shape=r.input_shape, backend=s.backend, max_abs_diff=r.max_abs_diff)


def benchmark(spec: BenchSpec, warmup: int = 2, runs: int = 5, memory: bool = True) -> BenchResult:
    """Time ``runs`` steps after ``warmup`` steps; median images/s and spread."""
    r = Runner(spec)
    for _ in range(warmup):
        r.step()
    times = [r.time_once() for _ in range(runs)]
    return _result(r, times, r.peak_memory_mb() if memory else None)


def create_at_size(name: str, size: int | tuple[int, int], kwargs: dict[str, Any] | None = None
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """``create_model(name, img_size=size, **kwargs)`` (fixed-size models such as timm's DeiT/Swin need it; ours size
    their tables and position embeddings once instead of resizing them on every call, which exported graphs would
    also do: OpenVINO's bicubic Resize does not reproduce torch's); models without an ``img_size`` argument (timm's
    PVT v2) are built without it. Returns the model and the keyword arguments that built it."""
    kw = dict(kwargs or {}, img_size=size)
    try:
        return create_model(name, **kw), kw
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        kw = dict(kwargs or {})
        return create_model(name, **kw), kw


def interleave_all(runners: list[Runner], warmup: int = 2, runs: int = 5) -> list[list[float]]:
    """Warm every runner up, then time one step of each per round, rotating which goes first so none always runs
    on a warmer (or colder) cache; returns each runner's step seconds, round by round."""
    for _ in range(warmup):
        for r in runners:
            r.step()
    times: list[list[float]] = [[] for _ in runners]
    n = len(runners)
    for i in range(runs):
        for j in range(n):
            k = (i + j) % n
            times[k].append(runners[k].time_once())
    return times


def interleave(ra: Runner, rb: Runner, warmup: int = 2, runs: int = 5) -> tuple[list[float], list[float]]:
    """:func:`interleave_all` of two runners (the order alternates round by round); A's and B's step seconds."""
    ta, tb = interleave_all([ra, rb], warmup, runs)
    return ta, tb


def round_ratio(t_ref: list[float], t: list[float]) -> float:
    """Median over rounds of ``t_ref / t``: how many times faster the second is (robust to the machine's speed
    changing between rounds, since both were timed in the same round)."""
    return statistics.median(r / x for r, x in zip(t_ref, t))


def benchmark_backends(spec: BenchSpec, backends: list[str], vs: BenchSpec | None = None, warmup: int = 2,
                       runs: int = 5, vs_model: nn.Module | None = None, model: nn.Module | None = None
                       ) -> list[BenchResult]:
    """One model in several backends (and optionally a ``vs`` model in eager PyTorch), timed round-robin on the same
    input; returns one result per backend (eager first, then the others, then ``vs``'s), each with
    ``ratio_vs_eager`` and ``ratio_vs`` (median per-round speed ratios).

    Eager PyTorch is always timed (the first ratio's denominator) even when not asked for. The model is built once
    and every backend runs that module (the exported ones: the file exported from it). ``vs_model``: an already
    built module for ``vs`` (e.g. the official implementation, ``scripts/bench_official.py``); ``model``: the same for
    ``spec`` (e.g. carrying the official weights).
    """
    from dataclasses import replace

    if spec.threads:
        torch.set_num_threads(spec.threads)
    order = list(dict.fromkeys(["eager", *backends]))
    if model is None:
        model, kw = create_at_size(spec.model, spec.img_size, spec.model_kwargs)
        spec = replace(spec, model_kwargs=kw)
    model.eval()
    files: dict[str, Any] = {}
    runners = [Runner(replace(spec, backend=b), model=model, files=files) for b in order]
    if vs is not None:
        if vs_model is None:
            vs_model, vs_kw = create_at_size(vs.model, vs.img_size, vs.model_kwargs)
            vs = replace(vs, model_kwargs=vs_kw)
        runners.append(Runner(replace(vs, backend="eager"), model=vs_model))
    times = interleave_all(runners, warmup, runs)
    results = []
    for r, t in zip(runners, times):
        res = _result(r, t, None)
        res.ratio_vs_eager = round_ratio(times[0], t)
        res.ratio_vs = round_ratio(times[-1], t) if vs is not None else None
        results.append(res)
    return results


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
