"""Video RegionViT: RegionViT for action recognition, with divided space-time attention on the regional tokens.

The RegionViT paper lists action recognition (Kinetics-400, Something-Something v2) among its tasks, but no video
code or weights were released. The one number found for it is RegionViT-M with TimeSformer's divided space-time
attention, 77.6% top-1 on Kinetics-400 (quoted in Sun et al., TPAMI 2022, arXiv:2012.11866v5, Table II):
``regionvit_video_medium`` is that model as this module builds it. It extends the image network the way TimeSformer
(Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?") extends ViT, on the tokens where
RegionViT keeps its global context -- the regional ones -- so the extra cost is small (docs/models/regionvit.md,
*Video*, gives every choice and its reason):

* every frame goes through the image stems and stages (frames folded into the batch);
* every R2L block first runs **temporal attention** over the ``T`` regional tokens that sit at the same place in
  each frame, ``r + DP(fc(attn_t(LN(r + time_embed))))``, then the image block unchanged (regional attention
  within the frame, local window attention, MLP);
* classification averages the final regional tokens over positions *and* frames.

The time embedding and ``fc`` start at zero (TimeSformer zeroes its ``temporal_fc``), so a freshly built or
inflated model computes exactly the image model on every frame and averages: at ``T = 1`` the image model's
logits, at ``T > 1`` the frame-averaged image model's. Inflating an image checkpoint also copies each block's
regional attention and its norm into the temporal attention and norm, as TimeSformer does.

Inputs are ``B x C x T x H x W`` clips, any ``T >= 1`` and any ``H x W`` the image model takes; a
``B x C x H x W`` batch is taken as one-frame clips. ``temporal=False`` builds the frame-averaged image model
(no temporal parameters), the baseline a temporal model has to beat.
"""
from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from locvit.layers.attention import Attention
from locvit.models import regionvit as _image
from locvit.models._registry import ModelSpec, register_family_model
from locvit.models.builder import build_model
from locvit.models.regionvit import R2LBlock, RegionViT

__all__ = ["VideoR2LBlock", "VideoRegionViT", "checkpoint_filter_fn"]


class VideoR2LBlock(R2LBlock):
    """An R2L block preceded by TimeSformer's temporal attention over each regional token's ``T`` frames:
    ``r + DP(temporal_fc(temporal_attn(temporal_norm(r + temporal_embed))))``.

    ``temporal_embed`` is a learned time embedding of ``num_frames`` positions (resampled linearly for other clip
    lengths, as TimeSformer resamples its own), added to the temporal attention's input only. Takes
    :class:`~locvit.models.regionvit.R2LBlock`'s arguments and ``num_frames``. :meth:`init_temporal` zeroes
    ``temporal_fc`` and the time embedding, so the block starts as the image block on every frame.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_layer: type[nn.Module] = nn.LayerNorm, num_frames: int = 8):
        super().__init__(dim, num_heads, window_size, mlp_ratio, qkv_bias, qk_scale, proj_drop, attn_drop,
                         drop_path, norm_layer)
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, dim))
        self.temporal_norm = norm_layer(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop)
        self.temporal_fc = nn.Linear(dim, dim)
        self.init_temporal()

    def init_temporal(self) -> None:
        """Zero the time embedding and the attention's output layer (TimeSformer's ``temporal_fc``): the block then
        equals the image block on every frame."""
        nn.init.zeros_(self.temporal_embed)
        nn.init.zeros_(self.temporal_fc.weight)
        nn.init.zeros_(self.temporal_fc.bias)

    def temporal(self, r: Tensor) -> Tensor:
        """The temporal step on ``N x T x C`` sequences of one regional token's frames."""
        return r + self.drop_path(self.temporal_fc(self.temporal_attn(self.temporal_norm(
            r + resample_time(self.temporal_embed, r.shape[1]).to(r.dtype)))))

    def mix_regional(self, x: Tensor, num_windows: int, num_frames: int = 1) -> Tensor:
        """The temporal step, then the image block's regional step; ``x``: ``(B*T*nW) x (1+ws²) x C`` windows,
        frames major to windows (``num_frames`` = T)."""
        BW, N, C = x.shape
        T, nW = num_frames, num_windows
        # the regional token of one place across the frames: (B*nW) x T x C
        r = self.temporal(x[:, 0].reshape(BW // (T * nW), T, nW, C).transpose(1, 2).reshape(-1, T, C))
        r = r.reshape(-1, nW, T, C).transpose(1, 2).reshape(BW, 1, C)
        return super().mix_regional(torch.cat([r, x[:, 1:]], dim=1), num_windows)


@register_notrace_function  # the input's rank decides the layout: a leaf call for torch.fx
def fold_frames(x: Tensor, in_chans: int, model: str) -> tuple[Tensor, int]:
    """``B x C x T x H x W`` clips -> ``(B*T) x C x H x W`` frames and ``T``; a ``B x C x H x W`` batch is one-frame
    clips (returned as is, ``T = 1``). Anything else is a ``ValueError`` naming the expected layout."""
    if x.ndim == 4:
        return x, 1
    if x.ndim != 5:
        raise ValueError(f"{model} expects a clip batch B x {in_chans} x T x H x W (or an image batch "
                         f"B x {in_chans} x H x W), got shape {tuple(x.shape)}")
    B, C, T = x.shape[:3]
    if C != in_chans:
        raise ValueError(f"{model} expects {in_chans} input channels, got {C} (clip shape {tuple(x.shape)}, expected "
                         f"B x C x T x H x W); build it with in_chans={C} or convert the frames")
    if T < 1:
        raise ValueError(f"a clip needs at least one frame, got shape {tuple(x.shape)}")
    return x.transpose(1, 2).reshape(B * T, C, *x.shape[-2:]), T


torch.fx.wrap("fold_frames")


def resample_time(embed: Tensor, num_frames: int) -> Tensor:
    """A ``1 x T0 x C`` time embedding at ``num_frames`` positions (linear interpolation; unchanged when equal)."""
    if embed.shape[1] == num_frames:
        return embed
    return F.interpolate(embed.transpose(1, 2), size=num_frames, mode="linear", align_corners=False).transpose(1, 2)


class _ClipState(NamedTuple):
    """What :class:`VideoRegionViT` carries from stage to stage: the image model's state of every frame
    (``(B*T) x ...``), the clip length ``T`` and whether the input was clips (not images)."""

    frames: tuple[Tensor, Tensor]
    num_frames: int
    clip: bool


class VideoRegionViT(RegionViT):
    """RegionViT on ``B x C x T x H x W`` clips (see the module docstring).

    Args:
        num_frames: nominal clip length: the positions of the time embeddings (other lengths resample them) and
            what data loading, FLOP counts and benchmarks use by default.
        temporal: add the temporal attention; ``False`` gives the frame-averaged image model.
        **kwargs: :class:`~locvit.models.regionvit.RegionViT`'s arguments.
    """

    def __init__(self, num_frames: int = 8, temporal: bool = True, **kwargs: Any):
        if "block_fn" in kwargs:
            raise ValueError("VideoRegionViT chooses its block itself (temporal=True or False)")
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        block = partial(VideoR2LBlock, num_frames=num_frames) if temporal else R2LBlock
        super().__init__(block_fn=block, **kwargs)
        self.num_frames = num_frames
        self.temporal = temporal
        for m in self.modules():
            if isinstance(m, VideoR2LBlock):
                m.init_temporal()  # after RegionViT's initialisation of every Linear

    # --- forward: PyramidStages' loop on the frames, the state carrying the clip length --------------------------
    def _input_state(self, x: Tensor) -> _ClipState:
        """Clips (or images) -> the image model's state of every frame (frames folded into the batch)."""
        frames, T = fold_frames(x, self.in_chans, type(self).__name__)
        return _ClipState(super()._input_state(frames), T, x.ndim == 5)

    def _stage(self, i: int, x: _ClipState, need_map: bool) -> _ClipState:
        """:meth:`RegionViT._stage` on the frames of ``T``-frame clips (the temporal blocks get ``num_frames``)."""
        frames = super()._stage(i, x.frames, need_map, **({"num_frames": x.num_frames} if self.temporal else {}))
        return x._replace(frames=frames)

    def _stage_map(self, i: int, x: _ClipState, norm: bool) -> Tensor:
        """The local-token map: ``B x T x C x h x w`` for clips, the image model's ``B x C x h x w`` for images."""
        local = super()._stage_map(i, x.frames, norm)
        return local.unflatten(0, (-1, x.num_frames)) if x.clip else local

    def _map_in_fmt(self, y: Tensor, output_fmt: str) -> Tensor:
        """A clip's maps as ``B x C x T x h x w`` (``'NCHW'``, the name timm's interface uses) or ``B x T x h x w x C``
        (``'NHWC'``); an image batch's as the image model's."""
        if y.ndim == 4:
            return super()._map_in_fmt(y, output_fmt)
        return y.transpose(1, 2).contiguous() if output_fmt == "NCHW" else y.permute(0, 1, 3, 4, 2)

    def _features(self, x: _ClipState, final: bool) -> Tensor:
        """Normalised final regional tokens of every frame, ``B x (T*Hr*Wr) x C`` (frame-major); for an image batch
        ``B x (Hr*Wr) x C`` as the image model."""
        tokens = super()._features(x.frames, final)
        return tokens.reshape(-1, x.num_frames * tokens.shape[1], tokens.shape[2])


# --- checkpoints -----------------------------------------------------------------------------------------------
_INFLATE = (("temporal_attn.", "attn."), ("temporal_norm.", "norm0."))


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: VideoRegionViT) -> dict[str, Tensor]:
    """Image or video RegionViT checkpoints (official or ours) -> this video model.

    The image keys go through RegionViT's filter (official names, window-size resizing). Inflating an image
    checkpoint, each block's missing temporal attention and norm are copied from its regional attention (shared
    ``qkv``/``proj``) and ``norm0``, as TimeSformer initialises its temporal attention from the spatial one; the
    zero ``temporal_fc`` and time embedding are the model's own, so the inflated model computes the image model on
    every frame. Time embeddings trained for another clip length are resampled linearly.
    """
    out = _image.checkpoint_filter_fn(state_dict, model)
    for k, v in model.state_dict().items():
        if ".temporal_" not in k:
            continue
        if k in out:
            if k.endswith("temporal_embed") and out[k].shape != v.shape and out[k].shape[-1] == v.shape[-1]:
                out[k] = resample_time(out[k], v.shape[1])
            continue
        src = next((k.replace(new, old) for new, old in _INFLATE if new in k), None)
        out[k] = out[src].clone() if src is not None and src in out and out[src].shape == v.shape else v
    return out


# --- registry --------------------------------------------------------------------------------------------------
# the image model's dense recipe too: forward_intermediates gives B x C x T x h x w maps of clips, the image model's
# maps for images
REGIONVIT_VIDEO = ModelSpec(VideoRegionViT, filter_fn=checkpoint_filter_fn, feature_cfg=dict(out_indices=(0, 1, 2, 3)),
                            dense=_image.REGIONVIT.dense)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> VideoRegionViT:
    return build_model(REGIONVIT_VIDEO, variant, pretrained, **kwargs)


_INFLATE_NOTE = ("no video weights exist: pretrained=True downloads the authors' image weights {} (or "
                 "pretrained_cfg_overlay=dict(file=...) takes a local copy) and inflates them; fine-tune on clips")


def _cfg(image: str, stem: str = "3conv", **kwargs: Any) -> dict[str, Any]:
    # short side resized to the crop size (crop_pct 1.0), as video models are tested; the clip length is the
    # model's num_frames (timm's cfg has no field for it)
    return _image._cfg(_image._RELEASE + image, stem=stem, crop_pct=1.0, notes=(_INFLATE_NOTE.format(image),),
                       **kwargs)


default_cfgs = generate_default_cfgs({
    "regionvit_video_tiny": _cfg("RegionViT-Ti.pth"),
    "regionvit_video_small": _cfg("RegionViT-S.pth"),
    # the RegionViT authors' K400 model (77.6% top-1 quoted in arXiv:2012.11866v5, Table II); no video weights
    "regionvit_video_medium": _cfg("RegionViT-M.pth", stem="1conv"),
})


def _variant(name: str, base: dict[str, Any], pretrained: bool, kwargs: dict[str, Any]) -> VideoRegionViT:
    return _create(name, pretrained, **{**base, "window_size": 7, **kwargs})


@register_family_model("regionvit", REGIONVIT_VIDEO)
def regionvit_video_tiny(pretrained: bool = False, **kwargs: Any) -> VideoRegionViT:
    """Video RegionViT-Ti: RegionViT-Ti with temporal attention on the regional tokens (8-frame clips)."""
    return _variant("regionvit_video_tiny", _image._TINY, pretrained, kwargs)


@register_family_model("regionvit", REGIONVIT_VIDEO)
def regionvit_video_small(pretrained: bool = False, **kwargs: Any) -> VideoRegionViT:
    """Video RegionViT-S: RegionViT-S with temporal attention on the regional tokens (8-frame clips)."""
    return _variant("regionvit_video_small", _image._SMALL, pretrained, kwargs)


@register_family_model("regionvit", REGIONVIT_VIDEO)
def regionvit_video_medium(pretrained: bool = False, **kwargs: Any) -> VideoRegionViT:
    """Video RegionViT-M: RegionViT-M with TimeSformer's divided space-time attention on the regional tokens, the
    video model the RegionViT authors report on Kinetics-400 (8-frame clips; recipe
    ``regionvit_video_k400_timesformer``)."""
    return _variant("regionvit_video_medium", _image._MEDIUM, pretrained, kwargs)
