"""An HTTP worker process: ``python -m dicomhub.dicomweb.worker --channel N``.

Started by ``dicomhub serve --workers N`` (:func:`dicomhub.cli.cmd_serve`), which accepts
every connection itself and hands each to the worker with the fewest open connections
(:mod:`dicomhub.balancer`).  A worker builds its own archive context from the main
process's settings (JSON in the environment), serves the DICOMweb application with
uvicorn on the connections it is given, and stops on SIGTERM/SIGINT (finishing the
requests in progress) or when the main process goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from typing import Any

import uvicorn

from dicomhub.balancer import ChannelReceiver
from dicomhub.config import Settings, worker_logging, worker_start
from dicomhub.context import build_context, freeze_heap
from dicomhub.dicomweb.app import create_app
from dicomhub.dicomweb.protocol import BodyProtocol
from dicomhub.memory import HeapTrimmer

#: Environment variable carrying the settings (JSON) to HTTP worker processes.
WORKER_SETTINGS_ENV = "DICOMHUB_HTTP_WORKER_SETTINGS"

log = logging.getLogger(__name__)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn settings of every HTTP process (one process or workers alike)."""
    return {
        "host": settings.host,
        "port": settings.http_port,
        "log_level": settings.log_level.lower(),
        "loop": "auto",
        "http": BodyProtocol,  # httptools without its body copies (dicomweb/protocol.py)
        "timeout_keep_alive": 30,
    }


async def serve_channel(server: uvicorn.Server, fd: int) -> None:
    """Run ``server`` on the connections handed over on channel ``fd`` (what
    ``uvicorn.Server.serve`` does with a listening socket)."""
    config = server.config
    with server.capture_signals():
        if not config.loaded:
            config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[])  # the app starts; no listening socket
        if server.should_exit:
            return
        loop = asyncio.get_running_loop()
        base = config.http_protocol_class

        class Counted(base):  # type: ignore[valid-type, misc]
            """uvicorn's protocol, reporting its end to the main process."""

            def connection_lost(self, exc: Exception | None) -> None:
                try:
                    super().connection_lost(exc)
                finally:
                    receiver.closed()

        def protocol() -> asyncio.Protocol:
            return Counted(  # type: ignore[no-any-return]
                config=config,
                server_state=server.server_state,
                app_state=server.lifespan.state,
            )

        async def take(sock: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(protocol, sock)
            except OSError as exc:  # the client left already
                log.debug("connection handed over could not be served: %s", exc)
                sock.close()
                receiver.closed()

        def on_connection(sock: socket.socket) -> None:
            task = loop.create_task(take(sock))
            server.server_state.tasks.add(task)
            task.add_done_callback(server.server_state.tasks.discard)

        def on_end() -> None:
            log.warning("the main process is gone: stopping")
            server.should_exit = True

        receiver = ChannelReceiver(fd, on_connection, on_end)
        receiver.start(loop)
        try:
            await server.main_loop()
        finally:
            receiver.stop(loop)
        await server.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Serve DICOMweb on the connections the main process hands over."""
    channel, settings = worker_start(
        "dicomhub.dicomweb.worker", WORKER_SETTINGS_ENV, "http-worker", argv
    )
    return run(channel, settings)


def run(channel: int, settings: Settings) -> int:
    """Serve DICOMweb on the connections handed over on ``channel`` until told to stop
    (a worker forked by the zygote, :mod:`dicomhub.zygote`, starts here)."""
    if not logging.getLogger().handlers:
        worker_logging(settings, "http-worker")
    app = create_app(build_context(settings, migrate=False))
    config = uvicorn.Config(app, **uvicorn_options(settings))  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    freeze_heap()
    with (
        HeapTrimmer(),  # what a burst of requests freed goes back to the kernel
        asyncio.Runner(loop_factory=config.get_loop_factory()) as runner,
        contextlib.suppress(KeyboardInterrupt),
    ):
        runner.run(serve_channel(server, channel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
