"""Run what ``locvit export`` wrote, and make it INT8 without silently losing accuracy.

* :class:`Runtime` / :func:`load_exported`: an exported file (ONNX, OpenVINO IR ``.xml``/``.bin``, ``.pt2``) as one
  callable ``NCHW float32 images -> logits`` (numpy or tensor in, numpy out), with the intra-op threads pinned the
  way ``locvit bench`` pins torch's, and a clear error when the input size is not one the file takes. The bench
  backends, :func:`locvit.export.export`'s verification and a predictor all run files through it.
* :func:`openvino_model` / :func:`save_openvino`: OpenVINO IR from the ONNX file ``locvit export`` writes
  (``openvino.convert_model``; fp32 weights kept, no fp16 compression).
* :func:`quantize_int8`: post-training static quantization with NNCF on the OpenVINO model, calibrated on the user's
  images, then the accuracy gate: top-1 of the fp32 and INT8 models and their agreement on validation images;
  :class:`Int8Refused` (nothing written) when the drop exceeds the budget.

Why NNCF on OpenVINO for INT8: OpenVINO runs the quantized graph with oneDNN's int8 kernels (fused
dequantize-matmul-requantize), NNCF's ``ModelType.TRANSFORMER`` keeps softmax, normalisations and the other
accuracy-sensitive ops of attention models in float and applies SmoothQuant to the activations that feed linear
layers; ONNX Runtime's static quantizer on x86 inserts QDQ pairs that its CPU provider fuses only around MatMul/Conv,
and PT2E's x86 quantizer runs through inductor (``torch.compile``), which ``locvit bench`` measures at about eager's
speed on this CPU. Which of them is fastest is a benchmark question: ``scripts/bench_deploy.sh`` measures the INT8
IR against the fp32 runtimes in one interleaved run (docs/benchmarks/README.md, *Deployment runtimes*).

The optional runtimes come with ``pip install 'locvit[deploy]'``; a missing one is named with that command.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from locvit.data.datasets import build_dataset, check_readable
from locvit.data.loader import build_loader, build_transform
from locvit.runtime import quiet

#: backend -> (file suffix it reads, Python module it needs)
BACKENDS = {"onnxruntime": (".onnx", "onnxruntime"), "openvino": (".xml", "openvino"), "pt2": (".pt2", "torch")}
EXTRA = "pip install 'locvit[deploy]'"


def require(module: str, purpose: str) -> Any:
    """Import an optional runtime, or raise a ValueError that names it and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{purpose} needs the Python package {module!r}, which is not installed: {EXTRA}") from e


def backend_for(path: str | os.PathLike) -> str:
    """The runtime that reads a file, from its suffix (``.onnx`` ONNX Runtime, ``.xml`` OpenVINO, ``.pt2`` torch)."""
    suffix = Path(path).suffix
    for name, (ext, _) in BACKENDS.items():
        if suffix == ext:
            return name
    raise ValueError(f"{path}: unknown exported file type {suffix!r}; locvit export writes .onnx, .xml (OpenVINO IR) "
                     "and .pt2")


def _companion_bin(xml: Path) -> Path:
    return xml.with_suffix(".bin")


class Runtime:
    """One exported file ready to run on the CPU: ``runtime(images) -> logits`` (``numpy`` array, float32).

    Args:
        path: ``.onnx``, OpenVINO ``.xml`` (its ``.bin`` next to it) or ``.pt2``.
        backend: ``'onnxruntime'``, ``'openvino'`` or ``'pt2'``; default from the suffix. OpenVINO also reads
            ``.onnx`` files directly.
        threads: intra-op threads (ORT ``intra_op_num_threads``, OpenVINO ``INFERENCE_NUM_THREADS``,
            ``torch.set_num_threads``); default: the runtime's own choice. ``locvit bench`` passes the same number to
            every backend.
        precision: OpenVINO's ``INFERENCE_PRECISION_HINT`` (``'f32'`` by default: on CPUs with bf16 units OpenVINO
            would otherwise run an fp32 file in bf16 and report a different model's speed and accuracy).

    ``input_shape`` is the file's input shape with ``None`` for a dynamic dimension; a call with another fixed
    dimension raises a ValueError naming both sizes instead of the runtime's internal error.
    """

    def __init__(self, path: str | os.PathLike, backend: str | None = None, threads: int | None = None,
                 precision: str = "f32"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"exported file {self.path} does not exist")
        self.backend = backend or backend_for(self.path)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        self.threads = threads
        if self.backend == "onnxruntime":
            ort = require("onnxruntime", "running an ONNX file")
            so = ort.SessionOptions()
            so.log_severity_level = 3
            if threads:
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
            inp = self._session.get_inputs()[0]
            self._input_name = inp.name
            self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
            self._run = lambda x: self._session.run(None, {self._input_name: x})[0]
        elif self.backend == "openvino":
            ov = require("openvino", "running an OpenVINO model")
            if self.path.suffix == ".xml" and not _companion_bin(self.path).is_file():
                raise FileNotFoundError(f"{self.path} has no weights file {_companion_bin(self.path).name} next to it")
            config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            core = ov.Core()
            model = core.read_model(str(self.path))
            self.input_shape = tuple(None if d.is_dynamic else d.get_length()
                                     for d in model.inputs[0].get_partial_shape())
            self._compiled = core.compile_model(model, "CPU", config)
            self._request = self._compiled.create_infer_request()
            self._run = lambda x: self._request.infer({0: x})[self._compiled.outputs[0]]
        else:
            if threads:
                torch.set_num_threads(threads)
            module = torch.export.load(str(self.path)).module()
            self.input_shape = (None,)  # a program's input constraints are checked by the program itself

            def run(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return module(torch.from_numpy(x)).numpy()
            self._run = run

    def check_input(self, x: np.ndarray) -> None:
        """Raise a ValueError when ``x`` does not have a shape the file takes."""
        want = self.input_shape
        if len(want) > 1 and (x.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, x.shape))):
            shown = "x".join("B" if w is None else str(w) for w in want)
            raise ValueError(f"{self.path.name} takes inputs of shape {shown}; got {'x'.join(map(str, x.shape))}: "
                             f"resize the images, or export again with --img-size "
                             f"{x.shape[-2] if x.ndim == 4 else 'H'} {x.shape[-1] if x.ndim == 4 else 'W'}")

    def __call__(self, x: np.ndarray | Tensor) -> np.ndarray:
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.check_input(x)
        return np.asarray(self._run(x))

    def __repr__(self) -> str:
        return f"Runtime({str(self.path)!r}, backend={self.backend!r}, threads={self.threads})"


def load_exported(path: str | os.PathLike, backend: str | None = None, threads: int | None = None) -> Runtime:
    """:class:`Runtime` for a file written by ``locvit export`` (backend from the suffix unless given)."""
    return Runtime(path, backend, threads)


# --- OpenVINO IR ---------------------------------------------------------------------------------------------------
def openvino_model(onnx_path: str | os.PathLike) -> Any:
    """The ``openvino.Model`` of an ONNX file (``openvino.convert_model``; the input keeps its dynamic batch)."""
    ov = require("openvino", "OpenVINO export")
    return ov.convert_model(str(onnx_path))


def save_openvino(model: Any, xml: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``model`` as IR ``xml`` + the ``.bin`` next to it, weights in fp32 (no fp16 compression)."""
    ov = require("openvino", "OpenVINO export")
    xml = Path(xml)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml, _companion_bin(xml)


def temp_files_for(target: Path, suffixes: Sequence[str]) -> list[Path]:
    """Unique temporary names next to ``target``, one per suffix and sharing one stem (an IR's ``.xml`` and
    ``.bin`` must), so that nothing is visible under the target's name before it is verified."""
    fd, base = tempfile.mkstemp(prefix=f".{target.stem}.{os.getpid()}-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(base)
    return [Path(base[:-len(".tmp")] + s) for s in suffixes]


def publish(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Move verified temporary files into place (fsync each, then rename; the ``.xml`` of an IR last, so a reader
    never finds a new ``.xml`` beside an old ``.bin``)."""
    umask = os.umask(0)
    os.umask(umask)
    for tmp, target in pairs:
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)


# --- INT8 -----------------------------------------------------------------------------------------------------------
class Int8Refused(ValueError):
    """The INT8 model loses more top-1 than the budget allows; nothing was written. ``report``: the measurements."""

    def __init__(self, message: str, report: Int8Report | None = None):
        super().__init__(message)
        self.report = report


#: What stays in float per family, beyond what NNCF's transformer mode keeps in float for every model (softmax,
#: LayerNorm/MVN, the elementwise ops between them). ``activation_matmuls``: products of two activations (attention
#: logits and weighted sums). VVT's linear vicinity attention multiplies feature maps whose magnitudes are clamped
#: into [1e-4, 1e4] by design: one 8-bit grid per tensor cannot hold that range, so those products stay fp32.
#: ``types``: OpenVINO op types never quantized (Focal's and RegionViT's window gathers: quantizing a gather's output
#: adds a requantization per window for nothing, since a gather moves values and computes none).
INT8_KEEP_FLOAT: dict[str, dict[str, Any]] = {
    "vvt": {"activation_matmuls": True, "types": ["Gather", "GatherElements", "GatherND"]},
    "focal": {"activation_matmuls": False, "types": ["Gather", "GatherElements", "GatherND"]},
    "regionvit": {"activation_matmuls": False, "types": ["Gather", "GatherElements", "GatherND"]},
    "localvit": {"activation_matmuls": False, "types": []},
}


def _is_weight(output: Any) -> bool:
    """Whether an OpenVINO value comes from constants only (a weight, possibly converted or transposed)."""
    node = output.get_node()
    seen = 0
    while seen < 8:
        kind = node.get_type_name()
        if kind == "Constant":
            return True
        if kind not in ("Convert", "Transpose", "Reshape", "Unsqueeze", "Squeeze"):
            return False
        node = node.input(0).get_source_output().get_node()
        seen += 1
    return False


def activation_matmuls(model: Any) -> list[str]:
    """Names of the MatMul ops of an ``openvino.Model`` whose two inputs are both activations."""
    return [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
            and not any(_is_weight(op.input(i).get_source_output()) for i in range(2))]


def ignored_scope(model: Any, family: str | None) -> Any:
    """NNCF's ``IgnoredScope`` for a family's :data:`INT8_KEEP_FLOAT` rule (no rule: nothing beyond NNCF's)."""
    nncf = require("nncf", "INT8 export")
    rule = INT8_KEEP_FLOAT.get(family or "", {})
    names = activation_matmuls(model) if rule.get("activation_matmuls") else []
    return nncf.IgnoredScope(names=names, types=list(rule.get("types", [])), validate=False)


@dataclass
class Int8Report:
    """The accuracy gate's measurements on the validation images (top-1 in percent, drop in points)."""

    images: int
    top1_fp32: float
    top1_int8: float
    agreement: float            # percent of images on which INT8 predicts fp32's class
    max_drop: float
    calibration_images: int
    kept_float: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float:
        return self.top1_fp32 - self.top1_int8

    def as_dict(self) -> dict[str, Any]:
        """The measurements and the verdict, for ``locvit export --report``."""
        from dataclasses import asdict

        return dict(asdict(self), drop=self.drop, passed=self.drop <= self.max_drop)

    def summary(self) -> str:
        return (f"top-1 fp32 {self.top1_fp32:.2f}%, int8 {self.top1_int8:.2f}% (drop {self.drop:+.2f} pt, budget "
                f"{self.max_drop:g} pt), agreement with fp32 {self.agreement:.2f}% on {self.images} validation "
                f"images; calibrated on {self.calibration_images}")


def image_batches(data: str, split: str, model: nn.Module, img_size: tuple[int, int], batch_size: int,
                  limit: int | None = None, what: str = "images") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches ``(images NCHW float32, labels)`` of a dataset spec (``digits``, ``cifar10:ROOT``, or a folder of class
    folders / with ``train``/``val`` inside), preprocessed as ``locvit eval`` does (the model's data config at
    ``img_size``); at most ``limit`` images. Raises a ValueError for an empty or unreadable dataset."""
    from timm.data import resolve_data_config

    try:
        ds = build_dataset(data, split)
    except FileNotFoundError as e:
        raise ValueError(f"{what} {data!r}: {e}") from e
    try:
        check_readable(ds)
    except ValueError as e:
        raise ValueError(f"{what} {data!r}: {e}") from e
    ds.transform = build_transform(resolve_data_config({"input_size": (3, *img_size)}, model=model), training=False)
    if limit is not None and limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(limit))  # type: ignore[assignment]
    for batch in build_loader(ds, batch_size, training=False):  # type: ignore[arg-type]
        x, y = batch[0], batch[1]
        if len(x):
            yield x.numpy(), y.numpy()


def _top1(run: Callable[[np.ndarray], np.ndarray], batches: Iterable[tuple[np.ndarray, np.ndarray]]
          ) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = [], []
    for x, y in batches:
        preds.append(run(x).argmax(-1))
        labels.append(y)
    if not preds:
        raise ValueError("no readable validation image")
    return np.concatenate(preds), np.concatenate(labels)


def quantize_int8(fp32_model: Any, calib: Sequence[np.ndarray], family: str | None = None) -> Any:
    """NNCF post-training static quantization of an ``openvino.Model`` on calibration batches (NCHW float32; NNCF
    counts each batch as one sample, so every batch is used):
    transformer mode (softmax and normalisations in float), the family's :data:`INT8_KEEP_FLOAT` rule, mixed preset
    (symmetric weights, asymmetric activations)."""
    nncf = require("nncf", "INT8 export")
    if not calib:
        raise ValueError("no calibration images")
    import logging

    dataset = nncf.Dataset(list(calib))
    nncf.set_log_level(logging.ERROR)
    with quiet():  # NNCF's progress bars
        return nncf.quantize(fp32_model, dataset, preset=nncf.QuantizationPreset.MIXED,
                             model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
                             ignored_scope=ignored_scope(fp32_model, family))


def compile_openvino(model: Any, threads: int | None = None, precision: str = "f32") -> Callable[[np.ndarray],
                                                                                                   np.ndarray]:
    """An in-memory ``openvino.Model`` compiled for the CPU as :class:`Runtime` compiles files."""
    ov = require("openvino", "OpenVINO")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: np.asarray(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[compiled.outputs[0]])


def accuracy_gate(fp32: Callable[[np.ndarray], np.ndarray], int8: Callable[[np.ndarray], np.ndarray],
                  val: Iterable[tuple[np.ndarray, np.ndarray]], max_drop: float, calibration_images: int,
                  kept_float: list[str] | None = None) -> Int8Report:
    """Top-1 of both models and their agreement on ``val``; raises :class:`Int8Refused` with the measured numbers
    when ``top1_fp32 - top1_int8 > max_drop`` (points)."""
    val = list(val)
    p32, labels = _top1(fp32, val)
    p8, _ = _top1(int8, val)
    report = Int8Report(images=len(labels), top1_fp32=100 * float((p32 == labels).mean()),
                        top1_int8=100 * float((p8 == labels).mean()), agreement=100 * float((p8 == p32).mean()),
                        max_drop=max_drop, calibration_images=calibration_images, kept_float=kept_float or [])
    if report.drop > max_drop:
        raise Int8Refused(f"INT8 model refused: {report.summary()}; nothing written. Calibrate on more or more "
                          f"representative images (--calib), or raise --max-drop", report)
    return report


def check_max_drop(max_drop: float) -> None:
    if not max_drop >= 0:
        raise ValueError(f"--max-drop must be a non-negative number of top-1 points, got {max_drop:g}")

