"""Several processes accept DIMSE associations on one port (``dimse_workers``).

What came in: ``dicomhub serve --dimse-workers 2`` as an operator starts it, a device
registered with ``dicomhub device add``; copies of the NEMA CT (new UIDs) sent by four
DCMTK storescu processes at once; one association while the main process is stopped
(SIGSTOP), so only the worker can take it; then SIGTERM of the server.
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

CT = SAMPLES / "nema-wg04" / "REF" / "CT1_UNC"
CALLING = "WORKERTEST"


def _cli(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dicomhub.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    data = tmp_path / "data"
    _cli("device", "add", "worker-test", "--data-dir", str(data), "--subscriber", "default",
         "--ae-title", CALLING, "--address", "127.0.0.1")  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomhub.cli", "serve", "--data-dir", str(data),
         "--http-port", str(free_port()), "--dimse-port", str(port), "--dimse-workers", "2",
         "--log-level", "warning"],
        env=dict(os.environ, DICOMHUB_FSYNC="false"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not [c for c in _children(proc.pid) if "dicomhub.dimse.worker" in _cmdline(c)]:
        assert proc.poll() is None, "server exited"
        assert time.monotonic() < deadline, "no DIMSE worker process"
        time.sleep(0.2)
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


def test_worker_serves_while_the_main_process_is_stopped(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """With the main process frozen (SIGSTOP) an association is still accepted and its
    C-STOREs succeed: the worker process took it.  SIGTERM then ends both processes."""
    proc, port, tmp = served
    workers = [c for c in _children(proc.pid) if "dicomhub.dimse.worker" in _cmdline(c)]
    assert len(workers) == 1
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert _store(port, _copies(tmp, 3, "FROZENMAIN")) == [0, 0, 0]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert _find_count(port, "FROZENMAIN") == 3
    proc.terminate()
    proc.wait(30)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{workers[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{workers[0]}/cmdline").exists() or not _cmdline(workers[0])


def test_a_killed_worker_is_restarted(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """What came in: SIGKILL of the DIMSE worker process (as the OOM killer does).  The
    main process starts a new one; with the main process then frozen, the new worker
    alone takes an association and stores."""
    proc, port, tmp = served
    (old,) = [c for c in _children(proc.pid) if "dicomhub.dimse.worker" in _cmdline(c)]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    new: list[int] = []
    while not new:
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.2)
        new = [
            c for c in _children(proc.pid) if c != old and "dicomhub.dimse.worker" in _cmdline(c)
        ]
    while not _echo(port):  # the new worker is up once it answers (main answers too)
        assert time.monotonic() < deadline, "DIMSE port does not answer"
        time.sleep(0.2)
    time.sleep(2)  # let the new worker finish starting before the main process freezes
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        assert _store(port, _copies(tmp, 2, "RESTARTED")) == [0, 0]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert _find_count(port, "RESTARTED") == 2
