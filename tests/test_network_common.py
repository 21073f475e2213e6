"""Network and process plumbing: the direct command-set and P-DATA-TF encoders equal
pydicom's and pynetdicom's, PDU reads, allocator settings."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import dsutils
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from deid_node.network.common import encode_command_set, encode_p_data_tf


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

    from pynetdicom import association

    from deid_node.network import reactor

    reactor.install()
    assert isinstance(association.time, reactor._ReactorTime)  # type: ignore[attr-defined]
    assert association.time.monotonic is time.monotonic  # type: ignore[attr-defined]

    t0 = time.monotonic()
    association.time.sleep(0.05)  # type: ignore[attr-defined]
    assert time.monotonic() - t0 >= 0.045

    wake = threading.Event()
    queue = reactor._WakingQueue(wake)
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
    import time

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from deid_node.network import reactor
    from deid_node.network.common import (
        DIRECT_SEND_HANDLER,
        NODELAY_HANDLER,
        configure_dicom_libraries,
    )

    configure_dicom_libraries()
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
    try:
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(1.0)
        idle = (time.process_time() - cpu) / (time.monotonic() - wall)
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

    from deid_node.network.scp import _Contexts, build_scp

    contexts = _Contexts(build_scp("DEID_NODE", 4).supported_contexts)
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
