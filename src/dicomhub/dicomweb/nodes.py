"""REST resource for the remote node registry: ``/api/nodes``.

Nodes are the DICOM application entities dicomhub connects to: C-MOVE destinations now,
polled devices and printers later.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dicomhub.core.model import RemoteNode
from dicomhub.dicomweb.deps import Admin, Ctx

router = APIRouter()


class NodeIn(BaseModel):
    """A node to register."""

    name: str = Field(..., description="unique name, e.g. 'ct-scanner-1'")
    ae_title: str = Field(..., description="the node's AE title (1-16 characters)")
    host: str
    port: int
    description: str = ""


def _doc(node: RemoteNode) -> dict[str, Any]:
    return {
        "name": node.name,
        "ae_title": node.ae_title,
        "host": node.host,
        "port": node.port,
        "description": node.description,
    }


@router.get("/nodes")
async def list_nodes(ctx: Ctx, _admin: Admin) -> JSONResponse:
    """All registered nodes."""
    nodes = await run_in_threadpool(ctx.nodes.list)
    return JSONResponse([_doc(n) for n in nodes])


@router.post("/nodes", status_code=201)
async def add_node(body: NodeIn, ctx: Ctx, _admin: Admin) -> JSONResponse:
    """Register a node (400 invalid, 409 name taken)."""
    node = await run_in_threadpool(
        ctx.nodes.add, body.name, body.ae_title, body.host, body.port, body.description
    )
    return JSONResponse(_doc(node), status_code=201)


@router.get("/nodes/{name}")
async def get_node(name: str, ctx: Ctx, _admin: Admin) -> JSONResponse:
    """One node (404 if unknown)."""
    return JSONResponse(_doc(await run_in_threadpool(ctx.nodes.get, name)))


@router.delete("/nodes/{name}")
async def remove_node(name: str, ctx: Ctx, _admin: Admin) -> Response:
    """Unregister a node (204; 404 if unknown)."""
    await run_in_threadpool(ctx.nodes.remove, name)
    return Response(status_code=204)
