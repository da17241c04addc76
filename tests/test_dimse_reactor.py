"""The adapted pynetdicom reactor waits (dicomhub/dimse/reactor.py).

What came in: pynetdicom's own reactor thread objects (an ``Association`` and its
``DULServiceProvider``, never started) and the notification events dicomhub binds; the
waits they are given are checked state by state.  That associations still work end to end
with the adapted waits is what every DIMSE integration test exercises.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from pynetdicom import AE
from pynetdicom import association as association_module
from pynetdicom import dul as dul_module
from pynetdicom.association import Association

from dicomhub.dimse import reactor


@pytest.fixture
def assoc() -> Association:
    return Association(AE(), "acceptor")


def test_unfollowed_threads_keep_pynetdicoms_sleep(assoc: Association) -> None:
    """No event seen for an association: its threads, and other threads, are left alone."""
    assert reactor.wait_for(assoc) is None
    assert reactor.wait_for(assoc.dul) is None
    assert reactor.wait_for(threading.current_thread()) is None


def test_waits_follow_the_association_state(
    assoc: Association, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = SimpleNamespace(assoc=assoc)
    reactor.on_pdu_received(event)  # a PDU came in: the DUL polls fast for the rest
    assert reactor.wait_for(assoc.dul) == (None, reactor.ACTIVE_DELAY)
    state = reactor._states[assoc]
    # nothing to dispatch yet: the association thread sleeps until a message is complete
    assert reactor.wait_for(assoc) == (state.assoc_wake, reactor.IDLE_DELAY)

    reactor.on_dimse_received(event)  # the request is complete: the peer waits for us
    assert state.assoc_wake.is_set()  # the association thread is woken to dispatch it
    dul_wait = reactor.wait_for(assoc.dul)
    assert dul_wait is not None
    wake, timeout = dul_wait
    assert wake is not None and timeout == reactor.BUSY_DELAY and not wake.is_set()
    assert reactor.wait_for(assoc) == (None, reactor.ACTIVE_DELAY)

    reactor.on_dimse_sent(event)  # our answer is queued: the DUL thread is woken for it
    assert wake.is_set()
    assert reactor.wait_for(assoc.dul) == (None, reactor.ACTIVE_DELAY)

    monkeypatch.setattr(reactor, "ACTIVE_WINDOW", 0.0)  # long after the last PDU
    assert reactor.wait_for(assoc.dul) == (None, reactor.IDLE_DELAY)
    assert reactor.wait_for(assoc) == (state.assoc_wake, reactor.IDLE_DELAY)


def test_a_busy_dul_wait_is_ended_by_its_event(assoc: Association) -> None:
    """The DUL thread of a busy association waits on its event (set by EVT_DIMSE_SENT)
    instead of sleeping: a set event ends the wait and is consumed by it."""
    event = SimpleNamespace(assoc=assoc)
    reactor.on_pdu_received(event)
    reactor.on_dimse_received(event)
    state = reactor._states[assoc]
    state.dul_wake.set()  # what on_dimse_sent does, the association still busy
    reactor.pause(assoc.dul, reactor.IDLE_DELAY)
    assert not state.dul_wake.is_set()
    # a plain (not busy) wait leaves the event alone
    state.busy = False
    state.dul_wake.set()
    reactor.pause(assoc.dul, reactor.IDLE_DELAY)
    assert state.dul_wake.is_set()


def test_install_is_idempotent_and_only_changes_sleep() -> None:
    reactor.install()
    first = vars(dul_module)["time"]
    reactor.install()
    patched = vars(association_module)["time"]
    assert vars(dul_module)["time"] is first and patched is not time
    assert patched.monotonic is time.monotonic and patched.time is time.time
    # other sleeps than the reactor delay pass through unchanged
    start = time.monotonic()
    patched.sleep(0.01)
    assert time.monotonic() - start >= 0.009
