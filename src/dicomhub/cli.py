"""The ``dicomhub`` command.

``dicomhub serve`` runs the archive; ``dicomhub db upgrade`` migrates the index;
``dicomhub push`` / ``dicomhub pull`` are the subscriber client (dicomhub.client).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomhub import __version__
from dicomhub.config import Settings, load_settings, serving

if TYPE_CHECKING:
    from dicomhub.core.access import Principal
    from dicomhub.zygote import Zygote


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        data_dir=args.data_dir,
        database_url=args.database_url,
        host=getattr(args, "host", None),
        http_port=getattr(args, "http_port", None),
        workers=getattr(args, "workers", None),
        dimse_port=getattr(args, "dimse_port", None),
        dimse_workers=getattr(args, "dimse_workers", None),
        ae_title=getattr(args, "ae_title", None),
        log_level=getattr(args, "log_level", None),
    )


#: what worker processes import, loaded once by the main process before it forks its
#: zygote (dicomhub.zygote), so that their pages are shared; optional ones may be missing
WORKER_PRELOAD = (
    "dicomhub.dicomweb.worker",
    "dicomhub.dimse.worker",
    "sqlite3",
    "sqlalchemy.dialects.sqlite.pysqlite",
    "sqlalchemy.dialects.postgresql.psycopg",
    "uvicorn.loops.uvloop",
    "uvicorn.lifespan.on",
    "uvloop",
    "httptools",
)


def _worker_zygote(settings: Settings) -> Zygote | None:
    """With worker processes, the zygote they are forked from (dicomhub.zygote):
    started before this process has a thread or a database connection."""
    http = settings.workers > 1
    dimse = bool(settings.dimse_port) and settings.dimse_workers > 1
    if not (http or dimse):
        return None
    from dicomhub.zygote import Zygote

    def http_worker(channel: int) -> int:
        from dicomhub.dicomweb.worker import run

        return run(channel, settings)

    def dimse_worker(channel: int) -> int:
        from dicomhub.dimse.worker import run

        return run(channel, settings)

    entries: dict[str, Callable[[int], int]] = {"http": http_worker} if http else {}
    if dimse:
        entries["dimse"] = dimse_worker
    return Zygote.start(entries, preload=WORKER_PRELOAD)


def _serve_workers(settings: Settings, zygote: Zygote | None) -> None:
    """``--workers N``: this process listens and hands each connection to the worker
    process with the fewest open connections (:mod:`dicomhub.balancer`) until SIGTERM or
    SIGINT; then the workers finish their requests and stop."""
    import signal

    from dicomhub.balancer import Balancer, listening_socket, python_worker
    from dicomhub.dicomweb.worker import WORKER_SETTINGS_ENV

    listen = listening_socket(settings.host, settings.http_port, backlog=2048)
    env = {**os.environ, WORKER_SETTINGS_ENV: settings.model_dump_json()}
    spawn = python_worker("dicomhub.dicomweb.worker", env)
    if zygote is not None:
        spawn = zygote.spawner("http", fallback=spawn)
    balancer = Balancer(listen, spawn, settings.workers, name="HTTP worker")
    previous = {
        sig: signal.signal(sig, lambda *_: balancer.request_stop())
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    print(
        f"  HTTP:     {settings.workers} worker processes, connections to the least busy",
        flush=True,
    )
    try:
        balancer.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listen.close()


def cmd_serve(args: argparse.Namespace) -> int:
    """Start the HTTP (DICOMweb) server on the configured archive."""
    settings = serving(_settings(args))  # workers: 0 -> one per core
    zygote = _worker_zygote(settings)  # first: no thread, no connection yet
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from dicomhub.memory import HeapTrimmer

    try:
        # after the zygote's fork (it must see no thread): freed heap goes back
        with HeapTrimmer():
            return _serve(settings, zygote)
    finally:
        if zygote is not None:
            zygote.close()


def _serve(settings: Settings, zygote: Zygote | None) -> int:
    import uvicorn

    from dicomhub.context import build_context, freeze_heap
    from dicomhub.dicomweb.app import create_app

    ctx = build_context(settings)  # creates the data dir and migrates the index
    password = ctx.auth.bootstrap_admin()
    if password:
        origin = f"http://{settings.host}:{settings.http_port}"
        print(
            "\n  First start: created user 'admin' (role admin) with password\n"
            f"      {password}\n  (shown once; change it with `dicomhub user passwd admin`).\n"
            f"  Get a token:  curl -s -d grant_type=password -d username=admin "
            f"-d password='{password}' {origin}/auth/token\n"
            f"  or locally:   dicomhub token issue admin --data-dir {settings.data_dir}\n",
            flush=True,
        )
        pw_file = settings.data_dir / "initial-admin-password"
        with open(os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(password + "\n")
    # a crash can leave partly received uploads in staging (never indexed): removed
    # here, before any edge or worker process receives
    leftovers = ctx.store.clear_staging()
    if leftovers:
        logging.getLogger(__name__).info("removed %d unfinished uploads from staging", leftovers)
    dimse = None
    if settings.dimse_port:
        from dicomhub.dimse.server import DimseServer

        dimse = DimseServer(
            ctx,
            spawn=zygote.spawner("dimse", fallback=DimseServer.python_worker_for(settings))
            if zygote is not None and settings.dimse_workers > 1
            else None,
        )
        dimse.start()
    print(
        f"dicomhub {__version__}: data in {settings.data_dir.resolve()}, index "
        f"{ctx.index.dialect}\n  DICOMweb: http://{settings.host}:{settings.http_port}/dicom-web"
        + (
            f"\n  DIMSE:    {settings.ae_title} on {settings.dimse_host or settings.host}:"
            f"{dimse.port}" + (f" (DICOM TLS on {dimse.tls_port})" if dimse.tls_port else "")
            if dimse
            else ""
        ),
        flush=True,
    )
    from dicomhub.dicomweb.worker import uvicorn_options

    if settings.workers > 1:
        _serve_workers(settings, zygote)
    else:
        app = create_app(ctx)
        freeze_heap()
        uvicorn.run(app, **uvicorn_options(settings))  # type: ignore[arg-type]
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


def _cli_principal() -> Principal:
    """The local operator: whoever can run the CLI on the data directory is an admin."""
    import getpass
    import socket

    from dicomhub.core.access import Kind, Principal, Role

    return Principal(
        0, f"cli:{getpass.getuser()}@{socket.gethostname()}", Kind.USER, Role.ADMIN, None, None
    )


def _print(args: argparse.Namespace, doc: object, text: str) -> None:
    import json

    print(json.dumps(doc, default=str) if getattr(args, "json", False) else text)


def _epoch_arg(value: str | None) -> float | None:
    if not value:
        return None
    from datetime import UTC, datetime

    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def cmd_access(args: argparse.Namespace) -> int:
    """subscriber / user / device / token / apikey / grant / audit commands."""
    from dataclasses import asdict

    from dicomhub.context import build_context
    from dicomhub.core.access import Role
    from dicomhub.core.errors import DicomhubError

    ctx = build_context(_settings(args))
    me = _cli_principal()
    src = "cli"
    auth = ctx.auth
    try:
        cmd = args.access_command
        if cmd == "subscriber-add":
            auth.add_subscriber(me, args.name, args.title, src)
            _print(args, {"name": args.name}, f"subscriber {args.name} added")
        elif cmd == "subscriber-list":
            subs = auth.store.subscriber_list()
            _print(args, subs, "\n".join(s["name"] for s in subs))
        elif cmd == "user-add":
            password = auth.add_user(
                me, args.subscriber, args.name, Role(args.role), args.password, src
            )
            _print(
                args,
                {"name": args.name, "password": password},
                f"user {args.name} added; password (shown once): {password}",
            )
        elif cmd == "user-passwd":
            import getpass

            new = args.password or getpass.getpass(f"new password for {args.name}: ")
            auth.set_password(me, args.name, new, src)
            _print(args, {"name": args.name}, f"password of {args.name} changed")
        elif cmd == "device-add":
            key = auth.add_device(
                me, args.subscriber, args.name, args.ae_titles or [], args.address or [], src
            )
            _print(
                args,
                {"name": args.name, "api_key": key},
                f"device {args.name} added; API key (shown once): {key}",
            )
        elif cmd == "token-issue":
            token, exp = auth.issue_token(me, args.name, args.ttl, src)
            _print(args, {"access_token": token, "expires_at": exp}, token)
        elif cmd == "apikey-issue":
            key = auth.issue_api_key(me, args.name, args.label, args.ttl, src)
            _print(args, {"api_key": key}, key)
        elif cmd == "revoke":
            auth.revoke(me, args.credential, src)
            _print(args, {"revoked": True}, "revoked")
        elif cmd == "grant-add":
            pk = auth.add_grant(
                me,
                args.study,
                args.series,
                args.to_subscriber,
                args.to_user,
                args.access,
                _epoch_arg(args.expires),
                src,
                owner=args.owner,
            )
            _print(args, {"grant": pk}, f"grant {pk} added")
        elif cmd == "grant-remove":
            auth.remove_grant(me, args.grant, src)
            _print(args, {"removed": args.grant}, f"grant {args.grant} removed")
        elif cmd == "grant-list":
            grants = auth.list_grants(me)
            _print(
                args,
                [asdict(g) for g in grants],
                "\n".join(
                    f"{g.pk:5} {g.owner:16} {g.study_instance_uid} {g.series_instance_uid or '*'} "
                    f"-> {g.grantee_subscriber or g.grantee_principal} {g.access}"
                    for g in grants
                ),
            )
        elif cmd == "audit":
            events = ctx.audit.query(
                me,
                principal=args.principal,
                study=args.study,
                event=args.event,
                since=_epoch_arg(args.since),
                until=_epoch_arg(args.until),
                limit=args.limit,
            )
            _print(
                args,
                events,
                "\n".join(
                    f"{e['time']} {e['event']:14} {e['outcome']:2} {e['principal'] or '-':20} "
                    f"{e['source'] or '-':22} {e['study_instance_uid'] or ''}"
                    for e in events
                ),
            )
    except DicomhubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        ctx.close()
    return 0


def _access_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    def leaf(parent: Any, name: str, command: str, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=cmd_access, access_command=command)
        return p

    s = sub.add_parser("subscriber", help="subscribers (organisations)")
    ss = s.add_subparsers(dest="sub_command", required=True)
    p = leaf(ss, "add", "subscriber-add", "add a subscriber")
    p.add_argument("name")
    p.add_argument("--title")
    leaf(ss, "list", "subscriber-list", "list subscribers")

    u = sub.add_parser("user", help="users (people)")
    us = u.add_subparsers(dest="sub_command", required=True)
    p = leaf(us, "add", "user-add", "add a user; prints its password once")
    p.add_argument("name")
    p.add_argument("--subscriber")
    p.add_argument(
        "--role", default="reader", choices=["admin", "subscriber-admin", "uploader", "reader"]
    )
    p.add_argument("--password", help="default: generated")

    p = leaf(us, "passwd", "user-passwd", "set a user's password")
    p.add_argument("name")
    p.add_argument("--password", help="default: prompt")

    d = sub.add_parser("device", help="devices (modalities, workstations, printers)")
    ds = d.add_subparsers(dest="sub_command", required=True)
    p = leaf(ds, "add", "device-add", "add a device; prints its API key once")
    p.add_argument("name")
    p.add_argument("--subscriber")
    p.add_argument("--ae-title", action="append", dest="ae_titles", help="AE title (repeatable)")
    p.add_argument("--address", action="append", help="allowed source address/CIDR")

    t = sub.add_parser("token", help="bearer tokens")
    ts = t.add_subparsers(dest="sub_command", required=True)
    p = leaf(ts, "issue", "token-issue", "issue a token for a principal")
    p.add_argument("name")
    p.add_argument("--ttl", type=int, help="lifetime in seconds")
    p = leaf(ts, "revoke", "revoke", "revoke a token or an API key")
    p.add_argument("credential")

    k = sub.add_parser("apikey", help="long-lived API keys")
    ks = k.add_subparsers(dest="sub_command", required=True)
    p = leaf(ks, "issue", "apikey-issue", "issue an API key for a principal")
    p.add_argument("name")
    p.add_argument("--label")
    p.add_argument("--ttl", type=int)
    p = leaf(ks, "revoke", "revoke", "revoke an API key (the key or its id)")
    p.add_argument("credential")

    g = sub.add_parser("grant", help="share studies with other subscribers or users")
    gs = g.add_subparsers(dest="sub_command", required=True)
    p = leaf(gs, "add", "grant-add", "share a study (or series)")
    p.add_argument("study")
    p.add_argument("--series")
    p.add_argument("--owner", help="subscriber owning the study")
    p.add_argument("--to-subscriber")
    p.add_argument("--to-user")
    p.add_argument("--access", default="read", choices=["read", "write"])
    p.add_argument("--expires", help="ISO 8601 date/time")
    p = leaf(gs, "remove", "grant-remove", "revoke a grant")
    p.add_argument("grant", type=int)
    leaf(gs, "list", "grant-list", "list grants")

    a = leaf(sub, "audit", "audit", "read the audit trail")
    a.add_argument("--principal")
    a.add_argument("--study")
    a.add_argument("--event")
    a.add_argument("--since", help="ISO 8601")
    a.add_argument("--until", help="ISO 8601")
    a.add_argument("--limit", type=int, default=100)


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
    serve.add_argument(
        "--workers",
        type=int,
        help="HTTP worker processes (default 0: one per usable core, at most 4; 1: one "
        "process serves)",
    )
    serve.add_argument("--dimse-port", type=int, help="DICOM port (default 11112; 0 = off)")
    serve.add_argument(
        "--dimse-workers",
        type=int,
        help="DIMSE worker processes (default 0: one per usable core, at most 4; 1: the "
        "main process serves)",
    )
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

    _access_parsers(sub, common)

    from dicomhub.client.cli import add_parsers

    add_parsers(sub)

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
