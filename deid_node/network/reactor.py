"""Wake pynetdicom's reactor threads when there is work; let them sleep otherwise.

Each association has two polling threads: the DUL reactor, which sleeps 1 ms
whenever a turn found nothing to do, and the association reactor, which sleeps
1 ms between looks for a complete DIMSE message. A C-STORE that arrives while
they sleep waits for both: the DUL thread notices the first bytes of the
request up to a tick late, the association thread the complete message up to a
tick late (more under load, as a sleeping thread waits for a core). On the
receiving side the sender waits for every response, so that delay was a tenth
of the time per instance. And a thousand turns a second, per thread, cost an
idle association about 12% of a core here, taken from the work of the process
(in a worker, de-identification) while it waits for its peer.

The two modules' ``time`` is replaced by :class:`_ReactorTime`, whose ``sleep``
returns as soon as there is something to do, and in the two reactor loops
sleeps up to :data:`IDLE_TICK` when there is not:

- a DUL reactor thread (a ``DULServiceProvider`` is its own thread) on a plain
  TCP socket waits (``select``) for the socket to have data or for its wake
  socket to be written: a primitive queued for it to send, or ``kill_dul``.
  SSL sockets may hold data ``select`` does not see: they sleep 1 ms as before;
- an association's reactor thread (an ``Association`` is its own thread) waits
  on a per-association event, set when a DIMSE message completes, when the DUL
  hands up a release or abort, when another thread asks the reactor to pause
  (``send_c_store`` and the other ``send_*`` wait for that), and on ``kill``.

Everything else still gets a look at least every :data:`IDLE_TICK` (timers,
the DUL thread's death), and every other caller sleeps as asked.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pynetdicom import association, dul, evt

IDLE_TICK = 0.05  # the longest a reactor loop sleeps when nothing wakes it

_WAKE = "_deid_node_wake"  # the event an association's reactor sleeps on
_DUL_WAKE = "_deid_node_dul_wake"  # (read end, write end) the DUL reactor selects on
_LOOPS = frozenset(
    {
        dul.DULServiceProvider.run_reactor.__code__,
        association.Association._run_reactor.__code__,
    }
)


def _sleep(seconds: float) -> None:
    thread = threading.current_thread()
    in_loop = sys._getframe(1).f_code in _LOOPS
    if isinstance(thread, dul.DULServiceProvider):
        transport = thread.socket
        sock = getattr(transport, "socket", None)
        if type(sock) is socket.socket and getattr(transport, "_is_connected", False):
            pair: tuple[socket.socket, socket.socket] | None = getattr(thread, _DUL_WAKE, None)
            try:
                if in_loop and pair is not None:
                    ready, _, _ = select.select([sock, pair[0]], [], [], IDLE_TICK)
                    if pair[0] in ready:
                        _drain(pair[0])
                else:
                    select.select([sock], [], [], seconds)
                return
            except (OSError, ValueError):  # closed meanwhile: the reactor finds out
                pass
    elif isinstance(thread, association.Association):
        wake: threading.Event | None = getattr(thread, _WAKE, None)
        if wake is not None:
            wake.wait(IDLE_TICK if in_loop else seconds)
            wake.clear()  # before the reactor looks, so no message is missed
            return
    time.sleep(seconds)


def _drain(reader: socket.socket) -> None:
    with contextlib.suppress(OSError):  # BlockingIOError once empty
        while reader.recv(4096):
            pass


def _poke(writer: socket.socket) -> None:
    """Wake a DUL reactor (a byte already waiting does as well: a full buffer is fine)."""
    with contextlib.suppress(OSError):  # closed with the connection, or full
        writer.send(b"\0")


class _ReactorTime(ModuleType):
    """The ``time`` module, with :func:`_sleep` for ``sleep``."""

    sleep = staticmethod(_sleep)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _notify_on_put(q: queue.Queue, notify: Callable[[], None]) -> None:  # type: ignore[type-arg]
    """Make ``q`` call ``notify`` after each put (set an association reactor's event,
    or poke a DUL reactor's wake socket). The queue object stays the same: a thread
    may already wait in its ``get`` (the requestor waits for the association's
    answer on ``to_user_queue`` while the connection opens)."""
    put = q.put

    def put_and_notify(item: Any, block: bool = True, timeout: float | None = None) -> None:
        put(item, block, timeout)
        notify()

    q.put = put_and_notify  # type: ignore[method-assign]


class _WakingCheckpoint(threading.Event):
    """An association's reactor checkpoint: clearing it (another thread wants the
    reactor paused, and waits until it is) wakes the reactor."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake.set()


def _install_wake_ups(event: evt.Event) -> None:
    assoc = event.assoc
    wake = threading.Event()
    _notify_on_put(assoc.dimse.msg_queue, wake.set)
    provider = assoc.dul
    _notify_on_put(provider.to_user_queue, wake.set)
    checkpoint = _WakingCheckpoint(wake)
    if assoc._reactor_checkpoint.is_set():
        checkpoint.set()
    assoc._reactor_checkpoint = checkpoint
    kill = assoc.kill

    def kill_and_wake() -> None:
        kill()
        wake.set()

    assoc.kill = kill_and_wake  # type: ignore[method-assign]
    setattr(assoc, _WAKE, wake)
    if assoc.is_requestor:
        _leave_responses_to_senders(assoc)

    sock = getattr(provider.socket, "socket", None)
    if type(sock) is not socket.socket:
        return  # TLS: the DUL reactor keeps its 1 ms tick
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    _notify_on_put(provider.to_provider_queue, lambda: _poke(writer))
    kill_dul = provider.kill_dul

    def kill_dul_and_wake() -> None:
        kill_dul()
        _poke(writer)

    provider.kill_dul = kill_dul_and_wake  # type: ignore[method-assign]
    setattr(provider, _DUL_WAKE, (reader, writer))

    def close_wake(_event: evt.Event) -> None:
        setattr(provider, _DUL_WAKE, None)
        reader.close()
        writer.close()

    assoc.bind(evt.EVT_CONN_CLOSE, close_wake)


def _leave_responses_to_senders(assoc: association.Association) -> None:
    """On an association the node requested, its reactor thread never takes a DIMSE
    response off the queue: a response belongs to the thread that sent the request
    and waits for it. pynetdicom's pause handshake has a gap: right after one
    ``send_*`` sets the checkpoint, the next can see the reactor still marked
    paused, send, and have its response served by the resuming reactor as if it
    were a request; the sender then waits out its DIMSE timeout (seen as a C-ECHO
    without answer about once in a hundred back to back)."""
    dimse_provider = assoc.dimse
    get_msg = dimse_provider.get_msg

    def get_msg_unless_response(block: bool = False) -> Any:
        if not block and threading.current_thread() is assoc:
            _context, head = dimse_provider.peek_msg()
            if getattr(head, "MessageIDBeingRespondedTo", None) is not None:
                return None, None
        return get_msg(block)

    dimse_provider.get_msg = get_msg_unless_response  # type: ignore[method-assign]


WAKE_HANDLER = (evt.EVT_CONN_OPEN, _install_wake_ups)


def install() -> None:
    """Give pynetdicom's DUL and association modules the early-waking ``sleep``."""
    for module in (dul, association):
        if not isinstance(module.time, _ReactorTime):  # type: ignore[attr-defined]
            module.time = _ReactorTime("time")  # type: ignore[attr-defined]
