"""RegionViT: the mechanism's own properties (index map, masks and their quirk, padding, layouts), checkpoint
conversion and window-size resizing, detection features. Small configurations keep it fast."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import locvit
from locvit.layers.attention import explicit_attention
from locvit.models.regionvit import R2LBlock, RegionalStem, checkpoint_filter_fn, r2l_window_mask, rel_pos_index
from locvit.weights.checkpoint import CheckpointError

SMALL = dict(embed_dim=(16, 32, 64, 64), num_heads=(2, 2, 4, 4), depth=(2, 1, 2, 1), num_classes=5)


def small_model(**kw):
    torch.manual_seed(0)
    return locvit.create_model("regionvit_tiny", **{**SMALL, **kw}).eval()


def perturb(model, scale=0.2):
    """Move every parameter away from its init so that norms, biases and tables all matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def to_official(sd):
    """Our state dict in the official key layout (regional stem named cls_token, the projection saved twice as
    proj/proj_cls, blocks after it, 1xCx1x1 LayerNorm2d affines)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "region_embed":
            out["cls_token." + ".".join(parts[1:])] = v
        elif parts[0] == "patch_embed" and len(parts) == 4 and parts[2] in ("1", "4"):
            out[k] = v.reshape(1, -1, 1, 1)
        elif parts[0] == "stages":
            s, rest = parts[1], parts[2:]
            if rest[0] == "downsample":
                idx = {"norm": "0", "conv": "2"}[rest[1]]
                t = v.reshape(1, -1, 1, 1) if rest[1] == "norm" else v
                for name in ("proj", "proj_cls"):
                    out[f"layers.{s}.block.0.{name}.{idx}.{rest[2]}"] = t
            elif rest[0] == "blocks":
                out[f"layers.{s}.block.{int(rest[1]) + 1}." + ".".join(rest[2:])] = v
            elif rest[0] == "peg":
                out[f"layers.{s}.peg.weight"] = v
            elif rest[0] == "det_norm":
                out[f"norm{s}.{rest[1]}"] = v.reshape(1, -1, 1, 1)
        else:
            out[k] = v
    return out


# --- core op ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ws", [1, 2, 3, 7, 14])
def test_rel_pos_index_is_the_wrapped_half_window_offset(ws):
    span = 2 * ws - 1
    ref = torch.empty(ws * ws, ws * ws, dtype=torch.long)
    for qy in range(ws):
        for qx in range(ws):
            for ky in range(ws):
                for kx in range(ws):
                    ref[qy * ws + qx, ky * ws + kx] = ((ky - qy + ws // 2) % span) * span + (kx - qx + ws // 2) % span
    idx = rel_pos_index(ws)
    assert torch.equal(idx, ref)
    # every displacement gets its own slot and every slot is used: a permutation of the Swin table
    assert idx.unique().numel() == span * span
    if ws == 7:
        assert idx[0, 0] == 3 * 13 + 3 and idx[0, 6] == 3 * 13 + 9 and idx[6, 0] == 3 * 13 + 10  # wraps at -3


def _mask_reference(grid, pad, ws, corrected):
    Hr, Wr = grid
    pb, pr = pad
    n = ws * ws + 1

    def col_ok(t):
        return t == 0 or (t - 1) % ws < ws - pr

    def row_ok(t):
        return t == 0 or (t - 1) // ws < ws - pb

    out = torch.ones(Hr * Wr, n, n, dtype=torch.bool)
    for w in range(Hr * Wr):
        last_row, last_col = w // Wr == Hr - 1, w % Wr == Wr - 1
        for i in range(n):
            for j in range(n):
                right = col_ok(i) and col_ok(j)
                bottom = row_ok(i) and row_ok(j)
                if last_row and last_col:
                    out[w, i, j] = (right and bottom) if corrected else (bottom or right)
                elif last_col:
                    out[w, i, j] = right
                elif last_row:
                    out[w, i, j] = bottom
    return out


@pytest.mark.parametrize("corrected", [False, True])
@pytest.mark.parametrize("ws,grid,pad", [(3, (2, 2), (1, 2)), (2, (1, 3), (2, 1)), (3, (3, 1), (0, 2)),
                                         (3, (2, 3), (3, 0)), (2, (2, 2), (0, 1)), (3, (1, 1), (2, 2))])
def test_window_mask_rules(ws, grid, pad, corrected):
    assert torch.equal(r2l_window_mask(grid, pad, ws, corrected), _mask_reference(grid, pad, ws, corrected))


def test_bottom_right_mask_quirk():
    ws = 3
    official = r2l_window_mask((2, 2), (1, 1), ws)
    fixed = r2l_window_mask((2, 2), (1, 1), ws, corrected=True)
    br, tok = 3, lambda r, c: 1 + r * ws + c  # noqa: E731
    # a valid token sees a padded column of a valid row, and a valid column of the padded row, only in the
    # official bottom-right window
    assert official[br, tok(0, 0), tok(0, 2)] and official[br, tok(0, 0), tok(2, 0)]
    assert not fixed[br, tok(0, 0), tok(0, 2)] and not fixed[br, tok(0, 0), tok(2, 0)]
    # the other windows are the same in both modes, and padded columns are masked there
    assert torch.equal(official[:3], fixed[:3])
    assert not official[1, tok(0, 0), tok(0, 2)]
    # with no bottom padding the official bottom-right window is not masked at all
    assert r2l_window_mask((2, 2), (0, 1), ws)[3].all()


@pytest.mark.parametrize("corrected", [False, True])
def test_padded_tokens_leak_only_with_the_official_mask(corrected):
    torch.manual_seed(0)
    ws, grid, pad, C = 3, (2, 2), (1, 1), 8
    blk = perturb(R2LBlock(C, 2, ws)).eval().double()
    mask = r2l_window_mask(grid, pad, ws, corrected).unsqueeze(1)
    x = torch.randn(2 * 4, ws * ws + 1, C, dtype=torch.float64)
    # padded tokens: the last column of the right windows, the last row of the bottom windows
    pad_tok = torch.zeros(4, ws * ws + 1, dtype=torch.bool)
    pad_tok[[1, 3], 1 + ws - 1::ws] = True
    pad_tok[[2, 3], 1 + (ws - 1) * ws:] = True
    y = x.clone()
    y[pad_tok.repeat(2, 1)] += torch.randn_like(y[pad_tok.repeat(2, 1)])  # not a constant: LN would cancel it
    with torch.no_grad():
        a, b = blk(x, 4, mask), blk(y, 4, mask)
    valid = ~pad_tok.repeat(2, 1)
    same = torch.allclose(a[valid], b[valid], atol=1e-12)
    assert same == corrected


def test_regional_stem_symmetric_padding_and_extra_patch():
    stem = RegionalStem(1, 1, 28)
    with torch.no_grad():
        stem.proj.weight.fill_(1.0)
        stem.proj.bias.zero_()
    assert stem(torch.ones(1, 1, 224, 224)).shape[-2:] == (8, 8)
    assert stem(torch.ones(1, 1, 160, 200)).shape[-2:] == (6, 8)
    out = stem(torch.ones(1, 1, 224, 200))
    assert out.shape[-2:] == (9, 8)  # H divides but still gets a whole extra patch
    # H: 28 rows of padding, 14 on top; W: 24 columns, 12 on the left
    assert out[0, 0, 0, 0] == 14 * 16 and out[0, 0, 1, 1] == 28 * 28 and out[0, 0, -1, -1] == 14 * 16


# --- the model at any size --------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(224, 200), (160, 200), (97, 61), (32, 57), (1, 1)])
def test_any_size_features_are_cropped_to_the_true_size(size):
    model = perturb(small_model())
    H, W = size
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))  # regional-only last block == full block
        logits = model(x)
    assert torch.isfinite(logits).all() and logits.shape == (2, 5)
    for f, r, c in zip(feats, (4, 8, 16, 32), SMALL["embed_dim"]):
        assert f.shape == (2, c, math.ceil(H / r), math.ceil(W / r))


def test_fused_and_explicit_attention_agree_on_masked_windows():
    """The SDPA path (windows folded into heads, finfo.min added) equals the explicit one, fully masked rows
    included (224x200 pads a whole window row), in eval and with a learned bias under autograd."""
    model = perturb(small_model(window_size=7)).double()
    x = torch.randn(2, 3, 224, 200, dtype=torch.float64)
    with torch.no_grad():
        fused = model(x)
        with explicit_attention():
            explicit = model(x)
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-12)
    model.train()
    torch.testing.assert_close(model(x), fused, rtol=0, atol=1e-12)


def test_corrected_mask_changes_only_padded_inputs():
    model = perturb(small_model())
    fixed = small_model(corrected_mask=True)
    fixed.load_state_dict(model.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)  # no padding with ws 7 at 224
        torch.testing.assert_close(model(x), fixed(x))
        x = torch.randn(1, 3, 100, 130)
        assert not torch.allclose(model(x), fixed(x))


def test_masks_are_cached_by_shape():
    model = small_model()
    x = torch.randn(1, 3, 100, 130)
    with torch.no_grad():
        model(x)
        cached = {i: dict(s._masks) for i, s in enumerate(model.stages)}
        model(x)
        model(torch.randn(3, 3, 100, 130))  # the batch size is not part of the key
    for i, stage in enumerate(model.stages):
        assert stage._masks.keys() == cached[i].keys()
        assert all(stage._masks[k] is cached[i][k] for k in cached[i])
    assert any(stage._masks for stage in model.stages)
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert all(len(s._masks) == len(cached[i]) for i, s in enumerate(model.stages))  # unpadded: no mask


def test_input_validation():
    with pytest.raises(ValueError, match="at least"):
        small_model(patch_conv_type="1conv")(torch.randn(1, 3, 1, 8))
    with pytest.raises(ValueError, match="channels"):
        small_model()(torch.randn(1, 1, 32, 32))


# --- checkpoints ------------------------------------------------------------------------------------------------
def test_official_checkpoint_round_trip_and_shared_projection():
    src = perturb(small_model(peg=True))
    official = to_official(src.state_dict())
    assert "cls_token.proj.weight" in official and "layers.1.block.0.proj_cls.2.weight" in official
    dst = small_model(peg=True)
    report = locvit.load_checkpoint(dst, {"model": official})
    assert report.exact
    x = torch.randn(1, 3, 90, 70)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    official["layers.2.block.0.proj_cls.2.bias"] = official["layers.2.block.0.proj_cls.2.bias"] + 1
    with pytest.raises(CheckpointError, match="proj_cls"):
        locvit.load_checkpoint(small_model(peg=True), official)


def test_detectron2_checkpoint_and_new_detection_norms():
    src = perturb(small_model(det_norm=True))
    d2 = {"backbone.bottom_up.model." + k: v for k, v in to_official(src.state_dict()).items()
          if not k.startswith(("norm.", "head."))}
    d2["backbone.fpn_lateral2.weight"] = torch.zeros(4, 16, 1, 1)
    dst = small_model(det_norm=True)
    dst.prune_intermediate_layers((0, 1, 2, 3), prune_norm=True)
    assert locvit.load_checkpoint(dst, d2).exact
    torch.testing.assert_close(dst.stages[3].det_norm.bias, src.stages[3].det_norm.bias)
    # an ImageNet checkpoint into a det_norm model: the detection norms start fresh (unit weight, zero bias)
    plain = perturb(small_model())
    det = small_model(det_norm=True)
    assert locvit.load_checkpoint(det, to_official(plain.state_dict())).exact
    assert (det.stages[0].det_norm.weight == 1).all() and (det.stages[0].det_norm.bias == 0).all()


def test_window_size_conversion_ws7_to_ws14_loads_and_runs():
    src = perturb(small_model(window_size=7))
    official = to_official(src.state_dict())
    dst = small_model(window_size=14)
    assert locvit.load_checkpoint(dst, official).exact
    # bicubic resize of the stem kernel and of each table in its stored (wrapped) order, as the authors' tool does
    k = official["cls_token.proj.weight"]
    torch.testing.assert_close(dst.region_embed.proj.weight, F.interpolate(k, size=(56, 56), mode="bicubic"))
    t = official["layers.2.block.2.attn.rel_pos"]
    ref = F.interpolate(t.reshape(1, -1, 13, 13), size=(27, 27), mode="bicubic").reshape(t.shape[0], -1)
    torch.testing.assert_close(dst.stages[2].blocks[1].attn.rel_pos, ref)
    with torch.no_grad():
        out = dst(torch.randn(1, 3, 224, 224))
    assert torch.isfinite(out).all()


def test_window_size_conversion_ws7_to_ws7_is_identity():
    src = perturb(small_model(window_size=7))
    official = to_official(src.state_dict())
    converted = checkpoint_filter_fn(dict(official), small_model(window_size=7))
    ours = src.state_dict()
    assert converted.keys() == ours.keys()
    assert all(torch.equal(converted[k], ours[k]) for k in ours)


def test_window_size_12_for_384_inputs():
    src = perturb(small_model(window_size=7))
    dst = small_model(window_size=12)
    assert locvit.load_checkpoint(dst, to_official(src.state_dict())).exact
    with torch.no_grad():
        feats = dst.forward_intermediates(torch.randn(1, 3, 384, 384), intermediates_only=True)
    assert [f.shape[-1] for f in feats] == [96, 48, 24, 12]
    assert dst.region_embed(torch.randn(1, 3, 384, 384)).shape[-2:] == (8, 8)


# --- detection features -----------------------------------------------------------------------------------------
def test_det_norm_output_feeds_the_next_stage():
    model = perturb(small_model(det_norm=True))
    with torch.no_grad():
        for s in model.stages:
            s.det_norm.weight.fill_(1.0)
            s.det_norm.bias.zero_()
    seen = {}

    def grab(module, args):
        seen["local"] = args[1]

    model.stages[1].register_forward_pre_hook(grab)
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(2, 3, 75, 101), intermediates_only=True)
    assert torch.equal(seen["local"], feats[0])
    torch.testing.assert_close(feats[0].mean(1), torch.zeros_like(feats[0][:, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[0].var(1, unbiased=False), torch.ones_like(feats[0][:, 0]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("size", [(200, 304), (203, 157)])  # 800x1216 scaled down by 4, and an odd size
def test_features_only_at_detection_like_sizes(size):
    torch.manual_seed(0)
    model = timm.create_model("regionvit_tiny", features_only=True, det_norm=True,
                              **{k: v for k, v in SMALL.items() if k != "num_classes"}).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    H, W = size
    assert [tuple(o.shape[-2:]) for o in outs] == [(math.ceil(H / r), math.ceil(W / r)) for r in (4, 8, 16, 32)]
    assert [o.shape[1] for o in outs] == list(SMALL["embed_dim"])


def test_det_norm_last_stage_is_the_only_unused_parameter():
    model = small_model(det_norm=True).train()
    model(torch.randn(2, 3, 64, 80)).sum().backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad == set(model.unused_parameters) == {"stages.3.det_norm.weight", "stages.3.det_norm.bias"}


# --- registry ---------------------------------------------------------------------------------------------------
def test_official_names_and_tiny_w14():
    for alias, name in [("regionvit_small_224", "regionvit_small"), ("regionvit_base_w14_peg_224",
                                                                     "regionvit_base_w14_peg"),
                        ("regionvit_tiny_w14_224", "regionvit_tiny_w14")]:
        assert locvit.resolve_alias(alias) == name
    model = locvit.create_model("regionvit_tiny_w14_224")
    # RegionViT-Ti (13,842,676) + the 56x56 regional kernel (64*3*(56²-28²)) + 27² instead of 13² tables for the
    # 2*2 + 2*4 + 8*8 + 2*16 head-blocks
    assert sum(p.numel() for p in model.parameters()) == 13_842_676 + 64 * 3 * (56**2 - 28**2) + 108 * (27**2 - 13**2)
    assert model.window_size == (14, 14, 14, 14) and not model.pretrained_cfg.get("origin_url")
