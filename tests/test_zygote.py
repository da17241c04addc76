"""dicomhub.zygote: worker processes forked from a prepared, single-threaded process.

Each test runs a small program in a fresh Python process (the test process has threads
of its own, and a zygote is refused where threads run).  What came in: workers of a
known kind asked for and answering over their channel; a worker exiting with status 7,
one stopped by SIGTERM, one still running when waited on for 0.2 s; a kind the zygote
does not know; a request after the zygote was closed (the fallback starts the worker);
a zygote asked for while another thread runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent(
    """
    import json, os, signal, socket, subprocess, sys, threading
    from dicomhub.balancer import channel_pair
    from dicomhub.zygote import STATUS_UNKNOWN, Zygote

    def echo(fd):
        chan = socket.socket(fileno=fd)
        while True:
            data = chan.recv(64)
            if not data or data == b"exit":
                return 7
            if data == b"me":
                status = open("/proc/self/status").read()
                ppid = int(status.split("PPid:")[1].split()[0])
                rollup = {}
                for line in open("/proc/self/smaps_rollup"):
                    parts = line.split()
                    if len(parts) == 3 and parts[2] == "kB":
                        rollup[parts[0].rstrip(":")] = int(parts[1])
                chan.send(json.dumps({
                    "pid": os.getpid(), "ppid": ppid,
                    "comm": open("/proc/self/comm").read().strip(),
                    "threads": threading.active_count(),
                    "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
                    "rss": rollup["Rss"],
                    "private": rollup["Private_Clean"] + rollup["Private_Dirty"],
                }).encode())
            else:
                chan.send(data.upper())

    out = {}
    if sys.argv[1] == "threads":
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        out["zygote"] = Zygote.start({"echo": echo}) is not None
        stop.set()
        t.join()
        print(json.dumps(out))
        sys.exit(0)

    zygote = Zygote.start({"echo": echo}, preload=["pydicom", "numpy", "no_such_module"])
    ours, theirs = channel_pair()
    worker = zygote.fork("echo", theirs)
    out["zygote_comm"] = open(f"/proc/{zygote.pid}/comm").read().strip()  # it answered
    theirs.close()
    ours.send(b"hello")
    out["echo"] = ours.recv(64).decode()
    ours.send(b"me")
    out["me"] = json.loads(ours.recv(4096))
    out["poll_running"] = worker.poll()
    try:
        worker.wait(0.2)
        out["timeout"] = False
    except subprocess.TimeoutExpired:
        out["timeout"] = True
    ours.send(b"exit")
    out["status"] = worker.wait(10)
    out["poll_after"] = worker.poll()

    ours2, theirs2 = channel_pair()
    second = zygote.fork("echo", theirs2)
    theirs2.close()
    second.send_signal(signal.SIGTERM)
    out["sigterm_status"] = second.wait(10)
    ours2.close()

    try:
        zygote.fork("nope", channel_pair()[1])
        out["unknown"] = "forked"
    except OSError as exc:
        out["unknown"] = str(exc)

    started = []
    def fallback(channel):
        started.append(channel.fileno())
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    spawn = zygote.spawner("echo", fallback)
    zygote_pid = zygote.pid
    zygote.close()
    out["zygote_gone"] = not os.path.exists(f"/proc/{zygote_pid}")
    ours3, theirs3 = channel_pair()
    out["fallback_status"] = spawn(theirs3).wait(10)
    out["fallback_used"] = len(started)
    print(json.dumps(out))
    """
)


def _run(mode: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_workers_are_forked_by_the_zygote_and_reaped_through_it() -> None:
    out = _run("workers")
    assert out["zygote_comm"] == "dicomhub-zygote"
    assert out["echo"] == "HELLO"
    me = out["me"]
    assert isinstance(me, dict)
    assert me["comm"] == "dicomhub-echo"
    assert me["threads"] == 1
    assert me["sigterm"] is True  # the zygote ignores SIGTERM; its workers do not
    # what the main process imported before the fork is shared with the worker: most of
    # its resident pages are not its own
    assert me["private"] < me["rss"] / 2, me
    assert out["poll_running"] is None
    assert out["timeout"] is True
    assert out["status"] == 7
    assert out["poll_after"] == 7
    assert out["sigterm_status"] == -15
    assert "no worker kind 'nope'" in str(out["unknown"])
    assert out["zygote_gone"] is True
    assert out["fallback_used"] == 1
    assert out["fallback_status"] == 3


def test_no_zygote_while_other_threads_run() -> None:
    assert _run("threads") == {"zygote": False}
