"""Shared layers: the cache-blocked inference paths give the plain expression's numbers and only run where they
apply."""
import pytest
import torch
from timm.layers import Mlp
from torch import nn

from locvit.layers import LocalityFeedForward, explicit_attention, fastpath, residual_mlp, token_mlp


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so a test-sized tensor is split into several (and a ragged last one)."""
    monkeypatch.setattr(fastpath, "MLP_BLOCK_BYTES", 4 * 32 * 24)  # 24 rows of a 32-wide hidden
    monkeypatch.setattr(fastpath, "MLP_MIN_ROWS", 1)
    monkeypatch.setattr(fastpath, "MLP_MIN_TOKENS", 1)


def _parts(dim=16, hidden=32, bias=True):
    torch.manual_seed(0)
    norm = nn.LayerNorm(dim).eval()
    mlp = Mlp(dim, hidden, bias=bias).eval()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm, mlp


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layerscale", [False, True])
def test_residual_mlp_blocked_matches_plain(small_blocks, bias, layerscale):
    norm, mlp = _parts(bias=bias)
    gamma = torch.rand(16) if layerscale else None
    x = torch.randn(3, 37, 16)  # 111 rows: four blocks of 24 and a ragged 15
    plain = x + (gamma if layerscale else 1) * mlp(norm(x))
    calls = []
    mlp.fc1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.inference_mode():
        got = residual_mlp(x, norm, mlp, nn.Identity(), gamma)
    assert calls == [24, 24, 24, 24, 15]
    assert got.shape == x.shape
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)


def test_residual_mlp_plain_where_blocking_does_not_apply(small_blocks):
    norm, mlp = _parts()
    x = torch.randn(2, 50, 16, requires_grad=True)
    calls = []
    mlp.fc1.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    residual_mlp(x, norm, mlp).sum().backward()  # autograd: one call on the whole tensor, gradients flow
    assert x.grad is not None and calls == [(2, 50, 16)]
    mlp.train()
    with torch.no_grad():
        residual_mlp(x, norm, mlp)  # training mode (dropout would differ per block)
    mlp.eval()
    with torch.no_grad(), explicit_attention():
        residual_mlp(x, norm, mlp)  # FLOP counting sees the plain ops
    assert calls[1:] == [(2, 50, 16)] * 2


def test_residual_mlp_thresholds():
    """Blocking needs a large map or a large hidden tensor (the shapes where it was measured to pay)."""
    assert token_mlp._large(25600, 256)  # RegionViT-Ti stage 1
    assert token_mlp._large(25088, 64)  # T2T token layer
    assert token_mlp._large(6272, 768)  # Focal-T stage 2 (19 MB hidden)
    assert not token_mlp._large(1576, 512)  # an isotropic ViT block
    assert not token_mlp._large(6400, 512)


def test_locality_ffn_image_groups_match_whole_batch(monkeypatch):
    """The fused inference path takes a large batch in groups of images; the result is the whole batch's."""
    torch.manual_seed(0)
    ffn = LocalityFeedForward(8, 4.0, "hs+se", 4).eval()
    for m in ffn.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(5, 50, 8)[:, 1:].transpose(1, 2).reshape(5, 8, 7, 7)  # token-view layout, as the models pass
    with torch.inference_mode():
        whole = ffn(x)
        per_image = 4 * 7 * 7 * 32
        monkeypatch.setattr(fastpath, "FFN_GROUP_MIN_BYTES", per_image)
        monkeypatch.setattr(fastpath, "FFN_GROUP_BYTES", 2 * per_image)
        calls = []
        orig = ffn._forward_fused_group
        monkeypatch.setattr(ffn, "_forward_fused_group", lambda g: calls.append(g.shape[0]) or orig(g))
        grouped = ffn(x)
    assert calls == [2, 2, 1]
    assert grouped.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole, ffn._forward_eval(x), rtol=1e-5, atol=1e-5)
