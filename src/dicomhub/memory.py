"""Giving freed heap memory back to the kernel, in every long-running server process.

glibc's allocator keeps what a process frees: a free chunk in the middle of an arena
stays resident until something reuses it, and only the top of an arena is returned
(``M_TRIM_THRESHOLD``).  A server that has handled a burst of requests — thousands of
small STOW-RS bodies, a 157 MB instance, a QIDO answer of many studies — so keeps the
peak of that burst resident for good, in every worker, and on a 2-core host with six
processes that is what decides whether the whole server fits in 300 MiB
(docs/benchmarks.md).  Measured on an HTTP worker after 40,000 small instances:
``malloc_trim(0)`` gave back 7–11 MiB of its 48–52 MiB private memory.

:class:`HeapTrimmer` calls ``malloc_trim(0)`` (malloc_trim(3): releases the free pages
of every arena, not only the top) on a thread of its own, once per ``interval`` seconds
*if the process has done work since the last call* (its CPU time grew), so an idle
server does not wake for nothing.  The call runs without the interpreter lock (ctypes),
takes each arena's lock only briefly, and costs ~1–3 ms for a worker's heap; what it
releases is faulted back in only if needed again.  Where the C library has no
``malloc_trim`` (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)

#: seconds between checks
TRIM_INTERVAL = 1.0
#: CPU seconds the process must have used since the last trim before the next one
TRIM_MIN_CPU = 0.01
#: the trimming thread's name (/proc/<pid>/task/<tid>/comm)
THREAD_NAME = "heap-trimmer"


def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_MALLOC_TRIM = _libc_malloc_trim()


def malloc_trim() -> bool | None:
    """Return the free memory of every malloc arena to the kernel (malloc_trim(3) with
    pad 0): True if some was released, False if none could be, None where the C library
    has no such call."""
    if _MALLOC_TRIM is None:
        return None
    return bool(_MALLOC_TRIM(0))


class HeapTrimmer:
    """Calls :func:`malloc_trim` every ``interval`` seconds while the process works.

    Use as a context manager around a server's life (started after any ``fork`` that
    must happen without threads, e.g. the zygote's); :meth:`tick` is one check.
    """

    def __init__(
        self,
        interval: float = TRIM_INTERVAL,
        min_cpu: float = TRIM_MIN_CPU,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.interval = interval
        self.min_cpu = min_cpu
        self._cpu_clock = cpu_clock
        self._last_cpu = cpu_clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: how many times memory was trimmed (for tests and diagnostics)
        self.trims = 0

    def tick(self) -> bool:
        """Trim if the process used at least ``min_cpu`` CPU seconds since the last
        trim; True if it trimmed."""
        if _MALLOC_TRIM is None:
            return False
        now = self._cpu_clock()
        if now - self._last_cpu < self.min_cpu:
            return False
        malloc_trim()
        # the trim's own CPU time does not count as work
        self._last_cpu = self._cpu_clock()
        self.trims += 1
        return True

    def _run(self) -> None:
        from dicomhub.zygote import set_process_name

        set_process_name(THREAD_NAME)  # this thread's name, for ps -L and /proc/*/task
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # never take the process down for this
                log.exception("heap trimming failed; stopped")
                return

    def start(self) -> HeapTrimmer:
        """Start the thread (nothing where there is no ``malloc_trim`` or interval ≤ 0)."""
        if _MALLOC_TRIM is not None and self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> HeapTrimmer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
