"""The pixel adapter: implements :class:`dicomhub.core.ports.PixelCodec` with pydicom.

Frames (PS3.18 §10.4.1.1.4), rendering (§10.4.1.1.5), bulk data (§10.4.1.1.3) and
decompression to Explicit VR Little Endian (PS3.5 §A.2) for ``transfer-syntax``
requests.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom

from dicomhub.codecs import frames, registry, render, transcode
from dicomhub.codecs.registry import CodecError
from dicomhub.core import syntaxes
from dicomhub.core.errors import CannotTranscode, DicomhubError, NotFound, UndecodablePixelData
from dicomhub.core.model import ParsedInstance, StagedFile

log = logging.getLogger(__name__)
_RETRY_LOCK = threading.Lock()


def _decoded_digest(path: Path) -> tuple[str | None, int | None]:
    """:func:`transcode.pixel_digest_and_planar` ((None, None) when it cannot decode),
    without the sender's odd VRs as warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transcode.pixel_digest_and_planar(path)


def _has_pixel_data(path: Path) -> bool:
    """Whether the file has integer Pixel Data (what the pixel digest covers)."""
    try:
        return frames.inspect_pixel_data(path).keyword == "PixelData"
    except Exception:  # NoPixelData, or a header that cannot be read
        return False


PIXEL_TAGS = {"7FE00010", "7FE00008", "7FE00009"}


class PydicomPixelCodec:
    """Frame extraction, rendering and bulk data over pydicom 3 and its plugins."""

    def number_of_frames(self, path: Path) -> int:
        """Frames of the object."""
        return frames.number_of_frames(path)

    def native_frames(self, path: Path, frame_numbers: Sequence[int]) -> Iterator[bytes]:
        """Native little-endian frames, 1-based."""
        return frames.native_frames(path, frame_numbers)

    def render(
        self, path: Path, frame_number: int, params: object, thumbnail: bool = False
    ) -> bytes:
        """A JPEG/PNG of one frame."""
        assert isinstance(params, render.RenderParams)
        if thumbnail:
            return render.thumbnail(path, frame_number, params)
        return render.render(path, frame_number, params)

    def bulk_value(self, path: Path, tag_path: Sequence[str]) -> bytes:
        """The value of the element at ``tag_path``; Pixel Data comes back native."""
        top = tag_path[0].upper()
        if len(tag_path) == 1 and top in PIXEL_TAGS:
            n = frames.number_of_frames(path)
            return b"".join(frames.native_frames(path, range(1, n + 1)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=top not in PIXEL_TAGS)
        node: Any = ds
        for i, seg in enumerate(tag_path):
            try:
                if i % 2 == 0:
                    tag = int(seg, 16)
                    if tag not in node:
                        raise KeyError(seg)
                    node = node[tag]
                    if i < len(tag_path) - 1:
                        node = node.value
                else:
                    node = node[int(seg)]
            except (KeyError, IndexError, TypeError, ValueError):
                raise NotFound(f"no bulk data at {'/'.join(tag_path)}") from None
        value = getattr(node, "value", None)
        if not isinstance(value, (bytes, bytearray)):
            raise NotFound(f"{'/'.join(tag_path)} is not a binary value")
        return bytes(value)

    def pixel_digest(
        self, path: Path, parsed: ParsedInstance | None = None, content: bytes | None = None
    ) -> tuple[str | None, int | None]:
        """Pixel digest (v1) and stored Planar Configuration (codecs/transcode.py)."""
        if parsed is not None:
            fast = transcode.native_digest_from_parsed(path, parsed, content)
            if fast is not None:
                return fast
        result = _decoded_digest(path)
        if result[0] is None and _has_pixel_data(path):
            with _RETRY_LOCK:  # once more, alone: a decoder library failing under concurrency
                result = _decoded_digest(path)
            if result[0] is None:
                log.warning("%s: pixel data not decodable; no pixel digest recorded", path.name)
            else:
                log.warning("%s: pixel data decoded on the second attempt", path.name)
        return result

    def deferred_digest_planar(
        self,
        path: Path,
        parsed: ParsedInstance,
        content: bytes | None = None,
        head: tuple[bytes, int] | None = None,
    ) -> int | None:
        """The stored Planar Configuration when the pixel digest of this object is the
        SHA-256 of its Pixel Data bytes as stored (native little endian, canonical
        layout), so that it can be computed later from the stored file; else ``None``.
        ``head``: the file's first bytes and its size, when the caller kept them."""
        layout = transcode.native_layout_from_parsed(path, parsed, content, head)
        return None if layout is None else layout[2]

    def stored_pixel_digest(self, path: Path, sha256: str) -> str | None:
        """The pixel digest of a stored object, once its bytes are checked to be those
        received (their SHA-256 is ``sha256``); ``None`` when they are not (logged) or
        it has no decodable pixel data (found without reading the whole file)."""
        digest = self.pixel_digest(path)[0]
        if digest is None:
            return None
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != sha256:
            log.error(
                "%s: the stored object is not what was received (SHA-256 %s, recorded %s): "
                "no pixel digest",
                path,
                h.hexdigest(),
                sha256,
            )
            return None
        return digest

    def transcode(
        self,
        path: Path,
        transfer_syntax_uid: str,
        *,
        planar_configuration: int | None = None,
        verify: bool = False,
        expected_digest: str | None = None,
    ) -> bytes:
        """The object re-encoded in ``transfer_syntax_uid`` (codecs/transcode.py)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return transcode.transcode_bytes(
                    path,
                    transfer_syntax_uid,
                    planar_configuration=planar_configuration,
                    verify=verify,
                    expected_digest=expected_digest,
                )
        except (CodecError, DicomhubError):
            raise
        except Exception as exc:  # a damaged file: report, never a 500
            raise CannotTranscode(f"cannot transcode: {type(exc).__name__}: {exc}") from None

    def transcode_file(
        self, path: Path, transfer_syntax_uid: str, dst: Path, *, expected_digest: str | None
    ) -> StagedFile:
        """Write the verified re-encoding to ``dst``; hashed from the bytes written."""
        data = self.transcode(
            path, transfer_syntax_uid, verify=True, expected_digest=expected_digest
        )
        dst.write_bytes(data)
        return StagedFile(dst, len(data), hashlib.sha256(data).hexdigest())

    def frames_in(
        self, path: Path, frame_numbers: Sequence[int], transfer_syntax_uid: str
    ) -> Iterator[bytes]:
        """Frames as fragments of ``transfer_syntax_uid`` (passed through if stored so);
        a damaged file raises :class:`UndecodablePixelData`, never anything else."""
        try:
            frames_iter = transcode.encoded_frames(path, frame_numbers, transfer_syntax_uid)
        except (CodecError, DicomhubError):
            raise
        except Exception as exc:
            raise UndecodablePixelData(f"cannot read the frames: {exc}") from None
        return _guarded(frames_iter)

    def can_encode(self, transfer_syntax_uid: str) -> bool:
        """Whether the registry has a writer for this syntax."""
        ts = registry.get(transfer_syntax_uid)
        return ts is not None and ts.can_encode and transfer_syntax_uid != syntaxes.EBE


def _guarded(frames_iter: Iterator[bytes]) -> Iterator[bytes]:
    """Turn a failure while producing frames into :class:`UndecodablePixelData` (406)."""
    try:
        yield from frames_iter
    except (CodecError, DicomhubError):
        raise
    except Exception as exc:
        raise UndecodablePixelData(f"cannot read the frames: {exc}") from None
