"""The ``dicomhub`` command.

``dicomhub serve`` runs the archive; ``dicomhub db upgrade`` migrates the index.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from dicomhub import __version__
from dicomhub.config import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        data_dir=args.data_dir,
        database_url=args.database_url,
        host=getattr(args, "host", None),
        http_port=getattr(args, "http_port", None),
        workers=getattr(args, "workers", None),
        dimse_port=getattr(args, "dimse_port", None),
        ae_title=getattr(args, "ae_title", None),
        log_level=getattr(args, "log_level", None),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the HTTP (DICOMweb) server on the configured archive."""
    import uvicorn

    from dicomhub.context import build_context
    from dicomhub.dicomweb.app import create_app

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ctx = build_context(settings)  # creates the data dir and migrates the index
    dimse = None
    if settings.dimse_port:
        from dicomhub.dimse.server import DimseServer

        dimse = DimseServer(ctx)
        dimse.start()
    print(
        f"dicomhub {__version__}: data in {settings.data_dir.resolve()}, index "
        f"{ctx.index.dialect}\n  DICOMweb: http://{settings.host}:{settings.http_port}/dicom-web"
        + (
            f"\n  DIMSE:    {settings.ae_title} on {settings.dimse_host or settings.host}:"
            f"{dimse.port}"
            if dimse
            else ""
        ),
        flush=True,
    )
    common = dict(
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        loop="auto",
        http="auto",
        timeout_keep_alive=30,
    )
    if settings.workers > 1:
        for field in ("data_dir", "database_url", "database_schema"):
            value = getattr(settings, field)
            if value is not None:
                os.environ[f"DICOMHUB_{field.upper()}"] = str(value)
        uvicorn.run("dicomhub.asgi:create", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(ctx), **common)  # type: ignore[arg-type]
    if dimse is not None:
        dimse.stop()
    ctx.close()
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Create or migrate the index schema to the latest revision."""
    from dicomhub.index.repository import SqlIndex

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    index = SqlIndex(settings.effective_database_url, settings.database_schema)
    index.upgrade()
    index.dispose()
    print(f"index at {settings.effective_database_url} is up to date")
    return 0


def _node_doc(node: object) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(node)  # type: ignore[call-overload, no-any-return]


def cmd_node(args: argparse.Namespace) -> int:
    """``dicomhub node add|list|remove``: the registry of remote DICOM nodes."""
    import json

    from dicomhub.context import build_context
    from dicomhub.core.errors import DicomhubError

    ctx = build_context(_settings(args))
    try:
        if args.node_command == "add":
            node = ctx.nodes.add(
                args.name, args.ae_title, args.host, args.port, args.description or ""
            )
            if args.json:
                print(json.dumps(_node_doc(node)))
            else:
                print(f"added {node.name}: {node.ae_title}@{node.host}:{node.port}")
        elif args.node_command == "list":
            nodes = ctx.nodes.list()
            if args.json:
                print(json.dumps([_node_doc(n) for n in nodes]))
            else:
                for n in nodes:
                    print(f"{n.name:20} {n.ae_title:16} {n.host}:{n.port}  {n.description}")
        elif args.node_command == "remove":
            ctx.nodes.remove(args.name)
            print(f"removed {args.name}")
    except DicomhubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        ctx.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dicomhub`` command."""
    parser = argparse.ArgumentParser(prog="dicomhub", description="dicomhub medical image service")
    parser.add_argument("--version", action="version", version=f"dicomhub {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file (or DICOMHUB_CONFIG)")
    common.add_argument("--data-dir", type=Path, help="data directory (default ./var)")
    common.add_argument("--database-url", help="SQLAlchemy URL of the index")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the archive server")
    serve.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    serve.add_argument("--workers", type=int, help="HTTP worker processes (default 1)")
    serve.add_argument("--dimse-port", type=int, help="DICOM port (default 11112; 0 = off)")
    serve.add_argument("--ae-title", help="our AE title (default DICOMHUB)")
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.set_defaults(func=cmd_serve)

    node = sub.add_parser("node", help="registry of remote DICOM nodes")
    nsub = node.add_subparsers(dest="node_command", required=True)
    nadd = nsub.add_parser("add", parents=[common], help="register a node")
    nadd.add_argument("name")
    nadd.add_argument("--ae-title", required=True)
    nadd.add_argument("--host", required=True)
    nadd.add_argument("--port", type=int, required=True)
    nadd.add_argument("--description")
    nadd.add_argument("--json", action="store_true")
    nlist = nsub.add_parser("list", parents=[common], help="list nodes")
    nlist.add_argument("--json", action="store_true")
    nrm = nsub.add_parser("remove", parents=[common], help="unregister a node")
    nrm.add_argument("name")
    for p in (nadd, nlist, nrm):
        p.set_defaults(func=cmd_node)

    db = sub.add_parser("db", help="index database maintenance")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    upgrade = dbsub.add_parser("upgrade", parents=[common], help="migrate the index schema")
    upgrade.set_defaults(func=cmd_db_upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
