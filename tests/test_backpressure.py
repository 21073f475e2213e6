"""Back-pressure and the association limit, against the running node.

The sender here is a pynetdicom SCU (a real peer on the network), because the
tests read the status and ErrorComment of each C-STORE response.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from deid_node.pipeline.backpressure import DISK_FULL, QUEUE_FULL, Backpressure
from deid_node.security_config import Limits
from tests.conftest import Archive, free_port, wait_until


def _sender() -> AE:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def store_all(port: int, files: list[Path]) -> list[tuple[int, str]]:
    """(status, ErrorComment) of each C-STORE, over one association."""
    assoc = _sender().associate("127.0.0.1", port, ae_title="DEID_NODE")
    assert assoc.is_established
    answers = []
    try:
        for f in files:
            rsp = assoc.send_c_store(dcmread(f))
            answers.append((int(rsp.Status), str(rsp.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return answers


def _jobs(data_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(data_dir / "queue.sqlite")) as db:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])


def test_queue_depth_limit_refuses_with_a_700_and_resumes_when_the_queue_drains(
    make_node, tmp_path, study
):  # type: ignore[no-untyped-def]
    archive = Archive(port=free_port(), folder=tmp_path / "late-archive")  # not started yet
    node = make_node(archive.port, extra="[limits]\nmax_queue_depth = 3\n")
    node.start()
    try:
        answers = store_all(node.port, study[:5])
        assert [s for s, _ in answers] == [0, 0, 0, 0xA700, 0xA700]
        assert answers[3][1] == QUEUE_FULL
        assert '"reception_refused"' in node.log_text()
        assert _jobs(node.data_dir) == 3, "a refused instance is not queued"

        archive.start()  # the queue drains; reception resumes by itself
        assert wait_until(lambda: len(archive.files()) == 3, 60), node.log_text()[-2000:]
        assert wait_until(lambda: store_all(node.port, study[5:6]) == [(0, "")], 30)
        assert '"reception_resumed"' in node.log_text()
        assert wait_until(lambda: len(archive.files()) == 4, 60)
    finally:
        archive.stop()


def test_disk_floor_refuses_every_store_but_the_node_keeps_answering(make_node, archive, study):  # type: ignore[no-untyped-def]
    # A floor no disk meets: every C-STORE is refused; nothing is written.
    node = make_node(archive.port, extra="[limits]\nmin_free_disk_mb = 1000000000\n")
    node.start()
    answers = store_all(node.port, study[:2])
    assert answers == [(0xA700, DISK_FULL), (0xA700, DISK_FULL)]
    assert not list((node.data_dir / "spool" / "incoming").glob("*.dcm"))
    assert _jobs(node.data_dir) == 0
    assoc = _sender().associate("127.0.0.1", node.port, ae_title="DEID_NODE")
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    assert node.proc.poll() is None


def test_association_over_max_associations_is_rejected_and_later_ones_get_in(make_node, archive):  # type: ignore[no-untyped-def]
    node = make_node(archive.port, extra="")
    text = node.config_path.read_text().replace("workers = 1", "workers = 1\nmax_associations = 2")
    node.config_path.write_text(text)
    node.start()
    ae = _sender()
    # The start-up port probe (a connection that never asked for an association)
    # holds a slot until the node's ACSE timeout (10 s): take the two slots as
    # they come free.
    held = []
    deadline = time.monotonic() + 20
    while len(held) < 2 and time.monotonic() < deadline:
        a = ae.associate("127.0.0.1", node.port, ae_title="DEID_NODE")
        if a.is_established:
            held.append(a)
        else:
            time.sleep(0.5)
    assert len(held) == 2
    extra = ae.associate("127.0.0.1", node.port, ae_title="DEID_NODE")
    try:
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        # rejected-transient, service provider (presentation), local limit exceeded
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        if extra.is_established:
            extra.release()
    held[0].release()
    time.sleep(0.2)
    again = ae.associate("127.0.0.1", node.port, ae_title="DEID_NODE")
    assert again.is_established
    assert int(again.send_c_echo().Status) == 0
    again.release()
    held[1].release()


# -- the counter and the cache ---------------------------------------------------------


def test_queue_depth_counter(tmp_path: Path) -> None:
    bp = Backpressure(Limits(min_free_disk_mb=0, max_queue_depth=2), tmp_path)
    assert bp.refusal() is None
    bp.added(2)
    assert bp.refusal() == QUEUE_FULL
    bp.removed()
    assert bp.refusal() is None
    bp.removed(5)
    assert bp.queue_depth == 0  # never negative
    bp.reset_depth(7)
    assert bp.refusal() == QUEUE_FULL
    assert bp.refused == 2


def test_free_disk_is_read_at_most_once_a_second(tmp_path: Path) -> None:
    bp = Backpressure(Limits(min_free_disk_mb=1, max_queue_depth=0), tmp_path)
    first = bp.free_disk_mb()
    (tmp_path / "big").write_bytes(b"\0" * 8_000_000)
    assert bp.free_disk_mb() == first  # cached
    assert bp.refusal() is None
    huge = Backpressure(Limits(min_free_disk_mb=10**9, max_queue_depth=0), tmp_path)
    assert huge.refusal() == DISK_FULL
