"""Several processes serve DIMSE associations on one port (``dimse_workers``): the main
process accepts each and hands it to the worker with the fewest open associations
(dicomhub.balancer).

What came in: ``dicomhub serve --dimse-workers 2`` as an operator starts it, a device
registered with ``dicomhub device add``; four associations held open at once; copies of
the NEMA CT (new UIDs) sent by four DCMTK storescu processes at once; an open
association used while the main process is frozen (SIGSTOP); a worker killed with
SIGKILL; then SIGTERM of the server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from conftest import SAMPLES, free_port
from integration.helpers import cmdline, held_connections, worker_processes

CT = SAMPLES / "nema-wg04" / "REF" / "CT1_UNC"
CALLING = "WORKERTEST"


def _cli(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dicomhub.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def _serving(proc: subprocess.Popen[bytes], log: Path, n: int) -> None:
    """Until the main process has logged ``n`` times that a DIMSE worker serves (it
    hands associations only to workers that do)."""
    deadline = time.monotonic() + 60
    while len(re.findall(rb"DIMSE worker \d+ \(pid \d+\) serving", log.read_bytes())) < n:
        assert proc.poll() is None, "server exited"
        assert time.monotonic() < deadline, "the DIMSE workers do not serve"
        time.sleep(0.2)


def _workers(pid: int) -> list[int]:
    return worker_processes(pid, "dimse")


def _held(pid: int, port: int) -> int:
    return held_connections(pid, port)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    data = tmp_path / "data"
    _cli("device", "add", "worker-test", "--data-dir", str(data), "--subscriber", "default",
         "--ae-title", CALLING, "--address", "127.0.0.1")  # fmt: skip
    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomhub.cli", "serve", "--data-dir", str(data),
         "--http-port", str(free_port()), "--dimse-port", str(port), "--dimse-workers", "2",
         "--log-level", "info"],
        env=dict(os.environ, DICOMHUB_FSYNC="false"),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    _serving(proc, log, 2)
    deadline = time.monotonic() + 60
    while not _echo(port):
        assert time.monotonic() < deadline, "DIMSE port does not answer"
        time.sleep(0.2)
    yield proc, port, tmp_path
    if proc.poll() is None:
        proc.terminate()
        proc.wait(30)


def _echo(port: int) -> bool:
    ae = AE(ae_title=CALLING)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return bool(ok)


def _copies(tmp: Path, n: int, tag: str) -> list[pydicom.Dataset]:
    out = []
    study, series = generate_uid(), generate_uid()
    for _ in range(n):
        ds = pydicom.dcmread(CT)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = tag
        out.append(ds)
    return out


def _store(port: int, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _find_count(port: int, patient_id: str) -> int:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title=CALLING)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    query.SOPInstanceUID = ""
    found = 0
    for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status in (0xFF00, 0xFF01) and ident is not None:
            found += 1
    assoc.release()
    return found


def test_four_associations_at_once_all_stored(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """Four associations of five CT instances each, concurrently, from four DCMTK
    storescu processes: every C-STORE succeeds and a C-FIND finds all twenty (whichever
    process stored them).  Separate processes, not pynetdicom threads: four pynetdicom
    requestors in one process can lose a C-STORE response to their own reactor thread
    (pynetdicom logs "Received unexpected C-STORE service message") when the GIL delays
    it, which is the client's race, not the archive's."""
    _proc, port, tmp = served
    procs = []
    for g in range(4):
        paths = []
        for i, ds in enumerate(_copies(tmp, 5, "WORKERS4")):
            path = tmp / f"group{g}-{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(str(path))
        command = ["storescu", "-d", "-aet", CALLING, "-aec", "DICOMHUB", "127.0.0.1", str(port)]
        procs.append(
            subprocess.Popen(
                [*command, *paths],
                env=dict(os.environ, TCP_NODELAY="1"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-2000:]
        assert re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", out) == ["0000"] * 5, out[
            -2000:
        ]
    assert _find_count(port, "WORKERS4") == 20


def test_associations_go_to_the_least_busy_worker(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """Four associations established at once and held: each worker serves two (with
    one listening socket shared by the processes, one often took three or four); the
    main process serves none.  One is released: the next goes where it was."""
    proc, port, tmp = served
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assocs = [ae.associate("127.0.0.1", port, ae_title="DICOMHUB") for _ in range(4)]
    try:
        assert all(a.is_established for a in assocs)
        workers = _workers(proc.pid)
        assert sorted(_held(w, port) for w in workers) == [2, 2]
        assert _held(proc.pid, port) == 0
        first = next(w for w in workers if _held(w, port) == 2)
        assocs[0].release()
        deadline = time.monotonic() + 20
        while sorted(_held(w, port) for w in workers) != [1, 2]:
            assert time.monotonic() < deadline, "the released association is still held"
            time.sleep(0.1)
        emptier = next(w for w in workers if _held(w, port) == 1)
        time.sleep(0.5)  # the worker's report of the closed connection reaches the main
        assocs[0] = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
        assert assocs[0].is_established
        assert _held(emptier, port) == 2 and sorted(_held(w, port) for w in workers) == [2, 2]
        assert first in workers
        status = assocs[0].send_c_store(_copies(tmp, 1, "LEASTBUSY")[0]).Status
        assert status == 0
    finally:
        for a in assocs:
            if a.is_established:
                a.release()
    assert _find_count(port, "LEASTBUSY") == 1


def test_an_open_association_goes_on_while_the_main_process_is_stopped(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """An association established, then the main process frozen (SIGSTOP): its C-STOREs
    still succeed (the worker holds the connection; the main process only accepts).
    SIGTERM then ends every process."""
    proc, port, tmp = served
    workers = _workers(proc.pid)
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMHUB")
    assert assoc.is_established
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in _copies(tmp, 3, "FROZENMAIN")]
        assert statuses == [0, 0, 0]
        assoc.release()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert _find_count(port, "FROZENMAIN") == 3
    proc.terminate()
    proc.wait(60)  # uvicorn ends by the signal it caught, after its shutdown
    deadline = time.monotonic() + 20
    while any(cmdline(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(cmdline(w) for w in workers)


def test_a_killed_worker_is_restarted(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """What came in: SIGKILL of a DIMSE worker process (as the OOM killer does).  The
    main process starts a new one; associations made afterwards are served and store,
    the new worker taking its share."""
    proc, port, tmp = served
    old = _workers(proc.pid)
    os.kill(old[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        now = _workers(proc.pid)
        if len(now) == 2 and old[0] not in now:
            break
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.2)
    _serving(proc, tmp / "server.log", 3)
    while not _echo(port):
        assert time.monotonic() < deadline, "DIMSE port does not answer"
        time.sleep(0.2)
    assert _store(port, _copies(tmp, 2, "RESTARTED")) == [0, 0]
    assert _find_count(port, "RESTARTED") == 2
