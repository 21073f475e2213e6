"""The whole path with real peers: storescu -> deid-node -> storescp."""

from __future__ import annotations

import csv
import json
import signal
import stat
import subprocess
from datetime import date, datetime
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import DEID_NODE, Archive, NodeProcess, free_port, storescu, wait_until
from tests.studies import Phi

PHI = Phi()


def _read_all(paths: list[Path]) -> list:
    return [dcmread(p) for p in paths]


def _assert_deidentified(originals: list, outputs: list) -> None:
    assert len(outputs) == len(originals)
    by_pixels = {o.PixelData: o for o in originals}
    new_study = {o.StudyInstanceUID for o in outputs}
    assert len(new_study) == 1, "one study in, one study out"
    assert new_study.pop() != originals[0].StudyInstanceUID
    original_series = {o.SeriesInstanceUID for o in originals}
    new_series = {o.SeriesInstanceUID for o in outputs}
    assert len(new_series) == len(original_series)
    assert not new_series & original_series
    assert len({o.FrameOfReferenceUID for o in outputs}) == 1
    assert outputs[0].FrameOfReferenceUID != originals[0].FrameOfReferenceUID
    sops = {o.SOPInstanceUID for o in outputs}
    assert len(sops) == len(outputs)
    assert not sops & {o.SOPInstanceUID for o in originals}
    pseudonyms = {(str(o.PatientName), o.PatientID) for o in outputs}
    assert len(pseudonyms) == 1
    name, pid = pseudonyms.pop()
    assert pid and pid != PHI.patient_id and "VANDERBILT" not in name.upper()
    shift = {
        (
            date.fromisoformat(
                PHI.study_date[:4] + "-" + PHI.study_date[4:6] + "-" + PHI.study_date[6:]
            )
            - datetime.strptime(o.StudyDate, "%Y%m%d").date()
        ).days
        for o in outputs
    }
    assert len(shift) == 1, "one offset per patient"
    assert 1 <= shift.pop() <= 365
    for out in outputs:
        assert out.PatientIdentityRemoved == "YES"
        assert out.SOPClassUID == originals[0].SOPClassUID
        assert out.get("AccessionNumber", "") in ("", None)
        assert not any(el.tag.is_private for el in out)
        raw = out.PixelData
        assert raw in by_pixels, "pixel data must be byte-identical"
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        text = str(out)
        for value in (PHI.patient_id, "VANDERBILT", PHI.birth_date, PHI.accession, "OKONKWO"):
            assert value not in text


def test_study_arrives_deidentified(archive: Archive, make_node, study: list[Path]) -> None:
    node: NodeProcess = make_node(archive.port, workers=2)
    node.start()
    storescu(node.port, study)
    assert wait_until(lambda: len(archive.files()) == len(study), timeout=60), node.log_text()
    _assert_deidentified(_read_all(study), _read_all(archive.files()))

    # The audit log answers: when received, from which AE, when each was forwarded.
    original_study = dcmread(study[0]).StudyInstanceUID
    assert wait_until(
        lambda: (
            len(
                json.loads(
                    node.cli(
                        "audit", "--study", original_study, "--kind", "forwarded", "--json"
                    ).stdout
                )
            )
            == len(study)
        ),
        timeout=20,
    )
    events = json.loads(node.cli("audit", "--study", original_study, "--json").stdout)
    received = [e for e in events if e["kind"] == "received"]
    forwarded = [e for e in events if e["kind"] == "forwarded"]
    assert len(received) == len(study) and len(forwarded) == len(study)
    assert {e["calling_ae"] for e in received} == {"MODALITY"}
    assert {e["destination"] for e in forwarded} == {"research"}
    table = node.cli("audit", "--study", original_study).stdout
    assert "MODALITY" in table and "forwarded" in table

    # The same answer through the new study UID.
    new_study = dcmread(archive.files()[0]).StudyInstanceUID
    by_new = json.loads(node.cli("audit", "--study", new_study, "--json").stdout)
    assert len(by_new) == len(events)

    # Crosswalks for the curator.
    out = node.data_dir.parent / "uids.csv"
    node.cli("crosswalk", "uids", "-o", str(out))
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["id_old", "id_new"]
    assert [original_study, new_study] in rows[1:]
    assert len(rows) - 1 == 1 + 3 + len(study)  # study + series + instances
    node.cli("crosswalk", "patients", "-o", str(out))
    rows = list(csv.reader(out.open()))
    assert rows[1][0] == PHI.patient_id and rows[1][1] == dcmread(archive.files()[0]).PatientID

    # Nothing identifying in the operational log.
    log = node.log_text()
    assert log
    for value in (PHI.patient_id, "VANDERBILT", PHI.accession, original_study):
        assert value not in log
    for line in log.splitlines():
        json.loads(line)  # every line is a JSON object

    # Secrets and stores are owner-only.
    for name in ("uid.key", "audit.sqlite", "registry.sqlite", "queue.sqlite"):
        mode = stat.S_IMODE((node.data_dir / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is mode {mode:o}"


def test_restart_mid_queue_loses_nothing(tmp_path: Path, make_node, study: list[Path]) -> None:
    archive = Archive(port=free_port(), folder=tmp_path / "archive")  # not started yet
    node: NodeProcess = make_node(archive.port, workers=1)
    node.start()
    storescu(node.port, study)  # acknowledged; the archive is down, so jobs wait
    assert wait_until(lambda: "forward_retry" in node.log_text(), timeout=30)
    node.stop(signal.SIGKILL)  # a crash, with the queue full
    status = node.cli("status").stdout
    assert "forwarded      0" in status

    archive.start()
    try:
        node.start()
        assert wait_until(lambda: len(archive.files()) == len(study), timeout=60), node.log_text()[
            -3000:
        ]
        _assert_deidentified(_read_all(study), _read_all(archive.files()))
        assert wait_until(lambda: "forwarded      12" in node.cli("status").stdout, timeout=10)
        node.stop()
        # Delivered files leave the spool; nothing is left half-done.
        assert not list((node.data_dir / "spool").rglob("*.dcm"))
    finally:
        archive.stop()


def test_second_study_same_patient_keeps_pseudonym(
    tmp_path: Path, archive: Archive, make_node
) -> None:
    from tests.studies import make_study

    node: NodeProcess = make_node(archive.port)
    node.start()
    first = make_study(tmp_path / "a", series=1, per_series=2)
    storescu(node.port, first)
    assert wait_until(lambda: len(archive.files()) == 2)
    node.stop()
    node.start()  # a restart between the two studies
    second = make_study(tmp_path / "b", series=1, per_series=2, phi=Phi(study_date="20240610"))
    storescu(node.port, second)
    assert wait_until(lambda: len(archive.files()) == 4)
    outs = _read_all(archive.files())
    assert len({o.PatientID for o in outs}) == 1
    assert len({o.StudyInstanceUID for o in outs}) == 2
    dates = sorted(o.StudyDate for o in outs)
    gap = datetime.strptime(dates[-1], "%Y%m%d") - datetime.strptime(dates[0], "%Y%m%d")
    assert gap.days == (date(2024, 6, 10) - date(2024, 3, 5)).days, "intervals preserved"


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[node]\nport = "eleven"\n')
    result = subprocess.run(
        [*DEID_NODE, "serve", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "[node] port" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("status_check", ["echo"])
def test_echo(make_node, archive: Archive, status_check: str) -> None:
    node: NodeProcess = make_node(archive.port)
    node.start()
    result = subprocess.run(
        ["echoscu", "-aec", "DEID_NODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    wrong = subprocess.run(
        ["echoscu", "-aec", "SOMEONE_ELSE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode != 0, "a wrong called AE title must be rejected"


def test_workers_run_below_the_receiver(make_node, archive: Archive) -> None:
    """The worker processes run at a lower CPU priority than the receiving process."""
    import os

    from deid_node.pipeline.worker import WORKER_NICENESS

    node: NodeProcess = make_node(archive.port, workers=2)
    node.start()
    assert node.proc is not None
    main = os.getpriority(os.PRIO_PROCESS, node.proc.pid)
    children = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()
    workers = [
        int(pid)
        for pid in children
        if "multiprocessing-fork" in Path(f"/proc/{pid}/cmdline").read_text()
        and "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()
    ]
    assert len(workers) == 2
    for pid in workers:
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, main + WORKER_NICENESS)


def test_many_associations_at_once(tmp_path: Path, archive: Archive, make_node) -> None:
    """Four modalities send at the same time; every instance arrives once."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.studies import make_study

    node: NodeProcess = make_node(archive.port, workers=2)
    node.start()
    studies = [
        make_study(
            tmp_path / f"m{i}",
            series=2,
            per_series=5,
            phi=Phi(patient_id=f"MRN{i:08d}", name=f"PATIENT^NUMBER{i}"),
        )
        for i in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(lambda s: storescu(node.port, s[1], calling=f"MOD{s[0]}"), enumerate(studies))
        )
    total = sum(len(s) for s in studies)
    assert wait_until(lambda: len(archive.files()) == total, timeout=90), node.log_text()[-2000:]
    outputs = _read_all(archive.files())
    assert len({o.SOPInstanceUID for o in outputs}) == total
    assert len({o.PatientID for o in outputs}) == 4
    assert len({o.StudyInstanceUID for o in outputs}) == 4
    received = json.loads(node.cli("audit", "--kind", "received", "--json").stdout)
    assert {e["calling_ae"] for e in received} == {"MOD0", "MOD1", "MOD2", "MOD3"}


def test_longitudinal_through_two_restarts(tmp_path: Path, archive: Archive, make_node) -> None:
    """Two studies of one patient, months apart, with two restarts between them:
    same pseudonym, same date offset, and the later study's reference to an image
    of the earlier one points at that image's new UID."""
    from pydicom import dcmread as read
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from tests.studies import make_study

    node: NodeProcess = make_node(archive.port)
    node.start()
    first = make_study(tmp_path / "first", series=1, per_series=2)
    storescu(node.port, first)
    assert wait_until(lambda: len(archive.files()) == 2)
    for _ in range(2):  # two restarts between the studies
        node.stop()
        node.start()
    second = make_study(tmp_path / "second", series=1, per_series=2, phi=Phi(study_date="20240905"))
    earlier = read(first[0])
    for path in second:
        ds = read(path)
        ref = Dataset()
        ref.ReferencedSOPClassUID = earlier.SOPClassUID
        ref.ReferencedSOPInstanceUID = earlier.SOPInstanceUID
        ds.ReferencedImageSequence = Sequence([ref])
        ds.save_as(path, enforce_file_format=True)
    storescu(node.port, second)
    assert wait_until(lambda: len(archive.files()) == 4)
    outputs = _read_all(archive.files())
    assert len({o.PatientID for o in outputs}) == 1
    by_date = sorted(outputs, key=lambda o: o.StudyDate)
    gap = datetime.strptime(by_date[-1].StudyDate, "%Y%m%d") - datetime.strptime(
        by_date[0].StudyDate, "%Y%m%d"
    )
    assert gap.days == (date(2024, 9, 5) - date(2024, 3, 5)).days, "one offset for the patient"
    first_study = by_date[0].StudyInstanceUID
    new_uid_of_earlier = next(
        o.SOPInstanceUID
        for o in outputs
        if o.StudyInstanceUID == first_study and o.InstanceNumber == earlier.InstanceNumber
    )
    later = [o for o in outputs if o.StudyInstanceUID != first_study]
    assert len(later) == 2
    for o in later:
        assert o.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new_uid_of_earlier
