"""ASGI entry point for process managers: ``uvicorn --factory dicomhub.asgi:create``.

Settings come from ``DICOMHUB_*`` variables and ``DICOMHUB_CONFIG``.
"""

from __future__ import annotations

from fastapi import FastAPI

from dicomhub.config import load_settings
from dicomhub.context import build_context, freeze_heap
from dicomhub.dicomweb.app import create_app


def create() -> FastAPI:
    """Build the app from the environment, for a process manager of one's own
    (``dicomhub serve`` does not use it; it also clears staging at start, which this
    leaves to whoever runs it, before any worker receives)."""
    settings = load_settings()
    app = create_app(build_context(settings, migrate=False))
    freeze_heap()
    return app
