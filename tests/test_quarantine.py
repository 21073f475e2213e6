"""`deid-node quarantine list | show | retry | purge` against a running node.

Jobs are quarantined for real reasons at both stages: at de-identification
(a patient not in the pseudonym table) and at forwarding (a
destination that answers 0xA900). After the cause is fixed (the table imported,
the destination accepting), `retry` sends them back and the RUNNING node picks
them up by itself and delivers them; `purge` deletes files for good. Every step
is checked in the queue, the spool folders and the audit log.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from pydicom import dcmread

from tests.conftest import NodeProcess, storescu, wait_until
from tests.studies import Phi, make_study
from tests.test_forwarding import FAST_RETRY, StoreSCP, _audit, _counts

PATIENT_A = Phi(name="QUARANTINE^ALICE", patient_id="QMRN100200", accession="QACC1")
PATIENT_C = Phi(name="QUARANTINE^CLARA", patient_id="QMRN500600", accession="QACC3")
PATIENT_B = Phi(name="QUARANTINE^BORIS", patient_id="QMRN300400", accession="QACC2")


def _list(node: NodeProcess) -> list[dict]:
    return json.loads(node.cli("quarantine", "list", "--json").stdout)


def _table(path: Path, *patients: Phi) -> Path:
    rows = ["original_id,pseudonym"] + [
        f"{p.patient_id},PSEUDO-{p.patient_id[-6:]}" for p in patients
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def _job_state(node: NodeProcess, job_id: int) -> str:
    conn = sqlite3.connect(f"file:{node.data_dir / 'queue.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    finally:
        conn.close()


def test_quarantine_commands_with_running_node(tmp_path: Path, make_node) -> None:
    scp = StoreSCP(status=0xA900, comment="Data Set does not match SOP Class")
    scp.start()
    node: NodeProcess = make_node(
        scp.port, forward=FAST_RETRY, extra='[deid]\nunknown_patient = "quarantine"\n'
    )
    study_a = make_study(tmp_path / "a", series=1, per_series=3, phi=PATIENT_A)
    study_b = make_study(tmp_path / "b", series=1, per_series=2, phi=PATIENT_B)
    strays = [make_study(tmp_path / f"c{i}", series=1, per_series=1, phi=PATIENT_C) for i in (1, 2)]
    quarantine_dir = node.data_dir / "quarantine"
    try:
        # An empty queue lists nothing.
        node.start()
        assert node.cli("quarantine", "list").stdout.strip() == "no quarantined jobs"
        # B is in the pseudonym table, A is not.
        assert node.cli("pseudonyms", "import", str(_table(tmp_path / "b.csv", PATIENT_B)))
        storescu(node.port, study_a)
        storescu(node.port, study_b)
        assert wait_until(lambda: _counts(node).get("quarantined") == 5, timeout=30), (
            node.log_text()[-3000:]
        )
        assert scp.count() == 2, "B was sent once and refused"
        entries = _list(node)
        by_stage: dict[str, list[dict]] = {}
        for e in entries:
            by_stage.setdefault(e["stage"], []).append(e)
            assert e["file_exists"] and Path(e["file"]).parent == quarantine_dir
            assert e["calling_ae"] == "MODALITY" and e["received_at"] and e["quarantined_at"]
        assert len(by_stage["de-identification"]) == 3
        assert {e["reason"] for e in by_stage["de-identification"]} == {
            "patient not in the pseudonym table"
        }
        assert len(by_stage["forwarding"]) == 2
        for e in by_stage["forwarding"]:
            assert "0xA900" in e["reason"] and e["destination"] == "research"
        # The table names jobs and reasons; no identifier of either patient anywhere.
        table = node.cli("quarantine", "list").stdout
        text = table + json.dumps(entries)
        for phi in (PATIENT_A, PATIENT_B):
            for value in (phi.patient_id, "QUARANTINE", phi.accession, phi.birth_date):
                assert value not in text
        assert "patient not in the pseudonym table" in table

        one = by_stage["forwarding"][0]
        shown = node.cli("quarantine", "show", str(one["job"])).stdout
        for key in ("stage", "reason", "received_at", "quarantined_at", "file"):
            assert key in shown
        assert "forwarding" in shown and one["file"] in shown
        assert json.loads(node.cli("quarantine", "show", str(one["job"]), "--json").stdout) == one
        missing = node.cli("quarantine", "show", "99999", check=False)
        assert missing.returncode == 1 and "no job 99999" in missing.stderr

        # Fix both causes, then retry everything: the running node delivers all 5.
        assert node.cli("pseudonyms", "import", str(_table(tmp_path / "a.csv", PATIENT_A)))
        scp.status = 0x0000
        result = node.cli("quarantine", "retry", "--all")
        assert "5 of 5 jobs: retry done" in result.stdout, result.stdout + result.stderr
        assert not list(quarantine_dir.glob("*.dcm"))
        assert node.cli("quarantine", "list").stdout.strip() == "no quarantined jobs"
        assert wait_until(lambda: _counts(node).get("forwarded") == 5, timeout=30), (
            _counts(node),
            node.log_text()[-3000:],
        )
        assert wait_until(lambda: scp.count() == 2 + 5, timeout=10)
        delivered = [ds for ds, _ in scp.received[2:]]
        assert {str(ds.PatientID) for ds in delivered} == {
            f"PSEUDO-{PATIENT_A.patient_id[-6:]}",
            f"PSEUDO-{PATIENT_B.patient_id[-6:]}",
        }
        assert all(ds.PatientIdentityRemoved == "YES" for ds in delivered)
        released = _audit(node, "--kind", "released")
        assert sorted(e["job_id"] for e in released) == sorted(e["job"] for e in entries)
        details = {e["job_id"]: e["detail"] for e in released}
        for e in entries:
            want = "received" if e["stage"] == "de-identification" else "deidentified"
            assert details[e["job"]] == f"quarantine retry: back to {want}"

        # Retrying a job that is not quarantined is refused with a reason.
        again = node.cli("quarantine", "retry", str(one["job"]), check=False)
        assert again.returncode == 1 and "not quarantined (state forwarded)" in again.stderr
        usage = node.cli("quarantine", "retry", check=False)
        assert usage.returncode == 2 and "--all" in usage.stderr

        # Purge: an instance of a patient never enrolled, deleted for good.
        storescu(node.port, strays[0])
        assert wait_until(lambda: _counts(node).get("quarantined") == 1, timeout=30)
        (bad,) = _list(node)
        assert (
            bad["stage"] == "de-identification"
            and bad["reason"] == "patient not in the pseudonym table"
        )
        path = Path(bad["file"])
        assert path.exists()
        result = node.cli("quarantine", "purge", str(bad["job"]))
        assert f"job {bad['job']}: purged" in result.stdout
        assert not path.exists()
        assert _job_state(node, bad["job"]) == "purged"
        assert "purged         1" in node.cli("status").stdout
        purged = _audit(node, "--kind", "purged")
        assert [e["job_id"] for e in purged] == [bad["job"]]
        assert "de-identification" in purged[0]["detail"]
        twice = node.cli("quarantine", "purge", str(bad["job"]), check=False)
        assert twice.returncode == 1 and "not quarantined (state purged)" in twice.stderr

        # --older-than: nothing is 1 day old; everything is 0 days old.
        storescu(node.port, strays[1])
        assert wait_until(lambda: _counts(node).get("quarantined") == 1, timeout=30)
        assert "0 of 0 jobs" in node.cli("quarantine", "purge", "--older-than", "1").stdout
        assert len(_list(node)) == 1
        assert "1 of 1 jobs" in node.cli("quarantine", "purge", "--older-than", "0").stdout
        assert not _list(node) and not list(quarantine_dir.glob("*.dcm"))
        assert node.proc is not None and node.proc.poll() is None
    finally:
        node.stop(signal.SIGKILL)
        scp.stop()
    received = {str(dcmread(p).SOPInstanceUID) for p in study_a + study_b}
    assert not received & {str(ds.SOPInstanceUID) for ds, _ in scp.received}, "UIDs replaced"


def test_retry_cut_short_is_repaired_at_start(tmp_path: Path, make_node) -> None:
    """A retry that moved the file but never committed the state (a crash in
    between) leaves a quarantined job's file in the spool: the next start puts it
    back in quarantine/ instead of deleting it as a leftover."""
    scp = StoreSCP(status=0xA900, comment="refused")
    scp.start()
    node: NodeProcess = make_node(scp.port, forward=FAST_RETRY)
    study = make_study(tmp_path / "s", series=1, per_series=2)
    try:
        node.start()
        storescu(node.port, study)
        assert wait_until(lambda: _counts(node).get("quarantined") == 2, timeout=30)
        node.stop()
        kept = sorted((node.data_dir / "quarantine").glob("*.dcm"))
        assert len(kept) == 2
        # As if a retry had moved them and died before its commit.
        kept[0].rename(node.data_dir / "spool" / "outgoing" / kept[0].name)
        kept[1].rename(node.data_dir / "spool" / "incoming" / kept[1].name)
        node.start()
        assert sorted((node.data_dir / "quarantine").glob("*.dcm")) == kept
        assert not list((node.data_dir / "spool").rglob("*.dcm"))
        assert len(_list(node)) == 2 and all(e["file_exists"] for e in _list(node))
    finally:
        node.stop(signal.SIGKILL)
        scp.stop()
