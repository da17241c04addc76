"""The ASGI application: DICOMweb under ``/dicom-web`` plus ``/health``."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from dicomhub import __version__
from dicomhub.context import Context
from dicomhub.dicomweb import errors, nodes, qido, security, stow, wado
from dicomhub.dicomweb.encoding import ContentEncodingMiddleware
from dicomhub.dicomweb.zerocopy import DicomhubAPI

log = logging.getLogger(__name__)
PREFIX = "/dicom-web"


def create_app(ctx: Context) -> FastAPI:
    """Build the HTTP application around an archive context."""

    app = DicomhubAPI(
        title="dicomhub",
        version=__version__,
        description="DICOMweb archive (PS3.18): STOW-RS, QIDO-RS, WADO-RS.",
        # no unauthenticated API explorer on a public server (docs/security.md)
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    app.state.prefix = PREFIX
    errors.install(app)
    app.include_router(stow.router, prefix=PREFIX, tags=["STOW-RS"])
    app.include_router(qido.router, prefix=PREFIX, tags=["QIDO-RS"])
    app.include_router(wado.router, prefix=PREFIX, tags=["WADO-RS"])
    app.include_router(nodes.router, prefix="/api", tags=["nodes"])
    app.include_router(security.router, tags=["security"])
    # the last added middleware is the outermost: the audit wraps the encoder and records
    # the status of the response start as it leaves (the encoder never changes a status)
    app.add_middleware(ContentEncodingMiddleware, prefix=PREFIX)
    app.add_middleware(security.AuditMiddleware, prefix=PREFIX)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: the process answers and the index is reachable (no authentication,
        reveals nothing about the archive's content)."""
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(ctx.query.ping)
        return JSONResponse({"status": "ok", "version": __version__})

    return app
