"""Socket and transfer-syntax details shared by the SCP and the SCU."""

from __future__ import annotations

import contextlib
import socket

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import evt

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
NATIVE_OR_DEFLATED = (*UNCOMPRESSED, DeflatedExplicitVRLittleEndian)


def _set_nodelay(event: evt.Event) -> None:
    """Disable Nagle's algorithm on every DICOM connection.

    Without it each C-STORE waits for a delayed ACK (about 40 ms on loopback),
    which caps a sender at ~20 instances/s whatever the CPU does.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, _set_nodelay)
