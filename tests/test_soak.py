"""Soak: thousands of instances while the node is SIGKILLed again and again.

Four storescu senders (one study each, 64x64 CT) send 2,000 instances; their
verbose logs say which files the node acknowledged. A killer thread SIGKILLs the
node's whole process group at random moments (fixed seed), at least ten times,
and restarts it on the same data_dir; senders re-send whatever was not
acknowledged. Afterwards every acknowledged instance must be at the archive
(storescp, files named by SOP Instance UID), under the new UID the registry's
crosswalk gives it, with PatientIdentityRemoved = YES. The test prints
acknowledged, delivered, quarantined, lost (must be 0) and kills.
"""

from __future__ import annotations

import csv
import io
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import Archive, NodeProcess, dcmtk_env, free_port, wait_until
from tests.studies import Phi, make_study
from tests.test_forwarding import FAST_RETRY, _counts

SENDERS = 4
PER_SENDER = 500
MIN_KILLS = 10
SEED = 20261122


def _make_files(folder: Path, sender: int) -> list[Path]:
    """PER_SENDER small instances of one study of one patient."""
    phi = Phi(name=f"SOAK^PATIENT{sender}", patient_id=f"SOAKMRN{sender:04d}")
    template = dcmread(make_study(folder / "template", series=1, per_series=1, phi=phi)[0])
    template.Rows = template.Columns = 64
    template.PixelData = bytes(64 * 64 * 2)
    paths = []
    for i in range(PER_SENDER):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = i + 1
        path = folder / f"i{i:04d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _send_once(port: int, files: list[Path], calling: str) -> set[Path]:
    """One storescu run; the files its log shows as acknowledged with Success."""
    result = subprocess.run(
        ["storescu", "-v", "-aet", calling, "-aec", "DEID_NODE", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    acked: set[Path] = set()
    current: Path | None = None
    for line in (result.stdout + result.stderr).splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.add(current)
            current = None
    return acked


@pytest.mark.slow
def test_soak_with_kills(tmp_path: Path, make_node) -> None:
    rng = random.Random(SEED)
    files = [_make_files(tmp_path / f"sender{s}", s) for s in range(SENDERS)]
    originals = {
        p: str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for fs in files for p in fs
    }
    archive = Archive(port=free_port(), folder=tmp_path / "archive")
    archive.start()
    node: NodeProcess = make_node(archive.port, forward=FAST_RETRY)
    node.start()
    acked: set[Path] = set()
    lock = threading.Lock()
    stop = threading.Event()
    kills = 0
    started = time.monotonic()

    def sender(s: int) -> None:
        pending = list(files[s])
        while pending and not stop.is_set():
            for i in range(0, len(pending), 100):
                done = _send_once(node.port, pending[i : i + 100], f"SOAK{s}")
                with lock:
                    acked.update(done)
            pending = [p for p in pending if p not in acked]
            if pending:
                time.sleep(0.3)  # the node is down: try again shortly

    def killer() -> None:
        nonlocal kills
        while not stop.is_set() and (kills < MIN_KILLS or len(acked) < len(originals) // 2):
            time.sleep(rng.uniform(0.5, 3.0))
            node.stop(signal.SIGKILL)
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))
            node.start()
            if kills >= 25:
                return

    threads = [threading.Thread(target=sender, args=(s,)) for s in range(SENDERS)]
    threads.append(threading.Thread(target=killer))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        stop.set()
        assert not any(t.is_alive() for t in threads), "senders did not finish"
        assert node.proc is not None and node.proc.poll() is None
        assert kills >= MIN_KILLS

        def uid_map() -> dict[str, str]:
            out = node.cli("crosswalk", "uids", "-o", "-").stdout
            return {r["id_old"]: r["id_new"] for r in csv.DictReader(io.StringIO(out))}

        def delivered_uids() -> set[str]:
            return {p.name.split(".", 1)[1] for p in archive.files() if "." in p.name}

        acked_uids = {originals[p] for p in acked}

        def all_there() -> bool:
            c = _counts(node)
            if c["received"] or c["deidentified"]:
                return False
            mapping = uid_map()
            return all(mapping.get(u) in delivered_uids() for u in acked_uids)

        wait_until(all_there, timeout=90, interval=2)
        mapping = uid_map()
        there = delivered_uids()
        delivered = {u for u in acked_uids if mapping.get(u) in there}
        lost = acked_uids - delivered
        counts = _counts(node)
        print(
            f"\nsoak: {len(originals)} instances, acknowledged {len(acked_uids)}, "
            f"delivered {len(delivered)}, quarantined {counts['quarantined']}, "
            f"lost {len(lost)}, kills {kills}, {time.monotonic() - started:.0f} s; "
            f"queue {counts}"
        )
        assert len(acked_uids) == len(originals), "the senders got every instance through"
        assert not lost
        assert counts["quarantined"] == 0
        # De-identified: new UIDs, no original UID at the archive, identity removed.
        assert not there & set(originals.values())
        assert len(there) == len(originals)
        for p in rng.sample(archive.files(), 50):
            ds = dcmread(p, stop_before_pixels=True)
            assert ds.PatientIdentityRemoved == "YES"
            assert not str(ds.PatientID).startswith("SOAKMRN")
        assert wait_until(lambda: not list((node.data_dir / "spool").rglob("*.dcm")), timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        node.stop(signal.SIGKILL)
        archive.stop()
