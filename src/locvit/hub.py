"""Hub-style folders of the authors' weights: ``locvit convert`` and ``--push-to-hub``.

:func:`convert` loads an official checkpoint (through the family's filter, strictly), writes what timm's own hub
export writes -- ``config.json`` (architecture, ``num_classes``, the model arguments, the pretrained cfg) and
``model.safetensors`` in locvit's layout -- plus a model card, and checks the folder: the model
``timm.create_model('local-dir:DIR', pretrained=True)`` builds must give the same logits as the model loaded from
the official file. :func:`push_to_hub` uploads such a folder with huggingface_hub; after that
``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` loads it anywhere (``import locvit`` first).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from locvit.labels import LABEL_KEY, check_label_names, read_label_names
from locvit.models import create_model
from locvit.weights.checkpoint import CheckpointError, LoadReport

__all__ = ["ConvertResult", "convert", "model_card", "push_to_hub"]

# model arguments that steer loading, not the architecture: never written to config.json
_LOAD_ONLY_ARGS = ("trust_pickle",)


@dataclass
class ConvertResult:
    """What :func:`convert` wrote and measured.

    Attributes:
        output: the folder (``config.json``, ``model.safetensors``, ``README.md``).
        model: the model name (``config.json``'s ``architecture``).
        report: how the official file loaded (its SHA-256 included).
        max_abs_diff: max |logit difference| between the model loaded from the official file and the folder's.
        input_shape: the fixed input of that check.
        repo_url: the hub repository, when pushed.
    """

    output: Path
    model: str
    report: LoadReport
    max_abs_diff: float
    input_shape: tuple[int, ...]
    repo_url: str | None = None
    files: list[str] = field(default_factory=list)


def _check_input(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    from timm.data import resolve_model_data_config

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *resolve_model_data_config(model)["input_size"], generator=gen)


def convert(
    model_name: str,
    checkpoint: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
    atol: float = 1e-5,
    label_names: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> ConvertResult:
    """Convert the authors' checkpoint of ``model_name`` into a hub-style folder ``output``.

    Args:
        model_name: a locvit model name or official alias.
        checkpoint: the authors' file (or ours); ``None`` loads what ``pretrained=True`` loads (the published URL).
        output: the folder to create (it must not exist, or be empty); written complete or not at all.
        trust_pickle: allow files that pickle more than tensors (Focal's yacs config).
        model_kwargs: for the model (``num_classes`` when the file's classifier is not ImageNet-1k's, ...).
        atol: largest accepted logit difference between the official file's model and the folder's.
        label_names: the class names of the head, written to ``config.json`` as ``label_names``; by default the
            names ``checkpoint`` records (a ``locvit train`` run's weights), else none (an ImageNet head gets
            ImageNet's names from timm when it is loaded).
        log: receives progress lines (e.g. ``print``).

    Returns:
        A :class:`ConvertResult`.
    """
    import timm
    from timm.models import save_for_hf

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"{output} exists and is not an empty folder; choose a new --output")
    kwargs = dict(model_kwargs or {})
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        overlay["file"] = str(checkpoint)
    if "num_classes" in kwargs:
        overlay.setdefault("num_classes", kwargs["num_classes"])  # the file's head: loaded, never left new
    model = create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, trust_pickle=trust_pickle,
                         **kwargs).eval()
    report: LoadReport = model.load_report
    if not report.exact:
        raise CheckpointError(f"{report.source} does not fill {model_name} completely:\n{report}")
    if log:
        log(str(report))
    arch = model.pretrained_cfg["architecture"]
    model._model_args = {k: v for k, v in getattr(model, "_model_args", {}).items() if k not in _LOAD_ONLY_ARGS}
    if label_names is None and checkpoint is not None:
        label_names = read_label_names(checkpoint)
    model_config = {}
    if label_names:
        model_config[LABEL_KEY] = check_label_names(label_names, model.num_classes, str(checkpoint or model_name))
    x = _check_input(model)
    with torch.no_grad():
        reference = model(x)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        save_for_hf(model, str(tmp), model_config=model_config, safe_serialization=True)
        reloaded = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
        with torch.no_grad():
            diff = (reloaded(x) - reference).abs().max().item()
        if not diff <= atol:
            raise CheckpointError(f"the converted folder does not reproduce the official file: max |logit diff| "
                                  f"{diff:.3e} > {atol:g}; nothing was written to {output}")
        (tmp / "README.md").write_text(model_card(model, report, diff, tuple(x.shape)), encoding="utf-8")
        if output.exists():
            output.rmdir()  # empty (checked above): the complete folder takes its place
        os.replace(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if log:
        log(f"{arch}: max |logit diff| official file vs converted folder {diff:.2e} on a fixed {tuple(x.shape)} input")
    return ConvertResult(output=output, model=arch, report=report,
                         max_abs_diff=diff, input_shape=tuple(x.shape), files=sorted(p.name for p in output.iterdir()))


def model_card(model: nn.Module, report: LoadReport, max_abs_diff: float, input_shape: tuple[int, ...],
               repo_id: str | None = None) -> str:
    """The ``README.md`` of a converted folder: what the weights are, where they come from, their licence, the
    authors' accuracy, and the conversion check."""
    from timm.data import resolve_model_data_config

    from locvit import __version__

    cfg = model.pretrained_cfg
    data = resolve_model_data_config(model)
    arch = cfg["architecture"]
    licence = cfg.get("license") or "unknown"
    paper_ids = cfg.get("paper_ids") or ""
    arxiv = paper_ids.split(":", 1)[1] if paper_ids.startswith("arXiv:") else ""
    paper = cfg.get("paper_name") or ""
    if arxiv:
        paper = f"[{paper or paper_ids}](https://arxiv.org/abs/{arxiv})"
    source = Path(report.source).name if report.source and not report.source.startswith("<") else report.source
    where = f"'hf-hub:{repo_id}'" if repo_id else "'local-dir:/path/to/this/folder'"
    lines = [
        "---",
        "tags:",
        "- image-classification",
        "- timm",
        "- locvit",
        "library_name: timm",
        f"license: {licence}",
        "---",
        f"# {arch}",
        "",
        f"The authors' ImageNet weights of `{arch}`, converted to locvit's layout (a timm model) by "
        f"`locvit convert` (locvit {__version__}).",
        "",
        "## Model details",
        f"- **Paper:** {paper or '-'}",
        f"- **About:** {cfg.get('description') or '-'}",
        f"- **Licence:** {licence} (the licence of the official repository, under which the authors released "
        "these weights)",
        f"- **Official weights:** {cfg.get('origin_url') or '-'}",
        f"- **Source file:** `{source}`, SHA-256 `{report.sha256 or '-'}`",
        f"- **Preprocessing:** {'x'.join(str(s) for s in data['input_size'][1:])}, interpolation "
        f"{data['interpolation']}, crop {data['crop_pct']}, mean {tuple(data['mean'])}, std {tuple(data['std'])}",
    ]
    lines += [f"- **Note:** {n}" for n in cfg.get("notes") or ()]
    lines += [
        "",
        "## Conversion check",
        f"max |Δlogit| between the model loaded from the official file and the model loaded from this folder: "
        f"**{max_abs_diff:.2e}** (float32, a fixed N(0, 1) input of shape {tuple(input_shape)}, seed 0).",
        "",
        "## Usage",
        "```python",
        "import locvit  # registers the architecture with timm",
        "import timm",
        "",
        f"model = timm.create_model({where}, pretrained=True).eval()",
        "```",
        "",
    ]
    return "\n".join(lines)


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str | None = None) -> str:
    """Upload a converted folder to the Hugging Face hub (creating the repository if needed); returns its URL.

    The model card's usage line is rewritten to ``hf-hub:<repo_id>`` before the upload.
    """
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError as e:
        raise ImportError("--push-to-hub needs huggingface_hub: pip install 'locvit[hub]'") from e
    folder = Path(folder)
    token = token or get_token()
    if not token:
        raise ValueError("--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN "
                         f"(the converted folder {folder} is kept)")
    card = folder / "README.md"
    if card.is_file():
        card.write_text(card.read_text(encoding="utf-8").replace("'local-dir:/path/to/this/folder'",
                                                                  f"'hf-hub:{repo_id}'"), encoding="utf-8")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder),
                      commit_message=commit_message or f"Add {folder.name} (converted by locvit)")
    return str(repo)
