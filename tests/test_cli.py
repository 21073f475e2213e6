"""The command line, run as an administrator runs it (`python -m deid_node ...`):
batch de-identification of corpus files, crosswalk export, audit queries, status."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3
import stat
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import CORPUS, DEID_NODE, NodeProcess, free_port, storescu, wait_until
from tests.studies import make_study

# 12 corpus files from 5 patients; one is Implicit VR, the rest Explicit VR.
PICK = {
    "292821506": 1,  # CR, implicit VR
    "339833062": 2,  # DX
    "9894340694": 4,  # MR
    "6670427471": 3,  # CT
    "8155012288": 2,  # CT
}


def run_cli(config: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DEID_NODE, *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or config.parent,
    )


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Original:
    path: Path
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    pixels_md5: str


@dataclass
class Batch:
    root: Path
    config: Path
    src: Path
    out: Path
    result: subprocess.CompletedProcess
    started: datetime
    finished: datetime
    originals: list[Original] = field(default_factory=list)


def _pick_corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    chosen = []
    for patient, count in PICK.items():
        files = sorted(CORPUS.glob(f"{patient}_*.dcm"))
        assert len(files) >= count, f"corpus lacks files of {patient}"
        chosen += files[:count]
    return chosen


def _write_config(root: Path, extra: str = "") -> Path:
    config = root / "node.toml"
    config.write_text(f'[node]\ndata_dir = "data"\nworkers = 2\nlog_level = "warning"\n{extra}')
    return config


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    root = tmp_path_factory.mktemp("cli")
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    originals = []
    for i, path in enumerate(_pick_corpus_files()):
        # Some in a subfolder: the source is searched recursively.
        dest = (src / "sub" if i % 4 == 0 else src) / path.name
        shutil.copyfile(path, dest)
        ds = dcmread(dest)
        originals.append(
            Original(
                dest,
                str(ds.PatientID),
                str(ds.PatientName),
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                _md5(ds.PixelData),
            )
        )
    (src / "sub" / "notes.txt").write_text("not a DICOM file\n")
    # The pixel pass is tested on its own (test_pixels.py); here outputs are matched to
    # their originals by the MD5 of their pixels, which it would change.
    config = _write_config(root)
    config.write_text(
        config.read_text()
        + '\n[deid]\noptions = ["Retain Longitudinal Temporal Information with Modified Dates"]\n'
    )
    started = datetime.now(UTC)
    result = run_cli(config, "deidentify", str(src), "-o", str(root / "out"), "-q")
    finished = datetime.now(UTC)
    return Batch(root, config, src, root / "out", result, started, finished, originals)


def _outputs(batch: Batch) -> dict[str, object]:
    """md5 of the pixel data -> output dataset (pixels pass through unchanged)."""
    return {_md5(dcmread(p).PixelData): dcmread(p) for p in batch.out.glob("*.dcm")}


# -- deidentify -------------------------------------------------------------------------------


def test_deidentify_writes_one_file_per_instance(batch: Batch) -> None:
    r = batch.result
    assert r.returncode == 0, r.stderr[-3000:]
    assert "12 de-identified, 1 skipped" in r.stdout
    # The non-DICOM file is reported by its path relative to the source, with a reason.
    report = r.stdout + r.stderr
    assert "skipped sub/notes.txt: unreadable DICOM" in report
    assert "Traceback" not in report

    files = sorted(batch.out.iterdir())
    assert len(files) == 12, [f.name for f in files]
    original_sops = {o.sop_uid for o in batch.originals}
    for path in files:
        assert path.suffix == ".dcm"
        ds = dcmread(path)
        assert path.stem == ds.SOPInstanceUID, "named after the new SOP Instance UID"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPInstanceUID not in original_sops
    assert len({p.stem for p in files}) == 12


def test_outputs_hold_no_original_identifiers(batch: Batch) -> None:
    needles: set[bytes] = set()
    for o in batch.originals:
        needles.add(o.patient_id.encode())
        needles.add(o.patient_name.encode())
        needles.update(part.encode() for part in o.patient_name.split("^") if len(part) >= 4)
        needles.update({o.study_uid.encode(), o.series_uid.encode(), o.sop_uid.encode()})
    for path in batch.out.glob("*.dcm"):
        data = path.read_bytes()
        found = [n.decode() for n in needles if n in data]
        assert not found, f"{path.name} still contains {found}"


def test_one_pseudonym_per_patient(batch: Batch) -> None:
    outputs = _outputs(batch)
    assert len(outputs) == 12, "every original's pixels are in exactly one output"
    by_patient: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for o in batch.originals:
        out = outputs[o.pixels_md5]
        by_patient[o.patient_id].add((str(out.PatientID), str(out.PatientName)))
        assert out.PatientIdentityRemoved == "YES"
        assert out.StudyInstanceUID != o.study_uid
    assert set(by_patient) == set(PICK)
    for patient, pseudonyms in by_patient.items():
        assert len(pseudonyms) == 1, f"patient {patient} got {pseudonyms}"
    all_ids = [next(iter(p))[0] for p in by_patient.values()]
    assert len(set(all_ids)) == len(PICK), "different patients, different pseudonyms"
    assert all(pid.startswith("DEID-") for pid in all_ids)


def test_strict_exits_1_when_a_file_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(_pick_corpus_files()[-1], src / "one.dcm")
    (src / "empty.dcm").write_bytes(b"")
    config = _write_config(tmp_path)
    strict = run_cli(
        config, "deidentify", str(src), "-o", str(tmp_path / "out"), "-q", "-j", "1", "--strict"
    )
    assert strict.returncode == 1, strict.stderr[-2000:]
    assert "1 de-identified, 1 skipped" in strict.stdout
    assert "skipped empty.dcm" in strict.stdout + strict.stderr
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 1
    assert not list((tmp_path / "out").glob(".*")), "no temporary files left"

    missing = run_cli(config, "deidentify", str(tmp_path / "nope"), "-o", str(tmp_path / "o2"))
    assert missing.returncode == 2
    assert "is not a folder" in missing.stderr and "Traceback" not in missing.stderr


# -- crosswalk ------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_crosswalks(batch: Batch) -> None:
    outputs = _outputs(batch)
    patients_csv = batch.root / "patients.csv"
    uids_csv = batch.root / "uids.csv"
    uids_csv.write_text("stale\n")
    uids_csv.chmod(0o644)  # an older, readable file is replaced and tightened
    for kind, path in (("patients", patients_csv), ("uids", uids_csv)):
        r = run_cli(batch.config, "crosswalk", kind, "-o", str(path))
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name} must be owner-only"

    rows = _read_csv(patients_csv)
    assert rows[0] == ["id_old", "id_new"]
    expected = {o.patient_id: str(outputs[o.pixels_md5].PatientID) for o in batch.originals}
    assert dict(rows[1:]) == expected
    assert len(rows) - 1 == len(PICK)

    rows = _read_csv(uids_csv)
    assert rows[0] == ["id_old", "id_new"]
    mapping = dict(rows[1:])
    assert len(mapping) == len(rows) - 1, "each original UID once"
    for o in batch.originals:
        out = outputs[o.pixels_md5]
        assert mapping[o.study_uid] == out.StudyInstanceUID
        assert mapping[o.series_uid] == out.SeriesInstanceUID
        assert mapping[o.sop_uid] == out.SOPInstanceUID
    levels = {o.study_uid for o in batch.originals} | {o.series_uid for o in batch.originals}
    assert len(mapping) == len(levels) + 12, "studies, series and instances only"
    assert "stale" not in uids_csv.read_text()

    # "-o -" writes the same CSV to stdout.
    r = run_cli(batch.config, "crosswalk", "patients", "-o", "-")
    assert r.returncode == 0
    assert list(csv.reader(r.stdout.splitlines())) == _read_csv(patients_csv)


# -- audit ----------------------------------------------------------------------------------


def _audit(batch: Batch, *args: str) -> list[dict]:
    r = run_cli(batch.config, "audit", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def all_events(batch: Batch) -> list[dict]:
    return _audit(batch)


def test_audit_lists_the_batch(batch: Batch, all_events: list[dict]) -> None:
    events = all_events
    assert len(events) == 12
    assert {e["kind"] for e in events} == {"deidentified"}
    assert {e["calling_ae"] for e in events} == {"(batch)"}
    assert {e["sop_uid_old"] for e in events} == {o.sop_uid for o in batch.originals}
    assert {e["sop_uid_new"] for e in events} == {p.stem for p in batch.out.glob("*.dcm")}
    assert {e["patient_id_old"] for e in events} == set(PICK)
    times = [datetime.fromisoformat(e["at"]).replace(tzinfo=UTC) for e in events]
    assert times == sorted(times), "oldest first"
    assert all(batch.started - timedelta(seconds=1) <= t <= batch.finished for t in times)


def test_audit_filters_by_patient_and_kind(batch: Batch, all_events: list[dict]) -> None:
    patient = "9894340694"
    pseudonym = next(e["patient_id_new"] for e in all_events if e["patient_id_old"] == patient)
    by_original = _audit(batch, "--patient", patient)
    assert len(by_original) == PICK[patient]
    assert {e["patient_id_old"] for e in by_original} == {patient}
    assert by_original == [e for e in all_events if e["patient_id_old"] == patient]
    by_pseudonym = _audit(batch, "--patient", pseudonym, "--kind", "deidentified")
    assert by_pseudonym == by_original
    study = next(o.study_uid for o in batch.originals if o.patient_id == patient)
    in_study = {o.sop_uid for o in batch.originals if o.study_uid == study}
    assert {e["sop_uid_old"] for e in _audit(batch, "--study", study)} == in_study

    assert _audit(batch, "--kind", "forwarded", "--kind", "quarantined") == []
    assert _audit(batch, "--patient", pseudonym, "--kind", "received") == []


def test_audit_filters_by_time(batch: Batch) -> None:
    before = batch.started - timedelta(minutes=1)
    after = batch.finished + timedelta(minutes=1)
    fmt = "%Y-%m-%dT%H:%M:%S"
    assert len(_audit(batch, "--since", before.strftime(fmt), "--until", after.strftime(fmt))) == 12
    assert _audit(batch, "--since", after.strftime(fmt)) == []
    assert _audit(batch, "--until", before.strftime(fmt)) == []
    # The same bounds written in other time zones mean the same instants.
    east = timezone(timedelta(hours=5, minutes=30))
    west = timezone(timedelta(hours=-7))
    since, until = before.astimezone(east).isoformat(), after.astimezone(west).isoformat()
    assert len(_audit(batch, "--since", since, "--until", until)) == 12
    assert _audit(batch, "--since", after.astimezone(west).isoformat()) == []


@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_audit_rejects_a_bad_time(batch: Batch, flag: str) -> None:
    r = run_cli(batch.config, "audit", flag, "last tuesday")
    assert r.returncode != 0
    assert "use ISO 8601" in r.stderr and "last tuesday" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_audit_table(batch: Batch) -> None:
    r = run_cli(batch.config, "audit", "--patient", "339833062")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["time", "(UTC)", "event"]
    assert len(lines) == 2 + PICK["339833062"]
    assert all("deidentified" in line and "(batch)" in line for line in lines[2:])


# -- status ---------------------------------------------------------------------------------


def _deidentified(data_dir: Path) -> int:
    """Jobs in state deidentified, read directly from the queue (cheap to poll)."""
    path = data_dir / "queue.sqlite"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        query = "SELECT COUNT(*) FROM jobs WHERE state = 'deidentified'"
        return int(conn.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_status_and_audit_before_and_after_the_node_runs(tmp_path: Path) -> None:
    port = free_port()
    config = _write_config(tmp_path, extra=f'host = "127.0.0.1"\nport = {port}\n').resolve()
    config.write_text(config.read_text().replace("workers = 2", "workers = 0"))
    r = run_cli(config, "status")
    assert r.returncode == 1 and "no queue" in r.stderr
    r = run_cli(config, "audit")
    assert r.returncode == 1 and "no audit store" in r.stderr

    # A node with no destination de-identifies and keeps the files waiting.
    node = NodeProcess(config, port, tmp_path / "data", tmp_path / "node.log")
    try:
        node.start()
        storescu(node.port, make_study(tmp_path / "study", series=1, per_series=3))
        assert wait_until(lambda: _deidentified(tmp_path / "data") == 3, timeout=30), (
            node.log_text()[-3000:]
        )
    finally:
        node.stop()
    r = run_cli(config, "status")
    assert r.returncode == 0, r.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in r.stdout.splitlines()}
    assert counts == {"received": 0, "deidentified": 3, "forwarded": 0, "quarantined": 0}
    kinds = [e["kind"] for e in json.loads(run_cli(config, "audit", "--json").stdout)]
    assert sorted(kinds) == ["deidentified"] * 3 + ["received"] * 3


def test_requests_stays_out_of_the_node_yet_importable() -> None:
    """Importing deid_node loads pydicom without requests (memory), and requests
    can still be imported afterwards (Presidio's stack may want it)."""
    import sys

    probe = (
        "import sys, deid_node, pydicom, pynetdicom; print('requests' in sys.modules);"
        " import requests; print(requests.get is not None)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.split() == ["False", "True"], out.stderr
