"""Typed domain errors.

Core services raise these; the edges translate them into HTTP statuses
(``dicomweb.errors``) or DIMSE status codes (PS3.7 Annex C) in exactly one place each.
"""

from __future__ import annotations


class DicomhubError(Exception):
    """Base of every domain error; ``str(err)`` is a message fit for the caller."""


class NotFound(DicomhubError):
    """The addressed study, series, instance, frame or bulk data does not exist (HTTP 404)."""


class InvalidRequest(DicomhubError):
    """A parameter or query key is malformed or unsupported (HTTP 400)."""


class NotAcceptable(DicomhubError):
    """No representation satisfies the caller's Accept (HTTP 406)."""


class UnsupportedMediaType(DicomhubError):
    """The request body has a content type we do not take (HTTP 415)."""


class PayloadTooLarge(DicomhubError):
    """The request body is larger than the configured limit (HTTP 413)."""


class InsufficientStorage(DicomhubError):
    """The archive cannot write what it received (a full or failing disk, HTTP 507)."""


class Unauthorized(DicomhubError):
    """No, invalid, expired or revoked credentials (HTTP 401, DIMSE association rejection)."""


class Forbidden(DicomhubError):
    """Authenticated, but the role does not allow this (HTTP 403)."""


class Conflict(DicomhubError):
    """The request conflicts with the archive's state (HTTP 409)."""


class NoPixelData(NotFound):
    """The instance has no Pixel Data, Float Pixel Data or Double Float Pixel Data."""


class FrameOutOfRange(NotFound):
    """A requested frame number is < 1 or > NumberOfFrames (PS3.18 §10.4.1.1.4)."""


class UndecodablePixelData(DicomhubError):
    """The stored pixel data cannot be decoded with the available codecs.

    HTTP 406 for frames and rendered images.
    """


class CannotTranscode(DicomhubError):
    """Pixel data cannot be written in the asked transfer syntax without loss or
    mislabelling (PS3.5 §8.2, PS3.18 §8.7.3.5); the message says why."""


class StoreFailure(DicomhubError):
    """One instance could not be stored.

    ``status`` is the failure reason from PS3.4 Annex B.2.3 / PS3.18 §10.5.3
    (e.g. 0xC000 cannot understand, 0xA900 data set does not match SOP class,
    0x0111 duplicate SOP instance, 0xA700 out of resources).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
