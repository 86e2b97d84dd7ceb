"""Segmentation models on a locvit encoder: segmentation_models_pytorch's decoders (``smp_model``; Semantic FPN,
UperNet...) for inputs of any size, and :class:`Segmenter`, the model ``locvit segment`` trains (an smp
encoder-decoder with mmsegmentation's optional auxiliary FCN head). Both pad their input to the decoder's stride
and crop the output back (:func:`pad_to_multiple`, the one place that does).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from locvit.dense.backbone import backbone_kwargs, dense_recipe, load_pretrained
from locvit.dense.config import SegmentConfig
from locvit.models import create_model

__all__ = ["ARCH", "PadCrop", "Segmenter", "build_segmenter", "pad_to_multiple", "smp_model"]


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """``x`` zero-padded at the bottom and right to a multiple of ``multiple`` (after normalisation, so zero is the
    mean colour); crop an output back with ``[..., :H, :W]``. Decoders that add upsampled maps (smp's FPN,
    U-Net...) need sizes divisible by their output stride; detection-style images rarely are."""
    H, W = x.shape[-2:]
    pad_h, pad_w = (multiple - H % multiple) % multiple, (multiple - W % multiple) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


class PadCrop(nn.Module):
    """Run ``model`` on the input padded to a multiple of ``multiple`` (:func:`pad_to_multiple`) and crop its output
    back to the input size."""

    def __init__(self, model: nn.Module, multiple: int = 32):
        super().__init__()
        self.model = model
        self.multiple = multiple

    def forward(self, x: Tensor) -> Any:
        H, W = x.shape[-2:]
        out = self.model(pad_to_multiple(x, self.multiple))
        if isinstance(out, (tuple, list)):  # smp: (masks, labels) with an aux classification head
            return type(out)([out[0][..., :H, :W], *out[1:]])
        return out[..., :H, :W]


def smp_model(
    arch: str,
    model_name: str,
    classes: int,
    *,
    checkpoint: str | os.PathLike | Mapping[str, Any] | None = None,
    pretrained: bool = False,
    recipe: bool = True,
    pad_to: int | None = 32,
    verbose: bool = True,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A segmentation_models_pytorch model (``'FPN'``, ``'Unet'``, ``'UPerNet'``...) with encoder
    ``tu-<model_name>``.

    Args:
        arch: smp architecture name (``smp.create_model``'s ``arch``).
        model_name: a locvit pyramid model.
        classes: output channels.
        checkpoint: classification weights for the encoder (see :func:`load_pretrained`).
        pretrained: the official weights for the encoder: smp's ``encoder_weights``, which for a ``tu-`` encoder is
            timm's ``pretrained=True`` (``pretrained_cfg_overlay`` in ``kwargs`` overrides the source).
        recipe: pass :func:`dense_recipe`'s model kwargs to the encoder.
        pad_to: wrap in :class:`PadCrop` (inputs of any size); ``None`` returns the bare smp model.
        verbose: print the checkpoint report.
        trust_pickle: for ``checkpoint`` and ``pretrained``: see :func:`locvit.read_checkpoint`.
        **kwargs: for ``smp.create_model`` (decoder settings) and the encoder (model kwargs), as smp splits them;
            a model ``depth`` (which smp reserves for itself) included.
    """
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        raise ImportError("smp_model needs segmentation_models_pytorch: pip install 'locvit[tools]' "
                          "(or pip install segmentation-models-pytorch)") from e
    if recipe:
        kwargs = {**dense_recipe(model_name).model_kwargs, **kwargs}
    if pretrained and checkpoint is not None:
        raise ValueError("pass pretrained=True (the published weights) or checkpoint=FILE, not both")
    # smp hands the encoder its own `depth` (how many stages to return), so a model's `depth` (RegionViT's blocks
    # per stage) cannot travel with the other encoder keywords: the encoder is rebuilt with it below
    model_depth = kwargs.pop("depth", None)
    if pretrained and trust_pickle:
        kwargs["trust_pickle"] = True  # reaches the locvit entrypoint with smp's other encoder keywords
    # smp hands encoder_weights to timm as pretrained=True for tu- encoders
    model = smp.create_model(arch, encoder_name=f"tu-{model_name}", encoder_weights=True if pretrained else None,
                             classes=classes, **kwargs)
    if model_depth is not None:
        import inspect

        smp_args = set(inspect.signature(type(model).__init__).parameters)
        encoder_kwargs = {k: v for k, v in kwargs.items() if k not in smp_args}
        built = model.encoder.model
        model.encoder.model = create_model(model_name, features_only=True, in_chans=kwargs.get("in_channels", 3),
                                           out_indices=tuple(built.feature_info.out_indices), depth=model_depth,
                                           pretrained=pretrained, **encoder_kwargs)
        if model.encoder.model.feature_info.channels() != built.feature_info.channels():
            raise ValueError(f"{model_name} with depth={model_depth} changes its channels; smp's decoder was built "
                             "for the others")
    if pretrained:
        model.load_report = model.encoder.model.load_report
        if verbose:
            print(model.load_report, flush=True)
    if checkpoint is not None:
        model.load_report = load_pretrained(model.encoder.model, checkpoint, trust_pickle=trust_pickle,
                                            verbose=verbose)
    return PadCrop(model, pad_to) if pad_to else model


ARCH = {"fpn": "FPN", "upernet": "UPerNet"}


class Segmenter(nn.Module):
    """An smp encoder-decoder with an optional auxiliary FCN head, for inputs of any size.

    ``forward`` returns logits at the input's size; in training mode with an auxiliary head, ``(logits,
    aux_logits)``.
    """

    def __init__(self, smp_model: nn.Module, num_classes: int, aux_channels: int = 256, aux: bool = False,
                 multiple: int = 32):
        super().__init__()
        self.smp = smp_model
        self.multiple = multiple
        self.aux_head = None
        if aux:
            c = self.smp.encoder.out_channels[-2]
            self.aux_head = nn.Sequential(nn.Conv2d(c, aux_channels, 3, padding=1, bias=False),
                                          nn.BatchNorm2d(aux_channels), nn.ReLU(inplace=True), nn.Dropout2d(0.1),
                                          nn.Conv2d(aux_channels, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        H, W = x.shape[-2:]
        x = pad_to_multiple(x, self.multiple)
        features = self.smp.encoder(x)
        logits = self.smp.segmentation_head(self.smp.decoder(features))[..., :H, :W]
        if self.aux_head is not None and self.training:
            aux = F.interpolate(self.aux_head(features[-2]), size=x.shape[-2:], mode="bilinear", align_corners=False)
            return logits, aux[..., :H, :W]
        return logits


def build_segmenter(cfg: SegmentConfig, num_classes: int, verbose: bool = True) -> Segmenter:
    """The configured head on ``cfg.model`` (smp decoder + optional auxiliary head)."""
    kw: dict[str, Any] = {}
    if cfg.head == "fpn" and cfg.decoder_channels:
        kw["decoder_pyramid_channels"] = cfg.decoder_channels
    elif cfg.head == "upernet" and cfg.decoder_channels:
        kw["decoder_channels"] = cfg.decoder_channels
    bk = backbone_kwargs(cfg)
    model = smp_model(ARCH[cfg.head], cfg.model, num_classes, pad_to=None, verbose=verbose,
                            checkpoint=bk.get("checkpoint"), trust_pickle=bk["trust_pickle"], **kw,
                            **bk["model_kwargs"],
                            **({"pretrained": True} if "pretrained" in bk else {}))
    return Segmenter(model, num_classes, aux=cfg.aux_weight > 0)
