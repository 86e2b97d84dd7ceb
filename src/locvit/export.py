"""Ship a model: ONNX (``torch.onnx.export(..., dynamo=True)``) or a ``torch.export`` program (``.pt2``), each
verified against eager PyTorch before it is reported as written (``locvit export``).

Every registered model traces as one graph (no graph breaks, nothing data-dependent): masks, indices and tables are
buffers or are built from shapes only, so ``torch.compile(model, fullgraph=True)``, ``torch.export.export`` and the
ONNX exporter all take the same model the eager path runs. :func:`export` does the whole job:

1. build the model (random init, or a checkpoint loaded strictly; its classifier decides ``num_classes``);
2. ``torch.export.export`` it on an example input (batch dimension dynamic by default);
3. write ONNX (from that program) or the program itself to a temporary file next to the target;
4. load the file back (ONNX Runtime, or ``torch.export.load``), run it on the example input and on another batch
   size, and compare with eager PyTorch: the largest absolute difference must be at most ``atol`` (1e-4);
5. only then move the file into place (atomically: a failed or interrupted export never leaves a file behind).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from locvit.layers.attention import explicit_attention

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}


class ExportError(ValueError):
    """The exported file does not reproduce eager PyTorch (or the model could not be exported)."""


@dataclass
class ExportResult:
    """What :func:`export` wrote and how closely it matches eager PyTorch."""

    path: Path
    format: str
    input_shape: tuple[int, ...]
    max_abs_diff: float
    dynamic_batch: bool
    seconds: float

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 2 ** 20


def input_size(model: nn.Module, img_size: tuple[int, int] | int | None = None) -> tuple[int, int]:
    """``img_size`` (an int means square) or the model's pretrained-cfg input size."""
    if img_size is None:
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        return int(size[-2]), int(size[-1])
    if isinstance(img_size, int):
        return img_size, img_size
    return int(img_size[0]), int(img_size[1])


def example_input(model: nn.Module, size: tuple[int, int], batch_size: int = 1, seed: int = 0) -> Tensor:
    """A reproducible normal-distributed batch ``B x C x H x W`` (roughly what normalised images look like)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, getattr(model, "in_chans", 3), *size, generator=gen)


def _outputs(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, np.ndarray):
        return [torch.from_numpy(out)]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _outputs(o)]
    raise TypeError(f"unsupported output type {type(out).__name__}")


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two (nested) outputs of the same structure; NaN counts as infinite."""
    ta, tb = _outputs(a), [torch.as_tensor(t) for t in _outputs(b)]
    if len(ta) != len(tb):
        raise ExportError(f"the exported model returns {len(tb)} outputs, eager PyTorch {len(ta)}")
    worst = 0.0
    for x, y in zip(ta, tb):
        if tuple(x.shape) != tuple(y.shape):
            raise ExportError(f"output shape {tuple(y.shape)} differs from eager {tuple(x.shape)}")
        d = (x.detach().double().cpu() - y.double().cpu()).abs()
        worst = max(worst, float("inf") if d.isnan().any() else float(d.max()) if d.numel() else 0.0)
    return worst


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


def export_program(model: nn.Module, x: Tensor, dynamic_batch: bool = True,
                   strict: bool = False) -> torch.export.ExportedProgram:
    """``torch.export.export(model, (x,))``; with ``dynamic_batch`` the batch dimension is symbolic (the example
    needs a batch of at least 2: torch.export specialises a size of 1).

    ``strict=True`` traces with TorchDynamo, which refuses graph breaks (what ``torch.compile(fullgraph=True)``
    needs); the default non-strict mode traces the Python code as it runs.
    """
    dynamic_shapes = None
    if dynamic_batch:
        if x.shape[0] < 2:
            raise ValueError("a dynamic batch needs an example batch of at least 2")
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with torch.no_grad():
        return torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes, strict=strict)


def save_onnx(program: torch.export.ExportedProgram | nn.Module, x: Tensor, path: str | Path,
              optimize: bool = True) -> Path:
    """Translate an exported program (or a module) to ONNX with the dynamo exporter and write one self-contained
    file (weights inside; every locvit model is far below protobuf's 2 GB limit)."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency, named in the error below)
    except ImportError as e:  # pragma: no cover - tools extra missing
        raise ValueError("ONNX export needs onnx and onnxscript (pip install 'locvit[tools]')") from e
    with _quiet():
        onnx_program = torch.onnx.export(program, (x,), dynamo=True, input_names=["image"], output_names=["output"],
                                         optimize=optimize, verbose=False)
        onnx_program.save(str(path), external_data=False)
    return Path(path)


def onnx_session(path: str | Path):
    """An ONNX Runtime CPU session for a file (warnings off)."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - tools extra missing
        raise ValueError("verifying an ONNX file needs onnxruntime (pip install 'locvit[tools]')") from e
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: Tensor) -> list[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: x.detach().cpu().numpy()})


def check_compile(model: nn.Module, x: Tensor, backend: str = "inductor", dynamic: bool | None = False) -> float:
    """``torch.compile(model, fullgraph=True)`` on ``x``: raises on any graph break; returns the largest absolute
    difference from eager PyTorch."""
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=dynamic)
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    return max_abs_diff(ref, out)


def verify_inputs(x: Tensor, dynamic_batch: bool, seed: int = 1) -> list[Tensor]:
    """The example input, and with a dynamic batch also a batch of another size (1 or B + 1)."""
    inputs = [x]
    if dynamic_batch:
        other = 1 if x.shape[0] != 1 else 2
        gen = torch.Generator().manual_seed(seed)
        inputs.append(torch.randn(other, *x.shape[1:], generator=gen))
    return inputs


def export(
    model: str | nn.Module,
    format: str = "onnx",
    output: str | Path | None = None,
    checkpoint: str | None = None,
    img_size: tuple[int, int] | int | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    num_classes: int | None = None,
    atol: float = 1e-4,
    trust_pickle: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], Any] | None = None,
) -> ExportResult:
    """Export a model to ``format`` (``'onnx'`` or ``'pt2'``) and verify the written file against eager PyTorch.

    Args:
        model: a model name (built by :func:`locvit.create_model` at ``img_size``, with the checkpoint; random
            init from seed 0 without one) or a module (put in eval mode).
        format: ``'onnx'`` (ONNX Runtime checks it) or ``'pt2'`` (``torch.export.save``; ``torch.export.load``
            checks it).
        output: target file (default ``<model>.<format>`` in the working directory).
        checkpoint: weights for a model name (default: random init).
        img_size: input ``(H, W)`` (an int: square); default the model's pretrained cfg.
        batch_size: batch of the verification input.
        dynamic_batch: export with a symbolic batch dimension (the file takes any batch size).
        num_classes: classifier size for a model name (default: the checkpoint's, else the model's).
        atol: largest accepted absolute difference from eager PyTorch.
        model_kwargs: extra constructor arguments for a model name.
        log: progress lines (e.g. ``print``).

    Returns:
        :class:`ExportResult`; raises :class:`ExportError` (nothing written) when the file does not match.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    if isinstance(model, str):
        from locvit._registry import create_model

        name = model
        torch.manual_seed(0)
        kw = dict(model_kwargs or {})
        if img_size is not None:  # built for the size it is exported at: tables and embeddings as trained
            kw.setdefault("img_size", img_size)
        model = create_model(name, checkpoint=checkpoint, num_classes=num_classes, trust_pickle=trust_pickle,
                             **kw).eval()
    else:
        name = getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
        model = model.eval()
    size = input_size(model, img_size)
    x = example_input(model, size, batch_size)
    trace_x = x if (not dynamic_batch or batch_size >= 2) else example_input(model, size, 2)
    target = Path(output) if output else Path(f"{name}{FORMATS[format]}")
    target.parent.mkdir(parents=True, exist_ok=True)

    say(f"tracing {name} at {size[0]}x{size[1]} with torch.export ({'dynamic' if dynamic_batch else 'fixed'} batch)")
    # ONNX: trace the explicit attention path (same results). The exporter's decomposition of
    # scaled_dot_product_attention with a symbolic batch fails on RegionViT's and Focal's windowed calls
    # ("Cannot view a tensor ... as a tensor with shape (s, N, C)", torch 2.14); it would lower SDPA to these
    # same matmul/softmax ops anyway.
    trace_ctx = explicit_attention() if format == "onnx" else contextlib.nullcontext()
    try:
        with trace_ctx:
            program = export_program(model, trace_x, dynamic_batch)
    except Exception as e:  # noqa: BLE001 - report what torch.export says, in one line
        raise ExportError(f"torch.export failed for {name}: {type(e).__name__}: {str(e).splitlines()[0]}") from e

    # the temporary file keeps the extension: torch.export.load wants '.pt2'
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix or FORMATS[format],
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would otherwise survive the rename
    try:
        if format == "onnx":
            say("translating to ONNX")
            save_onnx(program, trace_x, tmp)
            session = onnx_session(tmp)

            def run(inp: Tensor) -> Any:
                return run_onnx(session, inp)
        else:
            torch.export.save(program, str(tmp))
            loaded = torch.export.load(str(tmp)).module()

            def run(inp: Tensor) -> Any:
                with torch.no_grad():
                    return loaded(inp)

        say("verifying the written file against eager PyTorch")
        worst = 0.0
        for inp in verify_inputs(x, dynamic_batch):
            with torch.no_grad():
                ref = model(inp)
            worst = max(worst, max_abs_diff(ref, run(inp)))
        if not worst <= atol:
            raise ExportError(f"{name}: the exported {format} file differs from eager PyTorch by {worst:.3g} "
                              f"(> atol {atol:g}); nothing written")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportResult(target, format, tuple(x.shape), worst, dynamic_batch, time.perf_counter() - t0)
