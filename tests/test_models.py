"""The timm model contract, checked on every registered locvit model (in the spirit of timm's
tests/test_models.py). Families join by registering; nothing here names a family."""
import copy
import math

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._features import FeatureGetterNet
from timm.optim import create_optimizer_v2
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import locvit
from conftest import DISTINCT, SMALL_SIZE, every_model, small_model
from locvit.models import spec_of
from locvit.models.interface import TimmModel

MODELS = locvit.list_models()
# the full-size checks: one model per block kind in `make test`, every registered model in `make test-heavy`
FULL_SIZE = every_model(DISTINCT + ["regionvit_video_tiny", "localvit_vit_small_patch16_224"])
NUM_CLASSES = 7


def small_input_size(model) -> tuple[int, int]:
    """The smallest input a model declares (``min_input_size``), else 64x64: keeps the suite fast."""
    cfg = model.pretrained_cfg
    size = cfg.get("test_input_size") or cfg.get("min_input_size") or (3, 64, 64)
    return tuple(size[-2:])


@pytest.mark.parametrize("name", FULL_SIZE)
def test_model_contract(name):
    torch.manual_seed(0)
    model = locvit.create_model(name, num_classes=NUM_CLASSES)
    H, W = small_input_size(model)
    x = torch.randn(2, 3, H, W)

    # default cfg fields
    cfg = model.pretrained_cfg
    for field in ("input_size", "mean", "std", "interpolation", "crop_pct", "first_conv", "classifier", "num_classes"):
        assert field in cfg and cfg[field] is not None, f"pretrained cfg lacks {field}"
    first_conv = model.get_submodule(cfg["first_conv"])
    assert getattr(first_conv, "in_channels", 3) == 3
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()

    # forward + backward: every parameter gets a gradient (timm's contract: what is never trained is a buffer)
    model.train()
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"
    model.zero_grad(set_to_none=True)

    # features / head
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        logits = model.forward_head(feats)
        torch.testing.assert_close(logits, model(x))

        # intermediates end in the same final features
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        assert len(inter) == len(model.feature_info)
        for t, info in zip(inter, model.feature_info):
            assert t.ndim == 4 and t.shape[1] == info["num_chs"], (tuple(t.shape), info)

        # grad checkpointing leaves results unchanged
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), logits)
        model.set_grad_checkpointing(False)

        # classifier resets
        model.reset_classifier(NUM_CLASSES + 1)
        assert model(x).shape == (2, NUM_CLASSES + 1)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(0, "")
        assert model.forward_head(model.forward_features(x)).ndim >= 2

    # parameter groups for weight decay and layer-wise lr decay, as timm's optimiser factory builds them
    assert isinstance(model.no_weight_decay(), (set, list, tuple))
    groups = model.group_matcher()
    assert "stem" in groups and "blocks" in groups
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    in_groups = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert in_groups == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_model_features_only(name):
    model = timm.create_model(name, features_only=True)
    H, W = small_input_size(model)
    info = model.feature_info
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, H, W))
    assert len(outs) == len(info.channels()) >= 1
    for t, c, r in zip(outs, info.channels(), info.reduction()):
        assert t.shape[1] == c
        assert t.shape[2] in (H // r, math.ceil(H / r)) and t.shape[3] in (W // r, math.ceil(W / r)), (t.shape, r)
    if len(set(info.reduction())) > 1:  # a pyramid: at least three levels
        assert len(outs) >= 3


@pytest.mark.parametrize("name", FULL_SIZE)
def test_bad_input_channels(name):
    model = locvit.create_model(name, num_classes=NUM_CLASSES).eval()
    H, W = small_input_size(model)
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 1, H, W))
    with pytest.raises(ValueError):
        model(torch.randn(3, H, W))


@pytest.mark.parametrize("name", FULL_SIZE)
def test_input_sizes_property(name):
    """Over random sizes a model either runs (and returns logits) or raises a ValueError that says why;
    every size at or above its declared minimum works unless the model has a fixed input size."""
    model = locvit.create_model(name, num_classes=NUM_CLASSES).eval()
    min_h, min_w = small_input_size(model)
    fixed = model.pretrained_cfg.get("fixed_input_size", False)

    @settings(max_examples=6, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(h=st.integers(1, min_h * 2 + 9), w=st.integers(1, min_w * 2 + 9))
    def check(h, w):
        try:
            with torch.no_grad():
                out = model(torch.randn(1, 3, h, w))
        except ValueError as e:
            assert str(e), "empty error message"
            assert h < min_h or w < min_w or fixed or "size" in str(e) or "multiple" in str(e), str(e)
            return
        assert out.shape == (1, NUM_CLASSES)
        assert torch.isfinite(out).all()

    check()


# --- timm's feature contract on small models ---------------------------------------------------------------------
def _is_pyramid(model) -> bool:
    return len({info["reduction"] for info in model.feature_info}) > 1


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_and_pruning(name):
    """forward_intermediates: both map layouts, intermediates_only and stop_early give the same maps, and the final
    features are exactly forward_features' (RegionViT's last stage once differed by 1.8e-6).
    prune_intermediate_layers keeps the maps asked for, drops what is sized for the removed layers (head, final norm,
    num_features: Focal once kept an 8C norm on a 2C map) and leaves a model that runs; features_only builds on it."""
    model = small_model(name, num_classes=NUM_CLASSES).eval()
    x = torch.randn(2, 3, SMALL_SIZE, SMALL_SIZE)
    other = "NHWC" if _is_pyramid(model) else "NLC"
    with torch.no_grad():
        feats = model.forward_features(x)
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, feats)
        assert len(maps) == len(model.feature_info)
        for t, info in zip(maps, model.feature_info):
            assert t.shape[:2] == (2, info["num_chs"]) and t.is_contiguous()
            r = info["reduction"]
            assert t.shape[2] <= math.ceil(SMALL_SIZE / r) + 1 and t.shape[3] <= math.ceil(SMALL_SIZE / r) + 1
        for a, b in zip(maps, model.forward_intermediates(x, output_fmt=other, intermediates_only=True)):
            assert torch.equal(a.permute(0, 2, 3, 1) if other == "NHWC" else a.flatten(2).transpose(1, 2), b)
        indices = [0, len(maps) // 2]
        _, early = model.forward_intermediates(x, indices=indices, stop_early=True)
        assert all(torch.equal(e, maps[i]) for e, i in zip(early, indices))
        last = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        assert len(last) == 1 and last[0].shape == maps[-1].shape
    # locvit's models answer a bad layout with a ValueError; a host that is timm's own class keeps timm's assertion
    with pytest.raises(ValueError if isinstance(model, TimmModel) else (ValueError, AssertionError),
                       match="(?i)output.fmt|output format"):
        model.forward_intermediates(x, output_fmt="NDHWC")

    keep = [0, 1]
    for prune_norm in (False, True):
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers(keep, prune_norm=prune_norm) == keep
        with torch.no_grad():
            kept = pruned.forward_intermediates(x, indices=keep, intermediates_only=True)
            assert all(torch.equal(a, maps[i]) for a, i in zip(kept, keep))
            if _is_pyramid(model):
                assert pruned.num_features == pruned.head_hidden_size == model.feature_info[keep[-1]]["num_chs"]
            assert pruned.num_classes == 0 and pruned.global_pool == ""
            pruned.reset_classifier(0, "avg")  # the pooled features of what is left
            assert pruned(x).shape == (2, pruned.num_features)
    features = FeatureGetterNet(copy.deepcopy(model), out_indices=keep)  # what features_only=True builds
    with torch.no_grad():
        assert all(torch.equal(a, maps[i]) for a, i in zip(features(x), keep))


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg_and_unpooled_output(name):
    """timm's default-cfg contract: spatial-output models declare ``pool_size`` (and ``output_fmt``) for their
    unpooled features, and without a classifier and pooling they return the map; token models return tokens."""
    model = small_model(name, num_classes=NUM_CLASSES).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, 3, SMALL_SIZE, SMALL_SIZE)
    fmt = getattr(model, "output_fmt", None)
    with torch.no_grad():
        feats = model.forward_features(x)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    if fmt is None:  # tokens: timm's non-standard models
        assert feats.ndim == 3 and feats.shape[-1] == model.num_features
        assert cfg["pool_size"] is None
        return
    assert fmt in ("NCHW", "NHWC") and feats.ndim == 4
    channel, spatial = (3, (1, 2)) if fmt == "NHWC" else (1, (2, 3))
    reduction = model.feature_info[-1]["reduction"]
    assert feats.shape[channel] == model.num_features
    assert tuple(feats.shape[d] for d in spatial) == (math.ceil(SMALL_SIZE / reduction),) * 2
    assert cfg["pool_size"] == tuple(math.ceil(s / reduction) for s in cfg["input_size"][1:])
    with torch.no_grad():
        model.reset_classifier(0)
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, "")
        assert model(x).shape == feats.shape
        unpooled = small_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == feats.shape


def _fx_model(model, train: bool = False):
    """``model`` traced by torch.fx as timm's tests trace (timm's leaf modules and functions), returning its output
    node (timm's ``_create_fx_model``)."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


# locvit's own model classes; the hosts that localize() rewires are timm's classes whose token grid comes from
# forward hooks, which torch.fx does not run (docs/timm.md)
TRACEABLE = [n for n in every_model(DISTINCT) if any(
    issubclass(c, TimmModel) for c in spec_of(getattr(n, "values", [n])[0]).classes)]


@pytest.mark.parametrize("name", TRACEABLE)
def test_fx_trace_matches_eager(name):
    """torch.fx traces every locvit model (shape-dependent helpers are leaves), so timm's and torchvision's FX feature
    extraction take them: the traced graph gives the eager outputs exactly, and trains (every parameter a
    gradient)."""
    model = small_model(name, num_classes=NUM_CLASSES).eval()
    x = torch.randn(1, 3, SMALL_SIZE, SMALL_SIZE)
    with torch.inference_mode():
        expected = model(x)
        traced = _fx_model(model)
        out = next(iter(traced(x).values()))
    assert torch.equal(out, expected)
    model.train()
    traced = _fx_model(model, train=True).train()
    out = next(iter(traced(torch.randn(2, 3, SMALL_SIZE, SMALL_SIZE)).values()))
    out.mean().backward()
    assert out.shape == (2, NUM_CLASSES)
    assert not [n for n, p in traced.named_parameters() if p.grad is None]
    assert sum(p.numel() for p in traced.parameters()) == sum(p.numel() for p in model.parameters())
