"""LocalViT: the depth-wise 3x3 kernels its locality feed-forward adds, and what they do to the receptive field.

LocalViT keeps its host (DeiT, PVT, Swin, T2T, TNT) and swaps each block's MLP for the locality feed-forward
(1x1 expand, **depth-wise 3x3**, 1x1 project): every block now mixes each token with its 8 grid neighbours. Here:

* :func:`depthwise_kernels`: the 3x3 kernels of every locality feed-forward, BatchNorm folded in (the kernels as
  applied at inference);
* :func:`host_model`: the host with the same configuration and a plain MLP (DeiT: timm's ``VisionTransformer``
  with LocalViT's width, depth, heads and expansion), so that the effective receptive fields
  (:mod:`locvit.viz.erf`) of the two can be compared block by block.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from torch import Tensor, nn

from locvit.layers.locality_ffn import LocalityFeedForward, fold_batchnorm
from locvit.models.localvit import LocalViT
from locvit.viz import draw
from locvit.viz.erf import ERF

# LocalViT models on hosts other than DeiT -> the host model of the same configuration (timm names)
HOSTS = {
    "localvit_pvt_tiny": "pvt_tiny",
    "localvit_swin_tiny": "swin_tiny_patch4_window7_224",
    "localvit_t2t_vit_7": "t2t_vit_7",
    "localvit_tnt_tiny": "tnt_t_legacy_patch16_224",
    "localvit_tnt_small": "tnt_s_legacy_patch16_224",
}


@dataclass
class DepthwiseKernels:
    """The 3x3 kernels (``channels x 3 x 3``) of one locality feed-forward, named by its module path."""

    name: str
    kernels: np.ndarray

    def center_share(self) -> float:
        """Share of the absolute kernel mass on the centre tap (1/9 = no preference, 1 = no spatial mixing)."""
        a = np.abs(self.kernels)
        return float(a[:, 1, 1].sum() / a.sum()) if a.sum() > 0 else float("nan")


@torch.no_grad()
def depthwise_kernels(model: nn.Module) -> list[DepthwiseKernels]:
    """Every locality feed-forward's depth-wise kernels, in module order."""
    out = []
    for name, ff in model.named_modules():
        if not isinstance(ff, LocalityFeedForward):
            continue
        layers = list(ff.conv)
        for i, m in enumerate(layers):
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                w = fold_batchnorm(m, nxt)[0] if isinstance(nxt, nn.BatchNorm2d) else m.weight
                out.append(DepthwiseKernels(name, w[:, 0].float().cpu().numpy()))
    return out


def host_model(name: str, model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(label, host)``: the LocalViT model's host with a plain MLP, randomly initialised, or None if unknown."""
    if isinstance(model, LocalViT):
        ff = model.blocks[0].conv
        hidden = ff.conv.part("expand").out_channels
        host = timm.models.vision_transformer.VisionTransformer(
            img_size=model.patch_embed.img_size, patch_size=model.patch_size, in_chans=model.in_chans,
            num_classes=model.num_classes, embed_dim=model.embed_dim, depth=len(model.blocks),
            num_heads=model.blocks[0].attn.num_heads, mlp_ratio=hidden / model.embed_dim,
            qkv_bias=model.blocks[0].attn.qkv.bias is not None,
        )
        return "DeiT host (timm VisionTransformer, same config, plain MLP)", host.eval()
    host = HOSTS.get(name)
    if host is None:
        return None
    return f"host {host} (plain MLP)", timm.create_model(host, num_classes=getattr(model, "num_classes", 1000)).eval()


def _mosaic(kernels: np.ndarray, count: int = 64) -> np.ndarray:
    """Up to ``count`` kernels tiled 8 per row with one-pixel gaps (NaN), each scaled to [-1, 1]."""
    k = kernels[:count]
    n, cols = len(k), 8
    rows = -(-n // cols)
    out = np.full((rows * 4 - 1, cols * 4 - 1), np.nan)
    for i, w in enumerate(k):
        m = np.abs(w).max()
        r, c = divmod(i, cols)
        out[r * 4:r * 4 + 3, c * 4:c * 4 + 3] = w / m if m > 0 else w
    return out


def plot_localvit(kernels: list[DepthwiseKernels], erf: list[ERF], host_erf: list[ERF] | None, host_label: str,
                  path: str | Path, model_name: str, note: str) -> Path:
    """Top: kernels of the first and last locality feed-forward and the centre-tap share per block. Bottom: ERF of
    the last shown block for LocalViT and its host, their difference, and the half-mass radius per block."""
    plt = draw.plt()
    fig, axes = plt.subplots(2, 4, figsize=(19, 9.5))
    for ax, kk in zip(axes[0, :2], (kernels[0], kernels[-1])):
        im = ax.imshow(_mosaic(kk.kernels), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{kk.name}: first {min(64, len(kk.kernels))} of {len(kk.kernels)} depth-wise 3x3 kernels\n"
                     f"(BatchNorm folded, each scaled to its max |w|)", fontsize=9)
    fig.colorbar(im, ax=axes[0, 1], fraction=0.046, pad=0.02)
    ax = axes[0, 2]
    shares = [k.center_share() for k in kernels]
    ax.plot(range(1, len(shares) + 1), shares, marker="o")
    ax.axhline(1 / 9, color="grey", ls="--", lw=1, label="1/9: all 9 taps equal")
    ax.set(xlabel="locality feed-forward (module order)", ylabel="|centre tap| / sum |taps|", ylim=(0, 1),
           title="how much each kernel looks at neighbours\n(lower = more spatial mixing)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax = axes[0, 3]
    mean_abs = np.mean([np.abs(k.kernels).mean(0) / max(np.abs(k.kernels).mean(0).sum(), 1e-12) for k in kernels], 0)
    im = ax.imshow(mean_abs, cmap="magma", vmin=0)
    for (i, j), v in np.ndenumerate(mean_abs):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="cyan", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("mean |kernel| over all channels and blocks\n(share of each tap)", fontsize=9)

    # receptive fields per token: the gradient mass of each input patch (cell = the stride of the first map shown)
    cell = int(round(erf[0].reduction))
    last = erf[-1]
    ours = last.pooled(cell)
    ours = ours / max(ours.sum(), 1e-30)
    H, W = last.grad.shape
    extent = (0, ours.shape[1] * cell, ours.shape[0] * cell, 0)
    floor = 1e-4

    def log_map(ax, m, title):
        im = ax.imshow(np.log10(np.maximum(m, floor)), cmap="magma", vmin=np.log10(floor), vmax=0, extent=extent,
                       interpolation="nearest")
        ax.set_title(title, fontsize=9)
        return im

    im = log_map(axes[1, 0], ours, f"{model_name} ERF per {cell}x{cell}-px patch, {last.label}\n"
                 f"{100 * last.outside_share(cell):.1f}% of the gradient from other patches (log10 share)")
    if host_erf:
        hl = host_erf[-1]
        theirs = hl.pooled(cell)
        theirs = theirs / max(theirs.sum(), 1e-30)
        log_map(axes[1, 1], theirs, f"{host_label.split(' (')[0]} ERF, {hl.label}\n"
                f"{100 * hl.outside_share(cell):.1f}% of the gradient from other patches (log10 share)")
        fig.colorbar(im, ax=axes[1, 1], fraction=0.046, pad=0.02)
        diff = ours - theirs
        own = (int(last.center[0] // cell), int(last.center[1] // cell))
        diff[own] = 0.0  # the own patch dominates both; the change that matters is around it
        lim = float(np.abs(diff).max()) or 1.0
        im = axes[1, 2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, extent=extent, interpolation="nearest")
        fig.colorbar(im, ax=axes[1, 2], fraction=0.046, pad=0.02)
        axes[1, 2].set_title("ERF change per patch: LocalViT - host (own patch blanked)\nred: patches LocalViT "
                             "depends on more", fontsize=9)
    else:
        for ax in axes[1, 1:3]:
            ax.axis("off")
        axes[1, 1].text(0.5, 0.5, "no host known for this model", ha="center", va="center")
    for ax in axes[1, :3]:
        ax.set_xticks([])
        ax.set_yticks([])
    ax = axes[1, 3]
    ax.plot(range(1, len(erf) + 1), [100 * e.outside_share(cell) for e in erf], marker="o", label=model_name)
    if host_erf:
        ax.plot(range(1, len(host_erf) + 1), [100 * e.outside_share(cell) for e in host_erf], marker="s",
                label="host")
    ax.set_xticks(range(1, len(erf) + 1), [e.label for e in erf], fontsize=7)
    ax.set(ylabel=f"% of gradient from outside the own {cell}x{cell} patch", title="ERF spread per block")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.suptitle(f"{model_name}: locality feed-forward kernels and the receptive field vs. "
                 f"{host_label} ({note}; the host is random-init)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return draw.save(fig, path)


def localvit_erfs(name: str, model: nn.Module, x: Tensor) -> tuple[list[ERF], list[ERF] | None, str]:
    """ERFs of the model and (when known) its host at the same feature indices."""
    from locvit.viz.erf import effective_receptive_fields, stage_indices

    idx = stage_indices(model)
    ours = effective_receptive_fields(model, x, idx)
    host = host_model(name, model)
    if host is None:
        return ours, None, "no host"
    label, hm = host
    hidx = [i for i in idx if i < len(hm.feature_info)]
    return ours, effective_receptive_fields(hm, x, hidx), label
