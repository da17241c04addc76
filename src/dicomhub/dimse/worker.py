"""A DIMSE worker process: ``python -m dicomhub.dimse.worker --channel N``.

Started by :class:`dicomhub.dimse.server.DimseServer` when ``dimse_workers`` > 1.  It
builds its own archive context from the parent's settings (passed as JSON in the
environment) and serves the associations the main process hands over on the inherited
channel ``N`` (:mod:`dicomhub.balancer`) exactly as a single process does.  It stops on
SIGTERM/SIGINT or when its parent goes away.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from dicomhub.config import Settings
from dicomhub.context import build_context, freeze_heap
from dicomhub.dimse.server import WORKER_SETTINGS_ENV, DimseServer


def main(argv: list[str] | None = None) -> int:
    """Serve the associations handed over on the inherited channel until told to stop."""
    parser = argparse.ArgumentParser(prog="dicomhub.dimse.worker")
    parser.add_argument("--channel", type=int, required=True, help="inherited channel socket")
    args = parser.parse_args(argv)
    raw = os.environ.get(WORKER_SETTINGS_ENV)
    if not raw:
        print(f"{WORKER_SETTINGS_ENV} is not set: started outside dicomhub serve?", file=sys.stderr)
        return 2
    settings = Settings.model_validate_json(raw)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[dimse-worker]: %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ctx = build_context(settings, migrate=False)
    server = DimseServer(ctx, channel=args.channel)
    server.start()
    freeze_heap()
    try:
        while not stop.wait(0.5):
            if server.stopping.is_set():  # the main process is gone
                break
    finally:
        server.stop()
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
