"""``locvit.localize`` (this module: ``locvit.models.localize``): LocalViT's locality for any timm vision transformer.

LocalViT (Li et al.) keeps a transformer's attention and replaces each block's ``norm -> MLP`` residual branch by
the locality feed-forward (:class:`~locvit.layers.LocalityFeedForward`: 1x1 expand, depth-wise 3x3, 1x1 project,
BatchNorms, the residual inside), run on the image tokens laid out as a map while class/distillation tokens
bypass it. :func:`localize` does this to a built model in place:

* every block holding a timm ``Mlp`` (or PVT v2's ``MlpWithDepthwiseConv``) at ``.mlp`` with its norm at
  ``.norm2`` (``.norm_mlp`` in TNT) is rewired: the feed-forward is registered as the block's ``conv`` (LocalViT's
  key layout, ``blocks.N.conv.conv.K``); the norm, the layer scale and a separate drop-path of the branch become
  identities; the block's own forward is kept and its ``mlp`` call computes the feed-forward's branch;
* the MLP's ``fc1``/``fc2`` are carried over as the 1x1 convolutions (their biases as the following BatchNorms'
  shifts) and the depth-wise convolution starts as the identity (PVT v2: its own depth-wise conv), so a pretrained
  host starts close to where it was;
* the token grid each block needs comes from the block's input (Swin's ``B x H x W x C`` maps, PVT v2's and
  Twins' ``feat_size``) or from the model's patch embedding (ViT, DeiT, BEiT, TNT...); tokens before the grid's
  ``H*W`` (class, distillation, register tokens) bypass the feed-forward;
* locvit's own hosts use their native LocalViT layout (PVT v1: ``locality=True`` blocks; T2T-ViT: also the
  tokens-to-token layers, expand 1 and h-swish, as LocalViT-T2T).

So ``localize(timm.create_model('deit_tiny_patch16_224', num_heads=4), reduction=192)`` has the keys and the
logits of ``localvit_tiny`` for the same weights, and likewise for the Swin, PVT, TNT and T2T hosts
(``tests/test_localize.py``).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from locvit.layers.locality_ffn import LocalityFeedForward, act_from_code

__all__ = ["LocalityBranch", "localize", "localized_blocks"]

PLACEMENTS = ("all", "low", "middle", "high")


class LocalityError(ValueError):
    """A model :func:`localize` cannot map (no MLP blocks, an MLP kind it cannot carry, no token grid)."""


# --- the token grid of a block -------------------------------------------------------------------------------------
class _Grid:
    """The ``H x W`` token grid of the current forward, recorded by forward hooks: on a block whose input carries
    it (a ``B x H x W x C`` map, or a ``(H, W)`` size argument), else on the model's patch embedding
    (``fallback``)."""

    def __init__(self, static: tuple[int, int] | None = None, fallback: _Grid | None = None):
        self.hw = static
        self.fallback = fallback

    def get(self) -> tuple[int, int] | None:
        if self.hw is not None:
            return self.hw
        return self.fallback.get() if self.fallback is not None else None

    def from_embed(self, module: nn.Module, args: tuple, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(out, Tensor) and out.ndim == 4 and str(getattr(module, "output_fmt", "")).endswith("NHWC"):
            self.hw = (out.shape[1], out.shape[2])
        elif hasattr(module, "dynamic_feat_size") and args and isinstance(args[0], Tensor):
            self.hw = tuple(module.dynamic_feat_size(tuple(args[0].shape[-2:])))

    def from_block(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.hw = None
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.ndim == 4:  # B x H x W x C (Swin)
            self.hw = (x.shape[1], x.shape[2])
            return
        for a in list(args[1:]) + list(kwargs.values()):
            if isinstance(a, (tuple, list)) and len(a) == 2 and all(isinstance(v, int) for v in a):
                self.hw = (int(a[0]), int(a[1]))
                return


def _token_layout(x: Tensor, feat_size: Sequence[int] | None, grid: _Grid) -> tuple[int, int, int]:
    """``(prefix tokens, H, W)`` of a block's MLP input ``x`` (``B x N x C``): the last ``H*W`` tokens are the
    image's, laid out on the grid the block was called with (``feat_size``) or the one ``grid`` recorded. Raises
    ``RuntimeError`` (message starting ``localize:``) when the tokens do not fit it -- checked by :func:`localize`
    on the unchanged model before any block is converted, and by every converted block's call."""
    H, W = feat_size if feat_size is not None else (grid.get() or (0, 0))
    if x.ndim != 3:
        raise RuntimeError(f"localize: the MLP of this block takes a {x.ndim}-D input of shape {tuple(x.shape)}, "
                           "not B x N x C tokens")
    N = x.shape[1]
    prefix = N - H * W
    if H * W == 0 or prefix < 0:
        raise RuntimeError(f"localize: {N} tokens do not lay out on the {H}x{W} token grid of this block")
    return prefix, H, W


class LocalityBranch:
    """What a localized block calls in place of its MLP: the locality feed-forward's residual branch on the
    block's image tokens (prefix tokens get zero, so the block's ``x + branch`` leaves them unchanged).

    A plain callable, not a module: the feed-forward itself is registered as the block's ``conv``.
    """

    def __init__(self, lff: LocalityFeedForward, grid: _Grid):
        self.lff = lff
        self.grid = grid

    def __call__(self, x: Tensor, feat_size: Sequence[int] | None = None) -> Tensor:
        prefix, H, W = _token_layout(x, feat_size, self.grid)
        B, N, C = x.shape
        tokens = x[:, prefix:].transpose(1, 2).reshape(B, C, H, W)
        y = self.lff.conv(tokens).flatten(2).transpose(1, 2)
        return torch.cat([y.new_zeros(B, prefix, C), y], dim=1) if prefix else y

    def __repr__(self) -> str:
        return "LocalityBranch(conv)"


# --- building the feed-forward -------------------------------------------------------------------------------------
def _linear_weight(layer: nn.Module) -> Tensor:
    w = layer.weight
    return w if w.ndim == 4 else w[:, :, None, None]


def _feed_forward(mlp: nn.Module, dim: int, act: str, reduction: int | str | Callable[[int], int],
                  expand_ratio: float | None, carry: bool) -> LocalityFeedForward:
    """A locality feed-forward for ``dim`` channels in place of ``mlp``, with its weights carried when they fit."""
    hidden = mlp.fc1.out_channels if isinstance(mlp.fc1, nn.Conv2d) else mlp.fc1.out_features
    if expand_ratio is not None:
        hidden = int(dim * expand_ratio)
    lff = LocalityFeedForward(dim, (hidden + 0.5) / dim, act, _reduction(reduction, dim))
    seq = lff.conv
    expand, bn1, dw, bn2, proj, bn3 = seq[0], seq[1], seq[3], seq[4], seq[-2], seq[-1]
    if not carry:
        return lff
    with torch.no_grad():
        if _linear_weight(mlp.fc1).shape == expand.weight.shape:
            expand.weight.copy_(_linear_weight(mlp.fc1))
            if mlp.fc1.bias is not None:
                bn1.bias.copy_(mlp.fc1.bias)
        if _linear_weight(mlp.fc2).shape == proj.weight.shape:
            proj.weight.copy_(_linear_weight(mlp.fc2))
            if mlp.fc2.bias is not None:
                bn3.bias.copy_(mlp.fc2.bias)
        host_dw = getattr(mlp, "dwconv", None)
        if isinstance(host_dw, nn.Conv2d) and host_dw.weight.shape == dw.weight.shape:
            dw.weight.copy_(host_dw.weight)
            if host_dw.bias is not None:
                bn2.bias.copy_(host_dw.bias)
        else:  # starts as the identity: the feed-forward begins as the MLP (up to activation and BatchNorm)
            dw.weight.zero_()
            dw.weight[:, :, 1, 1] = 1.0
    return lff


def _reduction(reduction: int | str | Callable[[int], int], dim: int) -> int:
    if reduction == "dim":
        return dim
    if callable(reduction):
        return int(reduction(dim))
    if isinstance(reduction, int) and reduction > 0:
        return reduction
    raise ValueError(f"reduction must be a positive int, 'dim' or a function of the width, got {reduction!r}")


# --- finding and rewiring blocks -----------------------------------------------------------------------------------
def _mlp_kinds() -> tuple[type, ...]:
    kinds: list[type] = [Mlp]
    try:
        from timm.models.pvt_v2 import MlpWithDepthwiseConv

        kinds.append(MlpWithDepthwiseConv)
    except ImportError:  # pragma: no cover - older timm
        pass
    return tuple(kinds)


def _native_kinds() -> dict[type, str]:
    from locvit.models.pvt import PvtBlock
    from locvit.models.t2t import PerformerLayer, TokenTransformerLayer

    return {PvtBlock: "pvt", PerformerLayer: "t2t_token", TokenTransformerLayer: "t2t_token"}


def localized_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model`` that carry a locality feed-forward (as ``conv``)."""
    return [m for m in model.modules() if isinstance(getattr(m, "conv", None), LocalityFeedForward)]


def _candidates(model: nn.Module) -> tuple[list[tuple[str, nn.Module, str]], list[str]]:
    """``(name, block, kind)`` in forward order, and the names of blocks whose MLP cannot be mapped."""
    kinds, native = _mlp_kinds(), _native_kinds()
    found, refused = [], []
    for name, m in model.named_modules():
        if type(m) in native and not getattr(m, "locality", False):
            found.append((name, m, native[type(m)]))
            continue
        mlp = m._modules.get("mlp")
        if mlp is None:
            continue
        norm = "norm2" if "norm2" in m._modules else "norm_mlp" if "norm_mlp" in m._modules else None
        if isinstance(mlp, kinds) and norm:
            found.append((name, m, norm))
        else:
            refused.append(f"{name or type(model).__name__} ({type(mlp).__name__}"
                           + ("" if norm else ", no norm2/norm_mlp") + ")")
    return found, refused


def _select(n: int, blocks: str | Sequence[int]) -> list[int]:
    """Indices of the blocks to localize: ``'all'``, thirds of the depth (``'low'``, ``'middle'``, ``'high'``,
    combinable as ``'low+middle'``: the paper's placement ablation) or explicit indices."""
    if isinstance(blocks, str):
        parts = blocks.split("+")
        bad = [p for p in parts if p not in PLACEMENTS]
        if bad:
            raise ValueError(f"blocks must be {', '.join(PLACEMENTS)} (or combined with '+'), or a list of block "
                             f"indices; got {blocks!r}")
        if "all" in parts:
            return list(range(n))
        bounds = {"low": (0, round(n / 3)), "middle": (round(n / 3), round(2 * n / 3)), "high": (round(2 * n / 3), n)}
        return sorted({i for p in parts for i in range(*bounds[p])})
    idx = sorted({int(i) % n if -n <= int(i) < n else -1 for i in blocks})
    if any(i < 0 for i in idx):
        raise ValueError(f"block indices must be in [-{n}, {n}), got {list(blocks)}")
    return idx


def _embed_module(model: nn.Module) -> nn.Module | None:
    """The model's patch embedding (``patch_embed``/``pixel_embed``, also inside a timm feature wrapper)."""
    for host in (model, getattr(model, "model", None)):
        for attr in ("patch_embed", "pixel_embed"):
            embed = getattr(host, attr, None) if host is not None else None
            if isinstance(embed, nn.Module):
                return embed
    return None


class _Plan:
    """The conversion of one block, built before the model is touched: its new feed-forward (weights carried)
    and, for a rewired timm block, the grid recorder hooked on the block (removed again if the model is refused)."""

    def __init__(self, name: str, block: nn.Module, kind: str, lff: LocalityFeedForward, grid: _Grid | None = None,
                 hooks: Sequence[Any] = ()):
        self.name, self.block, self.kind, self.lff, self.grid, self.hooks = name, block, kind, lff, grid, list(hooks)


def _embed_grid(model: nn.Module) -> tuple[_Grid | None, list[Any]]:
    """A recorder of the grid of the model's patch embedding (None when it has none) and its hook's handle."""
    embed = _embed_module(model)
    if embed is None:
        return None, []
    static = getattr(embed, "grid_size", None)
    grid = _Grid(tuple(static) if static is not None else None)
    return grid, [embed.register_forward_hook(grid.from_embed)]


def _plan(name: str, block: nn.Module, kind: str, act: str, reduction: Any, expand_ratio: float | None,
          carry: bool, embed_grid: _Grid | None) -> _Plan:
    """How ``block`` will be converted; the block itself is not changed (its MLP's weights are only read)."""
    if kind == "t2t_token":  # LocalViT-T2T's tokens-to-token layers: the MLP's width, h-swish, no SE
        from locvit.models.t2t import PerformerLayer

        host = block.mlp
        if isinstance(block, PerformerLayer):
            host = nn.Module()
            host.fc1, host.fc2 = block.mlp[0], block.mlp[2]
        return _Plan(name, block, kind, _feed_forward(host, host.fc2.out_features, "hs", 4, None, carry))
    lff = _feed_forward(block.mlp, _width(block, block.mlp), act, reduction, expand_ratio, carry)
    if kind == "pvt":
        return _Plan(name, block, kind, lff)
    grid = _Grid(fallback=embed_grid)
    return _Plan(name, block, kind, lff, grid, [block.register_forward_pre_hook(grid.from_block, with_kwargs=True)])


def localize(
    model: nn.Module,
    act: str | int = "hs+se",
    reduction: int | str | Callable[[int], int] = "dim",
    expand_ratio: float | None = None,
    blocks: str | Sequence[int] = "all",
    carry_weights: bool = True,
    check: bool = True,
) -> nn.Module:
    """Turn a timm vision transformer into its LocalViT version, in place (the model is returned).

    Args:
        model: a timm (or locvit) model whose blocks hold a timm ``Mlp`` at ``.mlp`` (ViT, DeiT, BEiT, Swin, PVT v2,
            TNT, Twins, ...), or a locvit PVT/T2T-ViT host.
        act: the feed-forward's activation, ``'relu6'``, ``'hs'`` (h-swish), ``'hs+se'`` (h-swish + SE, LocalViT's
            default), ``'hs+eca'``, ``'hs+ecah'``, or the official codes 1-5.
        reduction: SE divisor of the hidden channels: ``'dim'`` (the block width: ``expand`` hidden units, as
            LocalViT-DeiT/PVT), an int (LocalViT-T: 192), or a function of the width (LocalViT-Swin:
            ``lambda d: d // 4``).
        expand_ratio: hidden width over block width; default the host MLP's (its weights are then carried).
        blocks: ``'all'``, ``'low'``, ``'middle'``, ``'high'`` (thirds of the depth, combinable: ``'low+middle'``)
            or a list of block indices (negative from the end). T2T-ViT's tokens-to-token layers are localized with
            ``'all'``.
        carry_weights: copy ``fc1``/``fc2`` into the 1x1 convs (biases into the following BatchNorms' shifts) and
            start the depth-wise conv as the identity (PVT v2: copy its own); False leaves LocalViT's
            from-scratch initialisation.
        check: run one forward of the unchanged model at its default input size, recording what each chosen
            block's MLP receives, to refuse, here, a model whose token layout does not map.

    Raises:
        LocalityError: (a ``ValueError``) the model has no block to localize, holds an MLP kind whose weights
            cannot become the feed-forward (a gated MLP, ...), has no recognisable token grid, or is localized.
            A refused model is left as it was: every block is planned and checked before any is converted.
    """
    act = act_from_code(act)
    if localized_blocks(model):
        raise LocalityError(f"{type(model).__name__} already has locality feed-forwards")
    found, refused = _candidates(model)
    if refused and not found:
        raise LocalityError(f"localize: {type(model).__name__}'s blocks hold MLPs it cannot map to the locality "
                            f"feed-forward: {', '.join(refused[:4])}; supported: timm Mlp (fc1, act, fc2) with a "
                            "pre-norm (norm2/norm_mlp), PVT v2's MlpWithDepthwiseConv")
    if not found:
        raise LocalityError(f"localize: {type(model).__name__} has no transformer block with a timm Mlp "
                            "(`.mlp` with `.norm2`); nothing to localize")
    token_layers = [f for f in found if f[2] == "t2t_token"]
    main = [f for f in found if f[2] != "t2t_token"]
    chosen = [main[i] for i in _select(len(main), blocks)] + (token_layers if blocks == "all" else [])
    # plan every block, check the plan on the unchanged model, and only then convert: a refusal changes nothing
    hooks: list[Any] = []
    try:
        embed_grid = None
        if any(k not in ("pvt", "t2t_token") for _, _, k in chosen):
            embed_grid, hooks = _embed_grid(model)
        plans = []
        for name, block, kind in chosen:
            plans.append(_plan(name, block, kind, act, reduction, expand_ratio, carry_weights, embed_grid))
            hooks += plans[-1].hooks
        if check:
            _check_layout(model, plans, [name for name, _, _ in main])
    except BaseException:
        for h in hooks:
            h.remove()
        raise
    for plan in plans:
        if plan.kind == "pvt":
            _native_pvt(plan.block, plan.lff)
        elif plan.kind == "t2t_token":
            _native_t2t_token(plan.block, plan.lff)
        else:
            _rewire(plan.block, plan.kind, plan.lff, plan.grid)
    return model


def _width(block: nn.Module, mlp: nn.Module) -> int:
    fc1 = mlp.fc1
    return fc1.in_channels if isinstance(fc1, nn.Conv2d) else fc1.in_features


def _rewire(block: nn.Module, norm: str, lff: LocalityFeedForward, grid: _Grid) -> None:
    del block.mlp
    setattr(block, norm, nn.Identity())
    if isinstance(block._modules.get("drop_path2"), nn.Module):  # a separate drop-path of the MLP branch
        block.drop_path2 = nn.Identity()
    block.conv = lff
    block.__dict__["mlp"] = LocalityBranch(lff, grid)  # called by the block's forward; not a registered module


def _native_pvt(block: nn.Module, lff: LocalityFeedForward) -> None:
    del block.mlp, block.norm2
    block.conv = lff
    block.locality = True


def _native_t2t_token(layer: nn.Module, lff: LocalityFeedForward) -> None:
    """LocalViT-T2T's tokens-to-token layers (the performer layer keeps its then unused ``norm2``, as upstream)."""
    from locvit.models.t2t import PerformerLayer

    if not isinstance(layer, PerformerLayer):
        del layer.norm2
    del layer.mlp
    layer.conv = lff
    layer.locality = True


def _ranges(idx: list[int]) -> str:
    """Block indices as :func:`localize`'s ``blocks`` argument: ``range(a, b)`` when contiguous, else a list."""
    if idx and idx == list(range(idx[0], idx[-1] + 1)):
        return f"range({idx[0]}, {idx[-1] + 1})"
    return str(idx)


@torch.no_grad()
def _check_layout(model: nn.Module, plans: list[_Plan], main_names: list[str]) -> None:
    """One forward of the still unchanged ``model`` at its default input size, with each rewired block's MLP input
    checked against the token grid its locality branch will use (:func:`_token_layout`); raises
    :class:`LocalityError` naming every block that does not map, and the ``blocks`` that would."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size") or (3, 224, 224))
    embed = _embed_module(model)
    if embed is not None and getattr(embed, "img_size", None) is not None:  # built for another (fixed) size
        size = (size[0], *embed.img_size)
    bad: dict[str, str] = {}

    def watch(plan: _Plan) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(iter(kwargs.values()), None)
            feat_size = args[1] if len(args) > 1 else kwargs.get("feat_size")
            try:
                if not isinstance(x, Tensor):
                    raise RuntimeError(f"localize: the MLP of this block is called with {type(x).__name__}")
                _token_layout(x, feat_size, plan.grid)
            except RuntimeError as e:
                bad.setdefault(plan.name, str(e).removeprefix("localize: "))
        return hook

    handles = [p.block.mlp.register_forward_pre_hook(watch(p), with_kwargs=True) for p in plans if p.grid]
    was_training = model.training
    try:
        param = next(model.parameters())
        model.eval()(torch.zeros(1, *size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if bad:
        blocks = {p.name: p.block for p in plans}
        listed = "; ".join(f"{n} ({type(blocks[n]).__name__}): {why}" for n, why in list(bad.items())[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        fit = [i for i, n in enumerate(main_names) if n in blocks and n not in bad]
        hint = (f"; localize only the blocks that map with blocks={_ranges(fit)}" if fit else "")
        raise LocalityError(f"localize: {type(model).__name__} does not map, so it was left unchanged: {listed}{more}"
                            f"{hint}")
