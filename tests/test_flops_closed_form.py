"""FLOP counts per attention mechanism against closed forms (multiply-adds), at one small size each.

``torch.utils.flop_counter`` counts matmuls, linears and convolutions; these tests pin what each mechanism's
counted work is, so a change that adds hidden work (or hides counted work behind a fused kernel) is caught.
"""
import torch

from locvit.bench.flops import flop_count


def macs(fn, *args, module=None):
    return flop_count(fn, *args, module=module if module is not None else fn).get_total_flops() // 2


def test_regionvit_r2l_attention():
    from locvit.models.regionvit import R2LAttention

    B, nW, ws, C, h = 2, 4, 3, 16, 2
    attn = R2LAttention(C, h, ws).eval()
    L = 1 + ws * ws
    # regional step: all nW regional tokens of an image attend to each other
    assert macs(attn.regional, torch.randn(B, nW, C), module=attn) == B * (4 * nW * C * C + 2 * nW * nW * C)
    # local step: each window of [regional token, ws^2 local tokens]
    assert macs(attn.local, torch.randn(B * nW, L, C), module=attn) == B * nW * (4 * L * C * C + 2 * L * L * C)


def test_pvt_spatial_reduction_attention():
    from locvit.models.pvt import SpatialReductionAttention

    B, H, W, C, h, sr = 2, 8, 12, 16, 2, 2
    attn = SpatialReductionAttention(C, h, qkv_bias=True, sr_ratio=sr).eval()
    N, M = H * W, (H // sr) * (W // sr)
    expected = N * C * C + M * C * C * sr * sr + 2 * M * C * C + 2 * N * M * C + N * C * C
    assert macs(attn, torch.randn(B, N, C), (H, W)) == B * expected


def test_vvt_vicinity_attention_is_linear_in_tokens():
    from locvit.models.vvt import VicinityAttention

    C, h, fr, B = 32, 2, 2, 2
    attn = VicinityAttention(C, h, fr_ratio=fr).eval()
    d = C // h // fr

    def expected(N):
        qkv = N * C * 3 * C // fr
        gate = 2 * C * C  # SE gate (reduction 1) on the token mean, once per image
        # KV = sum_j phi(k_j)^T v_j (a matmul; k_sum is a plain sum), then phi(q_i) [KV | k_sum] for numerator
        # and normaliser at once; phi expands each d-wide head to 4d (cos/sin of row and column angles)
        core = h * N * 4 * d * d + h * N * 4 * d * (d + 1)
        return qkv + gate + core + N * (C // fr) * C

    for H, W in ((6, 8), (12, 16)):
        assert macs(attn, torch.randn(B, H * W, C), (H, W)) == B * expected(H * W)


def test_swin_window_attention():
    from locvit.models.localvit_swin import WindowAttention

    nWB, ws, C, h = 6, 4, 16, 2
    attn = WindowAttention(C, h, (ws, ws)).eval()
    N = ws * ws
    assert macs(attn, torch.randn(nWB, N, C)) == nWB * (4 * N * C * C + 2 * N * N * C)


def test_focal_self_attention():
    from locvit.models.focal import FocalSelfAttention

    B, H, W, C, h, ws, e, fw = 2, 8, 12, 16, 2, 4, 1, 3
    attn = FocalSelfAttention(C, h, window_size=ws, expand_size=e, focal_level=2, focal_window=fw,
                              pool_method="fc").eval()
    N, nW = H * W, (H // ws) * (W // ws)
    ring = 4 * (ws * ws - (ws - e) ** 2)
    keys = ws * ws + ring + fw * fw
    expected = (N * 3 * C * C      # q, k, v of every token
                + N * C            # fc pooling: one weight per position of each sub-window, per channel
                + nW * 2 * C * C   # k, v of the pooled tokens
                + 2 * nW * ws * ws * keys * C  # logits and weighted sum over [window | ring | pooled]
                + N * C * C)       # output projection
    assert macs(attn, torch.randn(B, H, W, C)) == B * expected


def test_mhsa_in_localvit_block_and_locality_ffn():
    from locvit.layers.locality_ffn import LocalityFeedForward

    B, C, H, W, r = 2, 16, 6, 5, 4
    ffn = LocalityFeedForward(C, expand_ratio=r, act="hs+se", reduction=4).eval()
    hid = C * r
    expected = H * W * C * hid + H * W * hid * 9 + 2 * hid * (hid // 4) + H * W * hid * C
    assert macs(ffn, torch.randn(B, C, H, W)) == B * expected
