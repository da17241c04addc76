"""Request dependencies (FastAPI ``Annotated`` style)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from dicomhub.context import Context
from dicomhub.core.access import AccessScope, Permission, Principal
from dicomhub.core.auth import require
from dicomhub.core.errors import Unauthorized


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


def client_address(request: Request) -> str:
    """The caller's address as seen by the server."""
    return request.client.host if request.client else "unknown"


async def get_principal(request: Request) -> Principal:
    """Authenticate the request: ``Authorization: Bearer <JWT or API key>`` (RFC 6750).

    Missing or invalid credentials are 401 with a ``WWW-Authenticate`` challenge.
    """
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Unauthorized("authentication required: send Authorization: Bearer <token>")
    ctx: Context = request.app.state.ctx
    token = credential.strip()
    principal = ctx.auth.cached_bearer(token)  # no I/O: no thread hop when remembered
    if principal is None:
        principal = await run_in_threadpool(ctx.auth.authenticate_bearer, token)
    request.state.principal = principal
    return principal


def _scope(permission: Permission) -> Callable[..., Awaitable[AccessScope]]:
    async def dependency(request: Request) -> AccessScope:
        principal = await get_principal(request)
        require(principal, permission)
        scope = principal.scope
        return scope.for_write() if permission == Permission.WRITE else scope

    return dependency


async def require_admin(request: Request) -> Principal:
    """A server administrator."""
    principal = await get_principal(request)
    require(principal, Permission.ADMIN)
    return principal


Ctx = Annotated[Context, Depends(get_context)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
Admin = Annotated[Principal, Depends(require_admin)]
Access = Annotated[AccessScope, Depends(_scope(Permission.READ))]
WriteAccess = Annotated[AccessScope, Depends(_scope(Permission.WRITE))]
DeleteAccess = Annotated[AccessScope, Depends(_scope(Permission.DELETE))]
BaseURL = Annotated[str, Depends(base_url)]
