"""Accept header negotiation for WADO-RS (PS3.18 §8.7.3, Tables 8.7.3-2..-5)."""

from __future__ import annotations

from dataclasses import dataclass

from dicomhub.core.errors import NotAcceptable
from dicomhub.dicomweb.multipart import parse_content_type

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Acceptable:
    """One media range of an Accept header."""

    media_type: str  # e.g. multipart/related
    type: str | None  # the multipart 'type' parameter, e.g. application/dicom
    transfer_syntax: str | None
    q: float


def parse_accept(header: str | None) -> list[Acceptable]:
    """Parse Accept into media ranges ordered by q (stable), RFC 9110 §12.5.1."""
    if not header:
        return []
    out: list[Acceptable] = []
    for item in _split_commas(header):
        if not item.strip():
            continue
        media, params = parse_content_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        out.append(
            Acceptable(
                media_type=media,
                type=params.get("type", "").lower() or None,
                transfer_syntax=params.get("transfer-syntax"),
                q=q,
            )
        )
    return sorted((a for a in out if a.q > 0), key=lambda a: -a.q)


def _split_commas(value: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _matches(media: str, wanted: str) -> bool:
    if media in ("*/*", wanted):
        return True
    major = wanted.split("/")[0]
    return media == f"{major}/*"


def negotiate_instances(header: str | None, stored_ts: set[str]) -> str | None:
    """Choose the transfer syntax for ``multipart/related; type="application/dicom"``.

    Returns ``None`` for "as stored" (no transfer-syntax asked, or ``*``) or the UID the
    client asked for.  Transcoding other than decompression to Explicit VR Little Endian
    is not offered yet, so anything else is 406.
    """
    ranges = parse_accept(header)
    if not ranges:
        return None
    for a in ranges:
        if a.media_type in ("*/*", "multipart/*") or (
            a.media_type == "multipart/related" and a.type in (None, "application/dicom")
        ):
            ts = a.transfer_syntax
            if ts in (None, "*") or (len(stored_ts) == 1 and ts in stored_ts):
                return None
            if ts == EXPLICIT_VR_LE:
                return EXPLICIT_VR_LE
        if a.media_type == "application/dicom":
            ts = a.transfer_syntax
            if ts in (None, "*") or (len(stored_ts) == 1 and ts in stored_ts):
                return None
            if ts == EXPLICIT_VR_LE:
                return EXPLICIT_VR_LE
    raise NotAcceptable(
        'can deliver instances as multipart/related; type="application/dicom" in their '
        f"stored transfer syntax or {EXPLICIT_VR_LE}"
    )


def negotiate_frames(header: str | None) -> None:
    """Accept check for frames: native ``application/octet-stream`` only (for now)."""
    ranges = parse_accept(header)
    if not ranges:
        return
    for a in ranges:
        if (
            a.media_type in ("*/*", "multipart/*")
            or (
                a.media_type == "multipart/related"
                and a.type in (None, "application/octet-stream", "*/*")
            )
            or a.media_type == "application/octet-stream"
        ) and a.transfer_syntax in (None, "*", EXPLICIT_VR_LE):
            return
    raise NotAcceptable(
        'frames are available as multipart/related; type="application/octet-stream"; '
        f"transfer-syntax={EXPLICIT_VR_LE} (uncompressed)"
    )


def negotiate_json(header: str | None) -> None:
    """Metadata and QIDO answer ``application/dicom+json`` (or ``application/json``)."""
    ranges = parse_accept(header)
    if not ranges:
        return
    for a in ranges:
        if a.media_type in ("application/dicom+json", "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable("available as application/dicom+json only")


def negotiate_rendered(header: str | None) -> str:
    """Pick image/jpeg (default) or image/png for rendered resources (PS3.18 §8.7.4)."""
    ranges = parse_accept(header)
    if not ranges:
        return "image/jpeg"
    for a in ranges:
        for offered in ("image/jpeg", "image/png"):
            if _matches(a.media_type, offered):
                return offered
    raise NotAcceptable("rendered images are available as image/jpeg or image/png")


def negotiate_bulk(header: str | None) -> None:
    """Bulk data is served as application/octet-stream (single part or multipart)."""
    ranges = parse_accept(header)
    if not ranges:
        return
    for a in ranges:
        if a.media_type in (
            "*/*",
            "application/octet-stream",
            "multipart/related",
            "multipart/*",
            "application/*",
        ):
            return
    raise NotAcceptable("bulk data is available as application/octet-stream")
