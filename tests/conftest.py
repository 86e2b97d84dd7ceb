import os
from pathlib import Path

import pytest
import torch

import locvit

# Two cores: one intra-op thread per pytest worker keeps parallel workers from fighting.
torch.set_num_threads(int(os.environ.get("LOCVIT_TEST_THREADS", "1")))
# The suite runs with the library's default process settings: the allocator tuning the locvit command applies
# (locvit.tune_cpu_allocator) is tested explicitly, in fresh subprocesses, by test_runtime.py.

REPO = Path(__file__).resolve().parents[1]
# the conformance vectors that ship with the repository (scripts/make_conformance.py made them from the official code)
REPO_CONFORMANCE = REPO / "tests" / "conformance"


def conformance_dir() -> Path:
    """The full conformance set (vectors and manifests): ``$LOCVIT_CONFORMANCE_DIR`` or ``../shared/conformance``;
    a user's clone has none, and the tests that need it skip."""
    return Path(os.environ.get("LOCVIT_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    d = conformance_dir()
    if not d.is_dir():
        pytest.skip(f"conformance data not found at {d} (set LOCVIT_CONFORMANCE_DIR); a user's clone has none")
    return d


@pytest.fixture(autouse=True, scope="session")
def _default_allocator():
    """Nothing run in the test process tunes glibc's allocator (e.g. ``locvit.cli.main``'s start-up): once set, glibc's
    adaptive mmap threshold cannot be restored, so one test would change the allocator for every later test in its
    process. Subprocesses are not affected (test_runtime.py measures tuned processes; CLI subprocesses start as a
    user's ``locvit`` command does)."""
    from locvit import runtime

    # session-wide, so that module-scoped fixtures (a run trained once for a module's tests) are covered too
    patch = pytest.MonkeyPatch()
    patch.setattr(runtime, "_mallopt", lambda: None)
    yield
    patch.undo()


# --- small models: each registered model's own widths, heads, windows, stems and options, at most two blocks per
# stage (what is tested does not depend on how many identical blocks follow each other), a 64x64 input --------------
SMALL_SIZE = 64

# one model per distinct forward: every stem, attention kind, token-to-token module and feed-forward variant
DISTINCT = [
    "localvit_tiny", "localvit_tiny_mlp6_relu6", "regionvit_tiny", "regionvit_base_w14_peg", "focal_tiny",
    "focal_tiny_useconv", "focalv2_tiny_useconv", "vvt_tiny", "pvt_tiny", "localvit_pvt_tiny", "localvit_swin_tiny",
    "t2t_vit_7", "t2t_vit_t_14", "localvit_t2t_vit_7", "localvit_tnt_tiny",
]


def small_kwargs(name: str) -> dict:
    """Constructor overrides that keep ``name``'s architecture and cut its depth (every block kind stays: shifted
    Swin windows need two blocks a stage)."""
    if name.startswith("regionvit"):
        return dict(depth=(1, 1, 2, 1), img_size=SMALL_SIZE)
    if name.startswith("localvit_swin"):
        return dict(depths=(2, 2, 2, 2), img_size=SMALL_SIZE)
    if locvit.family_of(name) in ("focal", "vvt", "pvt") or name.startswith("localvit_pvt"):
        return dict(depths=(1, 1, 2, 1), img_size=SMALL_SIZE)
    return dict(depth=2, img_size=SMALL_SIZE)  # isotropic: DeiT, T2T, TNT hosts


def small_model(name: str, **kwargs) -> torch.nn.Module:
    """``name`` built by :func:`small_kwargs` from seed 0."""
    torch.manual_seed(0)
    return locvit.create_model(name, **small_kwargs(name), **kwargs)


def every_model(default: list[str]) -> list:
    """All registered models; those not in ``default`` are marked heavy (``make test-heavy``)."""
    return [n if n in default else pytest.param(n, marks=pytest.mark.heavy) for n in locvit.list_models()]


def in_fresh_interpreter(case, *args) -> None:
    """Run ``case(*args)`` (a module-level function of a test module) in a spawned interpreter, so that OpenVINO's and
    NNCF's native runtimes are never loaded into the test process: loaded in a pytest-xdist worker that had also run
    DataLoader workers, they made the worker die at its next subprocess. The case's assertion error prints its
    traceback there."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=case, args=args)
    proc.start()
    proc.join(900)
    assert proc.exitcode == 0, f"{case.__name__} failed in its own interpreter (exit code {proc.exitcode})"
