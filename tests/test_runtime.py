"""locvit.runtime: the allocator tuning keeps freed tensors in the process (checked by page faults, not time)."""
import subprocess
import sys
import textwrap

import pytest

from locvit import runtime

glibc = pytest.mark.skipif(runtime._mallopt() is None, reason="needs glibc's mallopt")

_FAULTS = textwrap.dedent("""
    import resource, sys, torch, locvit
    if sys.argv[1] == "tuned":
        assert locvit.tune_cpu_allocator()
    torch.set_num_threads(1)
    model = locvit.create_model("pvt_tiny").eval()  # stage 1: a few 3-6 MB activations per forward
    x = torch.randn(1, 3, 224, 224)
    faults = []
    with torch.inference_mode():
        for _ in range(7):
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model(x)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    print(*faults[3:])  # the first forwards grow the heap to its working size in either mode
""")


def _faults(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return [int(n) for n in out.stdout.strip().splitlines()[-1].split()]


@glibc
def test_tuned_allocator_reuses_freed_tensors():
    plain, tuned = _faults("plain"), _faults("tuned")
    # untuned, glibc maps and unmaps the large activations on every forward (measured 3,900-6,200 faults a forward
    # once warm); tuned, the heap reaches its working size in two forwards and then faults ~0 times a forward
    assert min(plain) > 1000, plain
    assert max(tuned) < min(plain) / 10, (plain, tuned)


@glibc
def test_settings_are_reported(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", None)
    assert runtime.allocator_settings() is None
    assert runtime.tune_cpu_allocator(16 << 20, 1 << 29)
    assert runtime.allocator_settings() == {"mmap_threshold": 16 << 20, "trim_threshold": 1 << 29}
    assert runtime.tune_cpu_allocator()  # back to the defaults the CLI uses


def test_env_switch_turns_it_off(monkeypatch):
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv("LOCVIT_TUNE_MALLOC", "0")
    assert runtime.tune_from_env() is False
    assert runtime.allocator_settings() is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(mmap_threshold=64 << 20), "glibc's limit"),
    (dict(mmap_threshold=0), "mmap_threshold"),
    (dict(trim_threshold=-1), "trim_threshold"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        runtime.tune_cpu_allocator(**kwargs)
