"""Presentation context negotiation that never accepts a transfer syntax we cannot read.

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

from pynetdicom import ALL_TRANSFER_SYNTAXES, acse
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
