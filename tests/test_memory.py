"""dicomhub.memory: freed heap memory given back to the kernel (malloc_trim(3)).

What came in: a process that allocated ~96 MiB in 32 KiB blocks on the C heap and freed
all but the last (which pins the top of the heap, so free() alone cannot return the
rest); a trimmer asked to trim right after work, and again right after that; a trimmer
thread left running.  The heap test runs in a fresh process (the test process's own
heap would blur the numbers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dicomhub import memory

pytestmark = pytest.mark.skipif(
    memory.malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)"
)

PROGRAM = textwrap.dedent(
    """
    import json, sys
    from dicomhub.memory import malloc_trim

    def private_kib():
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])

    before = private_kib()
    # bytes over 512 B come from malloc; 32 KiB is under its mmap threshold: the heap
    blocks = [b"\\1" * 32768 for _ in range(3072)]
    grown = private_kib()
    del blocks[:-1]  # the last block pins the top of the heap
    freed = private_kib()
    released = malloc_trim()
    trimmed = private_kib()
    json.dump({"before": before, "grown": grown, "freed": freed, "released": released,
               "trimmed": trimmed}, sys.stdout)
    """
)


def test_malloc_trim_gives_freed_heap_pages_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True
    )
    kib = json.loads(out.stdout)
    assert kib["grown"] - kib["before"] > 80 * 1024, kib  # the blocks were resident
    assert kib["freed"] - kib["before"] > 80 * 1024, kib  # free() alone kept them
    assert kib["released"] is True
    assert kib["freed"] - kib["trimmed"] > 80 * 1024, kib  # the trim gave them back


def _burn(cpu_seconds: float) -> None:
    start = time.process_time()
    x = 0
    while time.process_time() - start < cpu_seconds:
        x += sum(range(1000))


def test_trims_only_after_the_process_worked() -> None:
    trimmer = memory.HeapTrimmer(interval=0, min_cpu=0.05)
    _burn(0.06)
    assert trimmer.tick() is True
    assert trimmer.trims == 1
    trimmer.min_cpu = 5.0  # no 5 CPU seconds pass before the next line
    assert trimmer.tick() is False
    assert trimmer.trims == 1


def test_the_thread_trims_while_the_process_works_and_stops() -> None:
    with memory.HeapTrimmer(interval=0.02, min_cpu=0.0) as trimmer:
        thread = next(t for t in threading.enumerate() if t.name == memory.THREAD_NAME)
        deadline = time.monotonic() + 10
        while trimmer.trims < 3 and time.monotonic() < deadline:
            _burn(0.01)
        assert trimmer.trims >= 3
    assert not thread.is_alive()


def test_a_zero_interval_starts_no_thread() -> None:
    trimmer = memory.HeapTrimmer(interval=0).start()
    assert not any(t.name == memory.THREAD_NAME for t in threading.enumerate())
    trimmer.stop()
