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
    print(
        f"dicomhub {__version__}: data in {settings.data_dir.resolve()}, index "
        f"{ctx.index.dialect}\n  DICOMweb: http://{settings.host}:{settings.http_port}/dicom-web",
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
        ctx.close()
        for field in ("data_dir", "database_url", "database_schema"):
            value = getattr(settings, field)
            if value is not None:
                os.environ[f"DICOMHUB_{field.upper()}"] = str(value)
        uvicorn.run("dicomhub.asgi:create", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(ctx), **common)  # type: ignore[arg-type]
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
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.set_defaults(func=cmd_serve)

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
