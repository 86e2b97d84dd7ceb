"""T2T-ViT, LocalViT-T2T and LocalViT-TNT: the mechanisms' own properties (soft-split grids, performer attention,
frozen tensors, the pixel embedding, size handling, checkpoint resizing, the TNT naming table)."""
import math

import pytest
import timm
import torch
from torch import nn

import locvit
from conftest import conformance_dir
from locvit.models.t2t import PerformerLayer, T2TViT, sinusoid_table, t2t_grid
from locvit.models.tnt import LocalViTTNT, PixelEmbed, TNTAttention

T2T_TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, token_dim=16, num_classes=5)
TNT_TINY = dict(embed_dim=24, in_dim=8, depth=2, num_heads=2, in_num_head=2, num_classes=5)


def _t2t(**kw):
    return T2TViT(**dict(T2T_TINY, **kw)).eval()


def _tnt(**kw):
    return LocalViTTNT(**dict(TNT_TINY, **kw)).eval()


# --- T2T ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(224, 224), (3, 3), (37, 90), (100, 152), (17, 250)])
def test_t2t_grid_matches_unfold(size):
    x = torch.zeros(1, 1, *size)
    for (k, s, p), g in zip(((7, 4, 2), (3, 2, 1), (3, 2, 1)), t2t_grid(size)):
        assert nn.functional.unfold(x, k, padding=p, stride=s).shape[-1] == g[0] * g[1]
        x = torch.zeros(1, 1, *g)
    assert t2t_grid((224, 224)) == [(56, 56), (28, 28), (14, 14)]


def test_sinusoid_table():
    t = sinusoid_table(5, 6)
    assert t.shape == (1, 5, 6) and t.dtype == torch.float32
    for pos in range(5):
        for j in range(6):
            angle = pos / 10000 ** (2 * (j // 2) / 6)
            assert t[0, pos, j].item() == pytest.approx(math.sin(angle) if j % 2 == 0 else math.cos(angle), abs=1e-7)


@pytest.mark.parametrize("locality", [False, True])
def test_performer_is_linearised_kernel_attention(locality):
    """The O(T) performer equals the explicit T x T kernel form phi(q) phi(k)^T v / rowsum, skip through v."""
    torch.manual_seed(0)
    layer = PerformerLayer(12, 8, locality=locality).eval()
    x = torch.randn(2, 3 * 4, 12)
    xn = layer.norm1(x)
    k, q, v = layer.kqv(xn).split(8, dim=-1)

    def phi(t):
        return torch.exp(t @ layer.w.t() - (t * t).sum(-1, keepdim=True) / 2) / math.sqrt(layer.m)

    kernel = phi(q) @ phi(k).transpose(1, 2)
    ref = v + layer.proj((kernel @ v) / (kernel.sum(-1, keepdim=True) + 1e-8))
    if locality:
        ref = layer.conv(ref.transpose(1, 2).reshape(2, 8, 3, 4)).flatten(2).transpose(1, 2)
    else:
        ref = ref + layer.mlp(layer.norm2(ref))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, (3, 4)), ref, atol=1e-5, rtol=1e-5)
    assert layer.m == 4 and not layer.w.requires_grad


def test_performer_w_is_loaded_not_regenerated():
    torch.manual_seed(1)
    a = _t2t(locality=True)
    torch.manual_seed(2)
    b = _t2t(locality=True)
    w = "tokens_to_token.attention1.w"
    assert w in a.state_dict() and not torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not a.pos_embed.requires_grad and "pos_embed" in a.state_dict()
    locvit.load_checkpoint(b, a.state_dict())
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_t2t_runs_in_float64_and_low_precision():
    torch.manual_seed(0)
    m = _t2t(locality=True)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        ref = m(x)
        out64 = m.double()(x.double())
        assert out64.dtype == torch.float64
        torch.testing.assert_close(out64.float(), ref, atol=1e-5, rtol=1e-5)
        out16 = m.float().bfloat16()(x.bfloat16())
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()


def test_t2t_quirks_and_scales():
    m = _t2t(tokens_type="transformer")
    assert m.tokens_to_token.attention1.attn.scale == 147 ** -0.5  # input width, not head width (64)
    assert m.tokens_to_token.attention2.attn.scale == (16 * 9) ** -0.5
    assert m.blocks[0].attn.scale == 16 ** -0.5
    local = _t2t(locality=True, reduction=8)
    unused = {f"tokens_to_token.attention{i}.norm2.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert unused <= set(local.official_parameter_buffers) and unused <= set(local.state_dict())
    blk = local.blocks[0]
    assert not hasattr(blk, "norm2") and blk.conv.conv.part("gate").fc[0].out_features == 64 // 8  # hidden 2 * 32
    perf = local.tokens_to_token.attention1.conv.conv
    assert len(perf) == 8 and isinstance(perf[2], nn.Hardswish)  # expand 1, h_swish, no SE


@pytest.mark.parametrize("name,scale", [("t2t_vit_7", 256 ** -0.5), ("t2t_vit_14_wide", 512 ** -0.5),
                                        ("localvit_t2t_vit_7", None)])
def test_legacy_qk_scale_with_pretrained(tmp_path, name, scale):
    small = dict(depth=1, num_classes=3)
    file = tmp_path / "w.pth"
    torch.save({"model": locvit.create_model(name, **small).state_dict()}, file)
    m = locvit.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)), **small)
    head_dim = m.embed_dim // m.blocks[0].attn.num_heads
    assert m.blocks[0].attn.scale == (scale or head_dim ** -0.5)
    m = locvit.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file)),
                            legacy_qk_scale=False, **small)
    assert m.blocks[0].attn.scale == head_dim ** -0.5
    m = locvit.create_model(name, legacy_qk_scale=True, **small)
    assert m.blocks[0].attn.scale == (scale or head_dim ** -0.5)
    assert locvit.create_model(name, **small).blocks[0].attn.scale == head_dim ** -0.5


@pytest.mark.parametrize("family", ["t2t", "tnt"])
def test_other_sizes_set_input_size_and_checkpoint_resize(family):
    torch.manual_seed(0)
    build = _t2t if family == "t2t" else _tnt
    pos = "pos_embed" if family == "t2t" else "patch_pos"
    m = build(img_size=64)
    x = torch.randn(2, 3, 80, 112)  # 5x7 patches instead of 4x4
    with torch.no_grad():
        on_the_fly = m(x)
        m.set_input_size((80, 112))
        assert getattr(m, pos).shape[1] == 1 + 5 * 7 and m.grid_size == (5, 7)
        torch.testing.assert_close(m(x), on_the_fly, atol=0, rtol=0)
    # a square checkpoint (official: 224) loads into a model built at another size through the filter
    big = build(img_size=96)
    locvit.load_checkpoint(big, build(img_size=64).state_dict())
    assert getattr(big, pos).shape[1] == 1 + 6 * 6
    assert getattr(big, pos).requires_grad == (family == "tnt")


@pytest.mark.parametrize("family,too_small,smallest", [("t2t", 2, 3), ("tnt", 12, 13)])
def test_size_limits(family, too_small, smallest):
    m = _t2t() if family == "t2t" else _tnt()
    with pytest.raises(ValueError, match=f"at least {smallest}x{smallest}"):
        m(torch.randn(1, 3, too_small, 40))
    with torch.no_grad():
        assert m(torch.randn(1, 3, smallest, smallest + 5)).shape == (1, 5)


@pytest.mark.parametrize("name", ["localvit_t2t_vit_7", "localvit_tnt_tiny"])
def test_features_at_detection_like_size(name):
    """800x1216 scaled down by 8: feature maps follow the real grid (non-square, not multiples of 16)."""
    H, W = 100, 152
    m = timm.create_model(name, features_only=True, depth=3).eval()
    with torch.no_grad():
        feats = m(torch.randn(1, 3, H, W))
    grid = t2t_grid((H, W))[-1] if "t2t" in name else PixelEmbed(16, 3, 8, 4).grid((H, W))
    assert len(feats) == 3 and all(f.shape[2:] == grid for f in feats)
    assert grid == ((7, 10) if "t2t" in name else (6, 9))


# --- TNT ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (63, 80), (70, 50)])
def test_pixel_embed_matches_unfold_layout(size):
    """Same tokens as upstream's conv -> Unfold(4, 4) -> (B*N, C, 4, 4) + pos -> (B*N, 16, C)."""
    torch.manual_seed(0)
    pe = PixelEmbed(16, 3, 8, 4)
    pos = torch.randn(1, 8, 4, 4)
    x = torch.randn(2, 3, *size)
    out, (gh, gw) = pe(x, pos)
    y = pe.proj(x)
    assert (gh, gw) == (y.shape[2] // 4, y.shape[3] // 4) == (math.ceil(size[0] / 4) // 4, math.ceil(size[1] / 4) // 4)
    y = nn.functional.unfold(y, 4, stride=4).transpose(1, 2).reshape(2 * gh * gw, 8, 4, 4) + pos
    torch.testing.assert_close(out, y.reshape(2 * gh * gw, 8, 16).transpose(1, 2))


def test_tnt_structure():
    m = locvit.create_model("localvit_tnt_tiny")
    blk = m.blocks[0]
    assert blk.conv.conv.part("gate").fc[0].out_features == 4  # reduction = embed_dim: 4 SE units
    assert blk.mlp_in.fc1.out_features == 48 and isinstance(blk.mlp_in.act, nn.GELU)  # inner MLP unchanged
    assert not hasattr(blk, "mlp") and not hasattr(blk, "norm_mlp")
    assert all(mod.eps == 1e-5 for mod in m.modules() if isinstance(mod, nn.LayerNorm))
    assert blk.attn_out.qk.bias is None and m.pixel_embed.proj.stride == (4, 4)


def test_tnt_class_token_bypasses_locality_ffn():
    torch.manual_seed(0)
    m = _tnt(img_size=64)
    blk = m.blocks[0]
    seen = []
    blk.conv.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    with torch.no_grad():
        (pixel, patch), grid = m._embed(torch.randn(2, 3, 64, 64))
        _, out = blk(pixel, patch, grid)
    assert seen == [(2, 24, 4, 4)]  # only the 4x4 patch map goes through the locality FFN
    with torch.no_grad():  # class token after the block = class token after the outer attention
        p = pixel + blk.attn_in(blk.norm_in(pixel))
        p = p + blk.mlp_in(blk.norm_mlp_in(p))
        x = torch.cat([patch[:, :1], patch[:, 1:] + blk.proj(blk.norm1_proj(p).reshape(2, 16, -1))], 1)
        x = x + blk.attn_out(blk.norm_out(x))
    torch.testing.assert_close(out[:, :1], x[:, :1])


def test_tnt_official_names():
    """timm keeps its own tnt_s/b_patch16_224; locvit.create_model builds the LocalViT repository's (legacy)."""
    from locvit.models import OFFICIAL_HOMONYMS

    assert OFFICIAL_HOMONYMS["tnt_s_patch16_224"] == "tnt_s_legacy_patch16_224"
    ours = locvit.create_model("tnt_s_patch16_224", depth=1)
    theirs = timm.create_model("tnt_s_patch16_224", depth=1)
    assert ours.pixel_embed.legacy and not theirs.pixel_embed.legacy
    assert locvit.create_model("tnt_t_patch16_224", depth=1).pixel_embed.legacy
    assert timm.create_model("tnt_t_patch16_224", depth=1).pixel_embed.legacy  # timm lacks it: our alias
    assert locvit.create_model("tnt_b_patch16_224", depth=1).embed_dim == 640
    kw = dict(img_size=64, embed_dim=24, in_dim=8, depth=2, num_heads=2, in_num_head=2, num_classes=3)
    torch.manual_seed(0)
    host = locvit.from_official("models.tnt.TNT", kw).eval()
    assert host.pixel_embed.legacy and host.blocks[0].attn_in.num_heads == 2 and host.blocks[0].attn_out.num_heads == 2
    # the fused attention swap leaves timm's TNT numerically unchanged
    plain = timm.models.tnt.TNT(img_size=64, embed_dim=24, inner_dim=8, depth=2, num_heads_inner=2, num_heads_outer=2,
                                num_classes=3, legacy=True).eval()
    assert isinstance(host.blocks[1].attn_out, TNTAttention) and not isinstance(plain.blocks[1].attn_out, TNTAttention)
    plain.load_state_dict(host.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(host(x), plain(x), atol=1e-5, rtol=1e-5)


# --- official intermediate outputs (conformance vectors) -------------------------------------------------------
@pytest.mark.parametrize("vector,key", [("localvit_t2t_224", "blocks.{}"), ("localvit_tnt_64", "blocks.{}[1]")])
def test_block_outputs_match_official(vector, key):
    path = conformance_dir() / "vectors" / "localvit" / f"{vector}.pt"
    if not path.is_file():
        pytest.skip(f"conformance vector {path} not found (set LOCVIT_CONFORMANCE_DIR)")
    v = torch.load(path, weights_only=True)
    m = locvit.from_official(v["official_class"], v["constructor_kwargs"], state_dict=v["state_dict"]).eval()
    with torch.no_grad():
        inter = m.forward_intermediates(v["input"], output_fmt="NLC", return_prefix_tokens=True,
                                        intermediates_only=True)
    assert len(inter) == len(m.blocks) == len([k for k in v["features"] if not k.endswith("[0]")])  # [0]: pixels
    for i, (tokens, prefix) in enumerate(inter):
        torch.testing.assert_close(torch.cat([prefix, tokens], 1), v["features"][key.format(i)], atol=1e-5, rtol=0)
