"""``dicomhub push`` and ``dicomhub pull``: the subscriber's two commands (README tour).

Both take ``--server`` (the DICOMweb base URL, or ``DICOMHUB_SERVER``) and ``--token``
(bearer token or API key, or ``DICOMHUB_TOKEN``); they print a progress bar on stderr, a
per-file report of what failed at the end, and exit non-zero when anything failed or did
not verify.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from dicomhub.config import INGEST_SYNTAX_NAMES

SYNTAX_CHOICES = {k: v for k, v in INGEST_SYNTAX_NAMES.items() if k != "explicit"}


class Progress:
    """A one-line progress bar on a text stream (no dependency, thread-safe)."""

    def __init__(self, total: int, unit: str, stream: TextIO = sys.stderr, quiet: bool = False):
        self.total = total
        self.unit = unit
        self.stream = stream
        self.quiet = quiet
        self.done = 0
        self.bytes = 0
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._last = 0.0

    def __call__(self, units: int, nbytes: int) -> None:
        with self._lock:
            self.done += units
            self.bytes += nbytes
            now = time.monotonic()
            if self.quiet or (now - self._last < 0.2 and self.done != self.total):
                return
            self._last = now
            elapsed = max(now - self.start, 1e-6)
            rate = f"{self.bytes / 1e6:.1f} MB  {self.bytes / 1e6 / elapsed:.1f} MB/s"
            if self.total:
                width = 30
                filled = int(width * min(self.done / self.total, 1.0))
                bar = "#" * filled + "-" * (width - filled)
                line = f"[{bar}] {self.done}/{self.total} {self.unit}  {rate}"
            else:  # total unknown (a pull): a running count
                line = f"{self.done} {self.unit}  {rate}"
            self.stream.write("\r" + line)
            self.stream.flush()

    def finish(self) -> None:
        """Draw the final state and end the bar's line."""
        if not self.quiet:
            self._last = 0.0
            self.total = self.total or self.done
            self(0, 0)
            self.stream.write("\n")
            self.stream.flush()


def _syntax(value: str) -> str | None:
    name = value.strip().lower()
    if name in ("keep", "none", "as-is"):
        return None
    if name in SYNTAX_CHOICES:
        return SYNTAX_CHOICES[name]
    if value in SYNTAX_CHOICES.values() or value.startswith("1.2.840.10008.1.2"):
        return value
    raise argparse.ArgumentTypeError(
        f"'{value}': use keep, {', '.join(SYNTAX_CHOICES)} or a transfer syntax UID"
    )


def _frames(value: str) -> list[int]:
    try:
        numbers = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a list like 1,2,5") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError("frame numbers start at 1")
    return numbers


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``push`` and ``pull`` on the ``dicomhub`` command."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument(
        "--server",
        default=os.environ.get("DICOMHUB_SERVER"),
        help="DICOMweb base URL, e.g. https://pacs.example.org/dicom-web (or DICOMHUB_SERVER)",
    )
    remote.add_argument(
        "--token",
        default=os.environ.get("DICOMHUB_TOKEN"),
        help="bearer token or API key (or DICOMHUB_TOKEN)",
    )
    remote.add_argument(
        "--syntax",
        type=_syntax,
        default="1.2.840.10008.1.2.4.201",
        help="lossless transfer syntax on the wire: htj2k (default), jpeg-ls, jpeg2000, "
        "jpeg-lossless, rle, deflate, keep, or a UID",
    )
    remote.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    remote.add_argument("--retries", type=int, default=4, help="retries of transient failures")
    remote.add_argument(
        "--insecure", action="store_true", help="do not verify the server's TLS certificate"
    )

    push = sub.add_parser(
        "push", parents=[remote], help="upload files and folders, compressed losslessly"
    )
    push.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (recursive)")
    push.add_argument("--batch", type=int, default=25, help="instances per STOW-RS request")
    push.add_argument("--parallel", type=int, default=4, help="requests in flight")
    push.add_argument(
        "--no-verify", action="store_true", help="skip the pixel digest check after upload"
    )
    push.set_defaults(func=cmd_push)

    pull = sub.add_parser(
        "pull", parents=[remote], help="download a study, decompress and verify it bit-exact"
    )
    pull.add_argument("study", help="StudyInstanceUID")
    pull.add_argument("--out", type=Path, required=True, help="destination folder")
    pull.add_argument("--series", nargs="+", default=[], help="only these series")
    pull.add_argument("--instances", nargs="+", default=[], help="only these instances")
    pull.add_argument(
        "--frames", type=_frames, default=[], help="only these frames (with --instances), e.g. 1,3"
    )
    pull.add_argument(
        "--no-restore",
        action="store_true",
        help="keep files in the wire syntax instead of their original one",
    )
    pull.set_defaults(func=cmd_pull)


def _client(args: argparse.Namespace) -> object:
    from dicomhub.client.sdk import DicomhubClient

    if not args.server:
        raise SystemExit("dicomhub: --server (or DICOMHUB_SERVER) is required")
    return DicomhubClient(
        args.server, args.token, retries=args.retries, verify_tls=not args.insecure
    )


def cmd_push(args: argparse.Namespace) -> int:
    """``dicomhub push PATH...``."""
    from dicomhub.client.sdk import DicomhubClient, TransferError, discover

    client = _client(args)
    assert isinstance(client, DicomhubClient)
    try:
        files = discover(args.paths)
    except FileNotFoundError as exc:
        print(f"dicomhub push: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("dicomhub push: no DICOM files found", file=sys.stderr)
        return 2
    bar = Progress(len(files), "files", quiet=args.quiet)
    try:
        with client:
            result = client.push(
                args.paths,
                syntax=args.syntax,
                batch_size=max(args.batch, 1),
                workers=max(args.parallel, 1),
                verify=not args.no_verify,
                progress=bar,
            )
    except TransferError as exc:
        bar.finish()
        print(f"dicomhub push: {exc}", file=sys.stderr)
        return 1
    bar.finish()
    stored = sum(1 for f in result.files if f.ok)
    verified = sum(1 for f in result.files if f.verified)
    ratio = result.bytes_original / result.bytes_sent if result.bytes_sent else 0.0
    print(
        f"pushed {stored}/{len(result.files)} files, {verified} verified bit-exact; "
        f"{result.bytes_original / 1e6:.1f} MB as {result.bytes_sent / 1e6:.1f} MB on the wire "
        f"({ratio:.2f}:1)"
    )
    for f in result.failed:
        print(f"FAILED {f.path}: {f.message}", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_pull(args: argparse.Namespace) -> int:
    """``dicomhub pull STUDY --out DIR``."""
    from dicomhub.client.sdk import DicomhubClient, TransferError

    client = _client(args)
    assert isinstance(client, DicomhubClient)
    bar = Progress(0, "instances", quiet=args.quiet)
    try:
        with client:
            result = client.pull(
                args.study,
                args.out,
                series=args.series,
                instances=args.instances,
                frames=args.frames,
                syntax=args.syntax,
                restore=not args.no_restore,
                progress=bar,
            )
    except TransferError as exc:
        bar.finish()
        print(f"dicomhub pull: {exc}", file=sys.stderr)
        return 1
    bar.finish()
    ok = sum(1 for f in result.files if f.ok)
    verified = sum(1 for f in result.files if f.verified)
    unverified = sum(1 for f in result.files if f.ok and f.verified is None)
    print(
        f"pulled {ok}/{len(result.files)} into {args.out}, {verified} verified bit-exact"
        + (f", {unverified} without a server digest" if unverified else "")
        + f"; {result.bytes_received / 1e6:.1f} MB received"
    )
    for f in result.failed:
        print(f"FAILED {f.sop_instance_uid or f.path}: {f.message}", file=sys.stderr)
    return 1 if result.failed or not result.files else 0
