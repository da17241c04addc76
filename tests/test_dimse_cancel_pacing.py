"""The flow control of pending responses in dimse/handlers.py ``_cancelled`` (PS3.7
§9.3.2.3): the handler lets pynetdicom's DUL thread read what the peer sent before it
answers further, and never queues more than MAX_QUEUED_RESPONSES.

The DUL thread is played by a thread that sends (drains) queued responses one by one and
reads the socket only once nothing is queued, as pynetdicom's DUL does.  The end-to-end
case against pynetdicom is tests/integration/test_dimse_cancel.py.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dicomhub.dimse import handlers


class _Socket:
    def __init__(self, readable: bool) -> None:
        self.readable = readable

    @property
    def ready(self) -> bool:
        return self.readable


@dataclass
class _Dul:
    socket: _Socket
    to_provider_queue: queue.Queue[object] = field(default_factory=queue.Queue)


@dataclass
class _Assoc:
    dul: _Dul
    is_established: bool = True


@dataclass
class _Event:
    assoc: _Assoc
    cancel_received: threading.Event = field(default_factory=threading.Event)

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_received.is_set()


def _dul_thread(event: _Event, per_send: float) -> threading.Thread:
    """Sends every queued response (``per_send`` seconds each), then reads the socket:
    a C-CANCEL was there."""
    dul = event.assoc.dul

    def run() -> None:
        while True:
            try:
                dul.to_provider_queue.get_nowait()
            except queue.Empty:
                break
            time.sleep(per_send)
        if dul.socket.readable:
            dul.socket.readable = False
            event.cancel_received.set()

    return threading.Thread(target=run)


def test_a_cancel_waiting_on_the_socket_is_read_before_the_next_response() -> None:
    """In: 40 responses queued and a C-CANCEL readable on the socket: ``_cancelled`` waits
    until they are sent and the cancel is read, and says so."""
    event = _Event(_Assoc(_Dul(_Socket(readable=True))))
    for i in range(40):
        event.assoc.dul.to_provider_queue.put(i)
    dul = _dul_thread(event, 0.0005)
    dul.start()
    try:
        assert handlers._cancelled(event) is True  # type: ignore[arg-type]
    finally:
        dul.join()
    assert event.assoc.dul.to_provider_queue.empty()


def test_nothing_from_the_peer_costs_no_wait() -> None:
    """In: 10 queued responses, nothing readable: no cancel, returned without waiting for
    the queue (nothing drains it here)."""
    event = _Event(_Assoc(_Dul(_Socket(readable=False))))
    for i in range(10):
        event.assoc.dul.to_provider_queue.put(i)
    start = time.monotonic()
    assert handlers._cancelled(event) is False  # type: ignore[arg-type]
    assert event.assoc.dul.to_provider_queue.qsize() == 10
    assert time.monotonic() - start < 0.5


def test_queued_responses_are_bounded() -> None:
    """In: MAX_QUEUED_RESPONSES + 50 queued responses: the handler waits until the DUL
    has sent all but a quarter of the bound."""
    event = _Event(_Assoc(_Dul(_Socket(readable=False))))
    bound = handlers.MAX_QUEUED_RESPONSES
    for i in range(bound + 50):
        event.assoc.dul.to_provider_queue.put(i)
    dul = _dul_thread(event, 0.0002)
    dul.start()
    try:
        assert handlers._cancelled(event) is False  # type: ignore[arg-type]
        assert event.assoc.dul.to_provider_queue.qsize() <= bound // 4
    finally:
        dul.join()


def test_an_association_that_ends_stops_the_wait() -> None:
    """In: a full queue nobody drains, then the association ends: the wait ends too."""
    assoc: Any = _Assoc(_Dul(_Socket(readable=True)))
    event = _Event(assoc)
    for i in range(handlers.MAX_QUEUED_RESPONSES + 1):
        assoc.dul.to_provider_queue.put(i)
    threading.Timer(0.05, lambda: setattr(assoc, "is_established", False)).start()
    start = time.monotonic()
    assert handlers._cancelled(event) is False  # type: ignore[arg-type]
    assert time.monotonic() - start < handlers.CANCEL_READ_WAIT + 1
