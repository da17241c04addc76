"""Connections spread over worker processes: fewest open connections first.

With one listening socket shared by several processes (how ``uvicorn --workers`` and
the DIMSE workers used to accept), the kernel hands a new connection to whichever
process is first to call ``accept``.  When a few large uploads arrive together, one
process often takes them all while the other stays idle: measured with ``--workers 2``
and four STOW-RS clients, runs where one worker did 3/4 of the work were a third slower
than the runs split two and two (docs/benchmarks.md).

Here one thread of the main process accepts every connection and passes it
(``SCM_RIGHTS``, unix(7)) over a private channel to the worker with the fewest open
connections, like HAProxy's ``leastconn``; each worker reports back every connection
it has closed.  The data of a connection never passes through the main process.

The channel is an ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair, one per worker.  Records:

- main → worker: ``c`` with one file descriptor, a connection to serve;
- worker → main: ``r`` once it serves (before that it gets nothing), ``-`` per
  connection it has closed.

A worker that dies is started again (with a growing delay if it keeps dying); its
connections are gone with it.  When the main process goes away, the workers see the end
of their channel and stop.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

CONNECTION = b"c"
READY = b"r"
CLOSED = b"-"

#: delays before starting again a worker that died (seconds), the last one repeating
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: a worker that served this long before dying is started again after the first delay
STABLE_AFTER = 60.0
#: connections taken from the listen queue per wake-up at most (then others get a turn)
ACCEPT_BATCH = 64


class WorkerProcess(Protocol):
    """What :class:`Balancer` needs of a worker process
    (:class:`subprocess.Popen` has it; so has :class:`dicomhub.zygote.ForkedWorker`)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """The main process's listening TCP socket on ``host`` (IPv4 or IPv6) and ``port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def python_worker(module: str, env: dict[str, str]) -> Callable[[socket.socket], WorkerProcess]:
    """A ``spawn`` for :class:`Balancer`: ``python -m <module> --channel <fd>`` in the
    environment ``env``, the channel's end inherited."""

    def spawn(channel: socket.socket) -> subprocess.Popen[bytes]:
        fd = channel.fileno()
        command = [sys.executable, "-m", module, "--channel", str(fd)]
        return subprocess.Popen(command, pass_fds=(fd,), env=env)

    return spawn


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected ``SOCK_SEQPACKET`` pair: (the main process's end, the worker's end).

    The worker's end is inheritable (it is passed to the worker with ``pass_fds``)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


@dataclass
class _Worker:
    """A worker process seen from the main process."""

    slot: int
    channel: socket.socket | None = None
    process: WorkerProcess | None = None
    ready: bool = False
    open: int = 0
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    exit_note: str = ""  # how the last process ended


class Balancer:
    """Accepts on ``listen`` and hands each connection to one of ``workers`` processes.

    ``spawn(channel)`` starts a worker given its end of the channel (to pass to the
    child, e.g. with ``pass_fds``; the caller's copy is closed by the balancer once the
    process runs) and returns the process (:func:`python_worker` makes one).
    :meth:`serve` runs the accept loop on the calling thread until :meth:`stop`;
    :meth:`start` runs it on a thread of its own.  The workers' state belongs to that
    loop alone; other threads (and signal handlers) only ask it to stop.
    """

    def __init__(
        self,
        listen: socket.socket,
        spawn: Callable[[socket.socket], WorkerProcess],
        workers: int,
        name: str = "worker",
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.listen = listen
        self.listen.setblocking(False)
        self.name = name
        self._spawn = spawn
        self._workers = [_Worker(slot) for slot in range(workers)]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._next = 0  # round robin among equally loaded workers

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers and the accept loop on a thread of its own."""
        self._thread = threading.Thread(target=self.serve, name=f"{self.name}-balancer")
        self._thread.start()

    def serve(self) -> None:
        """Start the workers, then accept and hand out connections until :meth:`stop`."""
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for w in self._workers:
            self._start_worker(w)
        try:
            while not self._stopping.is_set():
                self._restart_due()
                timeout = self._next_restart_in()
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif key.fileobj is self.listen:
                        self._accept()
                    else:
                        self._from_worker(key.data)
        finally:
            self._stop_workers()
            self._selector.close()
            self._wake_r.close()

    def request_stop(self) -> None:
        """Ask the accept loop to stop (safe in a signal handler); :meth:`serve` then
        stops the workers (SIGTERM: they finish their requests) and returns."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stop(self) -> None:
        """:meth:`request_stop`, and wait until the workers have stopped."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join()

    # -- workers ----------------------------------------------------------------------------
    def _start_worker(self, w: _Worker) -> None:
        ours, theirs = channel_pair()
        try:
            process = self._spawn(theirs)
        except Exception:
            log.exception("%s %d: cannot start", self.name, w.slot)
            ours.close()
            w.failures += 1
            w.exit_note = "could not start"
            self._schedule_restart(w)
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        w.channel, w.process, w.ready, w.open = ours, process, False, 0
        w.started, w.restart_at = time.monotonic(), None
        self._selector.register(ours, selectors.EVENT_READ, w)

    def _from_worker(self, w: _Worker) -> None:
        assert w.channel is not None
        while True:
            try:
                record = w.channel.recv(16)
            except BlockingIOError:
                return
            except OSError:
                record = b""
            if not record:
                self._worker_gone(w)
                return
            if record == READY:
                w.ready = True
                log.info("%s %d (pid %s) serving", self.name, w.slot, self._pid(w))
                self._update_accepting()
            elif record == CLOSED:
                w.open = max(0, w.open - 1)

    def _worker_gone(self, w: _Worker) -> None:
        """The channel ended: the worker exited (or closed it); reap it, start another."""
        assert w.channel is not None
        self._selector.unregister(w.channel)
        w.channel.close()
        code = None
        if w.process is not None:
            try:
                code = w.process.wait(10)
            except subprocess.TimeoutExpired:
                w.process.kill()
                code = w.process.wait()
        w.channel, w.ready, w.open = None, False, 0
        lived = time.monotonic() - w.started
        self._update_accepting()
        if self._stopping.is_set():
            return
        w.exit_note = f"exited with status {code} after {lived:.0f} s"
        w.failures = 0 if lived >= STABLE_AFTER else w.failures + 1
        self._schedule_restart(w)

    def _schedule_restart(self, w: _Worker) -> None:
        # never at once: when the whole server is being stopped (SIGTERM to its process
        # group) the workers end first and the request to stop follows within moments
        delay = RESTART_DELAYS[min(max(w.failures, 1), len(RESTART_DELAYS)) - 1]
        w.restart_at = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for w in self._workers:
            if w.restart_at is not None and w.restart_at <= now and w.channel is None:
                log.warning(
                    "%s %d (pid %s) %s; starting another",
                    self.name,
                    w.slot,
                    self._pid(w),
                    w.exit_note or "could not start",
                )
                self._start_worker(w)

    def _next_restart_in(self) -> float | None:
        due = [w.restart_at for w in self._workers if w.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    @staticmethod
    def _pid(w: _Worker) -> int | str:
        return w.process.pid if w.process is not None else "?"

    def _stop_workers(self, grace: float = 30.0) -> None:
        if self._accepting:
            self._selector.unregister(self.listen)
            self._accepting = False
        procs = [w.process for w in self._workers if w.process is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s pid %d did not stop in %.0f s: killed", self.name, p.pid, grace)
                p.kill()
                p.wait()
        for w in self._workers:
            if w.channel is not None:
                w.channel.close()
                w.channel = None

    # -- connections ------------------------------------------------------------------------
    def _update_accepting(self) -> None:
        """Accept only while some worker serves: until then connections wait in the
        listen queue (a client is never handed to a worker that cannot take it)."""
        want = any(w.ready for w in self._workers) and not self._stopping.is_set()
        if want and not self._accepting:
            self._selector.register(self.listen, selectors.EVENT_READ, None)
        elif not want and self._accepting:
            self._selector.unregister(self.listen)
        self._accepting = want

    def _choose(self, exclude: set[int]) -> _Worker | None:
        """The ready worker with the fewest open connections (round robin among equals),
        other than the slots in ``exclude``."""
        ready = [w for w in self._workers if w.ready and w.slot not in exclude]
        if not ready:
            return None
        n = len(self._workers)
        ready.sort(key=lambda w: (w.open, (w.slot - self._next) % n))
        chosen = ready[0]
        self._next = (chosen.slot + 1) % n
        return chosen

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave it in the queue for a moment
                log.warning("%s balancer: accept failed: %s", self.name, exc)
                time.sleep(0.05)
                return
            try:
                self._hand_over(conn)
            finally:
                conn.close()  # the worker has its own descriptor now

    def _hand_over(self, conn: socket.socket, patience: float = 10.0) -> None:
        """Pass ``conn`` to a worker; a worker whose channel is full (it has not read
        for a long while) is passed over; when all are, retried for ``patience`` s."""
        with contextlib.suppress(OSError):
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        full: set[int] = set()
        deadline = time.monotonic() + patience
        while not self._stopping.is_set():
            w = self._choose(full)
            if w is None and full and time.monotonic() < deadline:
                time.sleep(0.01)
                full.clear()
                continue
            if w is None or w.channel is None:
                log.warning("%s balancer: no worker could take a connection: closed", self.name)
                return
            try:
                socket.send_fds(w.channel, [CONNECTION], [conn.fileno()])
            except BlockingIOError:
                full.add(w.slot)
                continue
            except OSError:  # the worker is gone: its end of the channel will tell us
                w.ready = False
                continue
            w.open += 1
            return


class ChannelReceiver:
    """The worker's end of a :class:`Balancer` channel: read on an asyncio loop
    (:meth:`start`) or by a thread of its own (:meth:`run`).

    ``on_connection(sock)`` is called for each connection handed over; ``on_end()`` when
    the main process has gone.  :meth:`closed` (any thread) reports one closed
    connection.
    """

    def __init__(
        self,
        fd: int,
        on_connection: Callable[[socket.socket], None],
        on_end: Callable[[], None],
    ) -> None:
        self.channel = socket.socket(fileno=fd)
        self.channel.setblocking(False)
        self._on_connection = on_connection
        self._on_end = on_end
        self._unsent = 0
        self._send_lock = threading.Lock()

    def start(self, loop: object) -> None:
        """Read the channel on ``loop`` (an asyncio loop) and tell the main process that
        this worker serves."""

        def readable() -> None:
            if self._readable():  # the end: nothing more will come
                self.stop(loop)

        loop.add_reader(self.channel, readable)  # type: ignore[attr-defined]
        self._send(READY)

    def stop(self, loop: object) -> None:
        """Stop reading the channel (no connection is taken any more)."""
        with contextlib.suppress(Exception):
            loop.remove_reader(self.channel)  # type: ignore[attr-defined]

    def run(self, stopping: threading.Event) -> None:
        """Tell the main process that this worker serves, then read the channel on this
        thread until the main process has gone or ``stopping`` is set."""
        self._send(READY)
        while not stopping.is_set():
            try:
                readable, _, _ = select.select([self.channel], [], [], 0.5)
            except (OSError, ValueError):  # closed meanwhile
                return
            if readable and self._readable():
                return

    def closed(self) -> None:
        """One connection handed to this worker is closed."""
        self._send(CLOSED)

    def _send(self, record: bytes) -> None:
        with self._send_lock:
            try:
                while self._unsent:
                    self.channel.send(CLOSED)
                    self._unsent -= 1
                self.channel.send(record)
            except BlockingIOError:  # the main process is behind: tell it later
                if record == CLOSED:
                    self._unsent += 1
            except OSError:
                pass  # the main process is gone: reading the channel will see the end

    def _readable(self) -> bool:
        """Take what the channel holds; whether it has ended."""
        while True:
            try:
                record, fds, _, _ = socket.recv_fds(self.channel, 16, 8)
            except BlockingIOError:
                return False
            except OSError:
                record, fds = b"", []
            for fd in fds:
                self._on_connection(socket.socket(fileno=fd))
            if not record:
                self._on_end()
                return True
