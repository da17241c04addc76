"""Helpers for the real-peer DIMSE tests: DCMTK tools as subprocesses, sample selection,
DICOMweb look-ups and data set comparison (independent of dicomhub's own code)."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from conftest import MANIFEST, LiveNode, Sample, free_port, staged_files
from integration.helpers import split_multipart, stow_body

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
TOOL_TIMEOUT = 120

# storescu option that proposes a file's transfer syntax (DCMTK 3.6.7 `storescu --help`;
# storescu never proposes a file's own syntax by itself)
STORESCU_FLAG = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}
# decodable syntaxes DCMTK 3.6.7's storescu cannot propose: sent with pynetdicom instead
PYNETDICOM_ONLY = (
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless process 14 (storescu proposes only SV1)
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)


@dataclass(frozen=True)
class Candidate:
    """A decodable Part 10 sample and its identifying UIDs."""

    sample: Sample
    study: str
    series: str
    sop: str
    sop_class: str

    @property
    def path(self) -> Path:
        return self.sample.path

    @property
    def syntax(self) -> str:
        return self.sample.transfer_syntax_uid


def _candidate(sample: Sample, complete: bool) -> Candidate | None:
    """The sample as a candidate: decodable, Part 10, with SOP Class and Instance UIDs,
    and with Study and Series Instance UIDs unless ``complete`` is False (then "")."""
    if sample.pixel_decode != "ok":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(sample.path, stop_before_pixels=True)
    except Exception:
        return None
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) != sample.transfer_syntax_uid:
        return None
    values = [
        str(ds.get(k) or "")
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    ]
    if not all(values if complete else values[2:]):
        return None
    return Candidate(sample, *values)


def pick_per_syntax(
    per_syntax: int, syntaxes: Sequence[str], complete: bool = True
) -> dict[str, list[Candidate]]:
    """Up to ``per_syntax`` decodable samples of each syntax, smallest first, with SOP
    Instance UIDs distinct across the whole selection (samples share UIDs: the same image
    in several syntaxes)."""
    seen: set[str] = set()
    out: dict[str, list[Candidate]] = {}
    ordered = sorted(MANIFEST, key=lambda s: s.path.stat().st_size)
    for ts in syntaxes:
        chosen: list[Candidate] = []
        for sample in ordered:
            if sample.transfer_syntax_uid != ts or len(chosen) >= per_syntax:
                continue
            cand = _candidate(sample, complete)
            if cand is None or cand.sop in seen:
                continue
            seen.add(cand.sop)
            chosen.append(cand)
        if chosen:
            out[ts] = chosen
    return out


def completed(cand: Candidate, out_dir: Path) -> Candidate:
    """The candidate itself, or — when it lacks Study/Series Instance UIDs (the HTJ2K
    samples do) — a copy in ``out_dir`` with generated ones, everything else unchanged."""
    if cand.study and cand.series:
        return cand
    ds = read(cand.path)
    ds.StudyInstanceUID = cand.study or generate_uid()
    ds.SeriesInstanceUID = cand.series or generate_uid()
    out = out_dir / f"{cand.sop}.dcm"
    ds.save_as(out, enforce_file_format=True)
    sample = dataclasses.replace(cand.sample, path=out)
    return Candidate(
        sample, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), cand.sop, cand.sop_class
    )


def run(
    args: Sequence[str | Path], cwd: Path | None = None, timeout: float = TOOL_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool with TCP_NODELAY=1; its output is captured."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=DCMTK_ENV,
        capture_output=True,
        encoding="utf-8",
        errors="replace",  # tools echo identifiers in their character set
        timeout=timeout,
        check=False,
    )


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """A process's exit code and output, for assertion messages."""
    return f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def peer(node: LiveNode) -> list[str]:
    """The called AE title, host and port arguments of a DCMTK SCU."""
    return ["-aec", node.ae_title, "127.0.0.1", str(node.port)]


def echo(node: LiveNode) -> None:
    """The archive still answers C-ECHO (echoscu exit 0)."""
    proc = run(["echoscu", *peer(node)], timeout=60)
    assert proc.returncode == 0, describe(proc)


def read(data: bytes | Path) -> Dataset:
    """A data set read with pydicom, warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(data, Path):
            return pydicom.dcmread(data)
        return pydicom.dcmread(io.BytesIO(data))


# -- DICOMweb side ---------------------------------------------------------------------------
def auth(node: LiveNode, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Request headers with the live server's bearer token, when it has one."""
    return {**getattr(node.http, "headers", {}), **(headers or {})}


def qido_instances(node: LiveNode, **params: str) -> list[dict[str, object]]:
    r = requests.get(f"{node.url}/instances", params=params, headers=auth(node), timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return list(r.json())


def qido_studies(node: LiveNode, **params: str) -> list[dict[str, object]]:
    r = requests.get(f"{node.url}/studies", params=params, headers=auth(node), timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return list(r.json())


def wado_instance(node: LiveNode, study: str, series: str, sop: str) -> Dataset:
    """One stored instance over WADO-RS (stored bytes, stored syntax)."""
    r = requests.get(
        f"{node.url}/studies/{study}/series/{series}/instances/{sop}",
        headers=auth(node, {"Accept": 'multipart/related; type="application/dicom"'}),
        timeout=120,
    )
    assert r.status_code == 200, (r.status_code, r.text[:500])
    parts = split_multipart(r.content, r.headers["content-type"])
    assert len(parts) == 1
    return read(parts[0][1])


def stow(node: LiveNode, files: Sequence[Path | bytes]) -> None:
    body, ctype = stow_body(files)
    r = requests.post(
        f"{node.url}/studies", data=body, headers=auth(node, {"Content-Type": ctype}), timeout=120
    )
    assert r.status_code == 200, (r.status_code, r.text[:1000])


def register(node: LiveNode, name: str, ae_title: str, port: int) -> None:
    """Register a remote node over the REST API."""
    base = node.url.removesuffix("/dicom-web")
    r = requests.post(
        f"{base}/api/nodes",
        json={"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port},
        headers=auth(node),
        timeout=30,
    )
    assert r.status_code == 201, (r.status_code, r.text)


def stored_files(node: LiveNode) -> list[Path]:
    return sorted((node.ctx.settings.data_dir / "storage" / "objects").rglob("*.dcm"))


def staging_files(node: LiveNode) -> list[Path]:
    return staged_files(node.ctx.settings.data_dir)


# -- comparison ------------------------------------------------------------------------------
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _comparable(ds: Dataset, skip_pixels: bool) -> dict[object, tuple[str, object]]:
    """Tag → (VR, value), without what a DICOM toolkit may normalise when it sends a data
    set: group lengths (gggg,0000), trailing padding (FFFC,FFFC), and the VR of
    encapsulated pixel data (OW in some samples, OB on the wire)."""
    out: dict[object, tuple[str, object]] = {}
    for elem in ds:
        if elem.tag.element == 0 or elem.tag == 0xFFFCFFFC:
            continue
        if elem.tag in PIXEL_TAGS:
            if skip_pixels:
                continue
            out[elem.tag] = ("pixels", elem.value)
            continue
        out[elem.tag] = (elem.VR, elem.value)
    return out


def dataset_problems(got: Dataset, want: Dataset) -> list[str]:
    """Differences between two data sets, File Meta Information excluded.

    Same transfer syntax: every element equal, pixel data bytes included. Different
    syntax (transcoded on the way): every element but pixel data equal, and the decoded
    pixel arrays equal.
    """
    with warnings.catch_warnings():  # value conversion warns about non-conformant samples
        warnings.simplefilter("ignore")
        return _problems(got, want)


def _problems(got: Dataset, want: Dataset) -> list[str]:
    got_ts = str(got.file_meta.TransferSyntaxUID)
    want_ts = str(want.file_meta.TransferSyntaxUID)
    same = got_ts == want_ts
    a, b = _comparable(got, not same), _comparable(want, not same)
    problems = []
    diff = sorted(str(t) for t in set(a) | set(b) if a.get(t) != b.get(t))
    if diff:
        problems.append(f"elements differ ({got_ts} vs {want_ts}): {diff[:10]}")
    if not same:
        try:
            if not pixels_equal(got, want):
                problems.append(f"decoded pixels differ ({got_ts} vs {want_ts})")
        except Exception as exc:
            problems.append(f"cannot decode pixels ({got_ts} vs {want_ts}): {exc}")
    return problems


def pixels_equal(a: Dataset, b: Dataset) -> bool:
    """Whether the decoded pixel arrays are equal."""
    return bool(np.array_equal(a.pixel_array, b.pixel_array))


# -- DCMTK tools -----------------------------------------------------------------------------
def findscu(
    node: LiveNode, cwd: Path, model: str, keys: dict[str, str], extra: Sequence[str] = ()
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """findscu with ``-X`` in a fresh directory under ``cwd``; the responses, in order.

    ``model``: ``-P`` (Patient Root) or ``-S`` (Study Root). ``keys``: name → value
    (``""`` for a return key).
    """
    n = len(list(cwd.glob("find*")))
    out = cwd / f"find{n}"
    out.mkdir()
    proc = run(["findscu", "-d", model, "-X", *extra, *_keys(keys), *peer(node)], cwd=out)
    results = [read(p) for p in sorted(out.glob("rsp*.dcm"))]
    return proc, results


def statuses(proc: subprocess.CompletedProcess[str]) -> list[int]:
    """Every 'DIMSE Status' a DCMTK tool logged in debug mode (``-d``), in order."""
    text = proc.stdout + proc.stderr
    return [int(s, 16) for s in re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", text)]


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def storescp(directory: Path, ae_title: str, extra: Sequence[str] = ()) -> Iterator[int]:
    """A DCMTK storescp writing into ``directory``; yields its port; terminated at the end."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    log = directory.parent / f"storescp-{ae_title}-{port}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            ["storescp", "-v", "-od", str(directory), "-aet", ae_title, *extra, str(port)],
            env=DCMTK_ENV,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(port)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- a small controlled archive content ------------------------------------------------------
CT_LE = "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/CT_small.dcm"
MR_LE = "pylibjpeg-data/ljdata_ds/LittleEndianExplicit/MR_small.dcm"
MR_RLE = "pylibjpeg-data/ljdata_ds/RLELossless/MR_small_RLE.dcm"
MR_J2K = "pylibjpeg-data/ljdata_ds/JPEG2000Lossless/MR_small_jp2klossless.dcm"


@dataclass(frozen=True)
class Item:
    """One generated instance: its file and identifying attributes."""

    path: Path
    patient_id: str
    study: str
    series: str
    sop: str
    sop_class: str
    modality: str
    syntax: str


def make_copy(source: Path, out: Path, **attrs: object) -> Item:
    """A copy of ``source`` with a new SOP Instance UID and the given attributes set
    (keyword → value); pixel data and transfer syntax are kept as stored."""
    ds = read(source)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return Item(
        out,
        str(ds.PatientID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.SOPClassUID),
        str(ds.Modality),
        str(ds.file_meta.TransferSyntaxUID),
    )


@contextmanager
def live_node(tmp: Path, url: str, schema: str | None, **settings: object) -> Iterator[LiveNode]:
    """An archive with DICOMweb and DIMSE (AE title DICOMHUB) on loopback, built as the
    ``node`` fixture of conftest.py builds it (for module-scoped archives): the test peers'
    calling AE titles are registered devices where the archive requires that."""
    import conftest
    from conftest import LiveServer, make_settings
    from dicomhub.context import build_context
    from dicomhub.dimse.server import DimseServer

    context = build_context(
        make_settings(
            tmp / "data", url, schema, dimse_port=free_port(), ae_title="DICOMHUB", **settings
        )
    )
    if hasattr(conftest, "TEST_AE_TITLES"):  # the calling AE titles of the test peers
        context.auth.add_device(
            conftest.CLI_ADMIN, "default", "test-tools", conftest.TEST_AE_TITLES, (), "test"
        )
    dimse = DimseServer(context)
    dimse.start()
    try:
        with LiveServer(context) as live:
            yield LiveNode(live, "DICOMHUB", dimse.port)
    finally:
        dimse.stop()
        context.close()


def _keys(keys: dict[str, str]) -> list[str]:
    args: list[str] = []
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v != "" else k]
    return args


def getscu(
    node: LiveNode, out: Path, model: str, keys: dict[str, str], extra: Sequence[str] = ()
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """getscu (debug log, for the statuses) into a fresh ``out``; the files that arrived."""
    out.mkdir(parents=True)
    proc = run(["getscu", "-d", model, "-od", out, *extra, *_keys(keys), *peer(node)])
    return proc, [read(p) for p in sorted(out.iterdir())]


def movescu(
    node: LiveNode, destination: str, model: str, keys: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """movescu (debug log, for the statuses) asking to move to ``destination``."""
    return run(["movescu", "-d", model, "-aem", destination, *_keys(keys), *peer(node)])


def received(directory: Path) -> list[Dataset]:
    """The files a storescp wrote."""
    return [read(p) for p in sorted(directory.iterdir()) if p.is_file()]
