"""Transfer syntax UIDs (PS3.5 §10, PS3.6 Annex A) and their media types (PS3.18 §8.7.3).

Pure data shared by the edges (Accept negotiation), the core (ingest policy) and the
codec adapters (``codecs/registry.py``, which knows how to write each of them).
"""

from __future__ import annotations

ILE = "1.2.840.10008.1.2"
ELE = "1.2.840.10008.1.2.1"
DEFLATED_ELE = "1.2.840.10008.1.2.1.99"
EBE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE = "1.2.840.10008.1.2.5"
DEFLATED_IMAGE = "1.2.840.10008.1.2.8.1"

#: Encodings that are lossless by definition: native ones and the reversible-only
#: compressed syntaxes (PS3.5 Annex A).  The ingest policy re-encodes only these; JPEG
#: baseline/extended, JPEG-LS near-lossless and JPEG 2000 / HTJ2K (which may be
#: irreversible) are kept as received.
LOSSLESS_SOURCES = frozenset(
    {
        ILE,
        ELE,
        DEFLATED_ELE,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        J2K_LOSSLESS,
        HTJ2K_LOSSLESS,
        HTJ2K_RPCL,
        RLE,
    }
)

NATIVE = frozenset({ILE, ELE, DEFLATED_ELE, EBE})

#: Default transfer syntax of each single-frame media type (PS3.18 Table 8.7.3-5).
MEDIA_TYPE_DEFAULTS = {
    "image/jpeg": JPEG_BASELINE,
    "image/jls": JPEG_LS_LOSSLESS,
    "image/jp2": J2K_LOSSLESS,
    "image/jpx": J2K,
    "image/jphc": HTJ2K_LOSSLESS,
    "image/dicom-rle": RLE,
}

#: Syntaxes each single-frame media type may carry (PS3.18 Table 8.7.3-5).
MEDIA_TYPE_SYNTAXES = {
    "image/jpeg": (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1),
    "image/jls": (JPEG_LS_LOSSLESS, JPEG_LS_NEAR),
    "image/jp2": (J2K_LOSSLESS, J2K),
    "image/jpx": (J2K_LOSSLESS, J2K),
    "image/jphc": (HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K),
    "image/dicom-rle": (RLE,),
}


def media_type_of(uid: str) -> str:
    """The media type a frame of syntax ``uid`` is labelled with (PS3.18 Table 8.7.3-5)."""
    for media, syntaxes in MEDIA_TYPE_SYNTAXES.items():
        if uid in syntaxes:
            return media
    return "application/octet-stream"


def is_native(uid: str) -> bool:
    """Whether a syntax stores pixel data unencapsulated (PS3.5 §A.1-A.3, §A.5)."""
    return uid in NATIVE
