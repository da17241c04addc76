"""Worker processes forked from a prepared process (a *zygote*): start-up memory shared.

``dicomhub serve --workers N`` / ``--dimse-workers N`` runs worker processes beside the
main process (:mod:`dicomhub.balancer`).  Started as ``python -m …``, each imported its
own ~80 MiB of modules (pydicom's data dictionary, numpy, FastAPI and pydantic,
SQLAlchemy, pynetdicom): with two HTTP and two DIMSE workers the server held ~455 MiB
(proportional set size, idle) before it stored anything.

Instead, the main process imports those modules once, moves them out of the garbage
collector's reach (:func:`gc.freeze`, so collections never write to their pages) and,
before it starts any thread or opens any database connection, forks the zygote: a
single-threaded copy that does nothing but fork a worker when the main process asks.
Every worker is then a copy of the prepared process, and the pages it only reads (most
of the modules) stay shared, copy-on-write, among all the processes (measured: 455 →
~180 MiB for the same four workers and the main process, idle; docs/benchmarks.md).
The workers build their own archive context, database connections and threads after
the fork, exactly as a ``python -m`` worker does.

Protocol over an ``AF_UNIX``/``SOCK_SEQPACKET`` pair, one request at a time:

- ``f<kind>`` with one file descriptor (the worker's end of its balancer channel):
  fork a worker of that kind; reply ``p<pid>`` or ``e<reason>``;
- ``w<pid>``: the worker has exited (its pidfd said so): reap it; reply ``s<status>``
  (the exit code, negative for a signal, as :attr:`subprocess.Popen.returncode`).

The zygote blocks SIGINT and SIGTERM (meant for the main process and the workers) and
exits when the main process's end of the pair closes; workers still running then go on
until their own channels end.  If the zygote is gone, :meth:`Zygote.spawner` falls back
to starting workers as ``python -m`` processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable

from dicomhub.balancer import WorkerProcess

log = logging.getLogger(__name__)

#: exit status reported for a worker whose status was lost with the zygote
STATUS_UNKNOWN = 255

_PR_SET_NAME = 15  # prctl(2)
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def set_process_name(name: str) -> None:
    """The name ``ps -o comm``, ``top`` and /proc/<pid>/comm show (15 bytes at most);
    called on another thread than the main one, that thread's name
    (/proc/<pid>/task/<tid>/comm)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


class ForkedWorker:
    """A worker forked by the zygote, seen from the main process: a
    :class:`WorkerProcess` over a pidfd (pidfd_open(2)), reaped by the zygote."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._zygote = zygote
        # the zygote reaps only when asked, so ``pid`` is still this process here
        self._pidfd: int | None = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None and self._exited(0):
            self._reap()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._exited(timeout):
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0)
            self._reap()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _exited(self, timeout: float | None) -> bool:
        assert self._pidfd is not None
        readable, _, _ = select.select([self._pidfd], [], [], timeout)
        return bool(readable)

    def _reap(self) -> None:
        self.returncode = self._zygote.reap(self.pid)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class Zygote:
    """The main process's handle on its zygote (see the module's text)."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self._control: socket.socket | None = control
        self._lock = threading.Lock()  # one request at a time (the balancers' threads)

    @classmethod
    def start(
        cls, entries: dict[str, Callable[[int], int]], preload: Iterable[str] = ()
    ) -> Zygote | None:
        """Import ``preload``, freeze the heap and fork the zygote, which will run
        ``entries[kind](channel_fd)`` in each worker it forks (the return value is the
        worker's exit status).  ``None`` (workers are then started as ``python -m``
        processes) when this process already runs other threads: forking it would copy
        locks those threads may hold."""
        for name in preload:
            try:
                importlib.import_module(name)
            except ImportError as exc:  # an optional module (e.g. uvloop) not installed
                log.debug("zygote: %s not preloaded: %s", name, exc)
        if threading.active_count() > 1:
            log.warning("worker processes are started without sharing memory: threads run")
            return None
        try:  # the main process watches forked workers through pidfds (Linux 5.3+)
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError) as exc:
            log.warning("worker processes are started without sharing memory: %s", exc)
            return None
        gc.collect()
        gc.freeze()  # shared pages stay shared: collections never touch these objects
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the zygote: never returns
            status = 1
            try:
                ours.close()
                status = _zygote_loop(theirs, entries)
            except BaseException:  # a zygote must not unwind into the main process's code
                traceback.print_exc()
            finally:
                os._exit(status)
        theirs.close()
        return cls(pid, ours)

    # -- main process side ----------------------------------------------------------------
    def spawner(
        self, kind: str, fallback: Callable[[socket.socket], WorkerProcess]
    ) -> Callable[[socket.socket], WorkerProcess]:
        """A ``spawn`` for :class:`dicomhub.balancer.Balancer`: a worker of ``kind``
        forked by the zygote, or by ``fallback`` when the zygote is gone."""

        def spawn(channel: socket.socket) -> WorkerProcess:
            try:
                return self.fork(kind, channel)
            except (OSError, EOFError) as exc:
                log.warning("zygote unavailable (%s): starting a %s worker afresh", exc, kind)
                return fallback(channel)

        return spawn

    def fork(self, kind: str, channel: socket.socket) -> ForkedWorker:
        """A new worker of ``kind`` serving ``channel`` (the zygote gets a copy of it)."""
        reply = self._request(b"f" + kind.encode(), [channel.fileno()])
        if reply[:1] != b"p":
            raise OSError(f"the zygote could not fork a {kind} worker: {reply[1:].decode()}")
        return ForkedWorker(self, int(reply[1:]))

    def reap(self, pid: int) -> int:
        """The exit status of worker ``pid`` (which has exited), from the zygote."""
        try:
            reply = self._request(b"w%d" % pid, [])
        except (OSError, EOFError):
            return STATUS_UNKNOWN  # the zygote is gone, and init reaped its children
        return int(reply[1:]) if reply[:1] == b"s" else STATUS_UNKNOWN

    def close(self, timeout: float = 10.0) -> None:
        """End the zygote (its workers go on until their channels end) and reap it."""
        with self._lock:
            if self._control is None:
                return
            self._control.close()
            self._control = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    def _request(self, message: bytes, fds: list[int]) -> bytes:
        with self._lock:
            if self._control is None:
                raise EOFError("the zygote was closed")
            socket.send_fds(self._control, [message], fds)
            reply = self._control.recv(256)
        if not reply:
            raise EOFError("the zygote is gone")
        return reply


def _zygote_loop(control: socket.socket, entries: dict[str, Callable[[int], int]]) -> int:
    """The zygote: fork workers and reap them on request until the main process goes."""
    set_process_name("dicomhub-zygote")
    # blocked, not ignored: a worker forked here unblocks them once it has its own
    # dispositions, so a SIGTERM sent right after the fork waits for it (an ignored
    # one would be lost)
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 256, 1)
        except InterruptedError:
            continue
        if not message:
            return 0  # the main process closed its end or is gone
        op, arg = message[:1], message[1:]
        if op == b"f":
            kind = arg.decode(errors="replace")
            if kind not in entries or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                control.send(b"e" + f"no worker kind {kind!r} or no channel".encode())
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                os.close(fds[0])
                control.send(b"e" + str(exc).encode())
                continue
            if pid == 0:
                control.close()
                _worker(kind, entries[kind], fds[0])  # never returns
            os.close(fds[0])
            control.send(b"p%d" % pid)
        elif op == b"w":
            try:
                _, status = os.waitpid(int(arg), 0)
                code = os.waitstatus_to_exitcode(status)
            except (ChildProcessError, ValueError):
                code = STATUS_UNKNOWN
            control.send(b"s%d" % code)
        else:
            for fd in fds:
                os.close(fd)
            control.send(b"e" + b"unknown request")


def _worker(kind: str, entry: Callable[[int], int], channel: int) -> None:
    """A forked worker: run ``entry(channel)``, exit with its status; never returns."""
    status = 1
    try:
        set_process_name(f"dicomhub-{kind}")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        status = entry(channel)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # reported, and the process ends here
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)
