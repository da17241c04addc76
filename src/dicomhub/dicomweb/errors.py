"""Domain errors → HTTP statuses, in one place (cf. dicom-server's ExceptionHandlingMiddleware)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicomhub.core import errors

log = logging.getLogger(__name__)

STATUS: list[tuple[type[errors.DicomhubError], int]] = [
    (errors.FrameOutOfRange, 404),
    (errors.NoPixelData, 404),
    (errors.NotFound, 404),
    (errors.InvalidRequest, 400),
    (errors.NotAcceptable, 406),
    (errors.UndecodablePixelData, 406),
    (errors.CannotTranscode, 406),
    (errors.UnsupportedMediaType, 415),
    (errors.PayloadTooLarge, 413),
    (errors.InsufficientStorage, 507),
    (errors.Conflict, 409),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
]


def status_for(exc: errors.DicomhubError) -> int:
    """HTTP status of a domain error (400 for anything unlisted: it is the caller's input)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(status: int, message: str) -> JSONResponse:
    """A small JSON error document."""
    return JSONResponse({"status": status, "error": message}, status_code=status)


def install(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""

    @app.exception_handler(errors.DicomhubError)
    async def _domain(_req: Request, exc: errors.DicomhubError) -> JSONResponse:
        status = status_for(exc)
        response = error_body(status, str(exc))
        if status == 401:
            response.headers["WWW-Authenticate"] = (
                'Bearer realm="dicomhub", error="invalid_token"'
                if "authentication required" not in str(exc)
                else 'Bearer realm="dicomhub"'
            )
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error_body(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_body(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", req.method, req.url.path)
        return error_body(500, "internal error; see the server log")
