"""SIGTERM during a transfer: every instance the sender saw acknowledged survives.

storescu sends a large batch over one association; the node is stopped with
SIGTERM part-way. Whatever storescu logged as "Received Store Response
(Success)" must reach the archive once the node is started again; the rest
were refused (0xA700) or cut off, and storescu knows to send them again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
from pathlib import Path

from pydicom import dcmread

from tests.conftest import dcmtk_env, require_dcmtk, wait_until
from tests.studies import make_study


def _jobs(data_dir: Path) -> int:
    path = data_dir / "queue.sqlite"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])


def acknowledged(storescu_log: str) -> list[str]:
    """Files storescu saw stored: "Sending file: X" ... "Received Store Response (Success)"."""
    done, current = [], None
    for line in storescu_log.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def test_sigterm_mid_transfer_loses_no_acknowledged_instance(make_node, archive, tmp_path):  # type: ignore[no-untyped-def]
    require_dcmtk()
    files = make_study(tmp_path / "batch", series=4, per_series=75)  # 300 instances
    node = make_node(archive.port, workers=1)
    node.start()
    sender = subprocess.Popen(
        ["storescu", "-v", "-aet", "MODALITY", "-aec", "DEID_NODE", "127.0.0.1", str(node.port)]
        + [str(f) for f in files],
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_until(lambda: _jobs(node.data_dir) >= 40, 60, 0.02)
        started = time.monotonic()
        node.stop()  # SIGTERM, and wait for the process to exit
        stop_seconds = time.monotonic() - started
        out, _ = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(10)
    done = acknowledged(out)
    assert 40 <= len(done) < len(files), "the stop must land mid-transfer"
    # Refused once the node stops taking more (or cut off if it had to abort).
    assert "Refused: OutOfResources" in out or "Abort" in out or "Peer" in out
    assert stop_seconds < 30
    log = node.log_text()
    assert '"node_stopped"' in log

    node.start()  # the queue resumes where it was
    assert wait_until(lambda: len(archive.files()) >= len(done), 120), node.log_text()[-3000:]
    events = json.loads(node.cli("audit", "--kind", "received", "--json").stdout)
    received_uids = {e["sop_uid_old"] for e in events}
    for path in done:
        assert dcmread(path, stop_before_pixels=True).SOPInstanceUID in received_uids, path
    forwarded = json.loads(node.cli("audit", "--kind", "forwarded", "--json").stdout)
    assert len(forwarded) >= len(done)
