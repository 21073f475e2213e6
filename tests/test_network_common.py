"""Network and process plumbing: the direct command-set and P-DATA-TF encoders equal
pydicom's and pynetdicom's, PDU reads, allocator settings."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import dsutils
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from deid_node.network.common import (
    _add_p_data_tf,
    encode_command_set,
    encode_p_data_tf,
    send_parts,
)


def _command_sets() -> list[Dataset]:
    sets = []
    req = C_STORE()
    req.MessageID = 7
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    req.AffectedSOPInstanceUID = "1.2.3.4.5.6.7"  # odd length: padded with a NUL
    req.Priority = 2
    req.MoveOriginatorApplicationEntityTitle = "MOVER"  # odd: padded with a space
    req.MoveOriginatorMessageID = 3
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    sets.append(msg.command_set)
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.3.4.5.6.78"
    rsp.Status = 0xA700
    rsp.ErrorComment = "out of space"
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    sets.append(msg.command_set)
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    msg = C_ECHO_RQ()
    msg.primitive_to_message(echo)
    sets.append(msg.command_set)
    return sets


def test_command_sets_encode_like_pydicom() -> None:
    for ds in _command_sets():
        assert encode_command_set(ds) == dsutils.encode(ds, True, True)


def test_unusual_elements_fall_back() -> None:
    ds = Dataset()
    ds.add_new(0x00000901, "AT", [0x00100010])  # Offending Element
    assert encode_command_set(ds) is None
    ds = Dataset()
    ds.PatientName = "NOT^A^COMMAND"
    assert encode_command_set(ds) is None


def test_p_data_tf_encodes_like_pynetdicom() -> None:
    """The PDUs the sending thread writes itself are pynetdicom's, byte for byte."""
    for pdvs in (
        [(1, b"\x03" + b"\x00" * 40)],
        [(3, b"\x00" + bytes(range(256)) * 64)],
        [(1, b"\x01abc"), (5, b"\x02" + b"x" * 16377)],
        [(7, b"\x02")],
    ):
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[cx, data] for cx, data in pdvs]
        assert encode_p_data_tf(primitive) == P_DATA_TF(primitive).encode()
        parts: list[bytes] = []
        size = _add_p_data_tf(parts, primitive)
        assert b"".join(parts) == P_DATA_TF(primitive).encode()
        assert size == len(b"".join(parts))


def test_parts_are_sent_whole_and_in_order_or_the_transport_hears_of_it() -> None:
    """The PDUs of a message sent together: every byte, in order, across the
    partial sends of a socket with a timeout and a small buffer; a failed send
    becomes the transport's Evt17, as in pynetdicom's own send."""
    import queue
    import random
    import socket
    import threading
    from types import SimpleNamespace

    rng = random.Random(5)
    parts = [rng.randbytes(rng.choice((0, 1, 6, 5, 16_000, 70_000))) for _ in range(400)]
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        a.settimeout(10)  # non-blocking underneath: sends can be partial
        received = bytearray()

        def read_slowly() -> None:
            while chunk := b.recv(3000):
                received.extend(chunk)

        reader = threading.Thread(target=read_slowly)
        reader.start()
        events: queue.Queue[str] = queue.Queue()
        send_parts(SimpleNamespace(socket=a, event_queue=events), parts)  # type: ignore[arg-type]
        a.shutdown(socket.SHUT_WR)
        reader.join()
        assert bytes(received) == b"".join(parts)
        assert events.empty()

    c, d = socket.socketpair()
    d.close()
    with c:
        send_parts(SimpleNamespace(socket=c, event_queue=events), [b"x" * 100_000] * 40)  # type: ignore[arg-type]
    assert events.get_nowait() == "Evt17"


def test_recv_exactly_reads_what_was_asked_or_what_came() -> None:
    """PDU reads: the exact length across many partial reads; what arrived if the
    peer closes early; a huge announced length reserves no more than RECV_CHUNK."""
    import socket
    import threading
    from types import SimpleNamespace

    from deid_node.network.common import RECV_CHUNK, recv_exactly

    payload = bytes(range(256)) * 12_000  # 3 MB: more than RECV_CHUNK
    a, b = socket.socketpair()
    with a, b:

        def send_in_pieces() -> None:
            for i in range(0, len(payload), 70_001):
                a.sendall(payload[i : i + 70_001])
            a.sendall(b"tail")
            a.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_in_pieces)
        sender.start()
        wrapper = SimpleNamespace(socket=b)
        assert recv_exactly(wrapper, len(payload)) == payload  # type: ignore[arg-type]
        rest = recv_exactly(wrapper, 0xFFFFFFFF)  # type: ignore[arg-type]
        sender.join()
        assert rest == b"tail"
        assert RECV_CHUNK < 0xFFFFFFFF


def test_allocator_thresholds_apply_on_glibc() -> None:
    """The node's processes keep image-sized buffers in the heap (glibc's mallopt)."""
    import platform

    from deid_node.allocator import tune_allocator

    applied = tune_allocator()
    if platform.libc_ver()[0] == "glibc":
        assert applied


def test_reactor_sleep_returns_early_only_for_its_reactor() -> None:
    """An association's reactor sleep ends when a DIMSE message is queued; any other
    thread's sleep in pynetdicom's modules lasts as long as asked."""
    import threading
    import time
    from queue import Queue

    from pynetdicom import association

    from deid_node.network import reactor

    reactor.install()
    assert isinstance(association.time, reactor._ReactorTime)  # type: ignore[attr-defined]
    assert association.time.monotonic is time.monotonic  # type: ignore[attr-defined]

    t0 = time.monotonic()
    association.time.sleep(0.05)  # type: ignore[attr-defined]
    assert time.monotonic() - t0 >= 0.045

    wake = threading.Event()
    queue: Queue[tuple[int, str]] = Queue()
    reactor._notify_on_put(queue, wake.set)
    slept: list[float] = []

    class FakeAssociation(association.Association):
        def __init__(self) -> None:  # only a thread with the wake event
            threading.Thread.__init__(self)
            setattr(self, reactor._WAKE, wake)

        def run(self) -> None:
            start = time.monotonic()
            association.time.sleep(5.0)  # type: ignore[attr-defined]
            slept.append(time.monotonic() - start)

    thread = FakeAssociation()
    thread.start()
    time.sleep(0.05)
    queue.put((1, "message"))
    thread.join(2)
    assert slept and slept[0] < 2.0
    assert not wake.is_set()  # cleared for the next sleep


def test_reactors_sleep_when_idle_and_wake_for_work(archive, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An idle association's two reactor threads cost next to no CPU (a 1 ms tick
    each cost about 12% of a core), yet a request sent on it is not held up by
    their long sleep: asking the reactor to pause, a response arriving and the
    release all wake the thread they concern."""
    import os
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from deid_node.network import reactor
    from deid_node.network.common import DIRECT_SEND_HANDLER, NODELAY_HANDLER

    reactor.install()  # (not configure_dicom_libraries: it changes this process's pydicom)
    monkeypatch.setattr(reactor, "IDLE_TICK", 0.5)  # a missed wake-up would show
    ae = AE(ae_title="DEID_NODE")
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1",
        archive.port,
        ae_title=archive.ae_title,
        evt_handlers=[NODELAY_HANDLER, DIRECT_SEND_HANDLER, reactor.WAKE_HANDLER],
    )
    assert assoc.is_established

    def reactors_cpu() -> float:
        """CPU seconds of this association's two reactor threads (not the process's:
        other tests' threads may still run in it)."""
        total = 0
        for thread in (assoc, assoc.dul):
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    try:
        cpu, wall = reactors_cpu(), time.monotonic()
        time.sleep(2.0)
        idle = (reactors_cpu() - cpu) / (time.monotonic() - wall)
        assert idle < 0.05, f"idle association used {idle:.0%} of a core"
        t0 = time.monotonic()
        for _ in range(10):
            status = assoc.send_c_echo()
            assert status.Status == 0x0000
        assert time.monotonic() - t0 < 2.0  # 10 x up to 0.5 s if the pause did not wake
    finally:
        t0 = time.monotonic()
        assoc.release()
    assert assoc.is_released
    assert time.monotonic() - t0 < 0.4


def test_each_association_gets_its_own_contexts_without_a_deep_copy() -> None:
    """pynetdicom deep-copies the server's contexts for every association it accepts
    (160 ms of CPU for every storage class in every syntax): the node's copy has the
    same fields, with lists of its own, for a fraction of that."""
    import copy
    import time

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

    from deid_node.network.scp import _Contexts

    ae = AE()  # the node's contexts (build_scp would also change pynetdicom's settings)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    contexts = _Contexts(ae.supported_contexts)
    assert len(contexts) > 150
    start = time.process_time()
    mine = copy.deepcopy(contexts)
    spent = time.process_time() - start
    theirs = copy.deepcopy(list(contexts))
    assert [vars(a) for a in mine] == [vars(b) for b in theirs]
    for new, old in zip(mine, contexts, strict=True):
        assert new is not old and new._transfer_syntax is not old._transfer_syntax
    mine[0].context_id = 7  # negotiation sets fields of the association's copy only
    mine[0]._transfer_syntax.append("1.2.3")
    assert contexts[0].context_id is None and "1.2.3" not in contexts[0]._transfer_syntax
    assert spent < 0.05


def _store_and_echo_primitives() -> list:
    """C-STORE and C-ECHO requests and responses as the node sends and receives them,
    and some it never does (fields of other kinds, values that are not plain)."""
    import tempfile
    from io import BytesIO
    from pathlib import Path

    out = []
    body = b"\x08\x00\x16\x00\x02\x00\x00\x001\x00"  # a data set: (0008,0016) "1"
    with tempfile.NamedTemporaryFile(suffix=".dcm", delete=False) as f:
        f.write(body)
    for dataset, path, mover in (
        (BytesIO(body), None, None),
        (None, (Path(f.name), 0), None),
        (BytesIO(b"\x08\x00\x16\x00\x02\x00\x00\x001\x00"), None, ("MOVER", 9)),
        (BytesIO(b"\x08\x00\x16\x00\x02\x00\x00\x001\x00"), None, ("AB", 65535)),
    ):
        rq = C_STORE()
        rq.MessageID = 7
        rq.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        rq.AffectedSOPInstanceUID = "1.2.3.4.5.6.7"
        rq.Priority = 2
        rq.DataSet = dataset
        rq._dataset_path = path
        if mover:
            rq.MoveOriginatorApplicationEntityTitle, rq.MoveOriginatorMessageID = mover
        out.append(rq)
    for status, comment, instance in (
        (0x0000, None, "1.2.3.4.5.6.7"),
        (0xC000, "data set ends inside an element header", "1.2.3.4.5.6.78"),
        (0xA700, "odd", None),
        (0xB000, "with a \\ backslash", "1.2.3"),
        (0xC000, "caf\u00e9", "1.2.3"),
    ):
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        rsp.AffectedSOPInstanceUID = instance
        rsp.Status = status
        if comment is not None:
            rsp.ErrorComment = comment
        out.append(rsp)
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 3
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.Status = 0xC000
    rsp.OffendingElement = [0x00100010]
    out.append(rsp)
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    out.append(echo)
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo.Status = 0
    out.append(echo)
    return out


def test_fast_store_and_echo_messages_are_pynetdicoms(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """C-STORE and C-ECHO messages sent without a Dataset are pynetdicom's PDUs byte
    for byte, and received ones give the primitive pynetdicom gives; what the fast
    path does not take (an AT element, a non-ASCII or multi-valued text) is left to
    pynetdicom, with the same result."""
    from pynetdicom import dimse, dimse_messages

    from deid_node.network import dimse_fast
    from deid_node.network.common import encode_with_fast_commands

    monkeypatch.setattr(dimse_messages, "encode", encode_with_fast_commands)
    send = dimse.DIMSEServiceProvider.send_msg
    original_send = getattr(send, "__wrapped__", send)
    to_primitive = dimse_messages.DIMSEMessage.message_to_primitive
    original_to_primitive = getattr(to_primitive, "__wrapped__", to_primitive)
    fast_send = dimse_fast._fast_send_msg(original_send)

    class Provider:
        maximum_pdu_size = 16384

        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.assoc = self
            self.dul = self

        def get_handlers(self, _event: object) -> list:
            return []

        def send_pdu(self, primitive: P_DATA) -> None:
            self.sent.append(encode_p_data_tf(primitive))

    taken = 0
    for primitive in _store_and_echo_primitives():
        theirs, ours = Provider(), Provider()
        original_send(theirs, primitive, 5)
        fast_send(ours, primitive, 5)
        assert ours.sent == theirs.sent, primitive
        cls = (
            dimse._RQ_TO_MESSAGE
            if primitive.MessageIDBeingRespondedTo is None
            else dimse._RSP_TO_MESSAGE
        )[type(primitive)]
        taken += dimse_fast.command_set_bytes(primitive, cls) is not None
        # Received: the same PDUs decoded (one PDV each: its data after 11 bytes).
        messages = []
        lazy = dimse_fast.decode_command_set
        for decode in (lazy, dsutils.decode, lazy):
            monkeypatch.setattr(dimse_messages, "decode", decode)
            msg = dimse_messages.DIMSEMessage()
            done = False
            for pdu in theirs.sent:
                pdata = P_DATA()
                pdata.presentation_data_value_list = [[5, pdu[11:]]]
                done = msg.decode_msg(pdata)
            assert done
            messages.append(msg)
        slow = original_to_primitive(messages[1])
        # Fast, or pynetdicom's own conversion of the command set decoded lazily.
        for fast in (dimse_fast.primitive_of(messages[0]), original_to_primitive(messages[2])):
            if fast is None:
                continue
            assert type(fast) is type(slow)
            mine, want = vars(fast), vars(slow)
            assert mine.keys() == want.keys()
            for key in want:
                if key in ("_dataset", "_dataset_path", "_dataset_file"):
                    continue  # each message's own (empty) data set
                assert mine[key] == want[key], (key, mine[key], want[key])
    assert taken == 10  # all but the non-ASCII comment and the AT element


def test_conformant_uids_are_checked_once_and_the_rest_as_before() -> None:
    """UID setters: a conformant UID is answered from memory (same value, a UID);
    a non-conformant one is still checked (and warned about) every time, and an
    invalid one still refused."""
    import warnings

    import pytest
    from pydicom.uid import UID
    from pynetdicom.utils import set_uid

    from deid_node.network import dimse_fast

    calls: list[str] = []

    def counting(value, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(str(value))
        return set_uid(value, name, *args, **kwargs)

    remembered = dimse_fast._remembering_conformant(counting)
    for _ in range(3):
        uid = remembered("1.2.840.10008.5.1.4.1.1.2", "Affected SOP Class UID")
        assert uid == "1.2.840.10008.5.1.4.1.1.2" and isinstance(uid, UID)
    assert calls == ["1.2.840.10008.5.1.4.1.1.2"]
    with warnings.catch_warnings():  # pydicom's, where its validation is on
        warnings.simplefilter("ignore")
        for _ in range(2):
            assert remembered("1.02.3", "Affected SOP Instance UID") == "1.02.3"
        assert calls.count("1.02.3") == 2
        with pytest.raises(ValueError):
            remembered("1." + "2" * 70, "Affected SOP Instance UID")
    assert remembered(None, "Affected SOP Instance UID") is None
