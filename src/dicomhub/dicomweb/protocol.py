"""uvicorn's HTTP/1.1 protocol (httptools), passing request bodies on without copying.

uvicorn collects each body chunk httptools hands it into a ``bytearray`` and gives the
application ``bytes(that)``: every byte of a request body is copied twice more on the
event loop's thread, after uvloop and httptools have each made their copy.  For STOW-RS,
whose bodies are hundreds of megabytes (PS3.18 §10.5), those two copies were ~17 % of the
event loop's time.  Here a chunk that arrives while none is waiting is kept as the
``bytes`` object it is, so the application receives that very object
(``bytes(b) is b``); chunks that arrive while one is waiting are joined as before.
Flow control (pausing the socket over uvicorn's high-water mark) is unchanged.
"""

from __future__ import annotations

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class BodyProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` whose ``on_body`` keeps a lone chunk as it is."""

    def on_body(self, body: bytes) -> None:
        """A chunk of the request body (httptools' callback)."""
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        waiting = cycle.body
        # the application's receive() takes bytes(cycle.body): then the chunk itself
        cycle.body = body if not waiting else waiting + body  # type: ignore[assignment]
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
