"""The timm model contract, checked on every registered locvit model (in the spirit of timm's
tests/test_models.py). Families join by registering; nothing here names a family."""
import math

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timm.optim import create_optimizer_v2

import locvit

MODELS = locvit.list_models()
NUM_CLASSES = 7


def small_input_size(model) -> tuple[int, int]:
    """The smallest input a model declares (``min_input_size``), else 64x64: keeps the suite fast."""
    cfg = model.pretrained_cfg
    size = cfg.get("test_input_size") or cfg.get("min_input_size") or (3, 64, 64)
    return tuple(size[-2:])


def unused_params(model) -> set:
    """Parameters a model documents as unused by its forward (official quirks kept for checkpoint keys)."""
    return set(getattr(model, "unused_parameters", ()))


@pytest.mark.parametrize("name", MODELS)
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

    # forward + backward, every trainable parameter gets a gradient
    model.train()
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    skip = unused_params(model)
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None and n not in skip]
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


@pytest.mark.parametrize("name", MODELS)
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


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_channels(name):
    model = locvit.create_model(name, num_classes=NUM_CLASSES).eval()
    H, W = small_input_size(model)
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 1, H, W))
    with pytest.raises(ValueError):
        model(torch.randn(3, H, W))


@pytest.mark.parametrize("name", MODELS)
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
