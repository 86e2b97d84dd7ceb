import os
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _default_allocator(monkeypatch):
    """Nothing run in the test process tunes glibc's allocator (e.g. ``locvit.cli.main``'s start-up): once set, glibc's
    adaptive mmap threshold cannot be restored, so one test would change the allocator for every later test in its
    process. Subprocesses are not affected (test_runtime.py measures tuned processes; CLI subprocesses start as a
    user's ``locvit`` command does)."""
    from locvit import runtime

    monkeypatch.setattr(runtime, "_mallopt", lambda: None)
