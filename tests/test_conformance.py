"""The conformance contract (tests/conformance/README.md): official logits reproduced from official weights; official
manifests matched (parameter count, strict load of an official-shaped state dict).

The vectors in tests/conformance/ ship with the repository, so every clone checks every family against the official
code; the full set (``$LOCVIT_CONFORMANCE_DIR`` or ``../shared/conformance``, with the manifests) runs where present.
"""
import importlib.util
import json
import sys

import pytest
import torch

import locvit
from conftest import REPO, REPO_CONFORMANCE, conformance_dir
from locvit.bench.flops import count_params

FAMILIES = {"regionvit", "focal", "vvt", "localvit", "localvit_baseline"}
REPO_VECTORS = sorted((REPO_CONFORMANCE / "vectors").glob("*/*.pt"))
VECTORS = REPO_VECTORS + sorted((conformance_dir() / "vectors").glob("*/*.pt"))
MANIFESTS = [p for p in sorted((conformance_dir() / "manifests").glob("*.json"))
             if json.loads(p.read_text()).get("official_class")] or [
    pytest.param(None, marks=pytest.mark.skip(reason=f"no manifests at {conformance_dir()} (the full conformance set; "
                                                     "set LOCVIT_CONFORMANCE_DIR)"))]


def _id(path):
    return f"{'repo' if path.is_relative_to(REPO_CONFORMANCE) else 'full'}/{path.stem}"


def _vector(path):
    v = torch.load(path, weights_only=True)
    if path.is_relative_to(REPO_CONFORMANCE):  # shipped with locvit: never skipped
        return v
    if v["official_class"] not in locvit.official_classes():
        pytest.skip(f"{v['official_class']} is not translated by locvit yet")
    return v


@pytest.mark.parametrize("path", VECTORS, ids=_id)
def test_vector_float32(path):
    v = _vector(path)
    model = locvit.from_official(v["official_class"], v["constructor_kwargs"], state_dict=v["state_dict"]).eval()
    with torch.no_grad():
        out = model(v["input"])
    assert out.shape == v["logits"].shape
    err = (out - v["logits"]).abs().max().item()
    assert err <= 1e-4, f"max |logit diff| {err:.3e} > 1e-4"


@pytest.mark.parametrize("path", VECTORS, ids=_id)
def test_vector_float64(path):
    v = _vector(path)
    if v.get("logits_float64") is None:
        pytest.skip(f"the official model cannot run in float64: {v.get('float64_error', 'no float64 logits')}")
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


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem if p else "none")
def test_manifest(path):
    m = _manifest(path)
    model = locvit.create_model(m["official_name"], num_classes=m["num_classes"])
    # official parameters that are never trained (T2T's fixed tables, unused norms) are persistent buffers here:
    # the same state-dict keys (the strict load below checks them), counted with the parameters
    n = count_params(model)
    assert n == m["param_count"], f"{n} parameters, official {m['param_count']}"
    report = locvit.load_checkpoint(model, _official_state_dict(m), strict=True)
    assert report.exact and report.loaded


def test_shipped_vectors_cover_every_family_and_class():
    """Every family, and every official class locvit translates, has a vector in the repository."""
    vectors = [torch.load(p, weights_only=True) for p in REPO_VECTORS]
    assert {v["family"] for v in vectors} == FAMILIES
    assert {v["official_class"] for v in vectors} == set(locvit.official_classes())
    assert any(v["input"].shape[2] != v["input"].shape[3] for v in vectors if v["family"] != "localvit")


def test_shipped_vectors_are_what_the_generator_makes(monkeypatch):
    """scripts/make_conformance.py lists exactly the shipped vectors, with the same constructor arguments and seeds
    (so regenerating them reproduces this set)."""
    spec = importlib.util.spec_from_file_location("make_conformance", REPO / "scripts" / "make_conformance.py")
    gen = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gen)
    spec.loader.exec_module(gen)
    files = {p.relative_to(REPO_CONFORMANCE / "vectors").with_suffix("").as_posix(): p for p in REPO_VECTORS}
    assert set(files) == {f"{c.family}/{c.name}" for c in gen.CASES}
    for case in gen.CASES:
        v = torch.load(files[f"{case.family}/{case.name}"], weights_only=True)
        got = (v["official_class"], v["constructor_kwargs"], v["seed"])
        assert got == (case.official_class, case.kwargs, case.seed), case.name
        assert tuple(v["input"].shape) == (case.batch, 3, *case.input_size)
    assert sum(p.stat().st_size for p in REPO_VECTORS) < 5 << 20  # a few MB: the full set lives outside the repo
