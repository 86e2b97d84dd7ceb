"""``locvit predict --explain``: where in the image the evidence for a class lies, for every family with no
per-model code.

The map is Grad-CAM (Selvaraju et al., 2017) in its element-wise form (HiResCAM, Draelos & Carin, 2020) on a stage
map, the last by default (``stage``, ``--explain-stage``): ``forward_intermediates`` gives the shape of that map
(``C x h x w``, NCHW for every locvit model); the activation of that shape the prediction depends on last -- whatever
its layout inside the network (NCHW, NHWC, or tokens with class tokens in front) -- is caught by forward hooks during
an ordinary forward pass, so the logits are the model's own. Each cell's channels are weighted by the gradient of the
class logit at that cell, summed, clipped at 0 and scaled to [0, 1]: ``cam = relu(sum_c d y_class / d A_c * A_c)``.
On the last stage map of the pyramid models (average-pooled into a linear head) the gradient is the same at every
cell and this is Grad-CAM's channel-mean weighting exactly; where the gradient differs between cells (an earlier
stage, the patch tokens of an isotropic model) the element-wise product keeps where the logit is sensitive, which
Grad-CAM's spatial mean of the gradient throws away.

What it means: the cells whose features, moved along the class's gradient, raise the class logit most -- a first-order
answer to "what here made it say this class", at the map's resolution (stride 32 for the last stage of the pyramid
models: a 224 input gives 7 x 7 cells; ``stage=-2`` gives stride 16). Where it does not apply as such:

* isotropic models (LocalViT on DeiT, T2T-ViT, TNT) classify from the class token; after the last block the patch
  tokens no longer reach the logits, so the map is taken at the last place they still do (inside the last block,
  before its attention mixes them into the class token), at the patch stride;
* RegionViT classifies from its regional tokens; the patch map counts through the last stage's local attention;
* the last stage of a pyramid model can mix the whole image into every cell: a small Focal or VVT trained on what is
  present anywhere puts its last-stage evidence in broad maps that do not localise, and the stage before localises
  better (docs/predict.md gives the measured numbers);
* a linear, first-order account: it shows where a change moves the logit, not a causal part of the image, and
  saturated (very confident) predictions give weak gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locvit.labels import class_name
from locvit.viz import draw
from locvit.viz.draw import weights_note
from locvit.viz.image import Prepared
from locvit.viz.run import mechanism_figure

__all__ = ["Explanation", "as_map", "explain", "grad_cam", "plot_explanation"]


def as_map(t: Tensor, c: int, h: int, w: int) -> Tensor | None:
    """``t`` as a ``B x c x h x w`` map when it holds one: NCHW, NHWC, or ``B x N x c`` tokens whose last ``h*w``
    are the grid (class/distillation tokens in front); ``None`` otherwise."""
    if t.ndim == 4 and tuple(t.shape[1:]) == (c, h, w):
        return t
    if t.ndim == 4 and tuple(t.shape[1:]) == (h, w, c):
        return t.permute(0, 3, 1, 2)
    if t.ndim == 3 and t.shape[2] == c and h * w <= t.shape[1] <= h * w + 8:
        return t[:, t.shape[1] - h * w:].transpose(1, 2).reshape(t.shape[0], c, h, w)
    return None


def grad_cam(model: nn.Module, x: Tensor, target: int | None = None,
             stage: int = -1) -> tuple[Tensor, Tensor, int, str]:
    """Grad-CAM of ``model`` for one preprocessed image ``x`` (``1 x 3 x H x W``).

    ``stage`` picks the map by its ``forward_intermediates`` index, negative from the end (``-1``, the default: the
    last stage; ``-2`` the one before, twice as fine on the pyramid models; the block maps of an isotropic model all
    have one shape, so there it changes nothing).
    Returns ``(cam, logits, target, layer)``: the ``h x w`` map in [0, 1] on that stage's grid, the model's
    logits (its ordinary forward), the class explained (``target``, default the predicted one) and the module whose
    output the map was taken from."""
    model.eval()
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    if not -len(maps) <= stage < len(maps):
        raise ValueError(f"--explain-stage {stage}: {type(model).__name__} has {len(maps)} stage maps "
                         f"(indices {-len(maps)} to {len(maps) - 1})")
    ref = maps[stage]
    _, c, h, w = ref.shape
    caught: list[tuple[str, Tensor]] = []

    def hook(name: str):
        def fn(_module: nn.Module, _inputs: Any, output: Any) -> None:
            for t in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(t, Tensor) and t.requires_grad and as_map(t, c, h, w) is not None:
                    caught.append((name, t))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.enable_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if logits.ndim != 2:
        raise ValueError(f"--explain needs a classifier's logits, got an output of shape {tuple(logits.shape)}")
    target = int(logits[0].argmax()) if target is None else int(target)
    if not 0 <= target < logits.shape[1]:
        raise ValueError(f"--target {target}: the model has {logits.shape[1]} classes (0 to {logits.shape[1] - 1})")
    if not caught:
        raise ValueError(f"{type(model).__name__}: no activation of the last stage map's shape {(c, h, w)} found")
    grads = torch.autograd.grad(logits[0, target], [t for _, t in caught], allow_unused=True)
    for (name, a), g in reversed(list(zip(caught, grads))):
        G = as_map(g, c, h, w) if g is not None else None
        if G is not None and bool(G.abs().sum() > 0):  # the grid itself reaches the logit, not only class tokens
            A = as_map(a, c, h, w)
            cam = F.relu((G * A).sum(1))[0].detach()
            return cam / cam.max().clamp(min=1e-12), logits.detach(), target, name
    raise ValueError(f"{type(model).__name__}: the class logit does not depend on any {(c, h, w)} map")


@dataclass
class Explanation:
    """A Grad-CAM map for one image.

    Attributes:
        source: the file or ``'<input N>'``.
        target: the class explained; ``name`` its name, ``score`` its probability.
        cam: the map on the chosen stage's grid (``h x w``, in [0, 1]).
        display: the image the model saw (its resized, centre-cropped input; ``H x W x 3`` floats in [0, 1]).
        layer: the module whose output the map was taken from.
    """

    source: str
    target: int
    name: str
    score: float
    cam: np.ndarray
    display: np.ndarray
    layer: str

    def upsampled(self) -> np.ndarray:
        """The map at the input's resolution (bilinear), for drawing and for locating its peak in pixels."""
        H, W = self.display.shape[:2]
        t = torch.from_numpy(self.cam)[None, None].float()
        return F.interpolate(t, size=(H, W), mode="bilinear", align_corners=False)[0, 0].numpy()

    def peak(self) -> tuple[int, int]:
        """``(row, col)`` of the map's maximum, in pixels of the model input."""
        up = self.upsampled()
        return tuple(int(v) for v in np.unravel_index(int(up.argmax()), up.shape))  # type: ignore[return-value]


def explain(predictor: Any, image: Any, source: str, target: int | None = None, stage: int = -1) -> Explanation:
    """The Grad-CAM :class:`Explanation` of ``predictor``'s model for ``image`` (anything
    :func:`locvit.predict.core.to_image` takes), preprocessed as the prediction was, on stage map ``stage``."""
    from locvit.predict.core import to_image

    x = predictor.transform(to_image(image))[None].to(predictor.device)
    cam, logits, target, layer = grad_cam(predictor.model, x, target, stage)
    cfg = predictor.data_cfg
    mean = torch.tensor(cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(cfg["std"]).view(3, 1, 1)
    display = (x[0].cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    prob = float(logits[0].float().softmax(0)[target])
    return Explanation(source, target, class_name(predictor.label_names, target), prob, cam.cpu().numpy(),
                       display, layer)


def plot_explanation(exp: Explanation, path: str | Path) -> Path:
    """The model input, and the map drawn over it (``inferno``), titled with the class and the layer."""
    plt = draw.plt()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.8))
    H, W = exp.display.shape[:2]
    draw.show_image(axes[0], exp.display, "model input (resized, centre-cropped)")
    draw.overlay(axes[1], exp.display, exp.upsampled(), (0, W, H, 0), f"Grad-CAM: {exp.name} ({100 * exp.score:.1f}%)",
                 alpha=0.55, vmax=1.0, vmin=-1e-9, colorbar=True)
    r, c = exp.peak()
    draw.mark(axes[1], (r, c), "peak")
    fig.suptitle(f"{Path(exp.source).name}: evidence for '{exp.name}' on the {exp.cam.shape[0]}x{exp.cam.shape[1]} "
                 f"map of {exp.layer}", fontsize=9)
    return draw.save(fig, path)


def write_explanations(predictor: Any, predictions: Any, folder: Path, target: int | None = None,
                       mechanism: bool = False, stage: int = -1) -> list[str]:
    """For each prediction: ``explain/NNNN_<name>.png`` (:func:`plot_explanation`) and, with ``mechanism``, the
    family's own figure of the same input at the map's peak (``mechanism/``, :func:`locvit.viz.run.mechanism_figure`).
    Returns a line per image saying where the evidence peaks."""
    from locvit.predict.core import to_image
    from locvit.predict.output import picture_name

    lines = []
    for i, p in enumerate(predictions):
        exp = explain(predictor, p.source, p.source, target, stage)
        name = picture_name(i, p.source)
        plot_explanation(exp, folder / "explain" / name)
        r, c = exp.peak()
        H, W = exp.display.shape[:2]
        line = f"{p.source}: evidence for '{exp.name}' peaks at row {r}, col {c} of the {H}x{W} input"
        if mechanism:
            x = predictor.transform(to_image(p.source))[None].to(predictor.device)
            fig = mechanism_figure(predictor.model, predictor.name, Prepared(x, exp.display, p.source),
                                   folder / "mechanism", (r, c), note=weights_note(predictor.checkpoint),
                                   stem=name[:-4])
            line += "" if fig is not None else f" (no mechanism figure: {predictor.name} is of no locvit family)"
        lines.append(line)
    return lines

