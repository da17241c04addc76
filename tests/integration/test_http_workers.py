"""``dicomhub serve --workers 2``: the main process hands each HTTP connection to the
worker process with the fewest open connections (dicomhub.balancer).

What came in: the server started as an operator starts it, with a leftover ``.part``
file in staging (an upload a crash cut short); four keep-alive HTTP connections opened
at once, then one closed and another opened; STOW-RS of NEMA MR and CT copies (new
UIDs) over those connections and QIDO-RS of them; a worker killed with SIGKILL; SIGTERM
of the server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import SAMPLES, free_port
from integration.helpers import held_connections, worker_processes

MR = SAMPLES / "nema-wg04" / "REF" / "MR1_UNC"
CT = SAMPLES / "nema-wg04" / "REF" / "CT1_UNC"


def _workers(pid: int) -> list[int]:
    return worker_processes(pid, "http")


def _connections_per_worker(server_pid: int, port: int) -> dict[int, int]:
    """Established connections of ``port`` held by each worker process."""
    return {pid: held_connections(pid, port) for pid in _workers(server_pid)}


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, data: Path, token: str):
        self.proc, self.port, self.data, self.token = proc, port, data, token

    def connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.connect()
        return conn

    def request(
        self, conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:  # fmt: skip
        h = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.read()


def _until(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    data = tmp_path / "data"
    staging = data / "storage" / "staging"
    staging.mkdir(parents=True)
    leftover = staging / f"{uuid.uuid4().hex}.part"
    leftover.write_bytes(b"half an upload")
    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomhub.cli", "serve", "--data-dir", str(data),
         "--http-port", str(port), "--workers", "2", "--dimse-port", "0",
         "--log-level", "info"],
        env=dict(os.environ, DICOMHUB_FSYNC="false"),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip

    def answers() -> bool:
        assert proc.poll() is None, "server exited"
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    _until(answers, "the server does not answer /health")
    _until(lambda: len(_workers(proc.pid)) == 2, "two HTTP worker processes")
    # connections go only to workers that serve: both must, for the counts below
    _until(
        lambda: len(re.findall(rb"HTTP worker \d+ \(pid \d+\) serving", log.read_bytes())) == 2,
        "both HTTP workers serve",
    )
    assert not leftover.exists(), "the unfinished upload was left in staging"
    out = subprocess.run(
        [sys.executable, "-m", "dicomhub.cli", "token", "issue", "admin", "--data-dir",
         str(data)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    yield Served(proc, port, data, out.stdout.strip().splitlines()[-1])
    if proc.poll() is None:
        proc.terminate()
        proc.wait(60)


def _multipart(paths_and_uids: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in paths_and_uids
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _copy(path: Path, study: str, patient: str) -> bytes:
    from io import BytesIO

    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_connections_go_to_the_least_busy_worker_and_all_store(served: Served) -> None:
    """Four connections open at once: two per worker (a shared listening socket often
    gave one process three or four).  One closes; the next goes where it closed.  Each
    connection stores an MR and a CT copy by STOW-RS; QIDO-RS then finds all eight."""
    conns = [served.connect() for _ in range(4)]
    for c in conns:  # a request each: the connection is in a worker, not in a queue
        assert served.request(c, "GET", "/health")[0] == 200
    per = _connections_per_worker(served.proc.pid, served.port)
    assert sorted(per.values()) == [2, 2], per
    # close one of worker A's: the next connection must go to A again (1 vs 2 open)
    conns[0].close()
    _until(
        lambda: sorted(_connections_per_worker(served.proc.pid, served.port).values()) == [1, 2],
        "the closed connection is gone from its worker",
    )
    emptier = min(
        (p for p in _connections_per_worker(served.proc.pid, served.port).items()),
        key=lambda kv: kv[1],
    )[0]
    time.sleep(0.3)  # the worker's report of the closed connection reaches the balancer
    conns[0] = served.connect()
    assert served.request(conns[0], "GET", "/health")[0] == 200
    per = _connections_per_worker(served.proc.pid, served.port)
    assert per[emptier] == 2 and sorted(per.values()) == [2, 2], per

    study = generate_uid()
    patient = f"WORKERS-{uuid.uuid4().hex[:8]}"
    for c in conns:
        body, ctype = _multipart([_copy(MR, study, patient), _copy(CT, study, patient)])
        status, raw = served.request(
            c, "POST", "/dicom-web/studies", body,
            {"Content-Type": ctype, "Accept": "application/dicom+json"},
        )  # fmt: skip
        assert status == 200, raw[:300]
        assert len(json.loads(raw)["00081199"]["Value"]) == 2
    status, raw = served.request(
        conns[1], "GET", f"/dicom-web/instances?PatientID={patient}",
        headers={"Accept": "application/dicom+json"},
    )  # fmt: skip
    assert status == 200
    assert len(json.loads(raw)) == 8
    for c in conns:
        c.close()


def test_a_killed_worker_is_replaced_and_sigterm_stops_everything(served: Served) -> None:
    """SIGKILL of one worker: another starts and requests keep being answered; SIGTERM
    of the server: it exits with status 0 and no worker is left."""
    before = _workers(served.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    _until(
        lambda: len(w := _workers(served.proc.pid)) == 2 and before[0] not in w,
        "a new worker replaces the killed one",
    )
    for _ in range(6):  # new connections each: some go to the new worker
        c = served.connect()
        status, raw = served.request(
            c, "GET", "/dicom-web/studies", headers={"Accept": "application/dicom+json"}
        )
        assert status in (200, 204), raw[:200]
        c.close()
    workers = _workers(served.proc.pid)
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0
    for pid in workers:
        _until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), "worker left")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            names.append((task / "comm").read_text().strip())
    return names


def _pss_and_rss_kib(pid: int) -> tuple[int, int]:
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("Pss:", "Rss:"):
            values[parts[0]] = int(parts[1])
    return values["Pss:"], values["Rss:"]


def test_the_default_serves_with_one_worker_per_core_forked_from_the_zygote(
    tmp_path: Path,
) -> None:
    """What came in: `dicomhub serve` with no worker options (DIMSE on).  It starts one
    HTTP and one DIMSE worker per usable core (at most 4; none on one core), forked from
    its zygote, so most of their memory is shared; every serving process (main and
    workers) runs the heap trimmer thread; a STOW-RS request and QIDO-RS are served;
    SIGTERM stops every process."""
    from dicomhub.config import AUTO_WORKERS_MAX, usable_cores

    auto = min(usable_cores(), AUTO_WORKERS_MAX)
    expected = auto if auto > 1 else 0
    data, port = tmp_path / "data", free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomhub.cli", "serve", "--data-dir", str(data),
         "--http-port", str(port), "--dimse-port", str(free_port()), "--log-level", "info"],
        env=dict(os.environ, DICOMHUB_FSYNC="false"),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _until(
            lambda: (
                len(re.findall(rb"worker \d+ \(pid \d+\) serving", log.read_bytes()))
                == 2 * expected
            ),
            "the workers serve",
        )
        http_workers = worker_processes(proc.pid, "http")
        dimse_workers = worker_processes(proc.pid, "dimse")
        assert (len(http_workers), len(dimse_workers)) == (expected, expected)
        zygote = 0
        if expected:
            zygote = int(Path(f"/proc/{http_workers[0]}/stat").read_text().split(")")[1].split()[1])
            assert Path(f"/proc/{zygote}/comm").read_text().strip() == "dicomhub-zygote"
            tree = [proc.pid, zygote, *http_workers, *dimse_workers]
            pss, rss = map(sum, zip(*(_pss_and_rss_kib(p) for p in tree), strict=True))
            assert pss < 0.6 * rss, (pss, rss)  # measured ~0.3: the modules are shared
        # every serving process gives freed heap back to the kernel (dicomhub.memory);
        # the zygote only forks, it has no thread
        for pid in [proc.pid, *http_workers, *dimse_workers]:
            _until(lambda pid=pid: "heap-trimmer" in _thread_names(pid), f"trimmer in {pid}")
        if expected:
            assert _thread_names(zygote) == ["dicomhub-zygote"]
        out = subprocess.run(
            [sys.executable, "-m", "dicomhub.cli", "token", "issue", "admin", "--data-dir",
             str(data)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        served = Served(proc, port, data, out.stdout.strip().splitlines()[-1])
        conn = served.connect()
        patient = f"DEFAULT-{uuid.uuid4().hex[:8]}"
        body, ctype = _multipart([_copy(CT, generate_uid(), patient)])
        status, raw = served.request(
            conn, "POST", "/dicom-web/studies", body,
            {"Content-Type": ctype, "Accept": "application/dicom+json"},
        )  # fmt: skip
        assert status == 200, raw[:300]
        status, raw = served.request(
            conn, "GET", f"/dicom-web/instances?PatientID={patient}",
            headers={"Accept": "application/dicom+json"},
        )  # fmt: skip
        assert status == 200 and len(json.loads(raw)) == 1
        conn.close()
        workers = http_workers + dimse_workers + ([zygote] if expected else [])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        for pid in workers:
            _until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), "worker left")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
