"""Request dependencies (FastAPI ``Annotated`` style)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dicomhub.context import Context
from dicomhub.core.access import SYSTEM, AccessScope


def get_context(request: Request) -> Context:
    """The archive context the app was built with."""
    ctx: Context = request.app.state.ctx
    return ctx


def base_url(request: Request) -> str:
    """The DICOMweb base URL for RetrieveURL and BulkDataURI (PS3.18 §8.2).

    ``public_url`` wins when configured (needed behind a reverse proxy).  Otherwise
    X-Forwarded-Proto/Host, then the Host header; a Host header without a port (as
    dicomweb-client sends) gets the port the connection actually reached.
    """
    prefix: str = request.app.state.prefix
    public: str | None = request.app.state.ctx.settings.public_url
    if public:
        return public.rstrip("/") + prefix
    headers = request.headers
    scheme = headers.get("x-forwarded-proto", request.url.scheme)
    host = headers.get("x-forwarded-host") or headers.get("host")
    server = request.scope.get("server")
    if not host:
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    elif ":" not in host.rsplit("]", 1)[-1] and server and "x-forwarded-host" not in headers:
        default = 443 if scheme == "https" else 80
        if server[1] != default:
            host = f"{host}:{server[1]}"
    root = request.scope.get("root_path", "")
    return f"{scheme}://{host}{root}{prefix}"


def get_access(request: Request) -> AccessScope:
    """The caller's access scope (authentication arrives in the next step: SYSTEM for now)."""
    return SYSTEM


Ctx = Annotated[Context, Depends(get_context)]
Access = Annotated[AccessScope, Depends(get_access)]
BaseURL = Annotated[str, Depends(base_url)]
