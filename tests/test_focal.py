"""Focal Transformer (v1 and v2): the mechanism's index maps, masks, sizes and checkpoint conversion."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import locvit
from locvit.layers.attention import explicit_attention
from locvit.models.focal import (
    FocalSelfAttention,
    FocalTransformer,
    block_geometry,
    checkpoint_filter_fn,
    pooled_offsets,
    ring_offsets,
)
from locvit.models.focal_v2 import FocalTransformerV2, nearest_keys

TINY = dict(embed_dim=12, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), num_classes=5, mlp_ratio=2.0)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move tables, norms and biases away from their (zero/one) init so that every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position" in name or name.endswith("bias") or "norm" in name or "gamma" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _vector(conf_dir, name):
    path = conf_dir / "vectors" / "focal" / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------------------------------------------------------
# index maps
# ---------------------------------------------------------------------------------------------------------------
def test_ring_covers_the_surroundings_with_twelve_duplicates():
    off = ring_offsets(7, 3)
    assert off.shape == (4 * (49 - 16), 2)
    cells = {tuple(o) for o in off.tolist()}
    ring = {(i, j) for i in range(-3, 10) for j in range(-3, 10) if not (0 <= i < 7 and 0 <= j < 7)}
    assert cells == ring and len(ring) == 120
    counts = torch.unique(off, dim=0, return_counts=True)[1]
    assert int((counts == 2).sum()) == 12 and int(counts.max()) == 2
    assert ring_offsets(4, 4).shape[0] == 4 * 16  # e == ws: the whole rolled windows


def test_pooled_offsets_keep_the_bottom_right_of_the_kernel():
    assert pooled_offsets(7, 0).shape[0] == 49 and pooled_offsets(7, 0).min() == -3
    off = pooled_offsets(5, 1)  # kernel 2*2 + 2 + 1 = 7, keep rows/cols 1..6
    assert off.shape[0] == (5 + 2 - 1) ** 2
    assert off.min() == 1 - 7 // 2 and off.max() == 6 - 7 // 2


def test_index_buffers_equal_the_official_ones(conf_dir):
    """The official int64 buffers in a checkpoint are dropped by the filter; ours are recomputed to equal them."""
    v = _vector(conf_dir, "focal_l3_pad_160x224")  # 3 focal levels in stages 1-2: valid_ind_unfold_1 exists
    model = locvit.from_official(v["official_class"], v["constructor_kwargs"])
    sd = v["state_dict"]
    checked = 0
    for name, attn in model.named_modules():
        if not isinstance(attn, FocalSelfAttention):
            continue
        prefix = name + "."
        assert torch.equal(sd[prefix + "relative_position_index"], attn.rel_index_window)
        for k in range(attn.num_pooled):
            assert torch.equal(sd[prefix + f"relative_position_index_{k}"], getattr(attn, f"rel_index_pooled_{k}"))
            if k > 0:
                kernel = 2 * (attn.focal_window // 2) + 2 ** (k + 1) - 1
                valid = sd[prefix + f"valid_ind_unfold_{k}"]
                expect = torch.stack([valid // kernel, valid % kernel], 1) - kernel // 2
                assert torch.equal(expect, pooled_offsets(attn.focal_window, k))
        if attn.use_ring:
            ws, e = attn.window_size, attn.expand_size
            valid = sd[prefix + "valid_ind_rolled"]
            roll, pos = valid // (ws * ws), valid % (ws * ws)
            sign = torch.tensor([(-1, -1), (-1, 1), (1, -1), (1, 1)])[roll]
            expect = torch.stack([pos // ws, pos % ws], 1) - sign * e
            assert torch.equal(expect, attn.ring_offsets)
        checked += 1
    assert checked == 8  # every block (depths 2, 2, 2, 2)


@pytest.mark.parametrize("shift", [0, 2])
def test_gather_plan_is_the_roll_and_unfold_of_the_official_code(shift):
    """One gather == 4 rolls + masked selection + unfold (with zero padding and -100 outside the pooled map)."""
    ws, e, fw, Hp, Wp = 4, 2, 3, 12, 16
    attn = FocalSelfAttention(8, 2, window_size=ws, expand_size=e, shift_size=shift, focal_level=3,
                              focal_window=fw, pool_method="mean")
    index, mask = attn.gather_plan(Hp, Wp, torch.device("cpu"), torch.float32)
    nW, N = (Hp // ws) * (Wp // ws), attn.num_keys
    index = index.view(nW, N)

    def windows(t):  # Hp x Wp -> windows x ws^2
        return t.view(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)

    ids = torch.arange(Hp * Wp).view(Hp, Wp)
    keep = torch.ones(4, ws, ws, dtype=torch.bool)  # the official in-window selection of each roll
    keep[0, :-e, :-e] = keep[1, :-e, e:] = keep[2, e:, :-e] = keep[3, e:, e:] = False
    ring = [windows(torch.roll(ids, (sy, sx), (0, 1)))[:, keep[r].flatten()]
            for r, (sy, sx) in enumerate([(-e, -e), (-e, e), (e, -e), (e, e)])]
    expect = [windows(ids)] + ring
    expect_mask = [torch.zeros(nW, ws * ws + sum(t.shape[1] for t in ring))]
    base = Hp * Wp
    zero = base + sum((Hp // ws * 2 ** k) * (Wp // ws * 2 ** k) for k in range(2))
    for k in range(2):
        s = 2 ** k
        ph, pw = Hp // ws * s, Wp // ws * s
        kernel = 2 * (fw // 2) + 2 * s - 1
        pooled = (base + 1 + torch.arange(ph * pw)).view(1, 1, ph, pw).double()
        cols = F.unfold(pooled, kernel, padding=kernel // 2, stride=s)[0].t().long()  # windows x kernel^2
        if k > 0:
            sel = torch.zeros(kernel, kernel, dtype=torch.bool)
            sel[s - 1:, s - 1:] = True
            cols = cols[:, sel.flatten()]
        expect.append(torch.where(cols == 0, zero, cols - 1))
        expect_mask.append(torch.where(cols == 0, -100.0, 0.0))
        base += ph * pw
    assert torch.equal(index, torch.cat(expect, 1))
    pooled_mask = torch.cat(expect_mask, 1)
    assert mask.shape[:2] == (1, nW) and mask.shape[3] == N
    assert torch.equal(mask[0, :, -1, ws * ws:], pooled_mask[:, ws * ws:])  # ring: 0, pooled: -100 outside
    if shift:  # Swin's mask on the own-window keys only
        own = mask[0, :, :, : ws * ws]
        assert (own == -100).any() and (own[0] == 0).all()
    else:
        assert mask.shape[2] == 1 and (mask[0, :, 0, : ws * ws] == 0).all()


def test_block_geometry_shrinks_the_window_on_small_maps():
    assert block_geometry((56, 56), 7, 3, 3) == (7, 3, 3)
    assert block_geometry((7, 7), 7, 3, 3) == (7, 0, 0)
    assert block_geometry((5, 9), 7, 3, 0) == (5, 0, 0)


@pytest.mark.parametrize("layer, no_ring", [("all", ()), ("even", (0, 2)), ("odd", (1, 3))])
def test_expand_layer(layer, no_ring):
    m = FocalTransformer(img_size=224, embed_dim=12, depths=(1, 1, 4, 1), num_heads=(1, 1, 1, 1), expand_layer=layer)
    rings = [blk.attn.use_ring for blk in m.layers[2].blocks]
    assert rings == [i not in no_ring for i in range(4)]
    assert not m.layers[3].blocks[0].attn.use_ring  # 7x7 map: window shrink rule, no ring


# ---------------------------------------------------------------------------------------------------------------
# forward paths, sizes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, kw", [(FocalTransformer, dict(use_shift=True, focal_levels=(3, 2, 2, 2))),
                                     (FocalTransformerV2, dict(use_conv_embed=True, focal_topk=20))])
def test_fused_equals_explicit_attention(cls, kw):
    model = _randomize(cls(img_size=112, **TINY, **kw))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        fused = model(x)
        with explicit_attention():
            explicit = model(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["focal_tiny", "focal_tiny_useconv", "focalv2_tiny_useconv"])
@pytest.mark.parametrize("size", [(200, 304), (97, 131)])  # 800x1216 scaled down; odd, non-square
def test_stage_features_at_detection_sizes(name, size):
    model = timm.create_model(name, features_only=True, embed_dim=12, num_heads=(1, 2, 2, 4), depths=(1, 1, 1, 1))
    H, W = size
    with torch.no_grad():
        feats = model.eval()(torch.randn(1, 3, H, W))
    conv = "useconv" in name
    h, w = ((H - 3) // 4 + 1, (W - 3) // 4 + 1) if conv else (H // 4, W // 4)
    for i, f in enumerate(feats):
        assert f.shape == (1, 12 * 2 ** i, h, w) and torch.isfinite(f).all()
        h, w = ((h + 1) // 2, (w + 1) // 2) if conv else (h // 2, w // 2)


def test_features_are_taken_before_downsampling():
    model = _randomize(FocalTransformer(img_size=64, **TINY))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        stage1 = model.layers[0](model._stem(x))
        torch.testing.assert_close(feats[0], stage1.permute(0, 3, 1, 2))
        torch.testing.assert_close(model.forward_intermediates(x, norm=True)[1][-1], final.permute(0, 3, 1, 2))


def test_other_sizes_equal_a_model_built_for_them():
    """A model built for 224 run at 252 (same block geometry) == the model built for 252 with the same weights,
    including the absolute position embedding (resampled on the fly vs by the filter)."""
    a = _randomize(FocalTransformer(img_size=224, ape=True, **TINY))
    b = FocalTransformer(img_size=252, ape=True, **TINY).eval()
    locvit.load_checkpoint(b, a.state_dict())
    x = torch.randn(1, 3, 252, 252)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_set_input_size_equals_building_for_that_size():
    a = _randomize(FocalTransformer(img_size=224, **TINY))
    sd = a.state_dict()
    for size in (384, 112):
        b = copy.deepcopy(a)
        b.set_input_size(size)
        c = FocalTransformer(img_size=size, **TINY).eval()
        report = locvit.load_checkpoint(c, sd)
        assert report.exact
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(b(x), c(x))
    last = c.layers[3].blocks[0].attn  # 112: stage 4 is 3x3 -> window 3, tables resized
    assert last.window_size == 3 and last.relative_position_bias_table.shape == (25, 4)
    assert c.layers[2].blocks[0].attn.window_size == 7 and not c.layers[2].blocks[0].attn.use_ring
    b = FocalTransformer(img_size=384, **TINY)
    locvit.load_checkpoint(b, sd)  # 384: the last stage (12x12) gains a ring, its table starts at zero
    ring = b.layers[3].blocks[0].attn.relative_position_bias_table_to_neighbors
    assert ring.shape == (1, 4, 49, 132) and not ring.any()


def test_too_small_or_invalid():
    model = FocalTransformer(img_size=64, **TINY)
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 31, 64))
    assert FocalTransformer(img_size=64, use_conv_embed=True, **TINY).min_img_size == (3, 3)
    with pytest.raises(ValueError, match="odd"):
        FocalTransformer(focal_windows=(6, 5, 3, 1), **TINY)
    with pytest.raises(ValueError, match="expand_size"):
        FocalTransformer(expand_sizes=(9, 3, 3, 3), **TINY)
    with pytest.raises(ValueError, match="too small"):
        FocalTransformer(img_size=16, **TINY)


def test_no_weight_decay_follows_the_official_optimizers():
    v1 = FocalTransformer(ape=True, **TINY).no_weight_decay()
    assert "absolute_pos_embed" in v1
    assert "layers.0.blocks.0.attn.relative_position_bias_table_to_neighbors" in v1
    assert "layers.0.blocks.0.attn.relative_position_bias_table_to_windows.0" in v1
    assert FocalTransformerV2(**TINY).no_weight_decay() == set()


# ---------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------
def test_filter_maps_official_keys(conf_dir):
    v = _vector(conf_dir, "focal_shift_conv_ape_112")
    model = locvit.from_official(v["official_class"], v["constructor_kwargs"])
    out = checkpoint_filter_fn(dict(v["state_dict"]), model)
    sd = v["state_dict"]
    assert torch.equal(out["layers.1.downsample.proj.weight"], sd["layers.0.downsample.proj.weight"])
    assert torch.equal(out["layers.0.blocks.0.attn.pool_layers.0.weight"], sd["layers.0.blocks.0.pool_layers.0.weight"])
    assert "layers.0.blocks.1.attn_mask" in sd and not any(k.endswith("attn_mask") for k in out)
    assert not any("relative_position_index" in k or "valid_ind" in k for k in out)
    assert set(out) == set(model.state_dict())
    ours = _randomize(model).state_dict()  # locvit's own format passes through unchanged
    again = checkpoint_filter_fn(dict(ours), model)
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_v2_loads_the_official_selection_and_ranks_ties_stably(conf_dir):
    v = _vector(conf_dir, "focalv2_topk_112")
    model = locvit.from_official(v["official_class"], v["constructor_kwargs"], state_dict=v["state_dict"])
    fresh = locvit.from_official(v["official_class"], v["constructor_kwargs"]).state_dict()
    ours = model.state_dict()
    for key, official in v["state_dict"].items():
        if "topk_cloest_indice_" not in key:
            continue
        mine = key.replace("topk_cloest_indice_", "topk_index_")
        assert torch.equal(ours[mine], official)  # the loaded selection is the one used
        # a fresh model's own selection picks keys at the same distances from the window centre (the centre query
        # slot's displacement); among equidistant tokens it may pick others
        coords = v["state_dict"][key.replace("indice", "coords")]
        centre = coords.shape[1] // 2
        d_official = coords[:, centre].pow(2).sum(-1).sort(-1).values
        d_ours = fresh[mine.replace("topk_index_", "topk_coords_")][:, centre].pow(2).sum(-1).sort(-1).values
        assert torch.equal(d_official, d_ours)
    index, rel = nearest_keys((2, 2), (14, 14), 10)
    d = rel.pow(2).sum(-1)
    assert (d[:, 1:] >= d[:, :-1]).all()  # sorted by distance, ties by key index
    ties = d[0] == d[0, 1]
    assert (index[0][ties].diff() > 0).all()


def test_v2_sizes_and_buffers():
    a = _randomize(FocalTransformerV2(img_size=224, use_conv_embed=True, focal_topk=24, **TINY))
    x = torch.randn(1, 3, 448, 448)  # the same block geometry as 224 (every stage map a multiple of 7)
    with torch.no_grad():
        at_448 = a(x)  # selections for 448 computed (stable ranking) and cached
        b = copy.deepcopy(a)
        b.set_input_size(448)
        assert b.layers[0].blocks[0].attn.topk_index_0.shape == (256, 24)
        torch.testing.assert_close(b(x), at_448)
        c = FocalTransformerV2(img_size=448, use_conv_embed=True, focal_topk=24, **TINY).eval()
        locvit.load_checkpoint(c, a.state_dict())  # buffers of another grid are replaced by the model's own
        torch.testing.assert_close(c(x), at_448)
        odd = a(torch.randn(1, 3, 100, 150))  # the official v2 cannot pad; locvit pads like v1
    assert odd.shape == (1, 5) and torch.isfinite(odd).all()
