"""A DIMSE worker process: ``python -m dicomhub.dimse.worker --channel N``.

Started by :class:`dicomhub.dimse.server.DimseServer` when ``dimse_workers`` > 1.  It
builds its own archive context from the parent's settings (passed as JSON in the
environment) and serves the associations the main process hands over on the inherited
channel ``N`` (:mod:`dicomhub.balancer`) exactly as a single process does.  It stops on
SIGTERM/SIGINT or when its parent goes away.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from dicomhub.config import Settings, worker_logging, worker_start
from dicomhub.context import build_context, freeze_heap
from dicomhub.dimse.server import WORKER_SETTINGS_ENV, DimseServer
from dicomhub.memory import HeapTrimmer


def main(argv: list[str] | None = None) -> int:
    """Serve the associations handed over on the inherited channel until told to stop."""
    channel, settings = worker_start(
        "dicomhub.dimse.worker", WORKER_SETTINGS_ENV, "dimse-worker", argv
    )
    return run(channel, settings)


def run(channel: int, settings: Settings) -> int:
    """Serve the associations handed over on ``channel`` until told to stop (a worker
    forked by the zygote, :mod:`dicomhub.zygote`, starts here)."""
    if not logging.getLogger().handlers:
        worker_logging(settings, "dimse-worker")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctx = build_context(settings, migrate=False)
    server = DimseServer(ctx, channel=channel)
    server.start()
    freeze_heap()
    trimmer = HeapTrimmer().start()  # what a burst of associations freed goes back
    try:
        while not stop.wait(0.5):
            if server.stopping.is_set():  # the main process is gone
                break
    finally:
        trimmer.stop()
        server.stop()
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
