"""``pretrained=True``: timm's weight sources with locvit's strictness, a cache that is never poisoned, and errors
that say where to get a file.

Every locvit entrypoint builds through ``locvit.models.builder.build_model``, which calls :func:`load_published`
for ``pretrained=True``:

1. The source is resolved in timm's order: a ``state_dict``, a ``file``, an ``hf_hub_id``, a ``url`` (``hf-hub:`` and
   ``local-dir:`` model names set their own). ``pretrained_cfg_overlay=dict(url=...)`` or ``dict(file=...)``
   override the registered source exactly as in timm.
2. A URL is downloaded into torch hub's cache (``$TORCH_HOME/hub/checkpoints``, or the ``cache_dir`` given to
   ``timm.create_model``) under a temporary name, with connect and read timeouts (``LOCVIT_DOWNLOAD_TIMEOUT``
   seconds, default 60). It is moved to its cached name only after it passed every check of step 3 for the model it
   was fetched for (readable, finite, fits). A cached file that fails any check is removed and fetched again once,
   and the message names the cached path and the URL: neither a cut transfer nor a wrong file at the URL ever
   stays in the cache to break the next attempt.
3. The state dict (the authors' ``{'model': ..., 'args': ...}`` wrappers removed) goes through the family's
   checkpoint filter, the input stem is adapted to ``in_chans`` as timm does, and then it must fit the model
   exactly: only the classifier may stay newly initialised, when ``num_classes`` differs from the weights'; with
   ``features_only`` the keys of the pruned layers are dropped.
4. ``model.load_report`` (a :class:`locvit.LoadReport`) says what was loaded, from where, and the file's SHA-256.
"""
from __future__ import annotations

import os
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch
from timm.models import adapt_input_conv
from torch import nn

from locvit.files import sha256_file
from locvit.weights.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    LoadReport,
    NonFiniteWeightsError,
    StateDict,
    UntrustedPickleError,
    load_weights,
    read_checkpoint,
    unwrap_state_dict,
)

__all__ = ["DownloadError", "WeightsUnavailableError", "cached_download", "download", "download_timeout",
           "load_published"]

# weight files in a hub-style folder, in the order timm's hub export writes and looks for them
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# seconds a download may wait to connect, and for each read; LOCVIT_DOWNLOAD_TIMEOUT overrides it
DEFAULT_DOWNLOAD_TIMEOUT = 60.0


class WeightsUnavailableError(CheckpointError):
    """The pretrained cfg names no source: the authors publish no direct download (or no weights at all)."""


class DownloadError(CheckpointError):
    """The weights could not be fetched (offline, host down, link gone); nothing was cached."""


def resolve_source(pretrained_cfg: Mapping[str, Any]) -> tuple[str, Any]:
    """``(kind, location)`` of the weights a pretrained cfg names, in timm's order of sources.

    ``kind`` is ``'state_dict'``, ``'file'``, ``'hf-hub'``, ``'url'``, ``'local-dir'`` or ``''`` (none).
    """
    # timm's own resolver (what timm's load_pretrained calls), so the order and the hf-hub/local-dir rules stay
    # timm's; a private name, imported here only
    from timm.models._builder import _resolve_pretrained_source

    return _resolve_pretrained_source(dict(pretrained_cfg))


def check_source(pretrained_cfg: Mapping[str, Any]) -> None:
    """Raise :class:`WeightsUnavailableError` when the cfg names no source for its weights."""
    if not resolve_source(pretrained_cfg)[0]:
        raise unavailable_error(pretrained_cfg.get("architecture") or "this model", pretrained_cfg)


def load_published(
    model: nn.Module,
    filter_fn: Callable[[StateDict, nn.Module], StateDict] | None = None,
    *,
    trust_pickle: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> LoadReport:
    """Load the weights ``model.pretrained_cfg`` names into ``model`` (see the module docstring).

    Args:
        model: a model built by ``timm.models.build_model_with_cfg`` (a ``features_only`` wrapper included).
        filter_fn: the family's ``checkpoint_filter_fn``.
        trust_pickle: allow files that pickle more than tensors (see :func:`locvit.read_checkpoint`).
        cache_dir: download folder (default: torch hub's checkpoint cache, or the Hugging Face cache for the hub).
        progress: show a progress bar while downloading.

    Returns:
        The :class:`~locvit.LoadReport`, also stored as ``model.load_report``.

    Raises:
        WeightsUnavailableError: the cfg names no source; the message says where the authors publish the file.
        DownloadError: the download failed; the message names the URL and the ``file=`` alternative.
        CheckpointError: the file is not a complete checkpoint, or does not fit the model.
    """
    features_only = hasattr(model, "feature_info") and isinstance(getattr(model, "model", None), nn.Module)
    target = model.model if features_only else model  # timm's feature wrappers keep the network in .model
    cfg = dict(getattr(target, "pretrained_cfg", None) or model.pretrained_cfg)
    variant = cfg.get("architecture") or type(target).__name__
    kind, location = resolve_source(cfg)

    def fit(sd: StateDict, source: str) -> LoadReport:
        """Step 3 (filter, stem, finite, fits) on ``target``; raises :class:`CheckpointError` naming ``source``."""
        if filter_fn is not None:
            sd = filter_fn(dict(sd), target)
        _adapt_input_convs(sd, target, cfg)
        report = load_weights(target, sd, strict=False, source=source)
        _check_fit(report, target, cfg, variant, features_only)
        return report

    if kind == "url":
        path, report = cached_download(location, cache_dir, trust_pickle=trust_pickle, progress=progress, verify=fit)
    else:
        if kind == "state_dict":
            path, sd = None, unwrap_state_dict(location)
        elif kind in ("file", "hf-hub", "local-dir"):
            path = (Path(location) if kind == "file" else hub_folder_weights(location) if kind == "local-dir"
                    else _hub_file(location, cfg.get("hf_hub_filename"), cache_dir))
            sd = read_checkpoint(path, trust_pickle=trust_pickle)
        else:
            raise unavailable_error(variant, cfg)
        report = fit(sd, str(path) if path is not None else f"<{kind}>")
    report.source = str(path) if path is not None else f"<{kind}>"
    report.sha256 = sha256_file(path) if path is not None else None
    model.load_report = report
    return report


def _adapt_input_convs(sd: StateDict, model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """Weights for ``cfg['input_size'][0]`` channels into a stem built for another ``in_chans`` (timm's rule)."""
    src_chans = (cfg.get("input_size") or (3,))[0]
    convs = cfg.get("first_conv") or ()
    own = model.state_dict()
    for name in (convs,) if isinstance(convs, str) else convs:
        key = f"{name}.weight"
        w, target = sd.get(key), own.get(key)
        if w is None or target is None or w.ndim != 4 or w.shape == target.shape or w.shape[1] != src_chans:
            continue
        if w.shape[0] == target.shape[0] and w.shape[2:] == target.shape[2:]:
            sd[key] = adapt_input_conv(target.shape[1], w)


def _check_fit(report: LoadReport, model: nn.Module, cfg: Mapping[str, Any], variant: str,
               features_only: bool) -> None:
    heads = cfg.get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)

    def is_head(k: str) -> bool:
        return any(k == h or k.startswith(h + ".") for h in heads)

    # timm's rule: a model with another class count than the weights gets a new classifier
    new_head = features_only or getattr(model, "num_classes", None) != cfg.get("num_classes")
    bad = [k for k in report.missing + [m[0] for m in report.mismatched] if not (new_head and is_head(k))]
    # a features_only model has pruned its last layers: the weights' keys for them are expected leftovers
    bad += [] if features_only else [k for k in report.unexpected if not (new_head and is_head(k))]
    if bad:
        hint = ""
        head_shapes = [a for k, a, _ in report.mismatched if is_head(k) and k.endswith("weight")]
        # a classifier of another class count (not merely another width: that is another model's file)
        if head_shapes and not new_head and head_shapes[0][0] != getattr(model, "num_classes", None):
            hint = (f"\n(The weights' classifier has {head_shapes[0][0]} outputs: build the model with "
                    f"num_classes={head_shapes[0][0]}, or another num_classes for a new classifier.)")
        raise CheckpointError(f"{report.source} does not fit {variant}:\n{report}{hint}")


def unavailable_error(variant: str, cfg: Mapping[str, Any]) -> WeightsUnavailableError:
    """The error for a cfg without a source: where the authors publish the weights, and the ways to load them."""
    load = (f"  timm.create_model({variant!r}, pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/weights'))"
            f"\nor convert it once (`locvit convert --model {variant} --checkpoint FILE --output DIR`) and use "
            "'local-dir:DIR', or 'hf-hub:ORG/NAME' after `--push-to-hub ORG/NAME`.")
    notes = "".join(f"\n  note: {n}" for n in cfg.get("notes") or ())
    page = cfg.get("origin_url")
    if page:
        return WeightsUnavailableError(
            f"{variant}: the authors publish no direct download for these weights (their link: {page}){notes}\n"
            f"With the file, load it with\n{load}")
    return WeightsUnavailableError(f"{variant}: no official weights are published for this model{notes}\n"
                                   f"To start from your own checkpoint:\n{load}")


# --- URLs ---------------------------------------------------------------------------------------------------------
def download_timeout() -> float:
    """Seconds a download may wait to connect and for each read: ``$LOCVIT_DOWNLOAD_TIMEOUT``, default 60."""
    raw = os.environ.get("LOCVIT_DOWNLOAD_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"LOCVIT_DOWNLOAD_TIMEOUT={raw!r} is not a number of seconds > 0 (e.g. "
                         f"LOCVIT_DOWNLOAD_TIMEOUT=300 for a slow link; unset: {DEFAULT_DOWNLOAD_TIMEOUT:g})")
    return value


def download(url: str, dst: str | os.PathLike, *, timeout: float | None = None, progress: bool = True) -> int:
    """Stream ``url`` into the file ``dst``; returns the bytes written.

    Unlike ``torch.hub.download_url_to_file``, connecting and every read are bounded by ``timeout`` seconds
    (default :func:`download_timeout`), so a server that accepts the connection and never answers cannot hang the
    caller. Raises :class:`DownloadError` naming the URL; ``dst`` may then hold part of the file (the caller's temp).
    """
    timeout = download_timeout() if timeout is None else timeout
    from tqdm.auto import tqdm

    from locvit import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"locvit/{__version__}"})
    name = os.path.basename(urlparse(url).path) or url
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dst, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress,
                      file=sys.stderr) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
                done = bar.n
    except TimeoutError as e:  # a read that got no byte in time
        raise DownloadError(_timeout_message(url, timeout)) from e
    except HTTPError as e:
        raise DownloadError(f"could not download {url} (HTTP {e.code} {e.reason})") from None
    except URLError as e:
        if isinstance(e.reason, TimeoutError):  # connecting took too long
            raise DownloadError(_timeout_message(url, timeout)) from None
        raise DownloadError(f"could not download {url} ({e.reason})") from None
    except (OSError, ValueError) as e:  # connection reset, incomplete read, malformed URL
        raise DownloadError(f"could not download {url} ({type(e).__name__}: {e})") from None
    if total is not None and done != total:
        raise DownloadError(f"could not download {url} (the transfer stopped after {done} of {total} bytes)")
    return done


def _timeout_message(url: str, timeout: float) -> str:
    return (f"could not download {url}: the server did not answer within {timeout:g} s (connect and read timeout; "
            f"for a slow link raise it, e.g. LOCVIT_DOWNLOAD_TIMEOUT={max(300, int(timeout * 5))})")


def cached_download(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    trust_pickle: bool = False,
    progress: bool = True,
    verify: Callable[[StateDict, str], Any] | None = None,
) -> tuple[Path, Any]:
    """The file at ``url`` from the cache, downloading it on first use.

    The download lands under a temporary name in the cache folder and is moved to ``<cache>/<file name>`` only
    once it reads as a complete checkpoint and ``verify(state_dict, source)`` accepted it (``load_published``
    passes the checks for its model: finite, fits). A cached file that fails either check is removed, said so on
    stderr with its path, and fetched again once; a fresh download that fails is discarded, never cached.

    Args:
        url: direct download link.
        cache_dir: cache folder (default: ``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``).
        trust_pickle: see :func:`locvit.read_checkpoint`.
        progress: show a progress bar.
        verify: called with the state dict and a name for messages; raises :class:`CheckpointError` to refuse.

    Returns:
        ``(path, verify's result)``, or ``(path, state dict)`` without ``verify``.
    """
    verify = verify or (lambda sd, source: sd)
    cache = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    name = os.path.basename(urlparse(url).path) or "weights.pth"
    path = cache / name
    if path.is_file():
        try:
            return path, verify(read_checkpoint(path, trust_pickle=trust_pickle), f"{path} (cached from {url})")
        except UntrustedPickleError:  # readable, cached when trusted before: trusting it again is the user's call
            raise
        except CheckpointError as e:
            path.unlink(missing_ok=True)
            print(f"locvit: removed the cached copy {path} of {url}: {_first_line(e)}; downloading it again",
                  file=sys.stderr, flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{uuid.uuid4().hex}.{name}"  # the suffix stays: it selects the reader
    try:
        try:
            download(url, tmp, progress=progress)
        except DownloadError as e:
            raise DownloadError(
                f"{e}; nothing was cached. Without network access, download the file elsewhere and pass "
                f"pretrained_cfg_overlay=dict(file='/path/to/{name}'), or copy it to {path}") from None
        try:
            result = verify(read_checkpoint(tmp, trust_pickle=trust_pickle), url)
        except CorruptCheckpointError as e:
            raise CorruptCheckpointError(
                f"the file downloaded from {url} is not a complete checkpoint ({e}); it was discarded, nothing was "
                "cached. Try again (the transfer may have been cut), or download it yourself (from a page: in a "
                "browser) and pass pretrained_cfg_overlay=dict(file=...)") from None
        except NonFiniteWeightsError as e:
            raise NonFiniteWeightsError(
                f"{e.summary}; it was discarded, nothing was cached. The file at the URL is damaged: tell its "
                "publisher, and load a good copy with pretrained_cfg_overlay=dict(file=...)") from None
        except CheckpointError as e:
            raise type(e)(f"{e}\n(downloaded from {url}; it was discarded, nothing was cached)") from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, result


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# --- Hugging Face hub and hub-style folders -------------------------------------------------------------------------
def _hub_file(location: Any, filename: str | None, cache_dir: str | os.PathLike | None) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as e:
        raise ImportError("Hugging Face hub weights need huggingface_hub: pip install 'locvit[hub]'") from e
    if isinstance(location, (tuple, list)):
        location, filename = location
    repo, _, revision = str(location).partition("@")
    names = (filename,) if filename else HUB_WEIGHT_FILES
    for name in names:
        try:
            return Path(hf_hub_download(repo, name, revision=revision or None, cache_dir=cache_dir,
                                        etag_timeout=download_timeout()))
        except EntryNotFoundError:
            continue
        except Exception as e:  # offline, unknown repository, no access: one error naming the alternatives
            raise DownloadError(
                f"could not fetch {name} of the Hugging Face hub repository {repo!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); nothing was cached. Download the folder elsewhere and "
                "use 'local-dir:DIR', or pass pretrained_cfg_overlay=dict(file=...)") from None
    raise CheckpointError(f"the Hugging Face hub repository {repo!r} has none of {', '.join(names)}")


def hub_folder_weights(folder: str | os.PathLike) -> Path:
    """The weights file of a hub-style folder (``config.json`` + ``model.safetensors``, as timm exports)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (local-dir: expects a folder with config.json and "
                                "model.safetensors, as `locvit convert` writes)")
    for name in HUB_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} has no weights ({' or '.join(HUB_WEIGHT_FILES)})")
