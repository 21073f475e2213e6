"""Wake pynetdicom's reactor threads when there is work, not on the next 1 ms tick.

Each association has two polling threads: the DUL reactor, which sleeps 1 ms
whenever a turn found nothing to do, and the association reactor, which sleeps
1 ms between looks for a complete DIMSE message. A C-STORE that arrives while
they sleep waits for both: the DUL thread notices the first bytes of the
request up to a tick late, the association thread the complete message up to a
tick late (more under load, as a sleeping thread waits for a core). On the
receiving side the sender waits for every response, so that delay was a tenth
of the time per instance.

The two modules' ``time`` is replaced by :class:`_ReactorTime`, whose ``sleep``
keeps the same bound but returns early:

- in a DUL reactor thread (a ``DULServiceProvider`` is its own thread) on a
  plain TCP socket, once the socket has data to read (``select``); SSL sockets
  may hold data ``select`` does not see, so they sleep as before;
- in an association's reactor thread (an ``Association`` is its own thread),
  once a DIMSE message completes: :data:`WAKE_HANDLER` gives each association a
  message queue that sets a per-association event when a message is put.

Every other caller sleeps as before. Nothing else about the reactors changes:
they still look at everything they looked at, at least once a tick.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import time
from types import ModuleType
from typing import Any

from pynetdicom import association, dul, evt

_WAKE = "_deid_node_wake"  # the event an association's reactor sleeps on


def _sleep(seconds: float) -> None:
    thread = threading.current_thread()
    if isinstance(thread, dul.DULServiceProvider):
        transport = thread.socket
        sock = getattr(transport, "socket", None)
        if type(sock) is socket.socket and getattr(transport, "_is_connected", False):
            try:
                select.select([sock], [], [], seconds)
                return
            except (OSError, ValueError):  # closed meanwhile: the reactor finds out
                pass
    elif isinstance(thread, association.Association):
        wake: threading.Event | None = getattr(thread, _WAKE, None)
        if wake is not None:
            wake.wait(seconds)
            wake.clear()  # before the reactor looks, so no message is missed
            return
    time.sleep(seconds)


class _ReactorTime(ModuleType):
    """The ``time`` module, with :func:`_sleep` for ``sleep``."""

    sleep = staticmethod(_sleep)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A DIMSE message queue that wakes its association's reactor on put."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake.set()


def _install_waking_queue(event: evt.Event) -> None:
    assoc = event.assoc
    wake = threading.Event()
    # The queue is still empty: no message can arrive before the connection opens.
    assoc.dimse.msg_queue = _WakingQueue(wake)
    setattr(assoc, _WAKE, wake)


WAKE_HANDLER = (evt.EVT_CONN_OPEN, _install_waking_queue)


def install() -> None:
    """Give pynetdicom's DUL and association modules the early-waking ``sleep``."""
    for module in (dul, association):
        if not isinstance(module.time, _ReactorTime):  # type: ignore[attr-defined]
            module.time = _ReactorTime("time")  # type: ignore[attr-defined]
