"""locvit.localize: LocalViT's locality feed-forward put into timm transformers.

The transform is proven by building the paper's hosts with it: the result has the registered LocalViT model's
state-dict keys and, with the same weights, its logits (eval and training mode)."""
import copy

import pytest
import timm
import torch

import locvit
from locvit.layers import LocalityFeedForward
from locvit.models.localize import LocalityError, localize, localized_blocks

SMALL = 64


def _same(ref, model, x, train=False):
    assert list(ref.state_dict()) and set(ref.state_dict()) == set(model.state_dict())
    model.load_state_dict(ref.state_dict())
    ref.train(train), model.train(train)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def _x(n=2, h=SMALL, w=SMALL, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- the paper's hosts, built by localize, equal the registered models -------------------------------------------
@pytest.mark.parametrize("train", [False, True])
def test_deit_host_equals_localvit_tiny(train):
    kw = dict(img_size=SMALL, depth=3)
    ref = locvit.create_model("localvit_tiny", **kw)
    model = localize(timm.create_model("deit_tiny_patch16_224", num_heads=4, **kw), reduction=192)
    _same(ref, model, _x(), train)


def test_deit_host_other_sizes_equal_localvit():
    """With timm's dynamic sizes the localized host resamples its position embedding as LocalViT does."""
    ref = locvit.create_model("localvit_small", img_size=SMALL, depth=2)
    host = timm.create_model("deit_small_patch16_224", num_heads=8, img_size=SMALL, depth=2, dynamic_img_size=True)
    _same(ref, localize(host, reduction=384), _x(1, 80, 48))


def test_swin_host_equals_localvit_swin():
    kw = dict(img_size=SMALL, embed_dim=32, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=4)
    ref = locvit.create_model("localvit_swin_tiny", **kw)
    model = localize(timm.create_model("swin_tiny_patch4_window7_224", **kw), reduction=lambda d: d // 4)
    _same(ref, model, _x())


def test_pvt_host_equals_localvit_pvt():
    kw = dict(img_size=SMALL, depths=(1, 1, 1, 1))
    _same(locvit.create_model("localvit_pvt_tiny", **kw), localize(locvit.create_model("pvt_tiny", **kw)), _x())


def test_tnt_host_equals_localvit_tnt():
    kw = dict(img_size=SMALL, depth=2)
    ref = locvit.create_model("localvit_tnt_tiny", **kw)
    _same(ref, localize(locvit.create_model("tnt_t_patch16_224", **kw)), _x())


def test_t2t_host_equals_localvit_t2t():
    kw = dict(img_size=SMALL, depth=2)
    ref = locvit.create_model("localvit_t2t_vit_7", **kw)
    _same(ref, localize(locvit.create_model("t2t_vit_7", **kw), reduction=128), _x())


# --- weights, options, placement ---------------------------------------------------------------------------------
def test_mlp_weights_carried_over_exactly():
    host = timm.create_model("vit_tiny_patch16_224", img_size=SMALL, depth=2)
    mlps = [copy.deepcopy(b.mlp) for b in host.blocks]
    localize(host, act="hs", expand_ratio=None)
    for blk, mlp in zip(host.blocks, mlps):
        conv = blk.conv.conv
        torch.testing.assert_close(conv[0].weight[:, :, 0, 0], mlp.fc1.weight, rtol=0, atol=0)
        torch.testing.assert_close(conv[1].bias, mlp.fc1.bias, rtol=0, atol=0)
        torch.testing.assert_close(conv[-2].weight[:, :, 0, 0], mlp.fc2.weight, rtol=0, atol=0)
        torch.testing.assert_close(conv[-1].bias, mlp.fc2.bias, rtol=0, atol=0)
        dw = conv[3].weight
        assert dw[:, 0, 1, 1].eq(1).all() and dw.sum().item() == dw.shape[0]  # starts as the identity
        assert "mlp" not in blk._modules and not list(blk.norm2.parameters())


def test_pvt_v2_depthwise_conv_carried():
    host = timm.create_model("pvt_v2_b0")
    dws = [b.mlp.dwconv.weight.clone() for s in host.stages for b in s.blocks]
    localize(host)
    got = [b.conv.conv[3].weight for s in host.stages for b in s.blocks]
    for a, b in zip(dws, got):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("blocks, expected", [
    ("all", list(range(12))), ("low", [0, 1, 2, 3]), ("middle", [4, 5, 6, 7]), ("high", [8, 9, 10, 11]),
    ("low+middle", list(range(8))), ([0, -1], [0, 11]),
])
def test_placements(blocks, expected):
    host = timm.create_model("vit_tiny_patch16_224", img_size=32)
    localize(host, blocks=blocks, check=False)
    got = [i for i, b in enumerate(host.blocks) if isinstance(getattr(b, "conv", None), LocalityFeedForward)]
    assert got == expected
    assert all("mlp" in b._modules for i, b in enumerate(host.blocks) if i not in expected)


@pytest.mark.parametrize("act, se_hidden", [("relu6", None), ("hs", None), ("hs+se", 2), ("hs+eca", None), (4, None)])
def test_activation_and_gate_options(act, se_hidden):
    host = localize(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1), act=act, expand_ratio=2)
    conv = host.blocks[0].conv.conv
    assert conv[0].out_channels == 2 * 192
    if se_hidden:
        assert conv[6].fc[0].out_features == se_hidden  # reduction 'dim': hidden / width = expand units
    host(torch.randn(1, 3, 32, 32)).sum().backward()


# --- timm families: forward and backward -------------------------------------------------------------------------
FAMILIES = {
    "deit_tiny_distilled_patch16_224": dict(img_size=32, depth=2),            # two prefix tokens
    "vit_tiny_patch16_224": dict(img_size=32, depth=2, reg_tokens=2, dynamic_img_size=True),  # registers
    "beit_base_patch16_224": dict(img_size=32, depth=1, embed_dim=64, num_heads=2),   # layer scale gamma
    "swin_tiny_patch4_window7_224": dict(img_size=32, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                                         window_size=2),
    "pvt_v2_b0": dict(depths=(1, 1, 1, 1)),
    "twins_svt_small": dict(img_size=32, depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8)),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_timm_family_forward_backward(name):
    torch.manual_seed(0)
    model = localize(timm.create_model(name, num_classes=5, **FAMILIES[name]))
    assert localized_blocks(model)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    for blk in localized_blocks(model):
        assert all(p.grad is not None for p in blk.conv.parameters())
    if name == "vit_tiny_patch16_224":  # dynamic sizes: another grid in the next call
        assert model(torch.randn(1, 3, 48, 32)).shape == (1, 5)


def test_state_dict_round_trip_and_deepcopy():
    model = localize(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2))
    clone = copy.deepcopy(model).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model.eval()(x))
    fresh = localize(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2))
    fresh.load_state_dict(model.state_dict())


# --- refusals ----------------------------------------------------------------------------------------------------
def test_refuses_model_without_transformer_blocks():
    with pytest.raises(LocalityError, match="no transformer block"):
        localize(timm.create_model("resnet10t"))


def test_refuses_gated_mlp():
    from timm.layers import SwiGLUPacked

    host = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, mlp_layer=SwiGLUPacked)
    with pytest.raises(LocalityError, match="cannot map"):
        localize(host)


def test_refuses_twice_and_bad_options():
    model = localize(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1))
    with pytest.raises(LocalityError, match="already"):
        localize(model)
    with pytest.raises(ValueError, match="blocks must be"):
        localize(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1), blocks="top")
    with pytest.raises(ValueError, match="reduction"):
        localize(timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1), reduction=0)



def test_refusal_leaves_the_model_unchanged():
    """CaiT's class-attention blocks get the class token alone, which does not lay out on the token grid: localize
    refuses them after checking every block, before converting any, so the model keeps its weights and runs as
    before; the error names the blocks and the ``blocks`` that do map, and localizing those works."""
    def cait():
        torch.manual_seed(0)
        return timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                 depth_token_only=1).eval()

    model, x = cait(), _x(h=32, w=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(x)
    with pytest.raises(LocalityError, match=r"left unchanged: blocks_token_only\.0 \(LayerScaleBlockClassAttn\): "
                                            r"1 tokens .* 4x4 .*blocks=range\(0, 2\)"):
        localize(model)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not localized_blocks(model) and not model.blocks[0]._forward_pre_hooks
    assert not model.patch_embed._forward_hooks
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)
    # what the error suggests converts the self-attention blocks and leaves the class-attention ones
    fixed = localize(cait(), blocks=range(0, 2))
    assert localized_blocks(fixed) == list(fixed.blocks)
    assert fixed(x).shape == (2, 1000)

# --- registered examples: timm host weights, one command ---------------------------------------------------------
def test_registered_example_loads_the_host_checkpoint(tmp_path):
    host = timm.create_model("vit_small_patch16_224", depth=2)
    path = tmp_path / "vit_s.pth"
    torch.save(host.state_dict(), path)
    model = timm.create_model("localvit_vit_small_patch16_224", pretrained=True, num_classes=10, depth=2,
                              pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.blocks[1].conv.conv[0].weight[:, :, 0, 0], host.blocks[1].mlp.fc1.weight)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, host.blocks[0].attn.qkv.weight)
    assert model.head.out_features == 10
    assert model(torch.randn(1, 3, 40, 56)).shape == (1, 10)  # any size (dynamic host)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 32, 32))
