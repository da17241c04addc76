"""QIDO-RS: Search transactions (PS3.18 §10.6) for studies, series and instances."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dicomhub.core.access import AccessScope
from dicomhub.core.attributes import Level
from dicomhub.core.query import parse_qido
from dicomhub.dicomweb.deps import Access, BaseURL, Ctx
from dicomhub.dicomweb.media import negotiate_json
from dicomhub.dicomweb.security import run_audited

router = APIRouter()


async def _search(
    request: Request,
    ctx: Ctx,
    base: str,
    level: Level,
    scope: dict[str, str],
    *,
    access: AccessScope,
) -> Response:
    negotiate_json(request.headers.get("accept"))
    query = parse_qido(
        level,
        request.query_params.multi_items(),
        default_limit=ctx.settings.qido_default_limit,
        max_limit=ctx.settings.qido_max_limit,
    )
    results = await run_audited(request, ctx.query.search_json, access, query, scope, base)
    body = json.dumps(results, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, media_type="application/dicom+json")


@router.get("/studies")
async def search_studies(request: Request, ctx: Ctx, access: Access, base: BaseURL) -> Response:
    """Search for studies (PS3.18 §10.6.1, Table 10.6.1-2)."""
    return await _search(request, ctx, base, Level.STUDY, {}, access=access)


@router.get("/series")
async def search_all_series(request: Request, ctx: Ctx, access: Access, base: BaseURL) -> Response:
    """Search for series in all studies."""
    return await _search(request, ctx, base, Level.SERIES, {}, access=access)


@router.get("/instances")
async def search_all_instances(
    request: Request, ctx: Ctx, access: Access, base: BaseURL
) -> Response:
    """Search for instances in all studies."""
    return await _search(request, ctx, base, Level.IMAGE, {}, access=access)


@router.get("/studies/{study}/series")
async def search_study_series(
    study: str, request: Request, ctx: Ctx, access: Access, base: BaseURL
) -> Response:
    """Search for series of one study."""
    return await _search(
        request, ctx, base, Level.SERIES, {"StudyInstanceUID": study}, access=access
    )


@router.get("/studies/{study}/instances")
async def search_study_instances(
    study: str, request: Request, ctx: Ctx, access: Access, base: BaseURL
) -> Response:
    """Search for instances of one study."""
    return await _search(
        request, ctx, base, Level.IMAGE, {"StudyInstanceUID": study}, access=access
    )


@router.get("/studies/{study}/series/{series}/instances")
async def search_series_instances(
    study: str, series: str, request: Request, ctx: Ctx, access: Access, base: BaseURL
) -> Response:
    """Search for instances of one series."""
    return await _search(
        request,
        ctx,
        base,
        Level.IMAGE,
        {"StudyInstanceUID": study, "SeriesInstanceUID": series},
        access=access,
    )
