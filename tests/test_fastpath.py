"""locvit.layers.fastpath: each predicate under the conditions it names, the shared shape cache's policy, and every
family's fast forward (all shortcuts forced on) equal to its plain forward."""
import copy
import pickle

import pytest
import torch
from torch import nn

import locvit.models.vvt as vvt
from locvit.layers import attention, explicit_attention, fastpath, fused_conv, locality_ffn, record_attention, token_mlp
from test_export import small_model


class Probe(nn.Module):
    """Multiplies by 2 where :func:`fastpath.tracing` held while the forward ran (or was traced), else by 3."""

    def forward(self, x):
        return x * 2 if fastpath.tracing() else x * 3


def test_tracing_is_false_in_eager_mode():
    assert torch.equal(Probe()(torch.ones(2)), torch.full((2,), 3.0))
    assert not fastpath.tracing()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
@pytest.mark.parametrize("how", ["torch.compile", "torch.export", "torch.jit.trace", "torch.fx.symbolic_trace"])
def test_tracing_while_a_graph_is_built(how):
    x = torch.ones(2)
    if how == "torch.compile":
        graph = torch.compile(Probe(), backend="eager", fullgraph=True)
    elif how == "torch.export":
        graph = torch.export.export(Probe(), (x,)).module()
    elif how == "torch.jit.trace":
        graph = torch.jit.trace(Probe(), x, check_trace=False)  # eager differs from the trace on purpose
    else:
        graph = torch.fx.symbolic_trace(Probe())
    assert torch.equal(graph(x), torch.full((2,), 2.0))
    assert not fastpath.tracing()  # reset once the graph is built
    torch._dynamo.reset()


def test_recording_contexts_nest_and_unwind():
    assert not fastpath.recording()
    with fastpath.record():
        assert fastpath.recording()
        with explicit_attention(), record_attention():
            assert fastpath.recording()
        assert fastpath.recording()
    assert not fastpath.recording()
    with pytest.raises(RuntimeError), record_attention():
        raise RuntimeError("inside")
    assert not fastpath.recording() and not attention._recorders


def test_eager_cpu_inference():
    x = torch.randn(2, 3)
    assert not fastpath.eager_cpu_inference(x)  # autograd on
    with torch.no_grad():
        assert fastpath.eager_cpu_inference(x)
        with explicit_attention():
            assert not fastpath.eager_cpu_inference(x)  # FLOP counting sees the plain ops
        assert not fastpath.eager_cpu_inference(torch.empty(2, 3, device="meta"))  # not a CPU tensor
    with torch.inference_mode():
        assert fastpath.eager_cpu_inference(x)

    seen = []

    def f(t):
        seen.append(fastpath.eager_cpu_inference(t))
        return t + 1

    with torch.no_grad():
        torch.compile(f, backend="eager", fullgraph=True)(x)
    assert seen == [False]  # a compiled graph holds the plain expression
    torch._dynamo.reset()


def test_fused_conv_follows_eager_cpu_inference():
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        assert fused_conv.fusable(x) == (fused_conv._conv_pointwise is not None and torch.backends.mkldnn.enabled
                                         and torch.backends.mkldnn.is_available())
        assert not fused_conv.fusable(x.double())
        with explicit_attention():
            assert not fused_conv.fusable(x)
    assert not fused_conv.fusable(x)


def test_needs_grad_and_eager_autograd():
    a, b = torch.randn(2), torch.randn(2, requires_grad=True)
    assert not fastpath.needs_grad(a) and fastpath.needs_grad(a, b)
    assert fastpath.eager_autograd(a, b) and not fastpath.eager_autograd(a)
    with torch.no_grad():
        assert not fastpath.needs_grad(b) and not fastpath.eager_autograd(b)
    seen = []

    def f(t):
        seen.append((fastpath.needs_grad(t), fastpath.eager_autograd(t)))
        return t * 2

    torch.compile(f, backend="eager", fullgraph=True)(b)
    assert seen == [(True, False)]  # compiled: autograd records, but the hand-written backward stays out
    torch._dynamo.reset()


# --- ShapeCache ----------------------------------------------------------------------------------------------------
def test_shape_cache_is_lru_bounded_by_entries():
    cache = fastpath.ShapeCache(max_entries=3)
    builds = []

    def build(k):
        builds.append(k)
        return torch.full((2,), float(k))

    for k in (1, 2, 3):
        cache.get_or_build(k, lambda k=k: build(k))
    first = cache[1]
    assert cache.get_or_build(1, lambda: build(99)) is first  # a hit: not rebuilt, now the most recent
    cache.get_or_build(4, lambda: build(4))  # evicts the least recently used: 2
    assert list(cache.keys()) == [3, 1, 4] and 2 not in cache and len(cache) == 3
    assert builds == [1, 2, 3, 4]


def test_shape_cache_is_bounded_by_bytes_and_keeps_the_newest(monkeypatch):
    cache = fastpath.ShapeCache(max_entries=100, max_bytes=100)
    cache.get_or_build("a", lambda: torch.zeros(10))  # 40 bytes
    cache.get_or_build("b", lambda: (torch.zeros(10), [torch.zeros(5)]))  # 60: tuples and lists are counted
    assert list(cache.keys()) == ["a", "b"] and cache.nbytes() == 100
    cache.get_or_build("c", lambda: torch.zeros(1))
    assert list(cache.keys()) == ["b", "c"]
    cache.get_or_build("big", lambda: torch.zeros(1000))  # larger than the bound on its own: still kept
    assert list(cache.keys()) == ["big"]
    # None reads the module settings at insertion time
    monkeypatch.setattr(fastpath, "SHAPE_CACHE_ENTRIES", 2)
    default = fastpath.ShapeCache()
    for k in range(5):
        default.get_or_build(k, lambda: None)
    assert list(default.keys()) == [3, 4]


def test_shape_cache_builds_outside_inference_mode_and_autograd():
    cache = fastpath.ShapeCache()
    w = torch.randn(3, requires_grad=True)
    with torch.inference_mode():
        value = cache.get_or_build("k", lambda: w * 2)
    assert not value.is_inference() and not value.requires_grad
    (value * w).sum().backward()  # usable in training
    assert w.grad is not None


def test_shape_cache_is_bypassed_while_tracing():
    cache = fastpath.ShapeCache()

    def f(x):
        return x + cache.get_or_build(("shape", x.shape[-1]), lambda: torch.arange(x.shape[-1]))

    out = torch.compile(f, backend="eager", fullgraph=True)(torch.zeros(4))
    assert torch.equal(out, torch.arange(4.0)) and len(cache) == 0
    torch._dynamo.reset()
    f(torch.zeros(4))
    assert len(cache) == 1


def test_shape_cache_is_never_copied_or_pickled():
    module = nn.Linear(2, 2)
    module.cache = fastpath.ShapeCache(max_entries=5)
    module.cache.get_or_build(1, lambda: torch.zeros(3))
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module)), copy.copy(module.cache)):
        cache = clone if isinstance(clone, fastpath.ShapeCache) else clone.cache
        assert len(cache) == 0 and cache.max_entries == 5
    assert len(module.cache) == 1


@pytest.mark.parametrize("name", ["regionvit_tiny", "focal_tiny", "focalv2_tiny_useconv", "localvit_swin_tiny",
                                  "vvt_tiny"])
def test_shape_cached_values_from_inference_mode_serve_training(name):
    """Masks, gather plans and angle tables first built under inference_mode at a new size are reused in training
    at that size (an inference tensor cannot be saved for backward)."""
    model = small_model(name)
    x = torch.randn(2, 3, 72, 88)
    with torch.inference_mode():
        model(x)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# --- every family: fast forward == plain forward ---------------------------------------------------------------------
# where each shortcut is taken: (owner, attribute, whether a call took it) spied on while the fast forward runs
SPIES = {
    "mlp_blocks": (token_mlp, "_blocked", lambda args, out: True),
    "fused_conv": (locality_ffn, "conv2d_act", lambda args, out: True),
    "ffn_groups": (locality_ffn.LocalityFeedForward, "_forward_fused_group", lambda args, out: args[1].shape[0] == 1),
    "vvt_chunks": (vvt.VicinityStage, "_images_per_chunk", lambda args, out: out < args[1].shape[0]),
}
FAST_PATHS = {
    "regionvit_tiny": {"mlp_blocks"},
    "focal_tiny": {"mlp_blocks"},
    "focalv2_tiny_useconv": {"mlp_blocks"},
    "pvt_tiny": {"mlp_blocks"},
    "t2t_vit_7": {"mlp_blocks"},
    "vvt_tiny": {"vvt_chunks"},
    "localvit_tiny": {"fused_conv", "ffn_groups"},
    "localvit_pvt_tiny": {"fused_conv", "ffn_groups"},
    "localvit_swin_tiny": {"fused_conv", "ffn_groups"},
}


@pytest.fixture
def every_shortcut(monkeypatch):
    """Thresholds at their minimum, so test-sized maps take every shortcut (several blocks, groups and chunks)."""
    monkeypatch.setattr(fastpath, "MLP_BLOCK_BYTES", 16 << 10)
    monkeypatch.setattr(fastpath, "MLP_MIN_ROWS", 1)
    monkeypatch.setattr(fastpath, "MLP_MIN_TOKENS", 1)
    monkeypatch.setattr(fastpath, "FFN_GROUP_MIN_BYTES", 1)
    monkeypatch.setattr(fastpath, "FFN_GROUP_BYTES", 1)
    monkeypatch.setattr(fastpath, "VVT_CHUNK_TOKENS", 1)
    calls = {k: 0 for k in SPIES}
    for key, (owner, attr, took) in SPIES.items():
        orig = getattr(owner, attr)

        def spy(*args, _orig=orig, _key=key, _took=took, **kwargs):
            out = _orig(*args, **kwargs)
            calls[_key] += bool(_took(args, out))
            return out

        monkeypatch.setattr(owner, attr, spy)
    return calls


# the locality feed-forward's SE gate is folded into per-image weights (ratio 0) or applied to the map (huge ratio)
CASES = [(n, 0) for n in sorted(FAST_PATHS)]
CASES += [(n, 10 ** 9) for n in sorted(FAST_PATHS) if "fused_conv" in FAST_PATHS[n]]


@pytest.mark.parametrize("name,se_ratio", CASES, ids=[f"{n}-se{int(bool(r))}" for n, r in CASES])
def test_fast_forward_equals_plain_forward(name, se_ratio, every_shortcut, monkeypatch):
    monkeypatch.setattr(fastpath, "FFN_SE_PER_IMAGE_RATIO", se_ratio)
    model = small_model(name)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), fastpath.record():
        plain = model(x)
    assert not any(every_shortcut.values())  # recording: the plain expression everywhere
    with torch.inference_mode():
        fast = model(x)
    taken = {k for k, n in every_shortcut.items() if n}
    assert taken == FAST_PATHS[name]
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_ab_harness_interleaves_and_restores_settings():
    from locvit.bench import fastpaths

    order = []
    r = fastpaths.ab(lambda: order.append("fast"), lambda: order.append("plain"), rounds=3, warmup=1)
    assert order == ["fast", "plain", "plain", "fast", "fast", "plain", "plain", "fast"]  # alternating first
    assert set(r) == {"fast_ms", "plain_ms", "speedup", "speedup_best"} and r["speedup"] > 0
    before = fastpath.FFN_GROUP_BYTES
    with pytest.raises(RuntimeError), fastpaths._settings(FFN_GROUP_BYTES=1):
        assert fastpath.FFN_GROUP_BYTES == 1
        raise RuntimeError
    assert fastpath.FFN_GROUP_BYTES == before
    (row,) = fastpaths.run(("sdpa_bias",), rounds=1)
    assert row["case"] == "sdpa_bias" and row["fast_ms"] > 0
