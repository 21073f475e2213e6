"""Fuzzing a RUNNING node: mutated data sets over C-STORE, garbage on raw sockets.

Hypothesis (derandomized, so CI sees the same inputs every run) mutates a
valid 64x64 CT instance: bit flips, truncations, wrong element lengths, random
elements inserted with random tags and VRs, overwritten byte runs. Each goes out
over C-STORE; every one must get a response with a status (or, at worst, an
abort of that association, after which the sender reconnects). Then random
bytes and malformed PDUs go to the node's port on raw sockets. Afterwards the
node must still be alive, answer C-ECHO, and take a good study and forward it
de-identified to the archive (storescp).
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import Archive, NodeProcess, dcmtk_env, storescu, wait_until
from tests.crafted import RawSender, encode_body, write_crafted
from tests.studies import Phi, make_study
from tests.test_forwarding import FAST_RETRY, _audit, _counts

DATASET_EXAMPLES = 1600
SOCKET_EXAMPLES = 500
PHI = Phi(name="FUZZ^FELICITY", patient_id="FUZZMRN0099", accession="FUZZACC55")
_VRS = [b"AE", b"CS", b"DA", b"DS", b"FD", b"IS", b"LO", b"OB", b"OW", b"PN", b"SQ", b"UI"]
_VRS += [b"UL", b"UN", b"US", b"UT", b"XX", b"\x00\x00"]


def _element_offsets(body: bytes) -> list[int]:
    """Where each top-level element of an explicit VR little endian body starts."""
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR"}
    long_vrs |= {b"UT", b"UV"}
    offsets, pos = [], 0
    while pos < len(body):
        offsets.append(pos)
        vr = body[pos + 4 : pos + 6]
        if vr in long_vrs:
            (length,) = struct.unpack_from("<I", body, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", body, pos + 6)
            pos += 8 + length
        assert length != 0xFFFFFFFF, "the base instance has only defined lengths"
    return offsets


def _mutations(body: bytes, offsets: list[int]) -> st.SearchStrategy[tuple[str, bytes]]:
    n = len(body)
    index = st.integers(0, n - 1)
    element = st.sampled_from(offsets)

    def flips(bits: list[tuple[int, int]]) -> tuple[str, bytes]:
        data = bytearray(body)
        for i, b in bits:
            data[i] ^= 1 << b
        return "bit flips", bytes(data)

    def wrong_length(at: int, value: int, wide: bool) -> tuple[str, bytes]:
        data = bytearray(body)
        vr_long = data[at + 4 : at + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT")
        if vr_long or wide:
            struct.pack_into("<I", data, at + 8 if vr_long else at + 4, value)
        else:
            struct.pack_into("<H", data, at + 6, value & 0xFFFF)
        return "wrong length", bytes(data)

    def insert(at: int, group: int, elem: int, vr: bytes, value: bytes, lie: int) -> tuple:
        length = len(value) if lie < 0 else lie
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
            head = struct.pack("<HH2sHI", group, elem, vr, 0, length)
        else:
            head = struct.pack("<HH2sH", group, elem, vr, length & 0xFFFF)
        return "random element", body[:at] + head + value + body[at:]

    def overwrite(at: int, junk: bytes) -> tuple[str, bytes]:
        return "overwritten bytes", body[:at] + junk + body[at + len(junk) :]

    return st.one_of(
        st.lists(st.tuples(index, st.integers(0, 7)), min_size=1, max_size=8).map(flips),
        index.map(lambda i: ("truncation", body[:i])),
        st.builds(wrong_length, element, st.integers(0, 0xFFFFFFFF), st.booleans()),
        st.builds(
            insert,
            element,
            st.sampled_from([0x0008, 0x0010, 0x0020, 0x0028, 0x0029, 0x7FE0, 0xFFFE, 0x0002]),
            st.integers(0, 0xFFFF),
            st.sampled_from(_VRS),
            st.binary(max_size=40),
            st.one_of(st.just(-1), st.integers(0, 0xFFFFFFFF)),
        ),
        st.builds(overwrite, index, st.binary(min_size=1, max_size=64)),
    )


# -- raw PDUs --------------------------------------------------------------------------------


def _ae(title: str) -> bytes:
    return title.encode().ljust(16)


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(called: str = "DEID_NODE", *, pdu_length: int | None = None) -> bytes:
    """A well-formed A-ASSOCIATE-RQ proposing CT Image Storage, Explicit VR LE."""
    context = _item(0x30, CTImageStorage.encode()) + _item(0x40, ExplicitVRLittleEndian.encode())
    body = struct.pack(">HH", 1, 0) + _ae(called) + _ae("FUZZER") + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    body += _item(0x20, bytes([1, 0, 0, 0]) + context)
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    length = len(body) if pdu_length is None else pdu_length
    return struct.pack(">BBI", 0x01, 0, length) + body


def _p_data(payload: bytes) -> bytes:
    pdv = struct.pack(">IB", len(payload) + 2, 1) + bytes([0x03]) + payload
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def _malformed_pdus() -> st.SearchStrategy[tuple[str, bytes]]:
    rq = associate_rq()
    return st.one_of(
        st.binary(min_size=1, max_size=512).map(lambda b: ("random bytes", b)),
        st.builds(
            lambda t, n, b: ("bad PDU type", struct.pack(">BBI", t, 0, n) + b),
            st.integers(0x08, 0xFF),
            st.integers(0, 0xFFFFFFFF),
            st.binary(max_size=64),
        ),
        st.integers(1, len(rq) - 1).map(lambda i: ("truncated A-ASSOCIATE-RQ", rq[:i])),
        st.integers(0, 0xFFFFFFFF).map(
            lambda n: ("A-ASSOCIATE-RQ, wrong length", associate_rq(pdu_length=n))
        ),
        st.builds(
            lambda i, junk: ("A-ASSOCIATE-RQ, corrupted", rq[:i] + junk + rq[i + len(junk) :]),
            st.integers(6, len(rq) - 1),
            st.binary(min_size=1, max_size=16),
        ),
        st.binary(max_size=256).map(lambda b: ("P-DATA before association", _p_data(b))),
        st.sampled_from(
            [
                ("A-RELEASE-RQ before association", struct.pack(">BBIi", 0x05, 0, 4, 0)),
                ("A-ABORT before association", struct.pack(">BBIi", 0x07, 0, 4, 0)),
                ("A-ASSOCIATE-AC to an acceptor", b"\x02" + rq[1:]),
                ("huge PDU length", struct.pack(">BBI", 0x04, 0, 0xFFFFFFFF) + bytes(100)),
            ]
        ),
        st.builds(
            lambda b: ("P-DATA after A-ASSOCIATE-RQ", rq + _p_data(b)),
            st.binary(max_size=128),
        ),
    )


def _throw_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(0.3)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # nothing more comes: the node must not wait for it
            s.recv(4096)  # an A-ASSOCIATE-RJ/-AC, an A-ABORT, or the close
        except OSError:
            pass  # reset by the node, or nothing said within the timeout: both fine


# -- the test --------------------------------------------------------------------------------


def test_fuzz_running_node(tmp_path: Path, make_node, archive: Archive) -> None:
    base_ds = dcmread(make_study(tmp_path / "base", series=1, per_series=1, phi=PHI)[0])
    base_ds.Rows = base_ds.Columns = 64
    # Fixed UIDs: the same bytes, so the same inputs, every run.
    base_ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1.1"
    base_ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1.2"
    base_ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1.3"
    base_ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.1.4"
    base_ds.PixelData = bytes(64 * 64 * 2)
    body = encode_body(base_ds)
    offsets = _element_offsets(body)
    node: NodeProcess = make_node(archive.port, forward=FAST_RETRY)
    node.start()
    tried: dict[str, int] = {}
    answers: dict[str, int] = {}
    sender: list[RawSender] = []
    started = time.monotonic()

    def connect() -> RawSender:
        for s in sender:
            s.close()
        sender[:] = [
            RawSender(
                node.port,
                [
                    (CTImageStorage, ExplicitVRLittleEndian),
                    (CTImageStorage, ImplicitVRLittleEndian),
                ],
                calling="FUZZER",
            )
        ]
        assert sender[0].assoc.is_established, "the node still accepts associations"
        return sender[0]

    path = tmp_path / "mutant.dcm"

    @settings(
        max_examples=DATASET_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutation=_mutations(body, offsets), implicit=st.booleans())
    def throw_dataset(mutation: tuple[str, bytes], implicit: bool) -> None:
        kind, data = mutation
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        write_crafted(
            path, data, sop_class=CTImageStorage, sop_instance="1.2.3.999", transfer_syntax=ts
        )
        s = sender[0] if sender and sender[0].assoc.is_established else connect()
        rsp = s.send(path)
        tried[kind] = tried.get(kind, 0) + 1
        if rsp is not None and "Status" in rsp:
            key = "success" if rsp.Status == 0 else f"0x{int(rsp.Status):04X}"
            if rsp.Status != 0:
                assert rsp.get("ErrorComment"), (kind, rsp)
        else:
            key = "no response (association ended)"
            connect()
        answers[key] = answers.get(key, 0) + 1

    @settings(
        max_examples=SOCKET_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(pdu=_malformed_pdus())
    def throw_pdu(pdu: tuple[str, bytes]) -> None:
        kind, data = pdu
        _throw_raw(node.port, data)
        tried[kind] = tried.get(kind, 0) + 1

    good = make_study(tmp_path / "good", series=1, per_series=3, phi=PHI)
    try:
        connect()
        throw_dataset()
        for s in sender:
            s.close()
        dataset_seconds = time.monotonic() - started
        throw_pdu()
        total = sum(tried.values())
        print(f"\nfuzz: {total} bad inputs tried in {time.monotonic() - started:.0f} s")
        for kind, n in sorted(tried.items()):
            print(f"  {kind:34} {n}")
        print(f"  C-STORE answers: {answers} (data sets took {dataset_seconds:.0f} s)")
        assert total >= DATASET_EXAMPLES + SOCKET_EXAMPLES // 2

        # The node is alive and still does its job.
        assert node.proc is not None and node.proc.poll() is None
        echo = subprocess.run(
            ["echoscu", "-aec", "DEID_NODE", "127.0.0.1", str(node.port)],
            env=dcmtk_env(),
            capture_output=True,
            timeout=30,
        )
        assert echo.returncode == 0
        storescu(node.port, good)
        study_uid = str(dcmread(good[0]).StudyInstanceUID)

        def delivered() -> bool:
            return len(_audit(node, "--study", study_uid, "--kind", "forwarded")) == len(good)

        assert wait_until(delivered, timeout=120, interval=1), (
            _counts(node),
            node.log_text()[-3000:],
        )
        new_uids = {
            e["sop_uid_new"] for e in _audit(node, "--study", study_uid, "--kind", "deidentified")
        }
        assert len(new_uids) == len(good)
        found = [p for p in archive.files() if any(u in p.name for u in new_uids)]
        assert len(found) == len(good)
        for p in found:
            ds = dcmread(p)
            assert ds.PatientIdentityRemoved == "YES" and ds.PatientID != PHI.patient_id
            assert ds.StudyInstanceUID != study_uid
        counts = _counts(node)
        print(f"  queue afterwards: {counts}")
        log = node.log_text()
        assert "Traceback" not in log
        for value in (PHI.patient_id, "FUZZ^FELICITY", PHI.accession):
            assert value not in log
        bad_lines = []
        for line in log.splitlines():
            try:
                json.loads(line)
            except ValueError:
                bad_lines.append(line)
        assert not bad_lines, bad_lines[:5]
    finally:
        for s in sender:
            s.close()
        node.stop(signal.SIGKILL)
