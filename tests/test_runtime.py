"""locvit.runtime: the allocator tuning keeps freed tensors in the process (checked by glibc's own accounting of
mapped and heap bytes and by the settings applied; never by time or page-fault counts, which depend on the machine:
those are measured in docs/benchmarks/README.md, *Allocator*)."""
import ctypes
import subprocess
import sys
import textwrap

import pytest

from locvit import runtime

glibc = pytest.mark.skipif(runtime._mallopt() is None, reason="needs glibc's mallopt")

_HEAP = textwrap.dedent("""
    import ctypes, sys, torch, locvit
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if sys.argv[1] == "tuned":
        assert locvit.tune_cpu_allocator()
    for size in (20 << 20, 8 << 20, 30 << 20):
        before = libc.mallinfo2()
        t = torch.empty(size, dtype=torch.uint8).fill_(1)
        during = libc.mallinfo2()
        del t
        after = libc.mallinfo2()
        # bytes in own mappings while alive; heap bytes still held after the free
        print(during.hblkhd - before.hblkhd, after.arena - before.arena)
""")


def _run(script: str, mode: str) -> list[list[int]]:
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
    return [[int(n) for n in line.split()] for line in out.stdout.strip().splitlines()]


@pytest.mark.skipif(runtime._mallopt() is None or not hasattr(ctypes.CDLL(None), "mallinfo2"),
                    reason="needs glibc >= 2.33 (mallinfo2)")
def test_tuned_allocator_serves_tensors_from_the_heap_and_keeps_it():
    # a fresh untuned process maps a 20 MB tensor on its own and unmaps it on free (then glibc's threshold adapts)
    plain = _run(_HEAP, "plain")
    assert plain[0][0] >= 20 << 20 and plain[0][1] < 1 << 20, plain
    # tuned: every tensor up to 32 MB comes from the heap, and freeing it does not hand the pages back
    tuned = _run(_HEAP, "tuned")
    assert all(mapped == 0 for mapped, _ in tuned), tuned
    assert tuned[0][1] >= 16 << 20, tuned


_SETTINGS = textwrap.dedent("""
    import os
    from locvit import cli, runtime
    print("settings:", runtime.allocator_settings())  # a fresh process: glibc's defaults
    os.environ["LOCVIT_TUNE_MALLOC"] = "0"
    assert cli.main(["models", "localvit_tiny", "--no-flops"]) == 0
    print("settings:", runtime.allocator_settings())  # the locvit command, switched off
    os.environ["LOCVIT_TUNE_MALLOC"] = "1"
    assert cli.main(["models", "localvit_tiny", "--no-flops"]) == 0
    print("settings:", runtime.allocator_settings())  # the locvit command's start-up
    assert runtime.tune_cpu_allocator(16 << 20, 1 << 29)
    print("settings:", runtime.allocator_settings())
""")


@glibc
def test_settings_and_the_locvit_command():
    """A fresh process runs glibc's defaults (as this test process does); the locvit command tunes at start unless
    LOCVIT_TUNE_MALLOC=0; the settings applied are reported."""
    out = subprocess.run([sys.executable, "-c", _SETTINGS], capture_output=True, text=True, check=True)
    seen = [line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith("settings: ")]
    cli_default = {"mmap_threshold": runtime.MAX_MMAP_THRESHOLD, "trim_threshold": 1 << 30}
    assert seen == ["None", "None", str(cli_default), str({"mmap_threshold": 16 << 20, "trim_threshold": 1 << 29})]


def test_the_test_process_keeps_the_default_allocator():
    """conftest.py keeps every in-process call from tuning (it could not be undone for the later tests)."""
    assert runtime.tune_cpu_allocator() is False and runtime.allocator_settings() is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(mmap_threshold=64 << 20), "glibc's limit"),
    (dict(mmap_threshold=0), "mmap_threshold"),
    (dict(trim_threshold=-1), "trim_threshold"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        runtime.tune_cpu_allocator(**kwargs)
