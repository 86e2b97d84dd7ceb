"""Run timm's own model test suite (``tests/test_models.py`` of a pytorch-image-models checkout) against every
registered locvit model.

timm's file is copied to a temporary folder (never into this repository) with its model lists restricted to
``locvit.list_models()``:

* every ``list_models``/``list_pretrained`` call it makes returns locvit's models only;
* models whose features are token sequences (RegionViT, PVT, DeiT/T2T/TNT hosts: ``pool_size`` None in the pretrained
  cfg) join timm's ``NON_STD_FILTERS``, as timm classifies its own ViTs; the spatial ones (Focal, Focal v2, VVT,
  LocalViT-Swin) take the standard default-cfg test;
* locvit's model modules join ``FEAT_INTER_FILTERS`` (the models with ``forward_intermediates``);
* deselected: TorchScript (not part of locvit's contract), the tests that download pretrained weights (locvit
  downloads nothing; ``test_model_inference``, ``test_model_load_pretrained``, ``test_model_features_pretrained``)
  and the tests of individual timm models (not parametrised over the model lists).

Usage::

    python scripts/timm_contract.py /path/to/pytorch-image-models [pytest arguments, e.g. -k backward -x -q]

The installed timm is the one tested against (the checkout provides the test file only).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DESELECTED = ("test_model_forward_torchscript", "test_model_forward_fx_torchscript",
              "test_model_forward_torchscript_with_features_fx", "test_model_inference",
              "test_model_load_pretrained", "test_model_features_pretrained")

CONFTEST = f'''
import pytest
import timm
import timm.models

import locvit

_OURS = set(locvit.list_models())


def _restricted(fn):
    def wrapped(*args, **kwargs):
        return [n for n in fn(*args, **kwargs) if n.split(".")[0] in _OURS]
    return wrapped


timm.list_models = timm.models.list_models = _restricted(timm.models.list_models)
timm.list_pretrained = timm.models.list_pretrained = _restricted(timm.models.list_pretrained)

DESELECTED = {DESELECTED!r}


def pytest_configure(config):
    for marker in ("base", "cfg", "torchscript", "features", "fxforward", "fxbackward", "timeout(seconds)"):
        config.addinivalue_line("markers", marker)


def pytest_collection_modifyitems(config, items):
    # the tests parametrised over the (restricted) model lists; the others test named timm models
    keep = [item for item in items if item.originalname not in DESELECTED
            and "model_name" in getattr(getattr(item, "callspec", None), "params", {{}})]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep
'''


def patched_test_file(source: str) -> str:
    """timm's test file with locvit's token-output models and model modules added to its filter lists."""
    sys.path.insert(0, str(REPO / "src"))
    from timm.models import get_pretrained_cfg_value, model_entrypoint

    import locvit

    names = locvit.list_models()
    token_models = [n for n in names if get_pretrained_cfg_value(n, "pool_size") is None]
    modules = sorted({model_entrypoint(n).__module__.split(".")[-1] for n in names})
    for list_name, extra in (("NON_STD_FILTERS", token_models), ("FEAT_INTER_FILTERS", modules)):
        source, count = re.subn(rf"^{list_name} = \[", f"{list_name} = {extra!r} + [", source, count=1, flags=re.M)
        if count != 1:
            raise SystemExit(f"timm's test file has no {list_name} list: is this pytorch-image-models/tests?")
    return source


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    test_file = Path(argv[0]) / "tests" / "test_models.py"
    if not test_file.is_file():
        print(f"{test_file} not found: pass the root of a pytorch-image-models checkout", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="timm_contract_") as tmp:
        Path(tmp, "test_models.py").write_text(patched_test_file(test_file.read_text()))
        Path(tmp, "conftest.py").write_text(CONFTEST)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "--rootdir", tmp,
               str(Path(tmp, "test_models.py")), *argv[1:]]
        return subprocess.call(cmd, cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
