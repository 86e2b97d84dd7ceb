"""Focal Transformer v2, "Focal-fast" (``focal_transformer_v2.py`` of microsoft/Focal-Transformer).

Same pyramid, blocks, embeddings and sub-window pooling as v1 (:mod:`locvit.models.focal`); the attention changes:
no ring, no ``unfold``, no masks, no bias tables. For every window and every focal level the keys are the
**top-K tokens nearest to the window** (Euclidean distance from the window centre ``idx * ws + ws // 2`` to every
token of the map at level 0; between window indices on the pooled map at level ``k >= 1``), K = ``focal_topk``
capped at the number of candidates. The position bias is a small MLP ``Linear(2, d) -> ReLU -> Linear(d, heads)``
per level applied to the displacement *query pixel minus key* (pooled displacements in units of the window).

Reproduced official behaviour and its deviations from the paper:

* The selection is not a fixed neighbourhood but a distance ranking over the whole map, and many distances tie:
  which of the equidistant tokens ``torch.topk`` keeps is an implementation detail. The official model therefore
  stores the chosen indices and displacements as **persistent buffers** (``topk_cloest_indice_k``,
  ``topk_cloest_coords_k``), and so does this one (``topk_index_k``, ``topk_coords_k``): loading a checkpoint
  restores the exact selection. Buffers built here (a new model, or a size other than the checkpoint's) rank ties
  by key index (a stable sort), which can pick other equidistant tokens than an official rebuild would.
* For ``k >= 1`` the official candidates are the ``nWh x nWw`` window grid even when the pooled map of that level is
  larger (``focal_level > 2``); the flat indices are used into the pooled map as they are.
* The official v2 never pads, so it fails unless every stage map is a multiple of its window (or not larger than
  it, then the window shrinks at build time as in v1). locvit extends it the v1 way: maps are zero-padded after the
  norm to multiples of the window (padded tokens are unmasked candidates) and the output is cropped. Sizes the
  official code supports are not padded, so nothing changes there; other sizes (e.g. detection inputs) run.
* A shift (``use_shift``) rolls the map but, unlike v1, no mask is applied.

Sizes: the buffers describe the (padded) map size the model was built for (``img_size``). Other sizes run with
selections computed (stable ranking) and cached for that size;
:meth:`FocalTransformerV2.set_input_size` makes a size the model's own (its buffers are then saved with it).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import generate_default_cfgs
from torch import Tensor, nn

from locvit.layers import fastpath
from locvit.layers.windows import pad_to_multiple
from locvit.models._registry import ModelSpec, register_family_model, register_official
from locvit.models.args import check_int
from locvit.models.builder import build_model
from locvit.models.focal import FOCAL, FocalAttentionBase, FocalTransformer, focal_cfg, translate_official_kwargs

__all__ = ["FocalTopKAttention", "FocalTransformerV2", "nearest_keys"]


def nearest_keys(q_grid: tuple[int, int], k_grid: tuple[int, int], topk: int) -> tuple[Tensor, Tensor]:
    """The ``topk`` keys of ``k_grid`` nearest to each cell of ``q_grid`` (the official ``get_topk_closest_indice``).

    When the grids differ in height, query cell ``i`` sits at ``i * f + f // 2`` with ``f = kh // qh`` (the window
    centre; the official code uses the height ratio for both axes). Ties are ranked by key index.

    Returns:
        ``index`` int64 ``(qh * qw) x K`` (row-major keys) and ``rel`` float ``(qh * qw) x K x 2`` (query - key).
    """
    (qh, qw), (kh, kw) = q_grid, k_grid
    f = kh // qh if qh != kh else 1
    q = torch.stack(torch.meshgrid(torch.arange(qh) * f + f // 2, torch.arange(qw) * f + f // 2, indexing="ij"), -1)
    k = torch.stack(torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij"), -1)
    rel = q.view(-1, 1, 2) - k.view(1, -1, 2)
    dist2 = rel.pow(2).sum(-1)  # exact integers: ties are real ties
    K = min(topk, kh * kw)
    rank = dist2 * (kh * kw) + torch.arange(kh * kw)  # distance first, then key index: no ties left
    index = torch.topk(rank, K, dim=1, largest=False, sorted=True).indices
    return index, torch.gather(rel, 1, index[..., None].expand(-1, -1, 2)).float()


def _unique_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.unique(rows, dim=0, return_inverse=True)`` for ``N x 2`` rows, with two stable 1-D sorts (faster)."""
    order = torch.sort(rows[:, 1], stable=True).indices
    order = order[torch.sort(rows[order, 0], stable=True).indices]
    rows = rows[order]
    first = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    first[1:] = (rows[1:] != rows[:-1]).any(1)
    inverse = torch.empty_like(order)
    inverse[order] = first.cumsum(0) - 1
    return rows[first], inverse


class FocalTopKAttention(FocalAttentionBase):
    """Focal-fast attention: per window and level, the top-K nearest keys with an MLP position bias.

    Takes the normed ``B x H x W x C`` map, returns ``B x H x W x C`` (zero padding to multiples of the window, as v1;
    the official v2 only accepts multiples).

    Args:
        dim: channels.
        num_heads: attention heads.
        grid: the map size the persistent top-K buffers are built for (padded to multiples of the window).
        window_size: window side (already shrunk for small maps).
        shift_size: cyclic shift (no mask in v2).
        focal_level: number of levels (level 0 = the full-resolution map).
        pool_method: ``'fc' | 'conv' | 'mean' | 'max'`` for the pooled levels.
        topk: keys per level (capped at the candidates).
        qkv_bias, qk_scale, attn_drop, proj_drop: as usual.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid: tuple[int, int],
        window_size: int = 7,
        shift_size: int = 0,
        focal_level: int = 2,
        pool_method: str = "fc",
        topk: int = 128,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(dim, num_heads, window_size, focal_level, pool_method, qkv_bias, qk_scale, attn_drop,
                         proj_drop)
        if focal_level < 1:
            raise ValueError(f"focal v2 needs focal_level >= 1, got {focal_level}")
        if focal_level > 1 and pool_method == "none":
            raise ValueError("focal v2 with focal_level > 1 needs a pooling method (the pooled levels are keys)")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size} (window {window_size})")
        self.grid = self.padded(grid)
        self.shift_size = shift_size
        self.topk = topk
        self.coord2rpb_all = nn.ModuleList([
            nn.Sequential(nn.Linear(2, self.head_dim), nn.ReLU(inplace=True), nn.Linear(self.head_dim, num_heads))
            for _ in range(focal_level)
        ])
        for k, (index, coords) in enumerate(self.selection(self.grid)):
            self.register_buffer(f"topk_index_{k}", index)
            self.register_buffer(f"topk_coords_{k}", coords)

    def padded(self, grid: tuple[int, int]) -> tuple[int, int]:
        ws = self.window_size
        return -(-grid[0] // ws) * ws, -(-grid[1] // ws) * ws

    def selection(self, grid: tuple[int, int]) -> list[tuple[Tensor, Tensor]]:
        """Per level: key indices (windows x K) and query-pixel-minus-key displacements (windows x ws^2 x K x 2)."""
        ws = self.window_size
        windows = (grid[0] // ws, grid[1] // ws)
        offsets = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"), -1) - ws // 2
        out = []
        for k in range(self.focal_level):
            index, rel = nearest_keys(windows, grid if k == 0 else windows, self.topk)
            if k > 0:
                rel = rel * ws
            out.append((index, rel[:, None] + offsets.view(1, -1, 1, 2)))
        return out

    def gather_plan(self, H: int, W: int, device: torch.device,
                    dtype: torch.dtype) -> tuple[Tensor, list[Tensor], Tensor | None]:
        """What a forward on an ``H x W`` (padded) map needs, cached per size, device and dtype.

        At the built size it comes from the (loaded) buffers, elsewhere from :meth:`selection`.

        Returns:
            ``index``: flat ``windows * keys`` positions into :meth:`_kv_source`'s token axis (map, pooled maps).
            ``coords``: per level, the distinct displacements (``U_k x 2``): the bias MLP runs on these only.
            ``inverse``: flat ``windows * ws^2 * keys`` positions of every (query, key) displacement in the
            concatenation of the levels' distinct displacements. When tracing/compiling (where finding the
            distinct rows is data-dependent), ``coords`` are all displacements and ``inverse`` is None.
        """
        dedupe = not fastpath.tracing()  # finding the distinct rows is data-dependent

        def build() -> tuple[Tensor, list[Tensor], Tensor | None]:
            if (H, W) == self.grid:
                sel = [(getattr(self, f"topk_index_{k}"), getattr(self, f"topk_coords_{k}"))
                       for k in range(self.focal_level)]
            else:
                sel = self.selection((H, W))
            index = self._flat_index([i for i, _ in sel], H, W).to(device)
            if not dedupe:
                return index, [c.to(device=device, dtype=dtype) for _, c in sel], None
            coords, inverse, base = [], [], 0
            for _, c in sel:
                uniq, inv = _unique_rows(c.reshape(-1, 2))
                coords.append(uniq.to(device=device, dtype=dtype))
                inverse.append(inv.view(c.shape[:3]) + base)
                base += uniq.shape[0]
            return index, coords, torch.cat(inverse, 2).flatten().to(device)

        return self._plans.get_or_build((H, W, device, dtype), build)

    def _flat_index(self, indices: list[Tensor], H: int, W: int) -> Tensor:
        ws = self.window_size
        base, out = 0, []
        for k, index in enumerate(indices):
            out.append(index + base)
            # level 0 indexes the map, level k >= 1 the pooled map of sub-window level k - 1
            base += H * W if k == 0 else (H // ws) * (W // ws) * 4 ** (k - 1)
        return torch.cat(out, 1).flatten()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._plans.clear()  # the selection buffers may have changed

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        ws, s = self.window_size, self.shift_size
        x, _, _ = pad_to_multiple(x, ws)  # a locvit extension (see the module docstring); no-op where official runs
        if s:
            x = torch.roll(x, (-s, -s), (1, 2))
        Hp, Wp = x.shape[1], x.shape[2]
        index, coords, inverse = self.gather_plan(Hp, Wp, x.device, x.dtype)
        qkv = self.qkv(x)
        src = self._kv_source(qkv, self._pooled(x), zero_row=False)
        num_windows = (Hp // ws) * (Wp // ws)
        if inverse is not None:
            # the MLP of each level on its distinct displacements, then spread to every (window, query, key)
            table = torch.cat([mlp(c) for mlp, c in zip(self.coord2rpb_all, coords)]).t()
            bias = table.index_select(1, inverse).view(1, -1, ws * ws, index.shape[0] // num_windows)
        else:
            bias = torch.cat([mlp(c) for mlp, c in zip(self.coord2rpb_all, coords)], dim=2)  # nW x ws^2 x K x nh
            bias = bias.permute(3, 0, 1, 2).reshape(1, -1, ws * ws, bias.shape[2])
        out = self._windows_to_map(self._attend_gathered(self._queries(qkv), src, index, bias), Hp, Wp)
        if s:
            out = torch.roll(out, (s, s), (1, 2))
        return self.proj_drop(self.proj(out[:, :H, :W]))

    def adapt_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Besides the pooling kernels: selection buffers of another map size are replaced by this module's own."""
        out = super().adapt_state_dict(sd)
        own = self.state_dict()
        for k in range(self.focal_level):
            for key in (f"topk_index_{k}", f"topk_coords_{k}"):
                if key not in out or out[key].shape != own[key].shape:
                    out[key] = own[key]
        return out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.num_heads}, window={self.window_size}, shift={self.shift_size}, "
                f"focal_level={self.focal_level}, topk={self.topk}, grid={self.grid}, pool={self.pool_method!r}")


class FocalTransformerV2(FocalTransformer):
    """Focal Transformer v2 ("Focal-fast"): :class:`~locvit.models.focal.FocalTransformer` with top-K attention.

    Args:
        focal_topk: keys per window and level (128 in the released configs).
        *args, **kwargs: as :class:`~locvit.models.focal.FocalTransformer` (``expand_sizes``/``expand_layer`` have no
            effect in v2, as in the official code).
    """

    no_weight_decay_keys = ("absolute_pos_embed",)  # v2's official no_weight_decay_keywords is empty

    def __init__(self, *args: Any, focal_topk: int = 128, **kwargs: Any):
        self.focal_topk = check_int(focal_topk, "focal_topk")
        super().__init__(*args, **kwargs)

    def _make_attention(self, stage: int, index: int, grid: tuple[int, int], dim: int) -> nn.Module:
        kw = self._attention_kwargs(stage, index, grid)
        kw.pop("expand_size")
        kw.pop("focal_window")
        return FocalTopKAttention(dim, grid=grid, topk=self.focal_topk, **kw)

    def _attention_matches(self, attn: nn.Module, stage: int, index: int, grid: tuple[int, int]) -> bool:
        kw = self._attention_kwargs(stage, index, grid)
        same = (attn.window_size, attn.shift_size) == (kw["window_size"], kw["shift_size"])
        return same and attn.grid == attn.padded(grid)


# v1's checkpoint filter (the two versions share every key), features and dense recipe
FOCAL_V2 = ModelSpec(FocalTransformerV2, filter_fn=FOCAL.filter_fn, feature_cfg=FOCAL.feature_cfg, dense=FOCAL.dense)


@register_official(FOCAL_V2, "focal_transformer_v2.FocalTransformer")
def _from_official(kw: dict[str, Any]) -> dict[str, Any]:
    kw = translate_official_kwargs(kw)
    kw["focal_topk"] = kw.pop("focal_topK", 64)  # the official default
    return kw


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> FocalTransformerV2:
    return build_model(FOCAL_V2, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({
    "focalv2_tiny_useconv.in1k": focal_cfg("focalv2-tiny-useconv-is224-ws7.pth",
                                           "focalv2_tiny_useconv_patch4_window7_224", 0.2, top1=82.4,
                                           notes=("Focal-fast-T",)),
    "focalv2_small_useconv.in1k": focal_cfg("focalv2-small-useconv-is224-ws7.pth",
                                            "focalv2_small_useconv_patch4_window7_224", 0.3, top1=83.6,
                                            notes=("Focal-fast-S",)),
    "focalv2_base_useconv.in1k": focal_cfg("focalv2-base-useconv-is224-ws7.pth",
                                           "focalv2_base_useconv_patch4_window7_224", 0.5, top1=84.0,
                                           notes=("Focal-fast-B",)),
})

_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), use_conv_embed=True, focal_topk=128)
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), use_conv_embed=True, focal_topk=128)
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), use_conv_embed=True, focal_topk=128)


@register_family_model("focal", FOCAL_V2, aliases=("focalv2_tiny_useconv_patch4_window7_224",))
def focalv2_tiny_useconv(pretrained: bool = False, **kwargs: Any) -> FocalTransformerV2:
    """Focal-fast-T: C 96, depths 2-2-6-2, top-128 keys per level, conv stem and down-sampling."""
    return _create("focalv2_tiny_useconv", pretrained, **dict(_TINY, **kwargs))


@register_family_model("focal", FOCAL_V2, aliases=("focalv2_small_useconv_patch4_window7_224",))
def focalv2_small_useconv(pretrained: bool = False, **kwargs: Any) -> FocalTransformerV2:
    """Focal-fast-S: C 96, depths 2-2-18-2, top-128 keys per level, conv stem and down-sampling."""
    return _create("focalv2_small_useconv", pretrained, **dict(_SMALL, **kwargs))


@register_family_model("focal", FOCAL_V2, aliases=("focalv2_base_useconv_patch4_window7_224",))
def focalv2_base_useconv(pretrained: bool = False, **kwargs: Any) -> FocalTransformerV2:
    """Focal-fast-B: C 128, depths 2-2-18-2, top-128 keys per level, conv stem and down-sampling."""
    return _create("focalv2_base_useconv", pretrained, **dict(_BASE, **kwargs))
