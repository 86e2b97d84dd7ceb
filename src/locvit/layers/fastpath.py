"""When a CPU fast path may replace the plain expression, and the one per-shape cache the models share.

Several layers have an inference shortcut that gives the plain expression's numbers with less memory traffic
(cache-sized MLP row blocks, oneDNN convolutions with fused activations, VVT stages a few images at a time, in-place
temporaries, a hand-written VVT backward in eager training). Each shortcut asks the predicates here, never torch
directly, so that one rule decides for all of them:

* :func:`tracing`: a graph is being built (``torch.compile``/Dynamo, ``torch.export``, ``torch.jit`` tracing or
  scripting, ``torch.fx`` symbolic tracing). A graph must hold the plain operators, and shape-dependent values are
  computed inline instead of read from a cache.
* :func:`recording`: a FLOP counter or an attention recorder is watching (:func:`record`, which
  :func:`~locvit.layers.attention.explicit_attention` and :func:`~locvit.layers.attention.record_attention` enter):
  every op must run as written so that it is counted or captured.
* :func:`eager_cpu_inference`: eager, not recording, CPU, autograd off: where the inference shortcuts apply.
* :func:`needs_grad` / :func:`eager_autograd`: whether autograd records the op, and whether a hand-written backward
  may replace autograd's (eager only: compilers and exporters see the plain ops).

Every fast path keeps its plain expression, and the tests prove the two equal. The thresholds below are the
settings the shortcuts read at call time, so a deployment on a CPU with other cache sizes can change them
(``locvit.layers.fastpath.FFN_GROUP_MIN_BYTES = 64 << 20``); what they were measured to gain, and the commands,
are in ``docs/benchmarks/README.md`` (section *CPU fast paths*).

:class:`ShapeCache` holds what depends only on an input shape (attention masks, gather indices, angle tables): one
least-recently-used policy bounded by entries and bytes, bypassed while tracing, and built outside inference mode so
that a value first built in ``torch.inference_mode`` still serves training.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator, KeysView, TypeVar

import torch
from torch import Tensor

__all__ = [
    "FFN_GROUP_BYTES", "FFN_GROUP_MIN_BYTES", "FFN_SE_PER_IMAGE_RATIO", "MLP_BLOCK_BYTES", "MLP_MIN_HIDDEN_BYTES",
    "MLP_MIN_ROWS", "MLP_MIN_TOKENS", "SHAPE_CACHE_BYTES", "SHAPE_CACHE_ENTRIES", "VVT_CHUNK_TOKENS", "ShapeCache",
    "eager_autograd", "eager_cpu_inference", "needs_grad", "record", "recording", "tracing",
]

# --- settings (read at call time; bytes are of float32 activations) -------------------------------------------------
#: Token-MLP row block (``layers.token_mlp``): the block's hidden activations stay in one core's L2.
MLP_BLOCK_BYTES = 1 << 20
#: Never fewer rows per block: below this the GEMMs' per-call overhead outweighs the cache gain.
MLP_MIN_ROWS = 256
#: Blocking pays once the whole hidden tensor outgrows the last-level cache ...
MLP_MIN_HIDDEN_BYTES = 16 << 20
#: ... or the map is this long (narrow hidden layers, e.g. T2T's token layers, still stream it).
MLP_MIN_TOKENS = 16384
#: Locality FFN (``layers.locality_ffn``): a batch whose hidden maps pass a last-level cache goes in image groups ...
FFN_GROUP_MIN_BYTES = 32 << 20
#: ... of at most this much hidden map each (smaller groups make the per-image GEMMs too small).
FFN_GROUP_BYTES = 8 << 20
#: SE gate folded into per-image projection weights only when the map has this many times more tokens than the
#: projection has outputs (elsewhere one shared-weight GEMM on the gated map is faster).
FFN_SE_PER_IMAGE_RATIO = 4
#: VVT stages run this many tokens of images at a time (``VicinityStage``): the 8x-wide MLP maps stay cache-sized.
VVT_CHUNK_TOKENS = 4096
#: Shape caches keep this many shapes: a multi-scale schedule's sizes fit, more sizes are rebuilt (cheaply) ...
SHAPE_CACHE_ENTRIES = 16
#: ... and at most this many bytes of tensors (large inputs give masks of tens of MB); the newest entry always stays.
SHAPE_CACHE_BYTES = 64 << 20

_recording_depth = 0


# --- predicates -----------------------------------------------------------------------------------------------------
def _fx_symbolic_tracing() -> bool:
    # torch.fx has no public query; is_fx_symbolic_tracing (torch >= 2.6) excludes torch.export, which
    # is_compiling covers; older releases only have is_fx_tracing
    st = torch.fx._symbolic_trace
    return bool((getattr(st, "is_fx_symbolic_tracing", None) or st.is_fx_tracing)())


def tracing() -> bool:
    """True while a graph is being built: ``torch.compile``/Dynamo, ``torch.export``, ``torch.jit.trace`` or
    ``torch.jit.script``, or ``torch.fx.symbolic_trace``.

    Asked before anything that reads a tensor's properties, so it is safe on FX proxies and never a graph break.
    """
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or _fx_symbolic_tracing()
    )


def recording() -> bool:
    """True inside :func:`record`: a FLOP counter or attention recorder wants every op as written."""
    return _recording_depth > 0


@contextlib.contextmanager
def record() -> Iterator[None]:
    """Run every locvit fast path as its plain expression (and attention as the explicit softmax) while active.

    Results do not change. Re-entrant; :func:`~locvit.layers.attention.explicit_attention` is this context.
    """
    global _recording_depth
    _recording_depth += 1
    try:
        yield
    finally:
        _recording_depth -= 1


def eager_cpu_inference(x: Tensor) -> bool:
    """Whether a CPU inference shortcut may replace the plain expression for ``x``: not :func:`tracing`, not
    :func:`recording`, ``x`` on the CPU and autograd off (``torch.no_grad`` or ``torch.inference_mode``).

    Callers add their own layer conditions (eval mode, dtype, sizes) after this one: :func:`tracing` comes first so
    that checks Dynamo cannot trace (e.g. ``torch.backends.mkldnn.is_available``) are never reached while compiling.
    """
    return not tracing() and not recording() and x.device.type == "cpu" and not torch.is_grad_enabled()


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records an op on ``tensors`` (otherwise temporaries may be updated in place)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def eager_autograd(*tensors: Tensor) -> bool:
    """Whether a hand-written ``autograd.Function`` may replace autograd's record of the plain ops: eager
    training (:func:`needs_grad` and not :func:`tracing`; compilers and exporters see the plain ops)."""
    return needs_grad(*tensors) and not tracing()


# --- the shape cache ------------------------------------------------------------------------------------------------
V = TypeVar("V")


def _nbytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class ShapeCache:
    """Values that depend only on a shape (and the device/dtype in the key), least recently used first out.

    ``get_or_build(key, build)`` returns the cached value or stores ``build()``. Bounded by ``max_entries`` and
    ``max_bytes`` of tensors (the newest entry is kept even when larger); ``None`` reads the module settings
    :data:`SHAPE_CACHE_ENTRIES` / :data:`SHAPE_CACHE_BYTES` at each insertion. While :func:`tracing` the cache is
    bypassed, so a graph computes the values inline and stays shape-generic. Values are built outside inference mode
    and without autograd, so a value first built under ``torch.inference_mode`` still serves training. A copied or
    pickled module gets an empty cache (its contents are derived, never state).
    """

    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes: dict[Hashable, int] = {}

    def get_or_build(self, key: Hashable, build: Callable[[], V]) -> V:
        """The value for ``key``, built with ``build()`` (and stored unless tracing) when absent."""
        if tracing():
            return build()
        try:
            value = self._data[key]
        except KeyError:
            pass
        else:
            self._data.move_to_end(key)
            return value
        with torch.inference_mode(False), torch.no_grad():
            value = build()
        self._data[key] = value
        self._bytes[key] = _nbytes(value)
        self._evict()
        return value

    def _evict(self) -> None:
        entries = SHAPE_CACHE_ENTRIES if self.max_entries is None else self.max_entries
        limit = SHAPE_CACHE_BYTES if self.max_bytes is None else self.max_bytes
        total = sum(self._bytes.values())
        while len(self._data) > 1 and (len(self._data) > entries or total > limit):
            key, _ = self._data.popitem(last=False)
            total -= self._bytes.pop(key, 0)

    def clear(self) -> None:
        self._data.clear()
        self._bytes.clear()

    def nbytes(self) -> int:
        """Bytes of the cached tensors."""
        return sum(self._bytes.values())

    def keys(self) -> KeysView[Hashable]:
        """Cached keys, least recently used first (a live view, as ``dict.keys``)."""
        return self._data.keys()

    def __getitem__(self, key: Hashable) -> Any:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._data))

    def __repr__(self) -> str:
        return f"ShapeCache({len(self)} entries, {self.nbytes()} bytes)"

    # derived values are never copied with a module (deepcopy for EMA, pickling with torch.save)
    def __getstate__(self) -> dict[str, Any]:
        return {"max_entries": self.max_entries, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_entries"], state["max_bytes"])

    def __deepcopy__(self, memo: dict[int, Any]) -> ShapeCache:
        return ShapeCache(self.max_entries, self.max_bytes)

    def __copy__(self) -> ShapeCache:
        return ShapeCache(self.max_entries, self.max_bytes)

