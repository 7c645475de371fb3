"""worker/memory.py: a process that runs the models keeps the memory it frees (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 200 blocks of 1 MiB, touched, then freed: what a forward's activations do, in miniature. Prints
# the resident MiB after the free.
PROGRAM = """
import sys
if sys.argv[1] == "keep":
    from worker.memory import keep_freed_memory
    assert keep_freed_memory()
blocks = [bytearray(1 << 20) for _ in range(200)]
del blocks
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(rss // 1024)
"""


def resident_after_free(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="malloc settings are glibc's; elsewhere nothing changes")
def test_freed_memory_stays_with_the_process_for_the_next_batch():
    kept, default = resident_after_free("keep"), resident_after_free("default")
    assert kept >= default + 150, (kept, default)  # glibc alone gives the 200 MiB back at once


def test_elsewhere_nothing_changes(monkeypatch):
    from worker import memory

    memory.keep_freed_memory.cache_clear()
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    try:
        assert memory.keep_freed_memory() is False
    finally:
        memory.keep_freed_memory.cache_clear()
