"""VVT specifics: the vicinity kernel and its linear-time reordering, the official angle arithmetic and clamps,
the hand-written backward, CPU chunking, any-size features, checkpoint conversion and the 384 configurations."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import locvit
import locvit.models.vvt as vvt
from locvit.layers import fastpath
from locvit.models.vvt import (
    VicinityAttention,
    abs_clamp,
    angle_table,
    checkpoint_filter_fn,
    vicinity_attention,
    vicinity_features,
    vicinity_weights,
)


def _official_angles(m: int, n: int, sr: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The official per-token angle expressions (m = width, n = height), reduced grid when sr > 1."""
    if sr == 1:
        index = torch.arange(m * n)
        return (math.pi / 2) * (index // m) / n, (math.pi / 2) * (index % m) / m
    index = torch.arange((m / sr) * (n / sr))
    return (math.pi / 2) * (index // (m / sr)) / (n / sr), (math.pi / 2) * (index % (m / sr)) / (m / sr)


@pytest.mark.parametrize("hw,sr", [((7, 11), 1), ((38, 43), 1), ((1, 1), 1), ((32, 32), 4), ((16, 24), 2)])
def test_angle_table_matches_official_arithmetic(hw, sr):
    H, W = hw
    a, b = _official_angles(W, H, sr)
    grid = (H // sr, W // sr)
    table = angle_table(grid, (H / sr, W / sr))
    expected = torch.stack([a.cos(), a.sin(), b.cos(), b.sin()], dim=-1)
    assert table.dtype == torch.float32 and table.shape == (grid[0] * grid[1], 4)
    assert torch.equal(table, expected)
    # float64 models take cos/sin of the same float32 angles in float64, as the official .to(q) does
    t64 = angle_table(grid, (H / sr, W / sr), dtype=torch.float64)
    a, b = a.double(), b.double()
    assert torch.equal(t64, torch.stack([a.cos(), a.sin(), b.cos(), b.sin()], dim=-1))


def test_angle_table_is_cached_per_shape_and_not_state():
    assert angle_table((5, 6)) is angle_table((5, 6))
    assert angle_table((5, 6)) is not angle_table((6, 5))
    model = locvit.create_model("vvt_test")
    assert not list(model.buffers())
    assert all(k in dict(model.named_parameters()) for k in model.state_dict())


def test_tables_from_inference_mode_serve_training():
    model = locvit.create_model("vvt_test", num_classes=3)
    x = torch.randn(2, 3, 44, 52)
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()
    assert model.stages[0].blocks[0].attn.qkv.weight.grad is not None


def test_vicinity_kernel_is_manhattan_cosine_reweighting():
    torch.manual_seed(0)
    H, W, d = 4, 5, 3
    q, k = torch.randn(H * W, d, dtype=torch.float64), torch.randn(H * W, d, dtype=torch.float64)
    t = angle_table((H, W), dtype=torch.float64)
    scores = vicinity_features(q, t) @ vicinity_features(k, t).T
    rows = torch.arange(H * W) // W
    cols = torch.arange(H * W) % W
    alpha = (math.pi / 2) * rows.double() / H
    beta = (math.pi / 2) * cols.double() / W
    weight = torch.cos(alpha[:, None] - alpha[None]) + torch.cos(beta[:, None] - beta[None])
    expected = (q.relu() @ k.relu().T) * weight
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-6)  # angles are float32, as official
    # nearer tokens weigh more: the weight falls with row and with column distance
    assert weight[0, 1] > weight[0, 2] > weight[0, 3] and weight[0, W] > weight[0, 2 * W]


@pytest.mark.parametrize("sr", [1, 2])
def test_linear_reordering_equals_explicit_weights(sr):
    """Without clamps the linear-time attention is exactly the explicit N x S weights applied to v."""
    torch.manual_seed(1)
    B, h, H, W, d = 2, 3, 6, 8, 4
    q = torch.randn(B, h, H * W, d, dtype=torch.float64)
    grid = (H // sr, W // sr)
    k = torch.randn(B, h, grid[0] * grid[1], d, dtype=torch.float64)
    v = torch.randn_like(k)
    qt = angle_table((H, W), dtype=torch.float64)
    kt = angle_table(grid, (H / sr, W / sr), dtype=torch.float64)
    out = vicinity_attention(q, k, v, qt, kt, clamp=False)
    w = vicinity_weights(q, k, qt, kt, list(range(H * W)))
    assert w.shape == (B, h, H * W, k.shape[2])
    torch.testing.assert_close(out, w @ v, rtol=1e-10, atol=1e-12)
    assert torch.all(w >= 0)
    total = w.sum(-1)  # 1, up to the 1e-4 epsilon, except for queries whose ReLU features are all zero
    assert torch.all(((total - 1).abs() < 1e-3) | (total == 0)) and (total > 0).float().mean() > 0.5


def test_abs_clamp_semantics():
    t = torch.tensor([0.0, -0.0, 3e-5, -3e-5, 0.5, -2.0, 2e4, -3e5])
    expected = torch.tensor([0.0, 0.0, 1e-4, -1e-4, 0.5, -2.0, 1e4, -1e4])
    assert torch.equal(abs_clamp(t), expected)
    assert torch.equal(abs_clamp(t.clone(), inplace=True), expected)


@pytest.mark.parametrize("gate", [False, True])
def test_fused_clamps_equal_two_official_clamps(gate):
    torch.manual_seed(2)
    t = torch.randn(4, 50, 8) * torch.logspace(-6, 5, 8)
    t[0, :5] = 0.0
    s = torch.rand(4, 50 if not gate else 1, 8 if gate else 1)
    c = abs_clamp(t)
    expected = abs_clamp(c + c * s if gate else c * s)
    assert torch.equal(vvt._clamp_scale_clamp(t, s, gate, inplace=False), expected)
    if not gate:  # the fused multiply-add of the in-place gate may differ in the last bit
        assert torch.equal(vvt._clamp_scale_clamp(t.clone(), s, gate, inplace=True), expected)
    else:
        torch.testing.assert_close(vvt._clamp_scale_clamp(t.clone(), s, gate, inplace=True), expected)


@pytest.mark.parametrize("weight_std,sr", [(0.5, 1), (0.01, 1), (3.0, 2)])
def test_explicit_backward_matches_autograd(monkeypatch, weight_std, sr):
    """The hand-written backward gives autograd's gradients of the plain formulation, clamps included
    (small weights put many values under 1e-4, large ones over 1e4)."""
    torch.manual_seed(3)
    attn = VicinityAttention(24, 2, fr_ratio=2, sr_ratio=sr, se_ratio=1).double()
    for p in attn.parameters():
        p.data.normal_(0, weight_std)
    x = torch.randn(3, 6 * 8, 24, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 6 * 8, 24, dtype=torch.float64)

    def grads():
        x.grad = None
        attn.zero_grad()
        y = attn(x, (6, 8))
        y.backward(g)
        return y.detach(), [x.grad.clone()] + [p.grad.clone() for p in attn.parameters()]

    y1, g1 = grads()
    monkeypatch.setattr(fastpath, "eager_autograd", lambda *t: False)
    y2, g2 = grads()
    assert torch.equal(y1, y2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_cpu_chunking_is_exact_and_only_for_inference():
    torch.manual_seed(4)
    model = locvit.create_model("vvt_test").eval()
    x = torch.randn(3, 3, 72, 88)
    stage = model.stages[0]
    for s in model.stages:
        s.chunk_tokens = 800
    with torch.no_grad():
        assert stage._images_per_chunk(model.patch_embed(x)) == 2  # 18 x 22 tokens: two images per chunk
        assert model.stages[1]._images_per_chunk(torch.randn(3, 18, 22, 32)) >= 3  # 9 x 11 tokens: one chunk
        chunked = model(x)
        for s in model.stages:
            s.chunk_tokens = 0
        whole = model(x)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    assert fastpath.VVT_CHUNK_TOKENS > 0 and vvt.VicinityStage.chunk_tokens is None  # the module setting
    stage.chunk_tokens = 800
    assert stage._images_per_chunk(torch.randn(3, 18, 22, 32)) == 3  # autograd on: no chunking


@pytest.mark.parametrize("size", [(200, 304), (150, 170), (33, 97), (1, 1)])
def test_features_at_any_size(size):
    H, W = size
    model = locvit.create_model("vvt_test", features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, H, W))
    assert [f.shape[1] for f in feats] == [32, 32, 32, 32]
    for i, f in enumerate(feats):
        r = 2 ** (i + 2)
        assert f.shape[2:] == (math.ceil(H / r), math.ceil(W / r))


def test_intermediates_are_the_normed_stage_maps():
    torch.manual_seed(5)
    model = locvit.create_model("vvt_test", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        nhwc = model.forward_intermediates(x, indices=[1, 3], output_fmt="NHWC", intermediates_only=True)
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    assert len(inter) == 4 and all(t.is_contiguous() for t in inter)
    torch.testing.assert_close(final, inter[-1])
    torch.testing.assert_close(nhwc[0], inter[1].permute(0, 2, 3, 1))
    torch.testing.assert_close(early[0], inter[0])
    # a stage ends with its LayerNorm (weight 1, bias 0 at init): per-token mean ~0 over channels
    assert inter[2].mean(dim=1).abs().max() < 1e-4


def test_spatial_reduction_any_size_and_size_check():
    model = vvt.VicinityVisionTransformer(embed_dims=(16, 16, 16, 16), num_heads=(1, 1, 1, 1), depths=(1, 1, 1, 1),
                                          mlp_ratios=(1, 1, 1, 1), sr_ratios=(4, 2, 1, 1), num_classes=3).eval()
    assert model.min_size == 2 ** 2 * 3 + 1  # stage 1 needs ceil(H / 4) >= 4
    with torch.no_grad():
        assert model(torch.randn(1, 3, 57, 45)).shape == (1, 3)  # stage grids 15x12 and 8x6: not multiples of sr
        with pytest.raises(ValueError, match="at least 13x13"):
            model(torch.randn(1, 3, 12, 40))


def test_no_quadratic_tensors():
    """Linear attention: the largest tensor a block creates grows like the number of tokens (no N x N)."""

    class MaxNumel(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.max = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.max = max(self.max, t.numel())
            return out

    block = vvt.VicinityBlock(16, 2, mlp_ratio=2, fr_ratio=2).eval()
    sizes = []
    for side in (16, 64):
        with torch.no_grad(), MaxNumel() as mode:
            block(torch.randn(1, side * side, 16), (side, side))
        sizes.append(mode.max)
    assert sizes[1] <= 16 * sizes[0] * 1.05  # 16x the tokens, 16x the memory (N^2 would be 256x)


def test_attention_weights_for_visualisation():
    torch.manual_seed(6)
    attn = VicinityAttention(16, 2).eval()
    x = torch.randn(1, 5 * 7, 16)
    w = attn.attention_weights(x, (5, 7), [0, 17, 34])
    assert w.shape == (1, 2, 3, 35) and torch.all(w >= 0)
    assert torch.all(w.sum(-1) <= 1 + 1e-6)


def _official_layout(model: vvt.VicinityVisionTransformer) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the official layout (the inverse of the filter, written independently)."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("patch_embed.", "patch_embed1.", 1) if k.startswith("patch_embed.") else k
        parts = k.split(".")
        if parts[0] == "stages":
            i = int(parts[1]) + 1
            if parts[2] == "downsample":
                k = f"patch_embed{i}." + ".".join(parts[3:])
            elif parts[2] == "norm":
                k = f"norm{i}." + ".".join(parts[3:])
            else:
                k = f"block{i}." + ".".join(parts[3:])
        for ours, theirs in ((".attn.proj.", ".attn.out_proj."), (".se.fc1.", ".se_fc.0."), (".se.fc2.", ".se_fc.2."),
                             (".sr_norm.", ".norm."), (".mlp.dwconv.", ".mlp.dwconv.dwconv.")):
            k = k.replace(ours, theirs)
        if k.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                out[k.replace("attn.qkv.", f"attn.{name}_proj.")] = part
            continue
        out[k] = v
    return out


def test_checkpoint_filter_roundtrip():
    torch.manual_seed(7)
    model = vvt.VicinityVisionTransformer(embed_dims=(8, 16, 16, 24), num_heads=(1, 2, 2, 3), depths=(1, 2, 1, 1),
                                          mlp_ratios=(2, 2, 2, 2), sr_ratios=(2, 1, 1, 1), num_classes=5)
    official = _official_layout(model)
    assert "block2.1.attn.q_proj.weight" in official and "block1.0.attn.norm.weight" in official
    converted = checkpoint_filter_fn(official, model)
    ours = model.state_dict()
    assert converted.keys() == ours.keys()
    assert all(torch.equal(converted[k], ours[k]) for k in ours)
    assert checkpoint_filter_fn(ours, model) is ours  # our own layout passes through
    del official["block1.0.attn.v_proj.bias"]
    with pytest.raises(ValueError, match="q/k/v"):
        checkpoint_filter_fn(official, model)


def test_384_configuration():
    torch.manual_seed(8)
    base = locvit.create_model("vvt_tiny", num_classes=3)
    big = locvit.create_model("vvt_tiny_384", num_classes=3)
    assert big.pretrained_cfg["input_size"] == (3, 384, 384) and big.img_size == (384, 384)
    assert base.pretrained_cfg["input_size"] == (3, 224, 224)
    big.load_state_dict(base.state_dict())  # the same parameters: VVT has no size-dependent tensors
    base.set_input_size(384)
    assert base.img_size == (384, 384)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(base.eval()(x), big.eval()(x))


def test_official_translation_defaults_and_refusals():
    # vvt_test relies on the official class defaults (fr_ratios 1/2/2/4)
    m = locvit.from_official("vvt.VicinityVisionTransformer", dict(
        patch_size=4, embed_dims=[32] * 4, num_heads=[1] * 4, mlp_ratios=[1] * 4, qkv_bias=True, depths=[1] * 4,
        sr_ratios=[1] * 4))
    assert [s.blocks[0].attn.inner_dim for s in m.stages] == [32, 16, 16, 8]
    assert m.stages[0].norm.eps == 1e-5  # official default norm_layer is nn.LayerNorm
    with pytest.raises(ValueError, match="linear"):
        locvit.from_official("vvt.VicinityVisionTransformer", dict(linear=True))
