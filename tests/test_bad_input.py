"""Bad input on the receiving side, sent with crafted bytes over one association.

Each case gets a clear answer: a C-STORE failure status with an error comment
when the data set cannot be read (checked before acknowledging), or, for values
that are well framed but wrong for their VR, acknowledgement and then either
de-identification or quarantine with a reason. The association carries on after
every refusal, and a good instance sent last on the same association reaches the
archive de-identified.
"""

from __future__ import annotations

import copy
import json
import signal
import struct
from pathlib import Path

import pytest
from pydicom import config, dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from deid_node.network.checks import dataset_problem
from tests.conftest import Archive, NodeProcess, free_port, wait_until
from tests.crafted import RawSender, encode_body, write_crafted
from tests.studies import Phi, make_study
from tests.test_forwarding import FAST_RETRY, _audit, _counts, _log_events

PHI = Phi(name="BADINPUT^BEATRICE", patient_id="BADMRN5544", accession="BADACC77")
UNKNOWN_TS = "1.2.826.0.1.3680043.2.1143.999.42"


def _patch_rows_length(body: bytes) -> bytes:
    """Rows (0028,0010) US with 3 bytes: a length that breaks its VR."""
    head = b"\x28\x00\x10\x00US\x02\x00"
    i = body.index(head)
    return (
        body[:i] + b"\x28\x00\x10\x00US\x03\x00" + body[i + 8 : i + 10] + b"\x00" + body[i + 10 :]
    )


def _cases(base: Path) -> list[tuple[str, str, bytes, str]]:
    """(name, transfer syntax, data set bytes, expected): expected is the start of the
    ErrorComment of a refusal, or "ack" for an instance the node acknowledges."""
    ds = dcmread(base)
    good = encode_body(ds)
    no_class = copy.deepcopy(ds)
    del no_class.SOPClassUID
    no_instance = copy.deepcopy(ds)
    del no_instance.SOPInstanceUID
    empty_instance = copy.deepcopy(ds)
    empty_instance.SOPInstanceUID = ""
    bad_values = copy.deepcopy(ds)
    previous = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        bad_values.StudyDate = "NOTADATE"
        bad_values.PatientBirthDate = "19XX0101"
        bad_values.InstanceNumber = "123456"
        bad_values.SliceThickness = "1.2500"
        bad_values.StudyTime = "25:61:61"
        bad_values.SeriesInstanceUID = "not a uid"
        bad_body = encode_body(bad_values)
        # IS and DS objects cannot hold words: change the bytes instead.
        bad_body = bad_body.replace(b"IS\x06\x00123456", b"IS\x06\x00twelve")
        bad_body = bad_body.replace(b"DS\x06\x001.2500", b"DS\x06\x00thick!")
        assert b"twelve" in bad_body and b"thick!" in bad_body
    finally:
        config.settings.writing_validation_mode = previous
    open_seq = good + struct.pack("<HH2sHI", 0x0040, 0x0275, b"SQ", 0, 0xFFFFFFFF)
    open_seq += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    stray_item = struct.pack("<HHI", 0xFFFE, 0xE000, 4) + b"abcd" + good
    return [
        ("random bytes", ExplicitVRLittleEndian, bytes(range(256)) * 3, "element"),
        ("empty data set", ExplicitVRLittleEndian, b"", "data set has no SOP Class UID"),
        (
            "no SOP Class UID",
            ExplicitVRLittleEndian,
            encode_body(no_class),
            "data set has no SOP Class",
        ),
        (
            "no SOP Instance UID",
            ExplicitVRLittleEndian,
            encode_body(no_instance),
            "data set has no SOP Instance",
        ),
        (
            "empty SOP Instance UID",
            ExplicitVRLittleEndian,
            encode_body(empty_instance),
            "data set has no SOP Instance",
        ),
        (
            "truncated pixel data",
            ExplicitVRLittleEndian,
            good[:-1000],
            "element (7FE0,0010) runs past",
        ),
        ("cut inside the first value", ExplicitVRLittleEndian, good[:12], "element (0008,0005)"),
        ("cut inside an element header", ExplicitVRLittleEndian, good[:21], "data set ends inside"),
        (
            "US of 3 bytes",
            ExplicitVRLittleEndian,
            _patch_rows_length(good),
            "element (0028,0010) length 3",
        ),
        ("explicit bytes, implicit context", ImplicitVRLittleEndian, good, "element"),
        ("little endian bytes, big endian context", ExplicitVRBigEndian, good, "element"),
        (
            "deflated context, bytes not deflated",
            DeflatedExplicitVRLittleEndian,
            good,
            "deflated data set",
        ),
        (
            "sequence never closed",
            ExplicitVRLittleEndian,
            open_seq,
            "item of undefined length never",
        ),
        (
            "item where an element belongs",
            ExplicitVRLittleEndian,
            stray_item,
            "item tag (FFFE,E000)",
        ),
        ("values that break their VR", ExplicitVRLittleEndian, bad_body, "ack"),
        (
            "implicit VR, well formed",
            ImplicitVRLittleEndian,
            encode_body(ds, ImplicitVRLittleEndian),
            "ack",
        ),
    ]


def test_structural_check_accepts_the_corpus() -> None:
    """No false refusals: every file of the shared corpus passes the check."""
    from pynetdicom.dsutils import split_dataset

    from tests.conftest import CORPUS

    files = sorted(CORPUS.glob("*.dcm"))
    if not files:
        pytest.skip(f"corpus not found at {CORPUS}")
    for path in files:
        meta, offset = split_dataset(path)
        body = path.read_bytes()[offset:]
        assert dataset_problem(body, str(meta.TransferSyntaxUID)) is None, path.name


def test_bad_input_gets_a_clear_answer(tmp_path: Path, make_node) -> None:
    base = make_study(tmp_path / "base", series=1, per_series=1, phi=PHI)[0]
    archive = Archive(port=free_port(), folder=tmp_path / "archive", unique_filenames=True)
    archive.start()
    cases = _cases(base)
    node: NodeProcess = make_node(archive.port, forward=FAST_RETRY)
    node.start()
    syntaxes = [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ]
    sender = RawSender(node.port, [(CTImageStorage, ts) for ts in syntaxes])
    acked: list[str] = []
    try:
        assert sender.assoc.is_established
        for i, (name, ts, body, expected) in enumerate(cases):
            path = write_crafted(
                tmp_path / f"case{i}.dcm",
                body,
                sop_class=CTImageStorage,
                sop_instance=f"1.2.3.4.{i + 1}",
                transfer_syntax=ts,
            )
            rsp = sender.send(path)

            assert rsp is not None and "Status" in rsp, name
            if expected == "ack":
                assert rsp.Status == 0x0000, (name, rsp)
                acked.append(name)
            else:
                assert rsp.Status == 0xC000, (name, rsp)
                assert str(rsp.ErrorComment).startswith(expected), (name, rsp.ErrorComment)
            assert sender.assoc.is_established, f"association lost after {name}"
        # The same association still delivers a good instance.
        good = write_crafted(
            tmp_path / "good.dcm",
            encode_body(dcmread(base)),
            sop_class=CTImageStorage,
            sop_instance=str(dcmread(base).SOPInstanceUID),
            transfer_syntax=ExplicitVRLittleEndian,
        )
        assert sender.send(good).Status == 0x0000
    finally:
        sender.close()
    try:
        # A transfer syntax the node does not know: the context is refused at
        # association time, so the sender knows before it sends anything.
        unknown = RawSender(
            node.port,
            [
                (CTImageStorage, UNKNOWN_TS),
                (MRImageStorage, [UNKNOWN_TS, ExplicitVRLittleEndian]),
                (Verification, ImplicitVRLittleEndian),
            ],
        )
        try:
            assert unknown.assoc.is_established
            rejected = unknown.assoc.rejected_contexts
            assert [(cx.abstract_syntax, cx.result) for cx in rejected] == [(CTImageStorage, 0x04)]
            accepted = {
                cx.abstract_syntax: cx.transfer_syntax[0] for cx in unknown.assoc.accepted_contexts
            }
            assert accepted == {
                MRImageStorage: ExplicitVRLittleEndian,
                Verification: ImplicitVRLittleEndian,
            }
            with pytest.raises(ValueError, match="No presentation context"):
                unknown.send(base)
        finally:
            unknown.close()

        total = len(acked) + 1
        assert wait_until(
            lambda: (
                _counts(node).get("forwarded", 0) + _counts(node).get("quarantined", 0) == total
            ),
            timeout=30,
        ), (_counts(node), node.log_text()[-3000:])
        counts = _counts(node)
        assert counts["received"] == counts["deidentified"] == 0
        quarantined = _audit(node, "--kind", "quarantined")
        assert len(quarantined) == counts["quarantined"]
        for e in quarantined:
            assert e["detail"], e  # quarantined with a reason
        delivered = [dcmread(p) for p in archive.files()]
        assert len(delivered) == counts["forwarded"] >= 2  # implicit VR and the good one
        for ds in delivered:
            # A date that cannot be shifted is not passed on as it was.
            assert str(ds.StudyDate) != "NOTADATE" and str(ds.PatientBirthDate) != "19XX0101"
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.PatientID != PHI.patient_id
        refused = _log_events(node, "store_refused")
        assert len(refused) == len(cases) - len(acked)
        assert all(r["calling_ae"] == "CRAFTED" and r["reason"] for r in refused)
        log = node.log_text()
        for value in (PHI.patient_id, "BADINPUT", PHI.accession, "NOTADATE"):
            assert value not in log
        for line in log.splitlines():
            json.loads(line)
        assert node.proc is not None and node.proc.poll() is None, "the node carries on"
    finally:
        node.stop(signal.SIGKILL)
        archive.stop()
