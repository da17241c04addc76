"""The subscriber client: push folders losslessly compressed, pull studies back bit-exact.

Talks DICOMweb (PS3.18): STOW-RS to push (§10.5), WADO-RS to pull (§10.4) with an
``Accept`` transfer syntax (§8.7.3), so the bytes on the wire are compressed losslessly
(HTJ2K by default, DESIGN §6).  Against dicomhub it also reads the pixel digests the server
recorded at ingest (``/studies/{uid}/pixel-digests``, docs/conformance.md) and proves every
transfer lossless: the client computes the same digest (``codecs/transcode.py``) over what
it sent or decoded.  Against another DICOMweb server the transfers work, unverified.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dicomhub.client.multipart import boundary_of, iter_parts
from dicomhub.core import syntaxes
from dicomhub.core.errors import CannotTranscode, DicomhubError

log = logging.getLogger(__name__)

__all__ = ["DicomhubClient", "FileResult", "PullResult", "PushResult", "TransferError"]

DEFAULT_SYNTAX = syntaxes.HTJ2K_LOSSLESS
_TRANSIENT = {408, 425, 429, 500, 502, 503, 504}
#: A STOW-RS request carries at most this many bytes of files (besides ``batch_size``),
#: so a batch of large multi-frame objects does not sit in memory whole.
BATCH_BYTES = 256 << 20
ProgressFn = Callable[[int, int], None]  # (units done now, bytes done now)


class TransferError(Exception):
    """A request failed for good (after retries); the message says what the server said."""


@dataclass
class FileResult:
    """What happened to one file (push) or one instance (pull)."""

    path: Path
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    sent_syntax: str = ""
    ok: bool = False
    verified: bool | None = None  # None: the server keeps no pixel digest
    message: str = ""
    original_digest: str | None = None  # push: the pixel digest of the file sent


@dataclass
class PushResult:
    """Outcome of :meth:`DicomhubClient.push`."""

    files: list[FileResult] = field(default_factory=list)
    bytes_original: int = 0
    bytes_sent: int = 0

    @property
    def failed(self) -> list[FileResult]:
        """Files not stored, or stored with a pixel digest that differs from the original."""
        return [f for f in self.files if not f.ok or f.verified is False]


@dataclass
class PullResult:
    """Outcome of :meth:`DicomhubClient.pull`."""

    files: list[FileResult] = field(default_factory=list)
    bytes_received: int = 0

    @property
    def failed(self) -> list[FileResult]:
        """Instances not written or whose pixel digest does not match the server's record."""
        return [f for f in self.files if not f.ok or f.verified is False]


@dataclass
class _Prepared:
    path: Path
    study: str
    sop: str
    sop_class: str
    syntax: str
    digest: str | None
    data: bytes
    original_size: int
    original_syntax: str = ""
    original_planar: int | None = None


def discover(paths: Iterable[Path]) -> list[Path]:
    """Every DICOM file under ``paths`` (files and folders, recursively), sorted.

    A file counts as DICOM when it has the Part 10 preamble and ``DICM`` prefix
    (PS3.10 §7.1); hidden files and folders are skipped.
    """
    found: list[Path] = []
    for root in paths:
        root = Path(root)
        if root.is_file():
            found.append(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such file or folder")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                p = Path(dirpath) / name
                if _is_part10(p):
                    found.append(p)
    return found


def _batches(files: list[Path], count: int, max_bytes: int) -> list[list[Path]]:
    """Consecutive groups of at most ``count`` files and ``max_bytes`` (a larger file goes
    alone)."""
    out: list[list[Path]] = []
    current: list[Path] = []
    size = 0
    for path in files:
        length = path.stat().st_size
        if current and (len(current) >= count or size + length > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(path)
        size += length
    if current:
        out.append(current)
    return out


def _is_part10(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


class DicomhubClient:
    """A DICOMweb client with lossless compression on the wire and digest verification.

    ``server`` is the DICOMweb base URL (``https://host/dicom-web``); ``token`` a bearer
    token or API key (docs/security.md).  Transient failures (connection errors, 408, 429,
    5xx) are retried ``retries`` times with exponential back-off.
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = 300.0,
        retries: int = 4,
        backoff: float = 0.5,
        verify_tls: bool | str = True,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"User-Agent": "dicomhub-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=30.0),
            verify=verify_tls,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
        )
        self.retries = retries
        self.backoff = backoff

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> DicomhubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP with retries -------------------------------------------------------------
    def _request(
        self, method: str, url: str, *, body: Callable[[], Any] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request, retried on transient failures; ``body`` rebuilds the content."""
        attempt = 0
        while True:
            try:
                content = body() if body is not None else None
                response = self.http.request(method, url, content=content, **kwargs)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt >= self.retries:
                    raise TransferError(f"{method} {url}: {exc}") from None
            else:
                if response.status_code not in _TRANSIENT or attempt >= self.retries:
                    return response
                response.close()
            attempt += 1
            time.sleep(self.backoff * 2 ** (attempt - 1))

    @contextlib.contextmanager
    def _stream(self, url: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
        attempt = 0
        while True:
            try:
                with self.http.stream("GET", url, headers=headers) as response:
                    if response.status_code in _TRANSIENT and attempt < self.retries:
                        response.read()
                    else:
                        yield response
                        return
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt >= self.retries:
                    raise TransferError(f"GET {url}: {exc}") from None
            attempt += 1
            time.sleep(self.backoff * 2 ** (attempt - 1))

    # -- digests -----------------------------------------------------------------------
    def pixel_digests(self, study: str, series: str | None = None) -> dict[str, dict[str, Any]]:
        """The server's pixel digest records by SOP Instance UID; ``{}`` when the server
        has no such extension (any DICOMweb server other than dicomhub)."""
        url = f"{self.server}/studies/{study}"
        if series:
            url += f"/series/{series}"
        r = self._request("GET", url + "/pixel-digests", headers={"Accept": "application/json"})
        if r.status_code != 200:
            return {}
        try:
            return {rec["SOPInstanceUID"]: rec for rec in r.json()}
        except (ValueError, KeyError, TypeError):
            return {}

    # -- push --------------------------------------------------------------------------
    def push(
        self,
        paths: Sequence[Path],
        *,
        syntax: str | None = DEFAULT_SYNTAX,
        batch_size: int = 25,
        workers: int = 4,
        verify: bool = True,
        progress: ProgressFn | None = None,
    ) -> PushResult:
        """Store every DICOM file under ``paths`` (STOW-RS, PS3.18 §10.5).

        Each image in a native or lossless encoding is re-encoded in ``syntax`` (``None``:
        sent as is) before it leaves; lossy ones are sent as they are.  Batches of
        ``batch_size`` go up ``workers`` at a time.  With ``verify`` the server's pixel
        digest of every stored instance is compared with the original's.
        """
        files = discover(paths)
        result = PushResult()
        lock = threading.Lock()
        batches = _batches(files, batch_size, BATCH_BYTES)
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            futures = [pool.submit(self._push_batch, batch, syntax) for batch in batches]
            for future in as_completed(futures):
                outcomes, original, sent = future.result()
                with lock:
                    result.files.extend(outcomes)
                    result.bytes_original += original
                    result.bytes_sent += sent
                if progress:
                    progress(len(outcomes), sent)
        result.files.sort(key=lambda f: str(f.path))
        if verify:
            self._verify_push(result)
        return result

    def _prepare(self, path: Path, syntax: str | None) -> _Prepared:
        import pydicom

        from dicomhub.codecs import transcode

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            stored = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
            digest = transcode.pixel_digest(path)
            data: bytes | None = None
            sent = stored
            if (
                syntax
                and digest is not None
                and stored != syntax
                and stored in syntaxes.LOSSLESS_SOURCES
            ):
                try:
                    # decode what was encoded before it leaves: a faulty encoder must
                    # never put different pixels on the wire (sent as is instead)
                    data = transcode.transcode_bytes(
                        path, syntax, verify=True, expected_digest=digest
                    )
                    sent = syntax
                except (CannotTranscode, DicomhubError) as exc:
                    log.info("%s: sent as is (%s)", path, exc)
                except Exception as exc:  # a damaged file is the server's to judge
                    log.info("%s: sent as is (%s: %s)", path, type(exc).__name__, exc)
        raw = path.read_bytes()
        return _Prepared(
            path=path,
            study=str(ds.get("StudyInstanceUID", "")),
            sop=str(ds.get("SOPInstanceUID", "")),
            sop_class=str(ds.get("SOPClassUID", "")),
            syntax=sent,
            digest=digest,
            data=data if data is not None else raw,
            original_size=len(raw),
            original_syntax=stored,
            original_planar=int(ds.get("PlanarConfiguration", 0) or 0)
            if int(ds.get("SamplesPerPixel", 1) or 1) > 1
            else None,
        )

    def _push_batch(
        self, batch: list[Path], syntax: str | None
    ) -> tuple[list[FileResult], int, int]:
        prepared: list[_Prepared] = []
        outcomes: list[FileResult] = []
        for path in batch:
            try:
                prepared.append(self._prepare(path, syntax))
            except Exception as exc:
                outcomes.append(FileResult(path, ok=False, message=f"unreadable: {exc}"))
        if not prepared:
            return outcomes, 0, 0
        boundary = uuid.uuid4().hex

        def body() -> Iterator[bytes]:
            for item in prepared:
                head = (
                    f"--{boundary}\r\nContent-Type: application/dicom; "
                    f"transfer-syntax={item.syntax}\r\n"
                )
                if item.syntax != item.original_syntax:
                    # dicomhub extension: how it was encoded before we compressed it
                    head += f"Dicomhub-Original-Transfer-Syntax: {item.original_syntax}\r\n"
                    if item.original_planar is not None:
                        head += (
                            f"Dicomhub-Original-Planar-Configuration: {item.original_planar}\r\n"
                        )
                yield (head + "\r\n").encode()
                yield item.data
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()

        ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        try:
            r = self._request(
                "POST",
                f"{self.server}/studies",
                body=body,
                headers={"Content-Type": ctype, "Accept": "application/dicom+json"},
            )
        except TransferError as exc:
            return (
                outcomes
                + [
                    FileResult(p.path, p.sop, p.study, p.syntax, False, None, str(exc))
                    for p in prepared
                ],
                sum(p.original_size for p in prepared),
                0,
            )
        stored, failed = _stow_outcome(r)
        explained = _warnings(r.headers.get("warning", ""))
        for sop in failed:
            if sop in explained:
                failed[sop] += f": {explained[sop]}"
        for p in prepared:
            ok = bool(p.sop) and (p.sop in stored if stored or failed else r.status_code == 200)
            message = "" if ok else failed.get(p.sop) or failed.get("", "")
            if not ok and "" in failed and p.sop not in failed:
                message = "identifying UIDs missing or unreadable; " + failed[""]
            if not ok and not message:
                message = f"HTTP {r.status_code}: {r.text[:300]}"
            outcomes.append(
                FileResult(p.path, p.sop, p.study, p.syntax, ok, None, message, p.digest)
            )
        sent = sum(len(p.data) for p in prepared)
        return outcomes, sum(p.original_size for p in prepared), sent

    def _verify_push(self, result: PushResult) -> None:
        studies = sorted({f.study_instance_uid for f in result.files if f.ok})
        for study in studies:
            records = self.pixel_digests(study)
            if not records:
                continue
            for f in result.files:
                if not f.ok or f.study_instance_uid != study:
                    continue
                local = f.original_digest
                rec = records.get(f.sop_instance_uid)
                if rec is None or local is None:
                    continue
                if rec.get("PixelDigest") is None:
                    # the server keeps digests but could not decode what it received
                    f.verified = False
                    f.message = "the server could not decode the pixel data it received"
                    continue
                f.verified = rec["PixelDigest"] == local
                if not f.verified:
                    f.message = (
                        f"pixel digest mismatch: server {rec['PixelDigest'][:16]}…, "
                        f"original {local[:16]}…"
                    )

    # -- pull --------------------------------------------------------------------------
    def pull(
        self,
        study: str,
        out: Path,
        *,
        series: Sequence[str] = (),
        instances: Sequence[str] = (),
        frames: Sequence[int] = (),
        syntax: str | None = DEFAULT_SYNTAX,
        restore: bool = True,
        progress: ProgressFn | None = None,
    ) -> PullResult:
        """Retrieve a study, some series or instances into ``out`` (WADO-RS, PS3.18 §10.4).

        The server is asked for ``syntax`` (or as stored when it cannot); each instance is
        then decoded back to its original transfer syntax (``restore``) and its pixel digest
        compared with the server's record.  With ``frames`` only those frames of the given
        instances are fetched and written decoded as ``<SOPInstanceUID>.frame-<n>.raw``.
        """
        out.mkdir(parents=True, exist_ok=True)
        records = self.pixel_digests(study)
        result = PullResult()
        if frames:
            return self._pull_frames(study, out, series, instances, frames, records, result)
        targets = self._targets(study, series, instances, records)
        accept = _accept_instances(syntax)
        spool = Path(tempfile.mkdtemp(prefix=".dicomhub-pull-", dir=out))
        try:
            for url in targets:
                self._pull_url(url, accept, out, spool, records, restore, result, progress)
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        if instances:
            missing = set(instances) - {f.sop_instance_uid for f in result.files}
            for sop in sorted(missing):
                result.files.append(FileResult(out, sop, study, ok=False, message="not received"))
        return result

    def _targets(
        self,
        study: str,
        series: Sequence[str],
        instances: Sequence[str],
        records: dict[str, dict[str, Any]],
    ) -> list[str]:
        base = f"{self.server}/studies/{study}"
        if instances:
            urls = []
            for sop in instances:
                rec = records.get(sop)
                if rec is not None:
                    se = rec["SeriesInstanceUID"]
                elif len(series) == 1:
                    se = series[0]
                else:
                    raise TransferError(
                        f"instance {sop}: give its series with --series (the server does not "
                        "list pixel digests)"
                    )
                urls.append(f"{base}/series/{se}/instances/{sop}")
            return urls
        if series:
            return [f"{base}/series/{se}" for se in series]
        return [base]

    def _pull_url(
        self,
        url: str,
        accept: str,
        out: Path,
        spool: Path,
        records: dict[str, dict[str, Any]],
        restore: bool,
        result: PullResult,
        progress: ProgressFn | None,
    ) -> None:
        with self._stream(url, {"Accept": accept}) as response:
            if response.status_code != 200:
                response.read()
                raise TransferError(
                    f"GET {url}: HTTP {response.status_code}: {response.text[:300]}"
                )
            boundary = boundary_of(response.headers.get("content-type", ""))
            received = 0

            def counted() -> Iterator[bytes]:
                nonlocal received
                for chunk in response.iter_bytes(1 << 20):
                    received += len(chunk)
                    yield chunk

            for part in iter_parts(counted(), boundary, spool):
                res = self._restore(part.path, part.content_type, out, records, restore)
                result.files.append(res)
                if progress:
                    progress(1, part.size)
            result.bytes_received += received

    def _restore(
        self,
        spooled: Path,
        content_type: str,
        out: Path,
        records: dict[str, dict[str, Any]],
        restore: bool,
    ) -> FileResult:
        import pydicom

        from dicomhub.codecs import transcode

        res = FileResult(spooled)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(spooled, stop_before_pixels=True)
            res.sop_instance_uid = sop = str(ds.SOPInstanceUID)
            res.study_instance_uid = str(ds.StudyInstanceUID)
            wire = str(ds.file_meta.TransferSyntaxUID)
            res.sent_syntax = wire
            if f"transfer-syntax={wire}" not in content_type.replace(" ", ""):
                res.message = f"part labelled '{content_type}' but the file says {wire}"
                spooled.unlink(missing_ok=True)
                return res
            target_dir = out / res.study_instance_uid / str(ds.SeriesInstanceUID)
            target_dir.mkdir(parents=True, exist_ok=True)
            dest = target_dir / f"{sop}.dcm"
            rec = records.get(sop, {})
            original = rec.get("OriginalTransferSyntaxUID") or wire
            if restore and original != wire and original in syntaxes.LOSSLESS_SOURCES:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    transcode.transcode(
                        spooled,
                        original,
                        dest,
                        planar_configuration=rec.get("OriginalPlanarConfiguration"),
                    )
                spooled.unlink(missing_ok=True)
            else:
                shutil.move(spooled, dest)
            res.path = dest
            res.ok = True
            expected = rec.get("PixelDigest")
            if expected:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got = transcode.pixel_digest(dest)
                res.verified = got == expected
                if not res.verified:
                    res.message = f"pixel digest mismatch: got {got}, server recorded {expected}"
        except Exception as exc:
            res.ok = False
            res.message = f"cannot restore: {type(exc).__name__}: {exc}"
            spooled.unlink(missing_ok=True)
        return res

    def _pull_frames(
        self,
        study: str,
        out: Path,
        series: Sequence[str],
        instances: Sequence[str],
        frames: Sequence[int],
        records: dict[str, dict[str, Any]],
        result: PullResult,
    ) -> PullResult:
        """Frames of instances, fetched as HTJ2K (or native) and written decoded."""
        from dicomhub.codecs import registry
        from dicomhub.codecs.registry import PixelFormat

        if not instances:
            raise TransferError("--frames needs --instances")
        frame_list = ",".join(str(n) for n in frames)
        accept = (
            'multipart/related; type="image/jphc", '
            'multipart/related; type="application/octet-stream"; q=0.5'
        )
        spool = Path(tempfile.mkdtemp(prefix=".dicomhub-pull-", dir=out))
        try:
            for url in self._targets(study, series, instances, records):
                sop = url.rsplit("/", 1)[-1]
                meta = self._request("GET", url + "/metadata").json()[0]
                fmt = PixelFormat(
                    rows=_value(meta, "00280010"),
                    columns=_value(meta, "00280011"),
                    samples_per_pixel=_value(meta, "00280002", 1),
                    bits_allocated=_value(meta, "00280100"),
                    bits_stored=_value(meta, "00280101", _value(meta, "00280100")),
                    pixel_representation=_value(meta, "00280103", 0),
                    photometric_interpretation=str(_value(meta, "00280004", "")),
                )
                with self._stream(f"{url}/frames/{frame_list}", {"Accept": accept}) as r:
                    if r.status_code != 200:
                        r.read()
                        raise TransferError(f"GET frames: HTTP {r.status_code}: {r.text[:300]}")
                    boundary = boundary_of(r.headers.get("content-type", ""))
                    parts = list(iter_parts(r.iter_bytes(1 << 20), boundary, spool))
                for number, part in zip(frames, parts, strict=False):
                    data = part.path.read_bytes()
                    part.path.unlink()
                    ts = _param(part.content_type, "transfer-syntax") or syntaxes.ELE
                    if ts != syntaxes.ELE:
                        data = registry.decode_frame(ts, data, fmt).tobytes()
                    dest = out / f"{sop}.frame-{number}.raw"
                    dest.write_bytes(data)
                    result.bytes_received += part.size
                    result.files.append(FileResult(dest, sop, study, ts, True, None))
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        return result


def _accept_instances(syntax: str | None) -> str:
    base = 'multipart/related; type="application/dicom"'
    if not syntax:
        return f"{base}; transfer-syntax=*"
    return f"{base}; transfer-syntax={syntax}, {base}; transfer-syntax=*; q=0.5"


def _stow_outcome(r: httpx.Response) -> tuple[set[str], dict[str, str]]:
    """Referenced (stored) and failed SOP Instance UIDs of a STOW-RS response
    (PS3.18 §10.5.3, Table 10.5.3-1)."""
    try:
        doc = r.json()
    except ValueError:
        return set(), {}
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    stored = {
        str(_value(item, "00081155", ""))
        for item in doc.get("00081199", {}).get("Value", [])
        if isinstance(item, dict)
    }
    failed: dict[str, str] = {}
    for item in doc.get("00081198", {}).get("Value", []):
        sop = str(_value(item, "00081155", ""))
        reason = _value(item, "00081197", "")
        comment = _value(item, "00000902", "") or _value(item, "00081196", "")
        code = int(reason or 0)
        text = comment or _FAILURE_REASONS.get(code) or _FAILURE_REASONS.get(code & 0xFF00, "")
        failed[sop] = f"failure 0x{code:04X}" + (f" ({text})" if text else "")
    return stored, failed


#: STOW-RS / C-STORE failure reasons (PS3.18 Table 10.5.3-2, PS3.4 B.2.3).
_FAILURE_REASONS = {
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class, or identifying UIDs missing or inconsistent",
    0xC000: "cannot understand: not a valid DICOM object",
    0x0110: "processing failure",
    0x0111: "duplicate SOP Instance UID with different content",
    0x0122: "SOP class not supported",
}


def _warnings(header: str) -> dict[str, str]:
    """dicomhub's STOW-RS ``Warning: 299 dicomhub "<SOP UID>: <text>"`` values by UID."""
    out: dict[str, str] = {}
    for quoted in header.split('"')[1::2]:
        uid, sep, text = quoted.partition(": ")
        if sep:
            out[uid.strip()] = text.strip()
    return out


def _value(item: dict[str, Any], tag: str, default: Any = None) -> Any:
    values = item.get(tag, {}).get("Value")
    if not values:
        return default
    return values[0]


def _param(content_type: str, name: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None
