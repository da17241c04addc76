"""Event-driven waits in pynetdicom's reactors, and short polling only while it pays.

pynetdicom runs each association as two polling threads (PS3.8 §9 upper layer state
machine in ``DULServiceProvider``, DIMSE dispatch in ``Association``): each sleeps 1 ms
whenever a loop found nothing to do.  Every C-STORE pays that twice or more, once before
the received message is dispatched and once before the response leaves: measured here with
DCMTK ``storescu`` and a handler that does nothing, one association reached ~290
instances/s with 1 ms and ~620/s with 0.2 ms.  Polling at 0.2 ms all the time would cost an
idle association ~14 % of a core (1 ms: ~4 %), and would wake the DUL thread 25 times
during a 5 ms C-STORE handler, each time taking the GIL from it.

So, per association, from pynetdicom's public notification events:

- a complete DIMSE message received (``EVT_DIMSE_RECV``) wakes the association thread at
  once, and marks the association *busy*: its peer now waits for our answer, so the DUL
  thread looks at the socket only every :data:`BUSY_DELAY`; the association thread polls every
  :data:`ACTIVE_DELAY` while busy (the message reaches its queue just after the event) and
  otherwise sleeps until the next ``EVT_DIMSE_RECV`` (at most 1 ms), so of an
  association's two threads only one polls fast at a time;
- a DIMSE message sent (``EVT_DIMSE_SENT``) wakes the DUL thread at once (the response
  leaves without waiting for its next poll) and ends *busy*;
- while not busy and within :data:`ACTIVE_WINDOW` of the last received PDU
  (``EVT_PDU_RECV``), the DUL thread polls every :data:`ACTIVE_DELAY` for the peer's next
  request; an idle association polls at 1 ms as before.

The waits are put in place by giving pynetdicom's ``dul`` and ``association`` modules a
``time`` whose ``sleep`` consults the calling thread's association (both reactors are
``threading.Thread`` subclasses).  Only sleeps of exactly pynetdicom's reactor delay
change, and only for associations whose events these handlers saw, so the SCU
associations dicomhub opens itself keep pynetdicom's behaviour.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

#: pynetdicom's reactor delay (``DULServiceProvider._run_loop_delay`` and the sleep of
#: ``Association._run_reactor``), seconds.
IDLE_DELAY = 0.001
#: The DUL thread's poll while the peer may be about to send its next request, seconds.
ACTIVE_DELAY = 0.0002
#: How long after its last received PDU an association counts as active, seconds.
ACTIVE_WINDOW = 0.5
#: The DUL thread's poll while the peer waits for our answer, seconds: only an A-ABORT or a
#: C-CANCEL can come then, and each wake-up takes the GIL from the handler at work; the
#: answer itself wakes the thread (storescu, 9 runs each: median 160 inst/s against 153
#: with 1 ms, within this machine's noise).
BUSY_DELAY = 0.01


@dataclass
class _State:
    """One association's reactor state."""

    last_received: float = 0.0
    busy: bool = False
    dul_wake: threading.Event = field(default_factory=threading.Event)
    assoc_wake: threading.Event = field(default_factory=threading.Event)


_states: weakref.WeakKeyDictionary[Association, _State] = weakref.WeakKeyDictionary()


def _state(assoc: Association) -> _State:
    found = _states.get(assoc)
    return found if found is not None else _states.setdefault(assoc, _State())


def on_pdu_received(event: Any) -> None:
    """``EVT_PDU_RECV``: the association is active."""
    _state(event.assoc).last_received = time.monotonic()


def on_dimse_received(event: Any) -> None:
    """``EVT_DIMSE_RECV``: a message is complete; the peer waits for our answer."""
    state = _state(event.assoc)
    state.busy = True
    state.assoc_wake.set()


def on_dimse_sent(event: Any) -> None:
    """``EVT_DIMSE_SENT``: a message is queued for the DUL: send it now."""
    state = _state(event.assoc)
    state.busy = False
    state.dul_wake.set()


def bindings() -> list[tuple[Any, Any]]:
    """``evt_handlers`` entries for ``AE.start_server``."""
    from pynetdicom import evt

    return [
        (evt.EVT_PDU_RECV, on_pdu_received),
        (evt.EVT_DIMSE_RECV, on_dimse_received),
        (evt.EVT_DIMSE_SENT, on_dimse_sent),
    ]


def wait_for(thread: threading.Thread) -> tuple[threading.Event | None, float] | None:
    """What a reactor thread waits on instead of pynetdicom's 1 ms sleep (an event that
    ends the wait early, or None for a plain sleep), and how long at most; None for threads
    of associations these handlers do not follow."""
    if isinstance(thread, DULServiceProvider):
        state = _states.get(thread.assoc)
        if state is None:
            return None
        if state.busy:
            return state.dul_wake, BUSY_DELAY
    elif isinstance(thread, Association):
        state = _states.get(thread)
        if state is None:
            return None
        if not state.busy:  # nothing to dispatch until EVT_DIMSE_RECV wakes it
            return state.assoc_wake, IDLE_DELAY
    else:
        return None
    active = time.monotonic() - state.last_received < ACTIVE_WINDOW
    return None, ACTIVE_DELAY if active else IDLE_DELAY


def pause(thread: threading.Thread, seconds: float) -> None:
    """``time.sleep(seconds)`` as ``thread`` does it in pynetdicom's modules."""
    if seconds == IDLE_DELAY:
        waiting = wait_for(thread)
        if waiting is not None:
            wake, seconds = waiting
            if wake is not None:
                if wake.wait(seconds):
                    wake.clear()
                return
    time.sleep(seconds)


class _ReactorTime:
    """The ``time`` module as pynetdicom's reactors see it: the same, except ``sleep``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        pause(threading.current_thread(), seconds)


def install() -> None:
    """Adapt the reactor sleeps (idempotent; done once by the DIMSE server)."""
    for module in (_dul_module, _association_module):
        if getattr(module, "time", None) is time:
            setattr(module, "time", _ReactorTime())  # noqa: B010 (module global)
