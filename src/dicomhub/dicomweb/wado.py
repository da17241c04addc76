"""WADO-RS: Retrieve transactions (PS3.18 §10.4) and DELETE of resources.

Instances stream from storage in 1 MiB chunks; metadata is served from the index
without reading files; frames are native (uncompressed) little endian, labelled as
Explicit VR Little Endian; rendered and thumbnail resources are JPEG or PNG.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from dicomhub.codecs.render import RenderParams, parse_quality, parse_viewport, parse_window
from dicomhub.core.access import AccessScope
from dicomhub.core.errors import InvalidRequest
from dicomhub.dicomweb.deps import Access, BaseURL, Ctx, DeleteAccess
from dicomhub.dicomweb.media import (
    EXPLICIT_VR_LE,
    negotiate_bulk,
    negotiate_frames,
    negotiate_instances,
    negotiate_json,
    negotiate_rendered,
)
from dicomhub.dicomweb.multipart import closing, new_boundary, part_header

router = APIRouter()
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _check_uids(*uids: str | None) -> None:
    for uid in uids:
        if uid is not None and (len(uid) > 64 or not _UID.match(uid)):
            raise InvalidRequest(f"'{uid[:80]}' is not a valid UID")


# -- instances ---------------------------------------------------------------------------
async def _retrieve(
    request: Request,
    ctx: Ctx,
    study: str,
    series: str | None,
    instance: str | None,
    *,
    access: AccessScope,
) -> StreamingResponse:
    _check_uids(study, series, instance)
    items = await run_in_threadpool(ctx.retrieve.instances, access, study, series, instance)
    target = negotiate_instances(
        request.headers.get("accept"), {i.transfer_syntax_uid for i in items}
    )
    boundary = new_boundary()

    def _body() -> Iterator[bytes]:
        for item in items:
            if target is None or item.transfer_syntax_uid == target:
                ts = item.transfer_syntax_uid
                yield part_header(boundary, f"application/dicom; transfer-syntax={ts}")
                yield from ctx.retrieve.open(item)
            else:
                data = ctx.retrieve.explicit_le(item)
                yield part_header(boundary, f"application/dicom; transfer-syntax={target}")
                yield data
            yield b"\r\n"
        yield closing(boundary)

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    if target:
        media += f"; transfer-syntax={target}"
    return StreamingResponse(_body(), media_type=media)


@router.get("/studies/{study}")
async def retrieve_study(
    study: str, request: Request, ctx: Ctx, access: Access
) -> StreamingResponse:
    """Retrieve all instances of a study (PS3.18 §10.4.1.1.1)."""
    return await _retrieve(request, ctx, study, None, None, access=access)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(
    study: str, series: str, request: Request, ctx: Ctx, access: Access
) -> StreamingResponse:
    """Retrieve all instances of a series."""
    return await _retrieve(request, ctx, study, series, None, access=access)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, access: Access
) -> StreamingResponse:
    """Retrieve one instance."""
    return await _retrieve(request, ctx, study, series, instance, access=access)


# -- metadata ----------------------------------------------------------------------------
async def _metadata(
    request: Request,
    ctx: Ctx,
    base: str,
    study: str,
    series: str | None,
    instance: str | None,
    *,
    access: AccessScope,
) -> Response:
    _check_uids(study, series, instance)
    negotiate_json(request.headers.get("accept"))

    def _collect() -> bytes:
        return b"".join(ctx.retrieve.metadata(access, study, series, instance, base))

    body = await run_in_threadpool(_collect)
    return Response(body, media_type="application/dicom+json")


@router.get("/studies/{study}/metadata")
async def study_metadata(
    study: str, request: Request, ctx: Ctx, access: Access, base: BaseURL
) -> Response:
    """Metadata of all instances of a study (PS3.18 §10.4.1.1.2)."""
    return await _metadata(request, ctx, base, study, None, None, access=access)


@router.get("/studies/{study}/series/{series}/metadata")
async def series_metadata(
    study: str, series: str, request: Request, ctx: Ctx, access: Access, base: BaseURL
) -> Response:
    """Metadata of all instances of a series."""
    return await _metadata(request, ctx, base, study, series, None, access=access)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def instance_metadata(
    study: str,
    series: str,
    instance: str,
    request: Request,
    ctx: Ctx,
    access: Access,
    base: BaseURL,
) -> Response:
    """Metadata of one instance."""
    return await _metadata(request, ctx, base, study, series, instance, access=access)


# -- frames ------------------------------------------------------------------------------
def parse_frame_list(value: str) -> list[int]:
    """``1,3,5`` → [1, 3, 5] (PS3.18 §10.4.1.1.4 FrameList); 400 on anything else."""
    try:
        numbers = [int(v) for v in value.split(",") if v.strip() != ""]
    except ValueError:
        raise InvalidRequest(
            f"frame list '{value[:80]}' is not a comma-separated list of integers"
        ) from None
    if not numbers:
        raise InvalidRequest("empty frame list")
    if any(n < 1 for n in numbers):
        raise InvalidRequest("frame numbers start at 1")
    return numbers


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def retrieve_frames(
    study: str, series: str, instance: str, frames: str, request: Request, ctx: Ctx, access: Access
) -> Response:
    """Native frames as multipart/related; type="application/octet-stream" (§10.4.1.1.4).

    All frames are decoded before the response starts, so a bad frame number or an
    undecodable frame is a clean 404/406 rather than a broken stream.
    """
    _check_uids(study, series, instance)
    numbers = parse_frame_list(frames)
    negotiate_frames(request.headers.get("accept"))

    def _decode() -> list[bytes]:
        _item, it = ctx.retrieve.frames(access, study, series, instance, numbers)
        return list(it)

    data = await run_in_threadpool(_decode)
    boundary = new_boundary()
    ctype = f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LE}"
    chunks: list[bytes] = []
    for frame in data:
        chunks += [part_header(boundary, ctype), frame, b"\r\n"]
    chunks.append(closing(boundary))
    media = (
        f'multipart/related; type="application/octet-stream"; '
        f"transfer-syntax={EXPLICIT_VR_LE}; boundary={boundary}"
    )
    return Response(b"".join(chunks), media_type=media)


# -- bulk data ---------------------------------------------------------------------------
@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path:path}")
async def retrieve_bulkdata(
    study: str,
    series: str,
    instance: str,
    tag_path: str,
    request: Request,
    ctx: Ctx,
    access: Access,
) -> Response:
    """A bulk data value referenced by a BulkDataURI (PS3.18 §10.4.1.1.3)."""
    _check_uids(study, series, instance)
    negotiate_bulk(request.headers.get("accept"))
    segments = [s for s in tag_path.split("/") if s]
    if not segments or not all(
        re.fullmatch(r"[0-9A-Fa-f]{8}", s) if i % 2 == 0 else s.isdigit()
        for i, s in enumerate(segments)
    ):
        raise InvalidRequest(f"invalid bulk data path '{tag_path[:80]}'")
    data = await run_in_threadpool(ctx.retrieve.bulkdata, access, study, series, instance, segments)
    boundary = new_boundary()
    ctype = "application/octet-stream"
    if segments[-1].upper() == "7FE00010":
        ctype += f"; transfer-syntax={EXPLICIT_VR_LE}"
    body = part_header(boundary, ctype) + data + b"\r\n" + closing(boundary)
    return Response(
        body, media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    )


# -- rendered / thumbnail ----------------------------------------------------------------
def _render_params(request: Request, thumbnail: bool) -> RenderParams:
    q = request.query_params
    media = negotiate_rendered(request.headers.get("accept"))
    allowed = {
        "window",
        "viewport",
        "quality",
        "annotation",
        "charset",
        "iccprofile",
        "accept",
        "bgcolor",
    }
    unknown = set(q.keys()) - allowed
    if unknown:
        raise InvalidRequest(f"unknown rendering parameter(s): {', '.join(sorted(unknown))}")
    if "accept" in q:
        media = negotiate_rendered(q["accept"])
    return RenderParams(
        media_type=media,
        quality=parse_quality(q["quality"]) if "quality" in q else None,
        window=parse_window(q["window"]) if "window" in q else None,
        viewport=parse_viewport(q["viewport"]) if "viewport" in q else None,
    )


async def _rendered(
    request: Request,
    ctx: Ctx,
    study: str,
    series: str | None,
    instance: str | None,
    frames: str | None,
    thumbnail: bool,
    *,
    access: AccessScope,
) -> Response:
    _check_uids(study, series, instance)
    params = _render_params(request, thumbnail)
    numbers = parse_frame_list(frames) if frames is not None else [1]
    if len(numbers) > 1:
        raise InvalidRequest("rendered frames: ask for one frame per request")
    image = await run_in_threadpool(
        ctx.retrieve.rendered,
        access,
        study,
        series,
        instance,
        numbers[0] if frames is not None else None,
        params,
        thumbnail,
    )
    return Response(image, media_type=params.media_type)


def _add_rendered_routes() -> None:
    for kind in ("rendered", "thumbnail"):
        thumb = kind == "thumbnail"

        def make(thumb: bool = thumb) -> tuple[object, object, object, object]:
            async def study_r(study: str, request: Request, ctx: Ctx, access: Access) -> Response:
                return await _rendered(request, ctx, study, None, None, None, thumb, access=access)

            async def series_r(
                study: str, series: str, request: Request, ctx: Ctx, access: Access
            ) -> Response:
                return await _rendered(
                    request, ctx, study, series, None, None, thumb, access=access
                )

            async def instance_r(
                study: str, series: str, instance: str, request: Request, ctx: Ctx, access: Access
            ) -> Response:
                return await _rendered(
                    request, ctx, study, series, instance, None, thumb, access=access
                )

            async def frames_r(
                study: str,
                series: str,
                instance: str,
                frames: str,
                request: Request,
                ctx: Ctx,
                access: Access,
            ) -> Response:
                return await _rendered(
                    request, ctx, study, series, instance, frames, thumb, access=access
                )

            return study_r, series_r, instance_r, frames_r

        s, se, i, f = make()
        router.add_api_route(f"/studies/{{study}}/{kind}", s, methods=["GET"])  # type: ignore[arg-type]
        router.add_api_route(f"/studies/{{study}}/series/{{series}}/{kind}", se, methods=["GET"])  # type: ignore[arg-type]
        router.add_api_route(
            f"/studies/{{study}}/series/{{series}}/instances/{{instance}}/{kind}",
            i,  # type: ignore[arg-type]
            methods=["GET"],
        )
        router.add_api_route(
            f"/studies/{{study}}/series/{{series}}/instances/{{instance}}/frames/{{frames}}/{kind}",
            f,  # type: ignore[arg-type]
            methods=["GET"],
        )


_add_rendered_routes()


# -- delete ------------------------------------------------------------------------------
async def _delete(
    ctx: Ctx, study: str, series: str | None, instance: str | None, *, access: AccessScope
) -> Response:
    _check_uids(study, series, instance)
    await run_in_threadpool(ctx.delete.delete, access, study, series, instance)
    return Response(status_code=204)


@router.delete("/studies/{study}")
async def delete_study(study: str, ctx: Ctx, access: DeleteAccess) -> Response:
    """Delete a study: index rows, then stored objects."""
    return await _delete(ctx, study, None, None, access=access)


@router.delete("/studies/{study}/series/{series}")
async def delete_series(study: str, series: str, ctx: Ctx, access: DeleteAccess) -> Response:
    """Delete a series."""
    return await _delete(ctx, study, series, None, access=access)


@router.delete("/studies/{study}/series/{series}/instances/{instance}")
async def delete_instance(
    study: str, series: str, instance: str, ctx: Ctx, access: DeleteAccess
) -> Response:
    """Delete one instance."""
    return await _delete(ctx, study, series, instance, access=access)
