"""Socket and transfer-syntax details shared by the SCP and the SCU."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
from collections import deque
from collections.abc import Iterable

from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom import dimse_messages, dsutils, evt, transport
from pynetdicom.pdu_primitives import P_DATA

from deid_node.network import dimse_fast, reactor
from deid_node.network.dimse_fast import EncodedCommandSet

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

# The most a read allocates ahead of the data that has arrived: a PDU's length is
# the peer's word, and must not make the node reserve gigabytes.
RECV_CHUNK = 1 << 20


def recv_exactly(self: transport.AssociationSocket, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: read ``nr_bytes`` (fewer if the peer closes).

    pynetdicom reads in 4 KiB ``recv`` calls, each a new bytes object appended to
    a growing bytearray: about 130 system calls and as many copies for one CT
    image. This reads into the buffer directly, as much as the socket holds each
    time (a handful of calls per PDU). Errors and timeouts propagate as before.
    """
    sock = self.socket
    assert sock is not None
    out = bytearray(min(nr_bytes, RECV_CHUNK))
    nr_read = 0
    while nr_read < nr_bytes:
        if nr_read == len(out):
            out.extend(bytes(min(nr_bytes - nr_read, RECV_CHUNK)))
        with memoryview(out) as view:
            n = sock.recv_into(view[nr_read:])
        if not n:  # the connection was closed: what was read
            del out[nr_read:]
            break
        nr_read += n
    return out


def encode_p_data_tf(primitive: P_DATA) -> bytes:
    """The P-DATA-TF PDU of a P-DATA primitive (PS3.8 9.3.5), as pynetdicom encodes it."""
    parts: list[bytes] = []
    _add_p_data_tf(parts, primitive)
    return b"".join(parts)


def _send_data_directly(event: evt.Event) -> None:
    """Send P-DATA PDUs from the thread that has them, not through the DUL reactor.

    pynetdicom queues every P-DATA primitive for its DUL reactor thread, which
    runs the state machine and encodes and writes one PDU per loop turn (and may
    be in a 1 ms sleep when the first one arrives). A C-STORE is 5 to 35 PDUs
    depending on the peer's maximum PDU length, and its response waits for that
    thread too; the hand-over between threads (queue, GIL, context switch) cost
    more CPU than the encoding. In state Sta6 (association established) a P-DATA
    request only sends the PDU and stays in Sta6 (DT-1), so the sending thread
    writes it itself, through the same transport (whose errors still reach the
    state machine as Evt17), whenever nothing is queued before it. Anything else
    (release, abort, another state, TLS) goes the usual way: an SSL socket must
    not be written by one thread while the reactor reads it in another. The PDUs
    of one message are written together (``dul.send_pdus``, used by
    :mod:`dimse_fast`): one ``sendmsg`` call per MiB instead of a ``send`` and two
    copies per PDU (a storescp destination takes a CT image in 34 PDUs).
    """
    dul = event.assoc.dul
    queued = dul.send_pdu

    def direct(primitive: object) -> bool:
        transport = dul.socket
        return (
            type(primitive) is P_DATA
            and transport is not None
            and type(transport.socket) is socket.socket
            and dul.state_machine.current_state == "Sta6"
            and dul.to_provider_queue.empty()
        )

    def send_pdu(primitive):  # type: ignore[no-untyped-def]
        if direct(primitive):
            dul.socket.send(encode_p_data_tf(primitive))
        else:
            queued(primitive)

    def send_pdus(primitives: Iterable[object]) -> None:
        parts: list[bytes] = []  # PDUs held, for the transport they were checked on
        size = 0
        held_for = None
        for primitive in primitives:
            if not direct(primitive):
                if parts:
                    send_parts(held_for, parts)
                    parts, size = [], 0
                queued(primitive)
                continue
            if parts and dul.socket is not held_for:
                send_parts(held_for, parts)
                parts, size = [], 0
            held_for = dul.socket
            size += _add_p_data_tf(parts, primitive)
            if size >= SEND_BATCH_BYTES:
                send_parts(held_for, parts)
                parts, size = [], 0
        if parts:
            send_parts(held_for, parts)

    dul.send_pdu = send_pdu
    # Used by dimse_fast's send_msg for the PDUs of one message, where no
    # handler watches each PDU sent (EVT_DATA_SENT).
    dul.send_pdus = send_pdus


# The most bytes of P-DATA-TF PDUs held to be sent in one system call.
SEND_BATCH_BYTES = 1 << 20


def _add_p_data_tf(parts: list[bytes], primitive: P_DATA) -> int:
    """Append the P-DATA-TF PDU of ``primitive`` to ``parts`` as buffers to send in
    order (as :func:`encode_p_data_tf`, without copying the values); its length."""
    at = len(parts)
    parts.append(b"")
    body = 0
    for context_id, data in primitive.presentation_data_value_list:
        parts.append(struct.pack(">IB", len(data) + 1, context_id))
        parts.append(data)
        body += 5 + len(data)
    parts[at] = struct.pack(">BBI", 0x04, 0x00, body)
    return 6 + body


def send_parts(assoc_socket: transport.AssociationSocket, parts: list[bytes]) -> None:
    """``AssociationSocket.send`` of the concatenation of ``parts``, gathered by the
    kernel (``sendmsg``) instead of copied together: a failure is the transport's
    Evt17, as there."""
    sock = assoc_socket.socket
    assert sock is not None
    views = deque(memoryview(part) for part in parts if len(part))
    try:
        while views:
            sent = sock.sendmsg(list(itertools.islice(views, _IOV_MAX)))
            while sent:
                first = views[0]
                if sent >= len(first):
                    sent -= len(first)
                    views.popleft()
                else:
                    views[0] = first[sent:]
                    sent = 0
    except Exception:
        assoc_socket.event_queue.put("Evt17")


_IOV_MAX = 512  # buffers a sendmsg call takes (Linux allows 1024)


DIRECT_SEND_HANDLER = (evt.EVT_CONN_OPEN, _send_data_directly)


def configure_dicom_libraries() -> None:
    """Settings every deid-node process uses for pydicom and pynetdicom.

    - pynetdicom's "standard" event handlers log every PDU and DIMSE message
      (including identifiers at debug level); with them off, nothing of a
      dataset can reach a log through pynetdicom, and each PDU costs less.
    - pydicom validates every value it decodes and only ever warns about what
      it finds: the node reads values to change them, not to judge them.
    - C-STORE and C-ECHO command sets are encoded and decoded without a pydicom
      Dataset (:mod:`deid_node.network.dimse_fast`).
    - ``send_c_store(path)`` streams the file's dataset bytes as written, in
      PDU-sized chunks, instead of decoding the whole file (pixel data included)
      with pydicom and encoding it again: the archive receives exactly the bytes
      the node wrote, for less than half the CPU (7 -> 3 ms per CT image here).
      It needs an accepted context in the file's own transfer syntax, which the
      forwarder checks before it sends a path.
    """
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    dimse_messages.encode = encode_with_fast_commands  # type: ignore[attr-defined]
    transport.AssociationSocket.recv = recv_exactly  # type: ignore[method-assign]
    reactor.install()
    dimse_fast.install()


_TEXT_PAD = {"UI": b"\x00", "AE": b" ", "LO": b" ", "SH": b" ", "CS": b" "}


def encode_command_set(ds: Dataset) -> bytes | None:
    """Encode a DIMSE command set (implicit VR little endian) directly.

    pynetdicom encodes every command set twice per message through pydicom's
    general writer (once to compute the group length); that was about a fifth
    of the CPU of forwarding an image. Command sets hold a few group-0000
    elements of simple VRs; anything else returns ``None`` and goes the
    general way. A test checks equality with pydicom's output.
    """
    parts = []
    for tag in sorted(ds.keys()):
        if tag >> 16 != 0:
            return None
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            if elem.value is None:
                return None
            value = bytes(elem.value)
        else:
            vr, v = elem.VR, elem.value
            if v is None or v == "":
                value = b""
            elif vr == "US" and isinstance(v, int):
                value = struct.pack("<H", v)
            elif vr == "UL" and isinstance(v, int):
                value = struct.pack("<I", v)
            elif vr in _TEXT_PAD and isinstance(v, str) and v.isascii():
                value = v.encode("ascii")
                if len(value) % 2:
                    value += _TEXT_PAD[vr]
            else:
                return None
        parts.append(struct.pack("<HHI", 0, tag & 0xFFFF, len(value)))
        parts.append(value)
    return b"".join(parts)


def encode_with_fast_commands(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """pynetdicom's ``encode``, with the fast path for command sets."""
    if type(ds) is EncodedCommandSet:
        return bytes(ds)
    if is_implicit_vr and is_little_endian and not deflated:
        encoded = encode_command_set(ds)
        if encoded is not None:
            return encoded
    return dsutils.encode(ds, is_implicit_vr, is_little_endian, deflated)
