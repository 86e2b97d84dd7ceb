"""PVT v1 / LocalViT-PVT and LocalViT-Swin: the mechanisms' own properties (class-token placement and bypass,
position-embedding resampling, the official single-window rule, masked padding, sizes, checkpoint conversion)."""
import pytest
import timm
import torch
import torch.nn.functional as F

import locvit
from locvit.layers.windows import shifted_window_mask, window_partition
from locvit.models.localvit_swin import LocalViTSwin
from locvit.models.pvt import PyramidVisionTransformer, checkpoint_filter_fn

TINY_PVT = dict(patch_size=4, embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 2, 4), mlp_ratios=(4, 4, 2, 2),
                depths=(1, 1, 1, 2), sr_ratios=(8, 4, 2, 1), num_classes=5)
TINY_SWIN = dict(patch_size=4, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4,
                 mlp_ratio=2.0, num_classes=5, drop_path_rate=0.0)


def _pvt(locality=True, **kw):
    torch.manual_seed(0)
    model = PyramidVisionTransformer(**dict(TINY_PVT, locality=locality, **kw))
    _perturb(model)
    return model.eval()


def _swin(**kw):
    torch.manual_seed(0)
    model = LocalViTSwin(**dict(TINY_SWIN, **kw))
    _perturb(model)
    return model.eval()


def _perturb(model):
    """Move BN statistics and affine params away from their identity init so that mistakes show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and ("running_var" in name or name.endswith("norm.weight")):
                t.copy_(1 + 0.3 * torch.rand(t.shape, generator=g))
            elif t.is_floating_point() and ("running_mean" in name or name.endswith(".bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))


def _official_pvt_state_dict(model):
    """Our state dict under the official key names (patch_embed{i}, pos_embed{i}, block{i}.{j})."""
    out = {}
    for k, v in model.state_dict().items():
        parts = k.split(".")
        if parts[0] == "stages":
            i = int(parts[1]) + 1
            if parts[2] == "blocks":
                k = f"block{i}." + ".".join(parts[3:])
            else:
                k = f"{parts[2]}{i}" + ("." + ".".join(parts[3:]) if len(parts) > 3 else "")
        out[k] = v.clone()
    return out


# --- PVT ---------------------------------------------------------------------------------------------------------
def test_pvt_class_token_only_in_last_stage():
    model = _pvt()
    grids = [(56, 56), (28, 28), (14, 14), (7, 7)]
    for stage, (h, w) in zip(model.stages, grids):
        assert stage.pos_embed.shape[1] == h * w + stage.num_prefix_tokens
    assert [s.num_prefix_tokens for s in model.stages] == [0, 0, 0, 1]
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 1 + 49, 32)


def test_pvt_locality_ffn_leaves_class_token_alone():
    model = _pvt()
    blk = model.stages[3].blocks[0]
    x = torch.randn(2, 1 + 12, 32)
    with torch.no_grad():
        after_attn = x + blk.attn(blk.norm1(x), (3, 4))
        out = blk(x, (3, 4), num_prefix=1)
    torch.testing.assert_close(out[:, 0], after_attn[:, 0], rtol=0, atol=0)
    assert not torch.allclose(out[:, 1:], after_attn[:, 1:])


def test_pvt_non_square_input_resamples_pos_embeds_like_set_input_size():
    model = _pvt()
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        on_the_fly = model(x)
        model.set_input_size((160, 224))
        assert [tuple(s.grid_size) for s in model.stages] == [(40, 56), (20, 28), (10, 14), (5, 7)]
        permanent = model(x)
    torch.testing.assert_close(on_the_fly, permanent)


def test_pvt_checkpoint_filter_maps_official_keys_and_resamples():
    src = _pvt()
    official = _official_pvt_state_dict(src)
    assert "block4.1.conv.conv.6.fc.0.weight" in official and "pos_embed4" in official
    # same size: a strict load reproduces the model exactly
    dst = PyramidVisionTransformer(**dict(TINY_PVT, locality=True)).eval()
    locvit.load_checkpoint(dst, official, strict=True)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    # another size: position embeddings resampled as set_input_size does
    big = PyramidVisionTransformer(**dict(TINY_PVT, locality=True, img_size=256)).eval()
    locvit.load_checkpoint(big, official, strict=True)
    src.set_input_size(256)
    for a, b in zip(big.stages, src.stages):
        torch.testing.assert_close(a.pos_embed, b.pos_embed)
    # our own keys pass through unchanged
    ours = src.state_dict()
    assert checkpoint_filter_fn(dict(ours), src).keys() == ours.keys()


def test_pvt_official_class_token_rule():
    # upstream splits a class token off wherever sr_ratio == 1: only valid when that is exactly the last stage
    with pytest.raises(ValueError, match="official_cls_split"):
        PyramidVisionTransformer(**dict(TINY_PVT, locality=True, sr_ratios=(1, 1, 1, 1)))
    model = PyramidVisionTransformer(**dict(TINY_PVT, locality=True, sr_ratios=(1, 1, 1, 1),
                                            official_cls_split=False)).eval()
    plain = PyramidVisionTransformer(**dict(TINY_PVT, locality=False, sr_ratios=(1, 1, 1, 1))).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        assert plain(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match="sr_ratio must be 1"):
        PyramidVisionTransformer(**dict(TINY_PVT, sr_ratios=(8, 4, 2, 2)))


def test_pvt_size_limits():
    model = _pvt()
    assert model.min_img_size == 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 45)).shape == (1, 5)
        with pytest.raises(ValueError, match="at least 32x32"):
            model(torch.randn(1, 3, 31, 64))


def test_pvt_baseline_block_layout():
    model = _pvt(locality=False)
    keys = model.state_dict().keys()
    assert "stages.0.blocks.0.mlp.fc1.weight" in keys and "stages.0.blocks.0.norm2.weight" in keys
    assert "stages.0.blocks.0.attn.sr.weight" in keys and "stages.3.blocks.0.attn.sr.weight" not in keys
    # eps: block / final norms 1e-6, patch-embedding and reduction norms 1e-5 (upstream's plain LayerNorm)
    assert model.norm.eps == 1e-6 and model.stages[0].blocks[0].norm1.eps == 1e-6
    assert model.stages[0].patch_embed.norm.eps == 1e-5 and model.stages[0].blocks[0].attn.norm.eps == 1e-5


# --- Swin --------------------------------------------------------------------------------------------------------
def test_swin_names_and_kwargs():
    model = locvit.create_model("localvit_swin_tiny_patch4_window7_224", num_classes=10, drop_path_rate=0.3)
    assert isinstance(model, LocalViTSwin)
    assert model.get_classifier().out_features == 10
    assert model.layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.3)
    # the official Swin-T name keeps resolving to timm's own model
    assert type(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)).__module__.startswith("timm.")


def test_swin_official_single_window_rule():
    model = LocalViTSwin(**dict(TINY_SWIN, img_size=128))  # maps 32, 16, 8, 4 with window 4
    geo = [[(b.window_size, b.shift_size) for b in stage.blocks] for stage in model.layers]
    assert geo == [[(4, 0), (4, 2)]] * 3 + [[(4, 0), (4, 0)]]
    model = LocalViTSwin(**dict(TINY_SWIN, img_size=96))  # last map 3x3 < window: one 3x3 window, no shift
    assert [(b.window_size, b.shift_size) for b in model.layers[3].blocks] == [(3, 0), (3, 0)]
    assert model.layers[3].blocks[0].attn.relative_position_bias_table.shape[0] == 5 * 5


def test_shifted_window_mask():
    assert shifted_window_mask(8, 8, 4, 0) is None
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region
    assert ((mask == 0) | (mask == -100)).all()
    # padding: keys outside the 6x7 map are masked for every query; inside a window nothing else is
    mask = shifted_window_mask(6, 7, 4, 0)
    pad = torch.ones(1, 8, 8, 1)
    pad[:, :6, :7] = 0
    pad = window_partition(pad, 4).flatten(1).bool()
    assert (mask.masked_select(pad[:, None, :].expand_as(mask)) == -100).all()
    assert (mask.masked_select(~pad[:, None, :].expand_as(mask)) == 0).all()


def test_swin_other_size_equals_model_built_there():
    """At sizes whose stage maps are window multiples the on-the-fly model is the one upstream builds there."""
    small = _swin(img_size=128)
    big = LocalViTSwin(**dict(TINY_SWIN, img_size=256)).eval()
    locvit.load_checkpoint(big, small.state_dict(), strict=True)
    assert big.layers[3].blocks[1].shift_size == 2 and small.layers[3].blocks[1].shift_size == 0
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(small(x), big(x), rtol=0, atol=1e-6)


def test_swin_set_input_size_equals_loading_into_model_built_there():
    src = _swin(img_size=256)
    ref = LocalViTSwin(**dict(TINY_SWIN, img_size=96)).eval()  # last stage clamps to a 3x3 window
    locvit.load_checkpoint(ref, src.state_dict(), strict=True)  # the filter resizes that table
    src.set_input_size(96)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(src(x), ref(x))


def test_swin_padding_never_leaks(monkeypatch):
    """Maps that are not window multiples are padded; the padded keys are masked, so whatever the padding holds
    leaves the output unchanged."""
    model = _swin()
    x = torch.randn(2, 3, 96, 160)  # maps 24x40 .. 3x5: window padding everywhere, even maps for merging
    with torch.no_grad():
        ref = model(x)
        pad = F.pad

        def pad_with_garbage(t, p, mode="constant", value=None):
            return pad(t, p, mode=mode, value=7.0) if mode == "constant" else pad(t, p, mode=mode)

        monkeypatch.setattr(torch.nn.functional, "pad", pad_with_garbage)
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


# --- both pyramid hosts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["localvit_pvt_tiny", "localvit_swin_tiny"])
def test_features_at_detection_sizes(name):
    model = timm.create_model(name, features_only=True, embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 2, 4)) \
        if "pvt" in name else timm.create_model(name, features_only=True, embed_dim=8, num_heads=(1, 1, 2, 2))
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    H, W = 200, 304  # 800 x 1216 scaled down
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, H, W))
    for t, r, c in zip(outs, model.feature_info.reduction(), model.feature_info.channels()):
        assert t.shape[1] == c
        assert t.shape[2:] in ((H // r, W // r), (-(-H // r), -(-W // r))), (t.shape, r)


@pytest.mark.parametrize("build", [_pvt, _swin])
def test_parameter_groups_for_layer_decay(build):
    from timm.models import group_parameters

    model = build()
    fine = group_parameters(model, model.group_matcher(coarse=False))
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, four stages, head and final norm
    assert len(fine) > len(coarse)
    names = [n for group in fine.values() for n in group]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


# --- the locality FFN's inference shortcuts (shared layer; the pyramid hosts are where they matter) -------------
@pytest.mark.parametrize("act,reduction,hw", [("hs+se", 8, (9, 10)), ("hs+se", 8, (3, 2)), ("relu6", 4, (5, 7)),
                                              ("hs+ecah", 4, (5, 7)), ("hs", 4, (4, 4))])
@pytest.mark.parametrize("layout", ["tokens", "nchw", "prefix"])
def test_locality_ffn_inference_paths_match_reference(act, reduction, hw, layout):
    from locvit.layers import LocalityFeedForward

    torch.manual_seed(0)
    C = 8
    lff = LocalityFeedForward(C, 4, act, reduction)
    _perturb(lff)
    for m in lff.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    lff.eval()
    H, W = hw
    tokens = torch.randn(2, 1 + H * W, C)
    if layout == "nchw":
        x = torch.randn(2, C, H, W)
    else:  # the channels-last views the hosts pass (a prefix token split off gives a batch stride of N + 1)
        x = tokens[:, (layout == "prefix"):].transpose(1, 2)[..., : H * W].reshape(2, C, H, W)
    ref = x + lff.conv(x)  # the plain Sequential: BN in eval, nothing folded or fused
    with torch.no_grad():
        fast = lff(x)  # fused / in-place path
        ref64 = (x.double() + lff.double().conv(x.double()))
        folded64 = lff(x.double())  # BN folded, no fusion (float64)
    grad_path = lff.float()(x)  # folded, autograd on, nothing in place
    torch.testing.assert_close(fast, ref.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_path, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(folded64, ref64, rtol=0, atol=1e-12)
    assert torch.equal(x, tokens[:, (layout == "prefix"):].transpose(1, 2)[..., : H * W].reshape(2, C, H, W)) \
        or layout == "nchw"  # the input is left untouched
