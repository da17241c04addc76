"""WADO-RS: Retrieve transactions (PS3.18 §10.4) and DELETE of resources.

Instances go out as stored (by sendfile where the server allows it, dicomweb/zerocopy.py;
else streamed from storage) or re-encoded in the transfer syntax the Accept header asks
for (PS3.18 §8.7.3), in chunked transfer coding; metadata is served from the index
without reading files; frames are native (Explicit VR Little Endian form) or compressed
(image/jls, image/jp2, image/jphc, image/jpeg, image/dicom-rle), passed through when
already stored so; rendered and thumbnail resources are JPEG or PNG.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.types import Receive, Scope, Send

from dicomhub.codecs.render import RenderParams, parse_quality, parse_viewport, parse_window
from dicomhub.context import Context
from dicomhub.core.access import AccessScope
from dicomhub.core.errors import CannotTranscode, InvalidRequest, NotAcceptable
from dicomhub.core.model import StoredInstance
from dicomhub.core.syntaxes import LOSSLESS_SOURCES, media_type_of
from dicomhub.core.syntaxes import NATIVE as NATIVE_SYNTAXES
from dicomhub.dicomweb import zerocopy
from dicomhub.dicomweb.deps import Access, BaseURL, Ctx, DeleteAccess
from dicomhub.dicomweb.media import (
    AS_STORED,
    EXPLICIT_VR_LE,
    FrameChoice,
    frame_choices,
    instance_choices,
    negotiate_bulk,
    negotiate_json,
    negotiate_rendered,
)
from dicomhub.dicomweb.multipart import closing, new_boundary, part_header
from dicomhub.dicomweb.security import run_audited

log = logging.getLogger(__name__)
router = APIRouter()

#: Objects up to this size are read whole in one worker-thread hop while streaming a
#: study; larger ones stream in 1 MiB chunks (memory stays bounded either way).
WHOLE_READ_LIMIT = 8 << 20
#: Consecutive small instances are sent in blocks of about this many bytes.
BLOCK = 4 << 20
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _check_uids(*uids: str | None) -> None:
    for uid in uids:
        if uid is not None and (len(uid) > 64 or not _UID.match(uid)):
            raise InvalidRequest(f"'{uid[:80]}' is not a valid UID")


# -- instances ---------------------------------------------------------------------------
def _render_instance(
    ctx: Context, item: StoredInstance, candidates: list[str]
) -> tuple[str, Iterator[bytes]]:
    """The first of ``candidates`` this instance can be sent in, with its bytes.

    As stored streams from storage; any other syntax is transcoded in memory (one instance
    at a time).  Raises the last :class:`CannotTranscode` if none works.
    """
    failure: CannotTranscode | None = None
    for ts in candidates:
        if ts in (AS_STORED, item.transfer_syntax_uid):
            return item.transfer_syntax_uid, ctx.retrieve.open(item)
        try:
            return ts, iter([ctx.retrieve.transcoded(item, ts)])
        except CannotTranscode as exc:
            failure = exc
    raise failure or CannotTranscode("no acceptable transfer syntax")


async def _retrieve(
    request: Request,
    ctx: Ctx,
    study: str,
    series: str | None,
    instance: str | None,
    *,
    access: AccessScope,
) -> StreamingResponse:
    """Instances as multipart/related; type="application/dicom" (PS3.18 §10.4.1.1.1).

    Each part is labelled with the transfer syntax its bytes are really in.  The first
    instance is prepared before the response starts, so an Accept that cannot be met is a
    clean 406; a later instance that cannot be re-encoded in any acceptable syntax is
    left out (logged) rather than sent mislabelled.
    """
    _check_uids(study, series, instance)
    choices = instance_choices(request.headers.get("accept"))
    items = await run_in_threadpool(ctx.retrieve.instances, access, study, series, instance)

    def candidates(item: StoredInstance) -> list[str]:
        usable = [
            ts
            for ts in choices
            if ts in (AS_STORED, item.transfer_syntax_uid) or ctx.retrieve.can_encode(ts)
        ]
        if item.transfer_syntax_uid not in LOSSLESS_SOURCES and AS_STORED in usable:
            # lossy data re-encoded losslessly only grows: as stored, when that is acceptable
            usable.remove(AS_STORED)
            usable.insert(0, AS_STORED)
        return usable

    plans = [(item, candidates(item)) for item in items]
    for item, cands in plans:
        if not cands:
            raise NotAcceptable(
                f"instance {item.sop_instance_uid} is stored as {item.transfer_syntax_uid} "
                f"and cannot be sent in {', '.join(choices)}"
            )
    first = await run_in_threadpool(_render_instance, ctx, plans[0][0], plans[0][1])
    boundary = new_boundary()

    def render(index: int) -> tuple[str, Iterator[bytes]] | None:
        """Instance ``index`` in the first syntax it can be sent in (the first instance
        was prepared already), or None: left out, logged."""
        if index == 0:
            return first
        item, cands = plans[index]
        try:
            return _render_instance(ctx, item, cands)
        except CannotTranscode as exc:
            log.warning("left %s out of a WADO-RS response: %s", item.sop_instance_uid, exc)
            return None

    def _block(start: int) -> tuple[int, bytes, bytes, Iterator[bytes] | None]:
        """From instance ``start`` on, in one thread hop: the parts of consecutive small
        instances read whole and joined into one block of about BLOCK bytes (few large
        socket writes), or — at a large instance — its part header and chunk iterator.
        An instance that cannot be sent in any acceptable syntax is left out (logged)."""
        pieces: list[bytes] = []
        size = 0
        index = start
        while index < len(plans) and size < BLOCK:
            item = plans[index][0]
            rendered = render(index)
            index += 1
            if rendered is None:
                continue
            ts, data = rendered
            header = part_header(boundary, f"application/dicom; transfer-syntax={ts}")
            if item.size > WHOLE_READ_LIMIT:
                return index, b"".join(pieces), header, data
            pieces += [header, *data, b"\r\n"]
            size += item.size
        return index, b"".join(pieces), b"", None

    async def _body() -> AsyncIterator[bytes]:
        index = 0
        while index < len(plans):
            index, block, large_header, rest = await run_in_threadpool(_block, index)
            if block:
                yield block
            if rest is not None:
                yield large_header
                async for chunk in iterate_in_threadpool(rest):  # chunk by chunk
                    yield chunk
                yield b"\r\n"
        yield closing(boundary)

    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    if len(plans) == 1:  # several instances may end up in different syntaxes
        media += f"; transfer-syntax={first[0]}"
    direct = request.scope.get(zerocopy.SCOPE_KEY)
    if isinstance(direct, zerocopy.DirectSocket):

        def as_stored(index: int) -> bool:
            item, cands = plans[index]
            if index == 0:
                return first[0] == item.transfer_syntax_uid
            return cands[0] in (AS_STORED, item.transfer_syntax_uid)

        async def _direct(send: Send) -> None:
            """Runs of instances sent as stored go out by sendfile (zero copy), one worker
            thread hop per run; re-encoded ones through ASGI, one at a time."""
            index = 0
            while index < len(plans):
                if not as_stored(index):
                    rendered = await run_in_threadpool(render, index)
                    index += 1
                    if rendered is not None:
                        ts, data = rendered
                        header = part_header(boundary, f"application/dicom; transfer-syntax={ts}")
                        body = b"".join([header, *data, b"\r\n"])
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    continue
                run: list[StoredInstance] = []
                while index < len(plans) and as_stored(index) and len(run) < DIRECT_RUN:
                    run.append(plans[index][0])
                    index += 1
                parts = await run_in_threadpool(_file_parts, ctx, boundary, run)
                await direct.drained()
                await direct.send_files_async(parts)
            await send(
                {"type": "http.response.body", "body": closing(boundary), "more_body": False}
            )

        return _DirectResponse(_direct, direct, media)
    return StreamingResponse(_body(), media_type=media)


#: Instances sent by sendfile in one worker-thread hop.
DIRECT_RUN = 64


def _file_parts(
    ctx: Context, boundary: str, items: list[StoredInstance]
) -> list[zerocopy.FilePart]:
    """Part headers and files of instances sent as stored."""
    return [
        zerocopy.FilePart(
            part_header(boundary, f"application/dicom; transfer-syntax={item.transfer_syntax_uid}"),
            ctx.retrieve.local_path(item),
            b"\r\n",
        )
        for item in items
    ]


class _DirectResponse(StreamingResponse):
    """A multipart response whose stored files leave by sendfile (dicomweb/zerocopy.py);
    chunked transfer coding (no Content-Length), like any streamed response."""

    def __init__(
        self,
        run: Callable[[Send], Awaitable[None]],
        direct: zerocopy.DirectSocket,
        media: str,
    ) -> None:
        super().__init__(iter(()), media_type=media)
        self._run = run
        self._direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            await self._run(send)
        except zerocopy.DirectWriteError as exc:  # the client went away mid-response
            log.info("WADO-RS response abandoned: %s", exc)
            self._direct.transport.abort()


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


def _produce_frames(
    ctx: Context,
    access: AccessScope,
    uids: tuple[str, str, str],
    numbers: list[int],
    choices: list[FrameChoice],
) -> tuple[str, list[bytes]]:
    """Pick the first acceptable encoding that works and produce every frame in it.

    Returns the part Content-Type and the frames.  Frames stored in the asked syntax are
    passed through; others are decoded and re-encoded (codecs/registry.py).
    """
    study, series, instance = uids
    item = ctx.retrieve.instances(access, study, series, instance)[0]
    stored = item.transfer_syntax_uid
    failure: Exception | None = None
    for choice in choices:
        target = stored if choice.transfer_syntax == AS_STORED else choice.transfer_syntax
        if target is None or (target in NATIVE_SYNTAXES and choice.transfer_syntax == AS_STORED):
            it = ctx.retrieve.frames(item, numbers)
            return f"application/octet-stream; transfer-syntax={EXPLICIT_VR_LE}", list(it)
        if target in NATIVE_SYNTAXES:
            continue  # native frames are only offered in Explicit VR Little Endian form
        if target != stored and not ctx.retrieve.can_encode(target):
            continue
        try:
            data = list(ctx.retrieve.frames_in(item, numbers, target))
        except CannotTranscode as exc:
            failure = exc
            continue
        media = choice.media_type
        if media in ("application/octet-stream", "image/*") and choice.transfer_syntax == AS_STORED:
            media = media_type_of(target)
        return f"{media}; transfer-syntax={target}", data
    reason = f": {failure}" if failure else ""
    raise NotAcceptable(
        f"the frames (stored as {stored}) cannot be sent in any accepted encoding{reason}"
    )


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def retrieve_frames(
    study: str, series: str, instance: str, frames: str, request: Request, ctx: Ctx, access: Access
) -> Response:
    """Frames as multipart/related (PS3.18 §10.4.1.1.4), native or compressed (§8.7.3.3.2).

    All frames are produced before the response starts, so a bad frame number or an
    undecodable frame is a clean 404/406 rather than a broken stream.  A bare single-frame
    media type (``Accept: image/jls``) asking for one frame gets a single-part response.
    """
    _check_uids(study, series, instance)
    numbers = parse_frame_list(frames)
    choices = frame_choices(request.headers.get("accept"))
    ctype, data = await run_audited(
        request, _produce_frames, ctx, access, (study, series, instance), numbers, choices
    )
    if len(data) == 1 and all(c.single_part for c in choices):
        return Response(data[0], media_type=ctype)
    boundary = new_boundary()
    chunks: list[bytes] = []
    for frame in data:
        chunks += [part_header(boundary, ctype), frame, b"\r\n"]
    chunks.append(closing(boundary))
    part_type, _, params = ctype.partition("; ")
    media = f'multipart/related; type="{part_type}"; {params}; boundary={boundary}'
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


# -- pixel digests (dicomhub extension) --------------------------------------------------
@router.get("/studies/{study}/pixel-digests")
async def study_pixel_digests(study: str, ctx: Ctx, access: Access) -> Response:
    """Per instance of a study: stored and original transfer syntax and the pixel digest
    recorded at ingest (docs/conformance.md "Pixel digests"); lets a client prove that
    what it decoded is bit-exact.  Not part of PS3.18: other servers answer 404."""
    _check_uids(study)
    records = await run_in_threadpool(ctx.retrieve.pixel_records, access, study, None)
    return Response(json.dumps(records).encode(), media_type="application/json")


@router.get("/studies/{study}/series/{series}/pixel-digests")
async def series_pixel_digests(study: str, series: str, ctx: Ctx, access: Access) -> Response:
    """Pixel digests of one series (see :func:`study_pixel_digests`)."""
    _check_uids(study, series)
    records = await run_in_threadpool(ctx.retrieve.pixel_records, access, study, series)
    return Response(json.dumps(records).encode(), media_type="application/json")
