"""[forward] mode = "study" with real peers: storescu sends a study in bursts, and the
archive (DCMTK storescp, logging each association) receives nothing until the study
has been stable for stable_seconds, then all of it in one association; across a
crash of the node too. The grouping itself is unit-tested first."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread

from deid_node.pipeline.grouping import StudyGate
from deid_node.pipeline.queue import DEIDENTIFIED, Job
from tests.conftest import (
    NodeProcess,
    dcmtk_env,
    free_port,
    require_dcmtk,
    storescu,
    wait_for_port,
    wait_until,
)

# -- the gate -------------------------------------------------------------------------


def _job(job_id: int, study: str, at: float, dest: str = "a") -> Job:
    return Job(job_id, f"n{job_id}", DEIDENTIFIED, "AE", "1.2", "1.2", dest, at, 0, None, 0.0,
               study_uid=study)  # fmt: skip


def test_gate_waits_for_the_last_arrival_of_each_study() -> None:
    gate = StudyGate(stable_seconds=10)
    gate.add(_job(1, "s1", 100.0))
    gate.add(_job(2, "s1", 105.0))
    gate.add(_job(3, "s2", 101.0))
    gate.add(_job(4, "s1", 103.0, dest="b"))  # same study, other destination: own group
    assert gate.take_stable(110.0, None) == []
    assert gate.next_due(110.0) == 1.0
    assert [[j.id for j in g] for g in gate.take_stable(113.5, None)] == [[3], [4]]
    assert gate.take_stable(114.9, None) == []
    assert [[j.id for j in g] for g in gate.take_stable(115.0, None)] == [[1, 2]]
    assert gate.next_due(115.0) is None and len(gate) == 0


def test_gate_holds_a_study_while_an_earlier_arrival_is_not_deidentified() -> None:
    gate = StudyGate(stable_seconds=10)
    gate.add(_job(1, "s1", 100.0))
    # A job received at 104 is still being de-identified: it may belong to s1.
    assert gate.take_stable(120.0, pending_since=104.0) == []
    assert gate.next_due(120.0) is None, "its result wakes the dispatcher, not a timer"
    # One received after s1 was already stable would form a new group anyway.
    assert len(gate.take_stable(120.0, pending_since=110.0)) == 1


# -- real peers -------------------------------------------------------------------------


@dataclass
class LoggingArchive:
    """storescp in one process (no --fork), verbose: its log shows each association
    it acknowledges (a bare TCP connection, like a port probe, logs only "Received")."""

    port: int
    folder: Path
    log_path: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> None:
        require_dcmtk()
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        proc = subprocess.Popen(
            ["storescp", "-v", "-aet", "RESEARCH_PACS", "-od", str(self.folder), "+xa",
             "+uf", str(self.port)],
            env=dcmtk_env(), stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        wait_for_port(self.port, proc=proc)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def associations(self) -> int:
        return self.log_path.read_text(errors="replace").count("Association Acknowledged")


@pytest.fixture
def logging_archive(tmp_path: Path) -> Iterator[LoggingArchive]:
    a = LoggingArchive(free_port(), tmp_path / "archive", tmp_path / "storescp.log")
    a.start()
    yield a
    a.stop()


def _study_node(make_node, archive_port: int, stable: float) -> NodeProcess:
    forward = f"""\
mode = "study"
stable_seconds = {stable}
retry_initial_seconds = 0.2
retry_max_seconds = 1
idle_release_seconds = 1
connect_timeout_seconds = 3"""
    node: NodeProcess = make_node(archive_port, forward=forward)
    return node


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_study_sent_once_stable_in_one_association(
    make_node, logging_archive: LoggingArchive, study: list[Path]
) -> None:
    archive = logging_archive
    stable = 4.0
    node = _study_node(make_node, archive.port, stable)
    node.start()
    assert node.proc is not None
    storescu(node.port, study[:5])
    time.sleep(stable / 2)  # a pause shorter than stable_seconds
    storescu(node.port, study[5:11])
    last_sent = time.monotonic()
    cpu_before = _cpu_seconds(node.proc.pid)
    time.sleep(stable - 1.0)
    cpu_idle = _cpu_seconds(node.proc.pid) - cpu_before
    assert archive.files() == [], "nothing before the study is stable"
    assert archive.associations() == 0
    assert wait_until(lambda: len(archive.files()) >= 11, timeout=30), node.log_text()[-3000:]
    waited = time.monotonic() - last_sent
    assert waited >= stable - 0.5, waited
    time.sleep(0.5)
    assert len(archive.files()) == 11
    assert archive.associations() == 1, "the whole study in one association"
    assert len({dcmread(p).StudyInstanceUID for p in archive.files()}) == 1
    # Waiting is a timer, not a poll: the node process is nearly idle meanwhile.
    print(f"node CPU while holding the study for {stable - 1.0:.0f} s: {cpu_idle:.2f} s")
    assert cpu_idle < 0.5 * (stable - 1.0), cpu_idle

    # An instance of the study that comes after it was sent: a new group, sent on its own.
    storescu(node.port, study[11:])
    time.sleep(stable / 2)
    assert len(archive.files()) == 11
    assert wait_until(lambda: len(archive.files()) == 12, timeout=30)
    assert archive.associations() == 2
    counts = node.cli("status").stdout.split()
    assert counts[counts.index("forwarded") + 1] == "12"


def test_study_grouping_survives_a_crash(
    make_node, logging_archive: LoggingArchive, study: list[Path]
) -> None:
    """Killed (SIGKILL) while holding the study, restarted: the study's clock runs
    on from its last arrival (received_at in the queue), and it still goes out whole."""
    archive = logging_archive
    stable = 8.0
    node = _study_node(make_node, archive.port, stable)
    node.start()
    storescu(node.port, study[:6])
    time.sleep(1.0)
    storescu(node.port, study[6:])
    last_sent = time.monotonic()
    node.stop(signal.SIGKILL)
    time.sleep(2.0)  # down for a while, as after a real crash
    node.start()
    restarted = time.monotonic() - last_sent
    if restarted < stable - 1.0:  # a slow restart leaves no window to look into
        assert archive.files() == []
    assert wait_until(lambda: len(archive.files()) >= len(study), timeout=40), node.log_text()[
        -3000:
    ]
    waited = time.monotonic() - last_sent
    assert waited >= stable - 0.5, waited
    # The clock ran on from the last arrival: a clock restarted with the node would
    # not have sent before restarted + stable.
    assert waited < restarted + stable - 1.0, (waited, restarted)
    time.sleep(0.5)
    assert len(archive.files()) == len(study)
    assert archive.associations() == 1
