"""``locvit viz``: build the models, pick the figures their mechanisms call for, write the PNGs.

Per model: its mechanism figure (RegionViT, Focal, VVT, LocalViT) and its effective receptive field per stage;
with two or more models, one ERF grid comparing them side by side. Weights are random unless checkpoints are given
(the titles say which).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from locvit.layers.locality_ffn import LocalityFeedForward
from locvit.models import create_model
from locvit.models.focal import FocalTransformer
from locvit.models.regionvit import RegionViT
from locvit.models.vvt import VicinityVisionTransformer
from locvit.viz import draw
from locvit.viz.erf import effective_receptive_fields, plot_erf_grid
from locvit.viz.image import Prepared, check_query, model_input_size, prepare, read_image


def mechanism(model: nn.Module) -> str | None:
    """Which mechanism figure a model gets: ``'regionvit' | 'focal' | 'vvt' | 'localvit'`` or None."""
    if isinstance(model, RegionViT):
        return "regionvit"
    if isinstance(model, FocalTransformer):  # v2 included
        return "focal"
    if isinstance(model, VicinityVisionTransformer):
        return "vvt"
    if any(isinstance(m, LocalityFeedForward) for m in model.modules()):
        return "localvit"
    return None


def mechanism_figure(model: nn.Module, name: str, prep: Prepared, out: Path, query: tuple[int, int], stage: int = 0,
                     block: int = 0, note: str = "", stem: str | None = None) -> Path | None:
    """The figure of ``model``'s own locality mechanism on the prepared photo (attention of the ``query`` pixel per
    level for RegionViT, Focal and VVT; depth-wise kernels and receptive fields for LocalViT), written to
    ``out/<stem>_<figure>.png`` (``stem`` defaults to ``name``); ``None`` for a model of no such family."""
    from locvit.viz.focal import focal_attention, plot_focal
    from locvit.viz.localvit import depthwise_kernels, localvit_erfs, plot_localvit
    from locvit.viz.regionvit import plot_regionvit, regionvit_attention
    from locvit.viz.vvt import plot_vvt, vvt_attention

    kind = mechanism(model)
    x, stem = prep.tensor, stem or name
    if kind == "regionvit":
        maps = regionvit_attention(model, x, query, stage, block)
        return plot_regionvit(maps, prep.display, out / f"{stem}_regional_local_attention.png", name, note, query)
    if kind == "focal":
        maps = focal_attention(model, x, query, stage, block)
        return plot_focal(maps, prep.display, out / f"{stem}_focal_levels.png", name, note, query)
    if kind == "vvt":
        maps = vvt_attention(model, x, query, stage, block)
        return plot_vvt(maps, prep.display, out / f"{stem}_vicinity.png", name, note, query)
    if kind == "localvit":
        ours, host, host_label = localvit_erfs(name, model, x)
        return plot_localvit(depthwise_kernels(model), ours, host, host_label, out / f"{stem}_locality.png", name,
                             note)
    return None


def render(
    models: list[str],
    output: str | Path,
    image: str | Path | None = None,
    query: tuple[int, int] | None = None,
    checkpoints: list[str] | None = None,
    img_size: tuple[int, int] | None = None,
    stage: int = 0,
    block: int = 0,
    erf: bool = True,
    seed: int = 0,
    trust_pickle: bool = False,
    log=print,
) -> list[Path]:
    """Write every figure for ``models`` into ``output``; returns the paths.

    Args:
        models: model names.
        output: folder (created).
        image: photo file; scikit-learn's sample photo when None.
        query: ``(row, col)`` pixel of the model input (resized, centre-cropped photo); the centre when None.
        checkpoints: one file per model (or None for random weights).
        img_size: model input ``(H, W)``; each model's default when None.
        stage, block: the attention block the mechanism figures show (Python indices; negative from the end).
        erf: also compute effective receptive fields (one figure per model, plus a comparison grid).
        seed: random-init seed.
    """
    if checkpoints and len(checkpoints) != len(models):
        raise ValueError(f"got {len(checkpoints)} checkpoints for {len(models)} models: pass one per model")
    out = Path(output)
    photo, label = read_image(image)
    written: list[Path] = []
    rows = []
    for i, name in enumerate(models):
        ckpt = checkpoints[i] if checkpoints else None
        torch.manual_seed(seed)  # random init is seeded
        model = create_model(name, checkpoint=ckpt, trust_pickle=trust_pickle,
                             img_size=tuple(img_size) if img_size else None).eval()
        size = model_input_size(model, img_size)
        prep = prepare(photo, model, size, label)
        q = check_query(query, size) if query is not None else (size[0] // 2, size[1] // 2)
        note = draw.weights_note(ckpt)
        x = prep.tensor
        figure = mechanism_figure(model, name, prep, out, q, stage, block, note)
        if figure is not None:
            written.append(figure)
            log(f"{name}: {figure}")
        if erf:
            erfs = effective_receptive_fields(model, x)
            rows.append((name, erfs))
            written.append(plot_erf_grid([(name, erfs)], out / f"{name}_erf.png", note, prep.display,
                                         f"{name}: effective receptive field of the centre output per stage "
                                         f"(|d out / d input|, sqrt scale; {note})"))
            log(f"{name}: {written[-1]}")
    if erf and len(rows) > 1:
        notes = {draw.weights_note(c) for c in (checkpoints or [None])}
        written.append(plot_erf_grid(rows, out / "erf_comparison.png", "; ".join(sorted(notes)), prep.display))
        log(f"comparison: {written[-1]}")
    return written
