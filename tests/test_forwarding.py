"""Forwarding with real peers: a destination that is down and comes back, one that
refuses every instance, one that takes only Implicit VR Little Endian, and bad input
from the sending side. storescu is the modality, `deid-node serve` runs as its own
process, the destinations are DCMTK storescp or a pynetdicom Storage SCP served from a
thread of this test process."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.conftest import (
    Archive,
    NodeProcess,
    dcmtk_env,
    free_port,
    storescu,
    wait_until,
    write_config,
)
from tests.studies import Phi, make_study

FAST_RETRY = """\
retry_initial_seconds = 0.2
retry_max_seconds = 1
idle_release_seconds = 1
connect_timeout_seconds = 3"""

PHI = Phi()


class StoreSCP:
    """A pynetdicom Storage SCP for CT images, answering every C-STORE with ``status``."""

    def __init__(
        self,
        *,
        status: int = 0x0000,
        comment: str = "",
        transfer_syntaxes: list[str] | None = None,
        ae_title: str = "RESEARCH_PACS",
    ) -> None:
        self.port = free_port()
        self.status = status
        self.comment = comment
        self.received: list[tuple[Dataset, str]] = []
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_pdu_size = 0
        syntaxes = transfer_syntaxes or [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        self.ae.add_supported_context(CTImageStorage, syntaxes)
        self.ae.add_supported_context(Verification)
        self.server = None

    def _on_store(self, event: evt.Event) -> int | Dataset:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append((ds, str(event.context.transfer_syntax)))
        if self.status == 0x0000:
            return 0x0000
        rsp = Dataset()
        rsp.Status = self.status
        rsp.ErrorComment = self.comment
        return rsp

    def count(self) -> int:
        with self._lock:
            return len(self.received)

    def start(self) -> None:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture
def store_scp() -> Iterator:
    started: list[StoreSCP] = []

    def factory(**kw) -> StoreSCP:  # type: ignore[no-untyped-def]
        scp = StoreSCP(**kw)
        scp.start()
        started.append(scp)
        return scp

    yield factory
    for scp in started:
        scp.stop()


def _log_events(node: NodeProcess, name: str) -> list[dict]:
    found = []
    for line in node.log_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == name:
                found.append(record)
    return found


def _status(node: NodeProcess) -> dict[str, int]:
    """Job counts by state, as `deid-node status` prints them."""
    out = node.cli("status").stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()}


def _counts(node: NodeProcess) -> dict[str, int]:
    """The same counts read directly (read-only) from the queue: cheap enough to poll."""
    path = node.data_dir / "queue.sqlite"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        conn.close()
    found = dict(rows)
    return {s: found.get(s, 0) for s in ("received", "deidentified", "forwarded", "quarantined")}


def _audit(node: NodeProcess, *args: str) -> list[dict]:
    return json.loads(node.cli("audit", "--json", *args).stdout)


def _echo(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["echoscu", "-aec", "DEID_NODE", "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


# -- a) destination down, then up ------------------------------------------------------------


def test_destination_down_then_up(tmp_path: Path, make_node, study: list[Path]) -> None:
    archive = Archive(port=free_port(), folder=tmp_path / "archive", unique_filenames=True)
    node: NodeProcess = make_node(archive.port, forward=FAST_RETRY)
    node.start()
    try:
        storescu(node.port, study)  # acknowledged although nothing listens downstream

        def retried_enough() -> bool:
            return max((r["attempt"] for r in _log_events(node, "forward_retry")), default=0) >= 4

        assert wait_until(retried_enough, timeout=30), node.log_text()[-3000:]
        retries = _log_events(node, "forward_retry")
        delays: dict[int, list[float]] = defaultdict(list)
        for r in retries:
            assert r["destination"] == "research"
            assert r["reason"].startswith("research: association")
            delays[r["attempt"]].append(r["delay_seconds"])
        # Backoff doubles from 0.2 s (with up to 20 % jitter downwards) and stops at 1 s.
        assert max(delays[1]) < min(delays[2])
        assert max(delays[2]) < min(delays[3])
        assert max(delays[3]) <= min(delays[4])
        assert all(0.16 <= d <= 1.0 for ds in delays.values() for d in ds), delays
        assert all(d >= 0.8 for d in delays[4]), "capped near retry_max_seconds"

        counts = _status(node)
        assert counts == {
            "received": 0,
            "deidentified": len(study),
            "forwarded": 0,
            "quarantined": 0,
        }
        assert len(list((node.data_dir / "spool" / "outgoing").glob("*.dcm"))) == len(study)

        archive.start()
        arrived = wait_until(lambda: len(archive.files()) >= len(study), timeout=30)
        assert arrived, node.log_text()[-3000:]
        assert wait_until(lambda: _counts(node).get("forwarded") == len(study), timeout=20)
        time.sleep(1.5)  # time for a duplicate delivery to show, if there were one
        received = [dcmread(p) for p in archive.files()]
        assert len(received) == len(study), "each instance exactly once"
        assert len({ds.SOPInstanceUID for ds in received}) == len(study)
        assert {ds.PixelData for ds in received} == {dcmread(p).PixelData for p in study}
        assert _status(node) == {
            "received": 0,
            "deidentified": 0,
            "forwarded": len(study),
            "quarantined": 0,
        }
        assert not list((node.data_dir / "spool").rglob("*.dcm"))

        retry_events = _audit(node, "--kind", "retry")
        assert retry_events
        assert {e["kind"] for e in retry_events} == {"retry"}
        assert {e["destination"] for e in retry_events} == {"research"}
        assert all(e["detail"].startswith("research: association") for e in retry_events)
        job_ids = {e["job_id"] for e in retry_events}
        assert len(job_ids) == len(study), "every waiting job has its retries on record"
        forwarded = _audit(node, "--kind", "forwarded")
        assert sorted(e["job_id"] for e in forwarded) == sorted(job_ids), "forwarded once each"
        for line in node.log_text().splitlines():
            json.loads(line)  # the workers' lines (destination_unavailable) are JSON too
    finally:
        node.stop(signal.SIGKILL)
        archive.stop()


# -- b) destination refuses every instance -----------------------------------------------------


def test_failure_status_quarantines(
    tmp_path: Path, make_node, store_scp, study: list[Path]
) -> None:
    scp = store_scp(status=0xA900, comment="Data Set does not match SOP Class")
    node: NodeProcess = make_node(scp.port, forward=FAST_RETRY)
    node.start()
    try:
        storescu(node.port, study)
        assert wait_until(lambda: _counts(node).get("quarantined") == len(study), timeout=30), (
            node.log_text()[-3000:]
        )
        assert _status(node) == {
            "received": 0,
            "deidentified": 0,
            "forwarded": 0,
            "quarantined": len(study),
        }
        # A status that retrying cannot fix is not retried.
        assert scp.count() == len(study)
        assert not _log_events(node, "forward_retry")

        kept = sorted((node.data_dir / "quarantine").glob("*.dcm"))
        assert len(kept) == len(study), "quarantined files are kept, not lost"
        assert not list((node.data_dir / "spool").rglob("*.dcm"))
        sent_uids = {ds.SOPInstanceUID for ds, _ in scp.received}
        assert {dcmread(p).SOPInstanceUID for p in kept} == sent_uids, "the de-identified files"

        events = _audit(node, "--kind", "quarantined")
        assert len(events) == len(study)
        assert len({e["job_id"] for e in events}) == len(study)
        for e in events:
            assert "0xA900" in e["detail"], e
            assert "Data Set does not match SOP Class" in e["detail"]

        # The node is still up and answering.
        result = _echo(node.port)
        assert result.returncode == 0, result.stderr
        assert node.proc is not None and node.proc.poll() is None
    finally:
        node.stop(signal.SIGKILL)


# -- c) destination that takes only Implicit VR Little Endian ---------------------------------


def test_implicit_vr_only_destination(
    tmp_path: Path, make_node, store_scp, study: list[Path]
) -> None:
    assert {str(dcmread(p).file_meta.TransferSyntaxUID) for p in study} == {ExplicitVRLittleEndian}
    scp = store_scp(transfer_syntaxes=[ImplicitVRLittleEndian])
    node: NodeProcess = make_node(scp.port, forward=FAST_RETRY)
    node.start()
    try:
        storescu(node.port, study)
        assert wait_until(lambda: scp.count() >= len(study), timeout=30), node.log_text()[-3000:]
        assert wait_until(lambda: _counts(node).get("forwarded") == len(study), timeout=20), (
            _counts(node),
            node.log_text()[-3000:],
        )
    finally:
        node.stop()
    assert scp.count() == len(study)
    assert {ts for _, ts in scp.received} == {ImplicitVRLittleEndian}
    received = {ds.SOPInstanceUID: ds for ds, _ in scp.received}
    assert len(received) == len(study)
    originals = [dcmread(p) for p in study]
    assert {ds.PixelData for ds in received.values()} == {o.PixelData for o in originals}

    # The same files de-identified by the batch command, with the node's configuration
    # (same key, same registry), are what the destination must have received.
    out = tmp_path / "expected"
    result = node.cli("deidentify", str(study[0].parent), "-o", str(out), "-q", "-j", "1")
    assert "12 de-identified, 0 skipped" in result.stdout, result.stderr
    expected = {p.stem: dcmread(p) for p in out.glob("*.dcm")}
    assert set(expected) == set(received)
    for uid, want in expected.items():
        got = received[uid]
        assert [e.tag for e in got] == [e.tag for e in want]
        for elem in want:
            assert got[elem.tag].value == elem.value, (uid, elem.tag, elem.keyword)
        assert got.PatientID != PHI.patient_id


# -- d) bad input to the SCP -------------------------------------------------------------------


def _send_raw(port: int, path: Path) -> Dataset | None:
    """Send a file's dataset bytes exactly as they are on disk (no parsing), like a
    sender whose file was cut short; return the C-STORE response status dataset."""
    ae = AE(ae_title="BROKEN_SENDER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="DEID_NODE")
        assert assoc.is_established
        try:
            return assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        ae.shutdown()


def _ct_file(path: Path, size: int) -> Path:
    """One synthetic CT instance with ``size`` x ``size`` 16-bit pixels."""
    ds = dcmread(make_study(path.parent / f"{path.stem}-src", series=1, per_series=1)[0])
    ds.Rows = ds.Columns = size
    ds.PixelData = bytes(range(256)) * (size * size * 2 // 256)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_bad_input_is_quarantined_not_lost(tmp_path: Path, make_node, archive: Archive) -> None:
    node: NodeProcess = make_node(archive.port, forward=FAST_RETRY)
    node.start()
    # Cut 1000 bytes off the end: of pixel data read with the header (128 x 128) and
    # of pixel data large enough to be read later, straight from the file (512 x 512).
    truncated = []
    for size in (128, 512):
        whole = _ct_file(tmp_path / f"whole{size}.dcm", size)
        cut = tmp_path / f"truncated{size}.dcm"
        cut.write_bytes(whole.read_bytes()[:-1000])
        truncated.append(cut)
    good = make_study(tmp_path / "good", series=1, per_series=1)[0]
    try:
        # A connection that never speaks DICOM (a port probe).
        with socket.create_connection(("127.0.0.1", node.port), timeout=5):
            pass

        # storescu reads the file before it sends: it gives up on the truncated one
        # and aborts the association. The node records nothing and carries on.
        result = subprocess.run(
            [
                "storescu",
                "-aet",
                "MODALITY",
                "-aec",
                "DEID_NODE",
                "127.0.0.1",
                str(node.port),
                str(truncated[0]),
            ],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        assert "premature end" in result.stderr.lower(), result.stderr

        # A sender that does put the truncated bytes on the wire.
        responses = [_send_raw(node.port, path) for path in truncated]
        for rsp in responses:
            assert rsp is not None and "Status" in rsp, "answered, one way or the other"
        acknowledged = sum(rsp.Status == 0x0000 for rsp in responses)
        for rsp in responses:
            if rsp.Status != 0x0000:  # refused: the sender knows, with a reason
                assert rsp.Status >= 0xA000 and rsp.get("ErrorComment"), rsp

        def settled() -> bool:
            counts = _counts(node)
            return counts["received"] == counts["deidentified"] == 0 and (
                counts["quarantined"] + counts["forwarded"] >= acknowledged
            )

        assert wait_until(settled, timeout=30), node.log_text()[-3000:]
        counts = _status(node)
        assert counts["forwarded"] == 0, "a truncated instance must never be forwarded"
        assert counts["quarantined"] == acknowledged, counts
        kept = sorted((node.data_dir / "quarantine").glob("*.dcm"))
        assert len(kept) == acknowledged, "every acknowledged instance is kept"
        events = _audit(node, "--kind", "quarantined", "--kind", "received")
        quarantined = [e for e in events if e["kind"] == "quarantined"]
        assert len(quarantined) == acknowledged
        for e in quarantined:
            assert e["detail"], e
            reasons = ("unreadable", "cannot de-identify", "cannot clean pixel data")
            assert any(w in e["detail"] for w in reasons), e
            received = [r for r in events if r["kind"] == "received" and r["job_id"] == e["job_id"]]
            assert [r["calling_ae"] for r in received] == ["BROKEN_SENDER"], "who sent it"
        assert not archive.files()

        # A good file afterwards goes through.
        storescu(node.port, [good])
        assert wait_until(lambda: len(archive.files()) == 1, timeout=30), node.log_text()[-3000:]
        assert dcmread(archive.files()[0]).PixelData == dcmread(good).PixelData
        assert wait_until(lambda: _counts(node)["forwarded"] == 1, timeout=10)
        assert _echo(node.port).returncode == 0

        # The node stops promptly: the probe holds no association open.
        started = time.monotonic()
        node.stop()
        assert time.monotonic() - started < 8, "stop waited on a connection that never spoke"
        log = node.log_text()
        assert "Traceback" not in log
        for line in log.splitlines():
            json.loads(line)  # workers log JSON lines too
    finally:
        node.stop(signal.SIGKILL)


# -- e) destination taken down in the middle of a transfer, then back --------------------------


def test_destination_outage_mid_transfer(tmp_path: Path, make_node) -> None:
    """The archive dies while instances stream through and comes back seconds later:
    everything acknowledged arrives, de-identified; the wait between retries grows;
    a re-sent identical instance is the only kind of duplicate allowed."""
    archive = Archive(port=free_port(), folder=tmp_path / "archive", unique_filenames=True)
    archive.start()
    # A send cut off by the archive's death can wait for its response up to the
    # DIMSE timeout: keep that short, as for a local archive.
    node: NodeProcess = make_node(archive.port, forward=FAST_RETRY + "\ndimse_timeout_seconds = 5")
    node.start()
    study = make_study(tmp_path / "big", series=4, per_series=40)
    sender = threading.Thread(target=storescu, args=(node.port, study))
    try:
        sender.start()
        assert wait_until(lambda: len(archive.files()) >= 15, timeout=60, interval=0.05)
        archive.stop()  # mid-transfer: storescp and its association children die
        down_at = len(archive.files())
        assert wait_until(
            lambda: max((r["attempt"] for r in _log_events(node, "forward_retry")), default=0) >= 4,
            timeout=60,
        ), node.log_text()[-3000:]
        sender.join(120)
        assert not sender.is_alive()  # the node kept acknowledging while the archive was down
        archive.start()
        assert wait_until(lambda: _counts(node).get("forwarded") == len(study), timeout=60), (
            _counts(node),
            node.log_text()[-3000:],
        )
        time.sleep(1.0)
        received = [dcmread(p, stop_before_pixels=True) for p in archive.files()]
        uids = [str(ds.SOPInstanceUID) for ds in received]
        assert len(set(uids)) == len(study), "every instance arrived"
        duplicates = len(uids) - len(set(uids))
        print(f"\noutage: {down_at} delivered before the archive went down, {duplicates} re-sent")
        assert duplicates <= 32, "only what was in flight (one batch) is sent again"
        by_uid: dict[str, list[Path]] = defaultdict(list)
        for p, uid in zip(archive.files(), uids, strict=True):
            by_uid[uid].append(p)
        for paths in by_uid.values():  # a duplicate is the same instance, identical
            first = dcmread(paths[0])
            assert all(dcmread(p) == first for p in paths[1:])
        assert all(ds.PatientIdentityRemoved == "YES" for ds in received)
        assert not {str(dcmread(p).SOPInstanceUID) for p in study} & set(uids)

        # Backoff in the JSON log: the wait grows with each attempt, up to the cap.
        delays: dict[int, list[float]] = defaultdict(list)
        for r in _log_events(node, "forward_retry"):
            delays[r["attempt"]].append(r["delay_seconds"])
        assert max(delays[1]) < min(delays[2]) and max(delays[2]) < min(delays[3]), delays
        assert all(d <= 1.0 for ds in delays.values() for d in ds)
        forwarded = _audit(node, "--kind", "forwarded")
        assert len(forwarded) == len({e["job_id"] for e in forwarded}) == len(study)
        assert _counts(node)["quarantined"] == 0
    finally:
        sender.join(60)
        node.stop(signal.SIGKILL)
        archive.stop()


def _two_received_instances(tmp_path: Path, archive: Archive) -> tuple:
    """A node's data folder (configuration, spool, registry) with two instances of one
    series received as ``job0`` and ``job1``: (config, spool, SOP class UID)."""
    import shutil

    from deid_node.config import load_config
    from deid_node.pipeline.node import prepare_data_dir
    from deid_node.registry.store import open_registry

    cfg = tmp_path / "node.toml"
    write_config(cfg, port=free_port(), archive_port=archive.port, data_dir=tmp_path / "data")
    config = load_config(cfg)
    spool = prepare_data_dir(config)
    open_registry(config.registry_url).dispose()
    files = make_study(tmp_path / "study", series=1, per_series=2)
    for i, path in enumerate(files):
        shutil.copy(path, spool.incoming / f"job{i}.dcm")
    return config, spool, str(dcmread(files[0]).SOPClassUID)


def test_streamed_output_waits_in_the_spool_only_when_not_delivered(
    tmp_path: Path, archive: Archive
) -> None:
    """The streaming task sends from memory: an instance the archive confirmed never
    lands in the outgoing spool; one it could not take waits there, whole, for its
    retry. The received file stays until the dispatcher records the outcome."""
    from deid_node.pipeline import worker

    config, spool, sop_class = _two_received_instances(tmp_path, archive)
    worker.init_worker(config)
    try:
        up = config.destinations[0]
        outcomes, sends = worker.deidentify_and_forward([(1, "job0", sop_class, "CT1")], (up,))
        assert outcomes[0].ok and [s.result for s in sends[up.name]] == ["forwarded"]
        assert not (spool.outgoing / "job0.dcm").exists()
        assert (spool.incoming / "job0.dcm").exists()
        assert len(archive.files()) == 1

        archive.stop()
        worker._state().forwarder.close()  # type: ignore[union-attr]
        worker._state().forwarder = None
        outcomes, sends = worker.deidentify_and_forward([(2, "job1", sop_class, "CT1")], (up,))
        assert outcomes[0].ok and [s.result for s in sends[up.name]] == ["retry"]
        waiting = dcmread(spool.outgoing / "job1.dcm")
        assert waiting.SOPInstanceUID == outcomes[0].sop_uid[1]
        assert not list(spool.outgoing.glob(".*.part"))
    finally:
        worker.shutdown_worker()


def test_streamed_outputs_beyond_the_memory_budget_go_through_the_spool(
    tmp_path: Path, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large instances are not held in memory: beyond the task's budget an output is
    written to the outgoing spool durably and sent from there (the dispatcher removes
    it once recorded as forwarded), one within it from memory."""
    from deid_node.pipeline import worker

    config, spool, sop_class = _two_received_instances(tmp_path, archive)
    monkeypatch.setattr(worker, "MEMORY_OUTPUT_BYTES", (spool.incoming / "job0.dcm").stat().st_size)
    worker.init_worker(config)
    try:
        up = config.destinations[0]
        jobs = [(1, "job0", sop_class, "CT1"), (2, "job1", sop_class, "CT1")]
        outcomes, sends = worker.deidentify_and_forward(jobs, (up,))
        assert all(o.ok for o in outcomes)
        assert [s.result for s in sends[up.name]] == ["forwarded", "forwarded"]
        assert len(archive.files()) == 2
        assert not (spool.outgoing / "job0.dcm").exists()  # sent from memory
        spooled = dcmread(spool.outgoing / "job1.dcm")  # over the budget: the spool
        assert spooled.SOPInstanceUID == outcomes[1].sop_uid[1]
        assert not list(spool.outgoing.glob(".*.part"))
    finally:
        worker.shutdown_worker()
