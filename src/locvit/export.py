"""Ship a model: ONNX (``torch.onnx.export(..., dynamo=True)``), OpenVINO IR (converted from that ONNX graph,
optionally INT8 behind an accuracy gate) or a ``torch.export`` program (``.pt2``), each verified against eager
PyTorch before it is reported as written (``locvit export``).

Every registered model traces as one graph (no graph breaks, nothing data-dependent): masks, indices and tables are
buffers or are built from shapes only, so ``torch.compile(model, fullgraph=True)``, ``torch.export.export`` and the
ONNX exporter all take the same model the eager path runs. :func:`export` does the whole job:

1. build the model (random init, or a checkpoint loaded strictly; its classifier decides ``num_classes``);
2. ``torch.export.export`` it on an example input (batch dimension dynamic by default);
3. write ONNX (from that program), the IR converted from it, or the program itself to temporary files next to the
   target;
4. load the file back (:class:`locvit.deploy.Runtime`: ONNX Runtime, OpenVINO or ``torch.export.load``), run it on
   the example input and on another batch size, and compare with eager PyTorch: the largest absolute difference must
   be at most ``atol`` (1e-4). INT8 (:mod:`locvit.deploy`): the fp32 graph is checked this way, then quantized on the
   calibration images, and top-1 on the validation images must not drop by more than the budget;
5. only then move the files into place (atomically: a failed or interrupted export never leaves a file behind).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from locvit.deploy import Runtime, image_batches, publish, temp_files_for
from locvit.layers.attention import explicit_attention
from locvit.models import create_model, family_of
from locvit.runtime import quiet

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "openvino": ".xml"}


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
    int8: Any = None                    # locvit.deploy.Int8Report of the accuracy gate (INT8 exports)
    files: list[Path] = field(default_factory=list)  # everything written (an IR: .bin and .xml)

    @property
    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in (self.files or [self.path])) / 2 ** 20


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
    with quiet():
        onnx_program = torch.onnx.export(program, (x,), dynamo=True, input_names=["image"], output_names=["output"],
                                         optimize=optimize, verbose=False)
        onnx_program.save(str(path), external_data=False)
    return Path(path)


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
    int8: bool = False,
    calib: str | None = None,
    val: str | None = None,
    max_drop: float = 0.5,
    calib_images: int = 300,
    val_images: int | None = None,
) -> ExportResult:
    """Export a model to ``format`` (``'onnx'``, ``'pt2'`` or ``'openvino'``) and verify the written file against
    eager PyTorch.

    Args:
        model: a model name (built by :func:`locvit.create_model` at ``img_size``, with the checkpoint; random
            init from seed 0 without one) or a module (put in eval mode).
        format: ``'onnx'`` (ONNX Runtime checks it), ``'pt2'`` (``torch.export.save``; ``torch.export.load``
            checks it) or ``'openvino'`` (IR ``.xml`` + ``.bin`` converted from the ONNX graph; OpenVINO checks it).
        output: target file (default ``<model>.<suffix>`` in the working directory; an IR's ``.bin`` goes next to
            its ``.xml``).
        checkpoint: weights for a model name (default: random init).
        img_size: input ``(H, W)`` (an int: square); default the model's pretrained cfg.
        batch_size: batch of the verification input.
        dynamic_batch: export with a symbolic batch dimension (the file takes any batch size).
        num_classes: classifier size for a model name (default: the checkpoint's, else the model's).
        atol: largest accepted absolute difference from eager PyTorch (for INT8: of the fp32 graph it quantizes).
        model_kwargs: extra constructor arguments for a model name.
        log: progress lines (e.g. ``print``).
        int8: quantize (OpenVINO IR only; :func:`locvit.deploy.quantize_int8`) on ``calib``'s training split and
            write the file only if top-1 on ``val`` drops by at most ``max_drop`` points
            (:func:`locvit.deploy.accuracy_gate`).
        calib: dataset spec of the calibration images (``digits``, ``cifar10:ROOT`` or a folder; its ``train``
            split, or the folder itself when it is a folder of class folders).
        val: dataset spec of the validation images (its ``val`` split); default ``calib``'s ``val`` split.
        max_drop: top-1 budget in points (fp32 minus INT8).
        calib_images, val_images: at most this many images of each (None: all validation images).

    Returns:
        :class:`ExportResult`; raises :class:`ExportError` (nothing written) when the file does not match, and
        :class:`locvit.deploy.Int8Refused` (nothing written) when the INT8 model is past the budget.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if int8:
        from locvit import deploy

        if format != "openvino":
            raise ValueError("INT8 export writes OpenVINO IR (quantized with NNCF): use --format openvino")
        if not calib:
            raise ValueError("INT8 export needs calibration images: --calib DATA (digits, a folder of class folders, "
                             "or a folder with train/ and val/)")
        deploy.check_max_drop(max_drop)
        if calib_images < 1:
            raise ValueError(f"calib_images must be at least 1, got {calib_images}")
    if format == "openvino":
        from locvit import deploy

        deploy.require("openvino", "OpenVINO export")
        if int8:
            deploy.require("nncf", "INT8 export")
    say = log or (lambda s: None)
    t0 = time.perf_counter()
    if isinstance(model, str):
        name = model
        family = family_of(name)
        torch.manual_seed(0)
        kw = dict(model_kwargs or {})
        if img_size is not None:  # built for the size it is exported at: tables and embeddings as trained
            kw.setdefault("img_size", img_size)
        model = create_model(name, checkpoint=checkpoint, num_classes=num_classes, trust_pickle=trust_pickle,
                             **kw).eval()
    else:
        name = getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
        family = _family_of_module(model)
        model = model.eval()
    size = input_size(model, img_size)
    x = example_input(model, size, batch_size)
    trace_x = x if (not dynamic_batch or batch_size >= 2) else example_input(model, size, 2)
    target = Path(output) if output else Path(f"{name}{'_int8' if int8 else ''}{FORMATS[format]}")
    if format == "openvino" and target.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as NAME.xml + NAME.bin; --output {target} should end in .xml")
    target.parent.mkdir(parents=True, exist_ok=True)

    calib_batches: list[np.ndarray] = []
    if int8:
        # read (and so check) the images before the slow tracing: an empty or unreadable folder fails at once
        calib_batches = [b for b, _ in image_batches(calib, "train", model, size, 32, calib_images,
                                                     what="calibration images --calib")]
        val_batches = list(image_batches(val or calib, "val", model, size, 32, val_images,
                                         what="validation images --val"))
        say(f"{sum(len(b) for b in calib_batches)} calibration and {sum(len(b) for _, b in val_batches)} "
            f"validation images ({size[0]}x{size[1]})")

    say(f"tracing {name} at {size[0]}x{size[1]} with torch.export ({'dynamic' if dynamic_batch else 'fixed'} batch)")
    # ONNX: trace the explicit attention path (same results). The exporter's decomposition of
    # scaled_dot_product_attention with a symbolic batch fails on RegionViT's and Focal's windowed calls
    # ("Cannot view a tensor ... as a tensor with shape (s, N, C)", torch 2.14); it would lower SDPA to these
    # same matmul/softmax ops anyway.
    trace_ctx = explicit_attention() if format in ("onnx", "openvino") else contextlib.nullcontext()
    try:
        with trace_ctx:
            program = export_program(model, trace_x, dynamic_batch)
    except Exception as e:  # noqa: BLE001 - report what torch.export says, in one line
        raise ExportError(f"torch.export failed for {name}: {type(e).__name__}: {str(e).splitlines()[0]}") from e

    # temporary names keep the extension (torch.export.load wants '.pt2'; an IR's .xml and .bin share a stem)
    if format == "openvino":
        tmp_onnx, tmp, tmp_bin = temp_files_for(target, [".onnx", ".xml", ".bin"])
        moves = [(tmp_bin, target.with_suffix(".bin")), (tmp, target)]
        temps = [tmp_onnx, tmp, tmp_bin]
    else:
        (tmp,) = temp_files_for(target, [target.suffix or FORMATS[format]])
        moves, temps = [(tmp, target)], [tmp]
    report = None
    try:
        if format == "pt2":
            torch.export.save(program, str(tmp))
        else:
            say("translating to ONNX")
            save_onnx(program, trace_x, tmp_onnx if format == "openvino" else tmp)
        if format == "openvino":
            from locvit import deploy

            say("converting to OpenVINO IR")
            ov_model = deploy.openvino_model(tmp_onnx)
            if int8:
                fp32_run = deploy.compile_openvino(ov_model)
                worst = _worst_diff(model, fp32_run, verify_inputs(x, dynamic_batch))
                if not worst <= atol:
                    raise ExportError(f"{name}: the fp32 OpenVINO model differs from eager PyTorch by {worst:.3g} "
                                      f"(> atol {atol:g}); nothing written")
                say(f"fp32 graph verified against eager (max |diff| {worst:.2e}); quantizing with NNCF on "
                    f"{sum(len(b) for b in calib_batches)} calibration images")
                quantized = deploy.quantize_int8(ov_model, calib_batches, family)
                kept = deploy.ignored_scope(ov_model, family)
                report = deploy.accuracy_gate(fp32_run, deploy.compile_openvino(quantized), val_batches, max_drop,
                                              sum(len(b) for b in calib_batches),
                                              list(kept.names) + list(kept.types))
                say(f"accuracy gate passed: {report.summary()}")
                ov_model = quantized
            deploy.save_openvino(ov_model, tmp)

        say("verifying the written file against eager PyTorch" if not int8
            else "verifying the written file reproduces the quantized model")
        run = Runtime(tmp, "openvino" if format == "openvino" else "onnxruntime" if format == "onnx" else "pt2")
        if int8:
            ref_run = deploy.compile_openvino(ov_model)
            worst = max(max_abs_diff(torch.from_numpy(ref_run(b)), run(b)) for b in calib_batches[:1])
            if not worst <= atol:
                raise ExportError(f"{name}: the written INT8 IR differs from the quantized model by {worst:.3g}; "
                                  f"nothing written")
        else:
            worst = _worst_diff(model, run, verify_inputs(x, dynamic_batch))
            if not worst <= atol:
                raise ExportError(f"{name}: the exported {format} file differs from eager PyTorch by {worst:.3g} "
                                  f"(> atol {atol:g}); nothing written")
        del run
        publish(moves)
    finally:
        for t in temps:
            if t.exists():
                t.unlink()
    files = [t for _, t in moves]
    return ExportResult(target, format, tuple(x.shape), worst, dynamic_batch, time.perf_counter() - t0,
                        int8=report, files=files)


def _worst_diff(model: nn.Module, run: Callable[[Tensor], Any], inputs: list[Tensor]) -> float:
    """Largest |run(x) - model(x)| over ``inputs``."""
    worst = 0.0
    for inp in inputs:
        with torch.no_grad():
            ref = model(inp)
        worst = max(worst, max_abs_diff(ref, run(inp)))
    return worst


def _family_of_module(model: nn.Module) -> str | None:
    """The locvit family of a built model (from its timm architecture name), None for other models."""
    arch = getattr(model, "default_cfg", {}).get("architecture") or getattr(model, "pretrained_cfg", {}).get(
        "architecture")
    try:
        return family_of(arch) if arch else None
    except (KeyError, ValueError):
        return None
