"""A DIMSE worker process: ``python -m dicomhub.dimse.worker --fd N``.

Started by :class:`dicomhub.dimse.server.DimseServer` when ``dimse_workers`` > 1.  It
builds its own archive context from the parent's settings (passed as JSON in the
environment), accepts associations on the inherited listening socket ``N`` and serves
them exactly as the main process does.  It stops on SIGTERM/SIGINT or when its parent
goes away.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading

from dicomhub.config import Settings
from dicomhub.context import build_context, freeze_heap
from dicomhub.dimse.server import WORKER_SETTINGS_ENV, DimseServer


def main(argv: list[str] | None = None) -> int:
    """Serve DIMSE on the inherited socket until told to stop."""
    parser = argparse.ArgumentParser(prog="dicomhub.dimse.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument(
        "--parent", type=int, help="pid of the main process (default: the parent at start)"
    )
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
    # the pid comes from the main process itself: read here, after the imports, getppid()
    # would already name init if the main process died meanwhile
    parent = args.parent or os.getppid()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if os.getppid() != parent:
        logging.getLogger(__name__).warning("the main process %d is gone: not starting", parent)
        return 0
    ctx = build_context(settings, migrate=False)
    server = DimseServer(ctx, listen=socket.socket(fileno=args.fd))
    server.start()
    freeze_heap()
    try:
        while not stop.wait(1.0):
            if os.getppid() != parent:  # the main process is gone
                break
    finally:
        server.stop()
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
