"""Accept header negotiation for WADO-RS (PS3.18 §8.7.3, Tables 8.7.3-2..-5)."""

from __future__ import annotations

from dataclasses import dataclass

from dicomhub.core.errors import NotAcceptable
from dicomhub.core.syntaxes import MEDIA_TYPE_DEFAULTS, MEDIA_TYPE_SYNTAXES
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


AS_STORED = "*"

#: Syntaxes an instance can be re-encoded to on request (codecs/registry.py).
_INSTANCE_TYPES = ("multipart/related", "application/dicom")


def instance_choices(header: str | None) -> list[str]:
    """Transfer syntaxes acceptable for ``application/dicom`` parts, best first.

    ``*`` stands for "as stored".  No Accept, or a range without ``transfer-syntax``, means
    as stored (docs/conformance.md: dicomhub does not decompress unless asked; PS3.18
    §8.7.3.5.2 lets the origin server choose when the client leaves it open).  Raises
    :class:`NotAcceptable` when no range asks for DICOM instances at all.
    """
    ranges = parse_accept(header)
    if not ranges:
        return [AS_STORED]
    out: list[str] = []
    for a in ranges:
        dicom = (
            a.media_type in ("*/*", "multipart/*", "application/*")
            or (a.media_type == "multipart/related" and a.type in (None, "application/dicom"))
            or a.media_type == "application/dicom"
        )
        if not dicom:
            continue
        ts = (a.transfer_syntax or AS_STORED).strip()
        if ts not in out:
            out.append(ts)
    if not out:
        raise NotAcceptable(
            'instances are available as multipart/related; type="application/dicom" '
            "(transfer-syntax=* for as stored, or a UID of docs/conformance.md)"
        )
    return out


@dataclass(frozen=True)
class FrameChoice:
    """How to answer a frames request: the part media type and the syntax of the frames.

    ``transfer_syntax`` ``None`` means native little endian (Explicit VR Little Endian
    form); ``AS_STORED`` means each frame as stored.  ``single_part`` when the client asked
    for a bare single-frame media type (PS3.18 §8.7.3.3.2).
    """

    media_type: str
    transfer_syntax: str | None
    single_part: bool = False


def frame_choices(header: str | None) -> list[FrameChoice]:
    """Acceptable encodings of frames (PS3.18 §8.7.3.3.2, Table 8.7.3-5), best first."""
    ranges = parse_accept(header)
    native = FrameChoice("application/octet-stream", None)
    if not ranges:
        return [native]
    out: list[FrameChoice] = []
    for a in ranges:
        ts = a.transfer_syntax.strip() if a.transfer_syntax else None
        if a.media_type in ("*/*", "multipart/*") or (
            a.media_type == "multipart/related" and a.type in (None, "*/*")
        ):
            out.append(FrameChoice("application/octet-stream", _octet_ts(ts)))
            continue
        inner, single = (
            (a.type, False)
            if a.media_type == "multipart/related"
            else (
                a.media_type,
                True,
            )
        )
        if inner == "application/octet-stream":
            out.append(FrameChoice(inner, _octet_ts(ts), single))
        elif inner in MEDIA_TYPE_SYNTAXES:
            if ts in (None,):
                out.append(FrameChoice(inner, MEDIA_TYPE_DEFAULTS[inner], single))
            elif ts == AS_STORED or ts in MEDIA_TYPE_SYNTAXES[inner]:
                out.append(FrameChoice(inner, ts, single))
        elif inner in ("image/*",):
            out.append(FrameChoice(inner, AS_STORED, single))
    if not out:
        raise NotAcceptable(
            'frames are available as multipart/related; type="application/octet-stream" '
            "(native), or image/jls, image/jp2, image/jphc, image/jpeg, image/dicom-rle "
            "(compressed); see docs/conformance.md"
        )
    return out


def _octet_ts(ts: str | None) -> str | None:
    if ts in (None, EXPLICIT_VR_LE):
        return None
    if ts == AS_STORED:
        return AS_STORED
    return ts  # a compressed syntax asked as octet-stream: the part says which


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
