"""Process-level CPU settings: keep freed activation memory in the process instead of handing it back to the kernel.

PyTorch allocates CPU tensors with plain ``malloc``. glibc serves blocks above its mmap threshold (dynamic, up to
32 MB) with fresh ``mmap`` calls, unmaps them on free, and trims the top of its heap above the trim threshold; so
the megabyte-sized activations of every forward pass are mapped, faulted in page by page and unmapped again, each
call (how often depends on the order of allocation sizes, as glibc raises its threshold to each freed mapped
block's size). :func:`tune_cpu_allocator` keeps those blocks in the heap for reuse, with the same peak memory (the
heap just keeps what it already held); the page faults and time it saves, with the commands, are in
docs/benchmarks/README.md (*Allocator*). This is what the ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` environment variables, or preloading jemalloc/tcmalloc, do for a whole process.

The ``locvit`` command applies it at start (``LOCVIT_TUNE_MALLOC=0`` turns that off); Python users call
:func:`tune_cpu_allocator` once. It changes nothing on other C libraries (musl, macOS, Windows).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib
import io
import logging
import os
import sys
from typing import Any, Callable, Iterator

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 << 20  # glibc refuses larger values on 64-bit (HEAP_MAX_SIZE / 2)

_applied: dict[str, int] | None = None


def default_workers() -> int:
    """DataLoader worker processes when none are asked for: 4 (timm's default), at most one per CPU core."""
    return max(1, min(4, os.cpu_count() or 1))


def tune_cpu_allocator(mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds so freed tensors are reused rather than unmapped.

    Args:
        mmap_threshold: blocks at least this large still get their own mapping (at most 32 MB).
        trim_threshold: free memory at the top of the heap beyond this is returned to the kernel.

    Returns True when glibc accepted the settings, False where there is no glibc ``mallopt``.
    """
    global _applied
    if not 0 < mmap_threshold <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in (0, {MAX_MMAP_THRESHOLD}] bytes (glibc's limit), "
                         f"got {mmap_threshold}")
    if trim_threshold <= 0:
        raise ValueError(f"trim_threshold must be positive, got {trim_threshold}")
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if ok:
        _applied = {"mmap_threshold": mmap_threshold, "trim_threshold": trim_threshold}
    return ok


def allocator_settings() -> dict[str, int] | None:
    """The settings :func:`tune_cpu_allocator` applied in this process (None if it did not run or failed)."""
    return None if _applied is None else dict(_applied)


def tune_from_env() -> bool:
    """The ``locvit`` command's start-up: tune unless ``LOCVIT_TUNE_MALLOC=0``."""
    if os.environ.get("LOCVIT_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return tune_cpu_allocator()


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        fn = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):  # musl's mallopt is a stub; only glibc has both
            return None
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's CPU generators (and CUDA's once CUDA is in use).

    ``torch.manual_seed`` also queues a lazy CUDA seeding on a CUDA build, recording a Python stack trace each time;
    per sample in a data loader that cost more than the augmentation itself. Seeding CUDA only once it is
    initialised gives the same random streams without it."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and optimiser chatter (errors still raise)."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def lazy_api(package: str, api: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` (PEP 562) for ``package``, binding each public name of ``api`` (name ->
    the module that defines it) on first use: importing the package costs nothing until a name is used."""

    def __getattr__(name: str) -> Any:
        module = api.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(api))

    return __getattr__, __dir__
