"""HTTP authentication endpoints, the audit resource and the audit middleware.

- ``POST /auth/token``: OAuth2 token endpoint (RFC 6749 §4.3 password and §4.4 client
  credentials grants; form-encoded; client credentials also as HTTP Basic).
- ``GET /auth/whoami``: the authenticated principal.
- ``GET /audit``: audit events (admins; subscriber admins see their subscriber's).
- :class:`AuditMiddleware`: one audit event per DICOMweb request (store, query, retrieve,
  delete) with principal, source address, outcome and study, modelled on PS3.15 A.5.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomhub.core.access import AuditRecord, Principal
from dicomhub.core.errors import InvalidRequest, Unauthorized
from dicomhub.dicomweb.deps import Ctx, CurrentPrincipal, client_address

log = logging.getLogger(__name__)
router = APIRouter()
_T = TypeVar("_T")


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    response = JSONResponse({"error": error, "error_description": description}, status_code=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="dicomhub"'
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/auth/token")
async def token(request: Request, ctx: Ctx) -> JSONResponse:
    """Issue a bearer token (OAuth2 password or client_credentials grant)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return _oauth_error(
            400, "invalid_request", "send application/x-www-form-urlencoded (RFC 6749 §4.3.2)"
        )
    body = await request.body()
    if len(body) > 16384:
        return _oauth_error(400, "invalid_request", "request too large")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    grant = str(form.get("grant_type", ""))
    source = client_address(request)
    try:
        if grant == "password":
            username, password = str(form.get("username", "")), str(form.get("password", ""))
            if not username or not password:
                return _oauth_error(400, "invalid_request", "username and password required")
            try:
                principal, tok, exp = await run_in_threadpool(
                    ctx.auth.login_password, username, password, source
                )
            except Unauthorized as exc:
                delay = await run_in_threadpool(ctx.auth.failure_delay, username)
                await asyncio.sleep(delay)  # slow down guessing (RFC 6749 §10.10)
                return _oauth_error(400, "invalid_grant", str(exc))
        elif grant == "client_credentials":
            client_id = str(form.get("client_id", ""))
            secret = str(form.get("client_secret", ""))
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("basic "):
                try:
                    client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    return _oauth_error(400, "invalid_request", "malformed Basic credentials")
            try:
                principal, tok, exp = await run_in_threadpool(
                    ctx.auth.login_client, client_id, secret, source
                )
            except Unauthorized as exc:
                await asyncio.sleep(0.2)
                return _oauth_error(401, "invalid_client", str(exc))
        else:
            return _oauth_error(
                400, "unsupported_grant_type", "grant_type is password or client_credentials"
            )
    except InvalidRequest as exc:
        return _oauth_error(400, "invalid_request", str(exc))
    request.state.principal = principal
    return JSONResponse(
        {
            "access_token": tok,
            "token_type": "Bearer",
            "expires_in": max(exp - int(datetime.now().timestamp()), 0),
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/auth/whoami")
async def whoami(principal: CurrentPrincipal) -> JSONResponse:
    """The authenticated principal."""
    return JSONResponse(
        {
            "name": principal.name,
            "kind": principal.kind.value,
            "role": principal.role.value,
            "subscriber": principal.subscriber,
        }
    )


def _epoch(value: str | None, name: str) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InvalidRequest(f"{name}: ISO 8601 date/time expected") from None


@router.get("/audit")
async def audit(request: Request, ctx: Ctx, principal: CurrentPrincipal) -> JSONResponse:
    """Audit events, newest first; filters: principal, study, event, since, until, limit."""
    q = request.query_params
    try:
        limit = min(int(q.get("limit", "1000")), 10000)
    except ValueError:
        raise InvalidRequest("limit: an integer") from None
    events = await run_in_threadpool(
        lambda: ctx.audit.query(
            principal,
            principal=q.get("principal"),
            study=q.get("study"),
            event=q.get("event"),
            since=_epoch(q.get("since"), "since"),
            until=_epoch(q.get("until"), "until"),
            limit=limit,
        )
    )
    return JSONResponse(events)


_EVENTS = {  # (method, first path segment after the prefix) → (event, action)
    "POST": ("store", "C"),
    "DELETE": ("delete", "D"),
}


def classify(method: str, path: str, prefix: str) -> tuple[str, str] | None:
    """The audit event of a DICOMweb request, or None for non-DICOMweb paths."""
    if not path.startswith(prefix + "/"):
        return None
    rest = path[len(prefix) + 1 :].rstrip("/")
    parts = rest.split("/")
    if method in _EVENTS:
        return _EVENTS[method]
    if method != "GET":
        return None
    # QIDO: /studies, /series, /instances, .../series, .../instances (even segment counts)
    if parts[-1] in ("studies", "series", "instances") and len(parts) % 2 == 1:
        return ("query", "E")
    return ("retrieve", "R")


def _audit_record(scope: Scope, prefix: str, kind: tuple[str, str], status: int) -> AuditRecord:
    """The audit event of a DICOMweb request that was answered with ``status``."""
    state = scope.get("state") or {}
    principal: Principal | None = state.get("principal")
    parts = scope["path"][len(prefix) + 1 :].split("/")
    study = parts[1] if len(parts) > 1 and parts[0] == "studies" else None
    outcome = 0 if status < 400 else (4 if status < 500 else 8)
    client = scope.get("client")
    return AuditRecord(
        event=kind[0],
        action=kind[1],
        outcome=outcome,
        principal=principal.name if principal else None,
        subscriber=principal.subscriber if principal else None,
        source=client[0] if client else None,
        interface="http",
        study_instance_uid=study if study and len(study) <= 64 else None,
        detail={
            "method": scope["method"],
            "path": scope["path"][:512],
            "status": status,
            "query": scope.get("query_string", b"").decode("latin-1")[:512],
        },
    )


async def run_audited(request: Request, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a worker thread, followed in that same thread by the request's
    audit event (status 200) once it has returned: one thread hop instead of two for
    small, frequent requests (frames, searches).  The :class:`AuditMiddleware` then does
    not write the event again, unless the response leaves with another status (then that
    status is audited too).  If ``fn`` raises, nothing is written here and the middleware
    audits the error response as usual."""
    scope = request.scope
    state = scope.get("state")
    audit = state.get("audit") if state is not None else None
    ctx: Any = request.app.state.ctx

    def call() -> _T:
        result = fn(*args)
        if audit is not None and state is not None:
            prefix, kind = audit
            try:
                ctx.audit.record(_audit_record(scope, prefix, kind, 200))
            except Exception:
                log.exception("could not write the audit event")  # the middleware retries
            else:
                state["audited_status"] = 200
        return result

    return await run_in_threadpool(call)


class AuditMiddleware:
    """Records one audit event per DICOMweb request after the response status is known
    (or lets :func:`run_audited` record it together with the request's work)."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = classify(scope["method"], scope["path"], self.prefix)
        if kind is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["audit"] = (self.prefix, kind)
        recorded = False

        async def _send(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                # written before the response leaves: an access is never unaudited
                recorded = True
                status = int(message["status"])
                if state.get("audited_status") != status:
                    await self._record(scope, kind, status)
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            if not recorded:  # the app failed before answering
                await self._record(scope, kind, 500)

    async def _record(self, scope: Scope, kind: tuple[str, str], status: int) -> None:
        app = scope.get("app")
        if app is None:
            return
        ctx: Any = app.state.ctx
        try:
            await run_in_threadpool(
                ctx.audit.record, _audit_record(scope, self.prefix, kind, status)
            )
        except Exception:
            log.exception("could not write the audit event")
