import os
from pathlib import Path

import pytest
import torch

import locvit

# Two cores: one intra-op thread per pytest worker keeps parallel workers from fighting.
torch.set_num_threads(int(os.environ.get("LOCVIT_TEST_THREADS", "1")))
# as the locvit command does: freed activations stay in the process (locvit.runtime); the tests of that setting
# itself run in fresh subprocesses
locvit.tune_cpu_allocator()

REPO = Path(__file__).resolve().parents[1]


def conformance_dir() -> Path:
    return Path(os.environ.get("LOCVIT_CONFORMANCE_DIR", REPO.parent / "shared" / "conformance"))


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    d = conformance_dir()
    if not d.is_dir():
        pytest.skip(f"conformance data not found at {d} (set LOCVIT_CONFORMANCE_DIR); a user's clone has none")
    return d
