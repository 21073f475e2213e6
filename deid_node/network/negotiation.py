"""Association set-up on the SCP side: transfer syntaxes we can read; no slot held
by a connection that closed before asking for an association.

The SCP runs pynetdicom in "unrestricted storage" mode, so that private and
newer storage SOP classes are accepted. In that mode pynetdicom accepts every
storage context with the FIRST transfer syntax the sender proposed, whatever
it is: a sender proposing a private syntax first (or only) got it accepted, and
the node received bytes it could neither check, de-identify nor convert. Here
each proposed context keeps only the syntaxes pynetdicom and pydicom know
(``ALL_TRANSFER_SYNTAXES``), in the sender's order; a context with none left is
rejected with result 0x04 (transfer syntaxes not supported), which tells the
sender at association time.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, acse, evt
from pynetdicom.presentation import PresentationContext, negotiate_unrestricted

_KNOWN = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)
TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04


def negotiate_known_syntaxes(
    rq_contexts: list[PresentationContext],
    ac_contexts: list[PresentationContext],
    roles: Any = None,
) -> tuple[list[PresentationContext], list[Any]]:
    usable: list[PresentationContext] = []
    refused: list[PresentationContext] = []
    for rq in rq_contexts:
        syntaxes = [ts for ts in rq.transfer_syntax if str(ts) in _KNOWN]
        cx = PresentationContext()
        cx.context_id = rq.context_id
        cx.abstract_syntax = rq.abstract_syntax
        cx.transfer_syntax = syntaxes or [rq.transfer_syntax[0]]
        if syntaxes:
            usable.append(cx)
        else:
            cx.result = TRANSFER_SYNTAXES_NOT_SUPPORTED
            refused.append(cx)
    result, reply_roles = negotiate_unrestricted(usable, ac_contexts, roles)
    return [*result, *refused], reply_roles


def install() -> None:
    """Make pynetdicom's acceptor use :func:`negotiate_known_syntaxes` (idempotent)."""
    acse.negotiate_unrestricted = negotiate_known_syntaxes  # type: ignore[attr-defined]


def _release_slot_on_early_close(event: evt.Event) -> None:
    """Wake the acceptor when the peer closes before its A-ASSOCIATE-RQ was whole.

    pynetdicom's state machine handles that close (Sta2 + Evt17, AA-5; or Sta13
    after it aborted a PDU it could not read) without telling the association
    thread, which then waits the whole ACSE timeout for
    a request that cannot come, holding one of ``max_associations``. A few
    dozen cut-short connections (a scanner, a broken client, a fuzzer) made the
    node refuse every sender ("local limit exceeded") for that long. ``None`` is
    what the thread gets on a timeout: it ends at once, as it would then.
    """
    dul = event.assoc.dul
    waiting = dul.state_machine.current_state in ("Sta2", "Sta13")  # no request yet / aborted
    if waiting and event.assoc.requestor.primitive is None:
        dul.to_user_queue.put(None)


EARLY_CLOSE_HANDLER = (evt.EVT_CONN_CLOSE, _release_slot_on_early_close)
