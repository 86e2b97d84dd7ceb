"""The CONFORMANCE.md contract: official logits reproduced from official weights; official manifests matched
(parameter count, strict load of an official-shaped state dict)."""
import json

import pytest
import torch

import locvit
from conftest import conformance_dir

VECTORS = sorted((conformance_dir() / "vectors").glob("*/*.pt"))
MANIFESTS = [p for p in sorted((conformance_dir() / "manifests").glob("*.json"))
             if json.loads(p.read_text()).get("official_class")]


def _vector(path):
    v = torch.load(path, weights_only=True)
    if v["official_class"] not in locvit.official_classes():
        pytest.skip(f"{v['official_class']} is not translated by locvit yet")
    return v


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_float32(path):
    v = _vector(path)
    model = locvit.from_official(v["official_class"], v["constructor_kwargs"], state_dict=v["state_dict"]).eval()
    with torch.no_grad():
        out = model(v["input"])
    assert out.shape == v["logits"].shape
    err = (out - v["logits"]).abs().max().item()
    assert err <= 1e-4, f"max |logit diff| {err:.3e} > 1e-4"


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_vector_float64(path):
    v = _vector(path)
    if v.get("logits_float64") is None:
        pytest.skip("the official model cannot run in float64 (vector has no float64 logits)")
    model = locvit.from_official(v["official_class"], v["constructor_kwargs"], state_dict=v["state_dict"])
    model = model.double().eval()
    with torch.no_grad():
        out = model(v["input"].double())
    err = (out - v["logits_float64"]).abs().max().item()
    assert err <= 1e-8, f"max |logit diff| {err:.3e} > 1e-8 (float64)"


def _manifest(path):
    m = json.loads(path.read_text())
    if not locvit.list_models(m["official_name"], include_aliases=True) and m["family"] != "localvit_baseline":
        pytest.skip(f"{m['official_name']} is not registered by locvit yet")
    import timm

    if not timm.is_model(m["official_name"]):
        pytest.skip(f"{m['official_name']} is not registered yet")
    return m


def _official_state_dict(m):
    dtypes = {k: getattr(torch, d.split(".")[-1]) for k, d in (m.get("state_dict_non_float32") or {}).items()}
    sd = {}
    for k, shape in m["state_dict"].items():
        dt = dtypes.get(k, torch.float32)
        sd[k] = torch.zeros(shape, dtype=dt) if not dt.is_floating_point else torch.randn(shape, dtype=dt) * 0.02
    for group in m.get("state_dict_shared_storage") or []:
        for k in group[1:]:
            sd[k] = sd[group[0]]
    return sd


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_manifest(path):
    m = _manifest(path)
    model = locvit.create_model(m["official_name"], num_classes=m["num_classes"])
    # official parameters that are never trained (T2T's fixed tables, unused norms) are persistent buffers here:
    # the same state-dict keys (the strict load below checks them), counted with the parameters
    buffers = dict(model.named_buffers())
    n = sum(p.numel() for p in model.parameters())
    n += sum(buffers[k].numel() for k in getattr(model, "official_parameter_buffers", ()))
    assert n == m["param_count"], f"{n} parameters, official {m['param_count']}"
    report = locvit.load_checkpoint(model, _official_state_dict(m), strict=True)
    assert report.exact and report.loaded
