"""Imported pseudonym tables (`deid-node pseudonyms import`) and `[deid] unknown_patient`,
run as an administrator runs them (`python -m deid_node ...`) on corpus files."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.conftest import CORPUS
from tests.test_cli import run_cli

# Two files each of three patients; the first two are in the imported table.
IMPORTED = {
    "339833062": ("RES-0001", "Subject^One", -10),
    "6670427471": ("RES-0002", "", None),  # name defaults to the pseudonym, offset drawn
}
NOT_IMPORTED = "8155012288"
UNKNOWN_REASON = "patient not in the pseudonym table"


def _table(path: Path) -> Path:
    lines = ["original_id,pseudonym,name,date_offset_days"]
    for original, (pseudo, name, offset) in IMPORTED.items():
        lines.append(f"{original},{pseudo},{name},{'' if offset is None else offset}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _setup(root: Path, extra: str = "") -> tuple[Path, Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    src = root / "src"
    src.mkdir()
    for patient in (*IMPORTED, NOT_IMPORTED):
        files = sorted(CORPUS.glob(f"{patient}_*.dcm"))[:2]
        assert len(files) == 2, f"corpus lacks files of {patient}"
        for f in files:
            shutil.copyfile(f, src / f.name)
    config = root / "node.toml"
    # Outputs are paired with their originals by pixels: no pixel pass here (it has
    # its own tests).
    options = 'options = ["Retain Longitudinal Temporal Information with Modified Dates"]\n'
    config.write_text(
        f'[node]\ndata_dir = "data"\nworkers = 1\nlog_level = "warning"\n[deid]\n{options}{extra}'
    )
    return config, src


def _registry_rows(config: Path) -> list[tuple[str, str, str, int]]:
    db = config.parent / "data" / "registry.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT original_id, pseudo_id, pseudo_name, date_offset_days FROM patients "
            "ORDER BY original_id"
        ).fetchall()


def _by_original(src: Path, out: Path) -> dict[str, list[tuple[object, object]]]:
    """Original patient ID -> [(original dataset, output dataset)], paired by pixels."""
    outputs = {dcmread(p).PixelData: dcmread(p) for p in out.glob("*.dcm")}
    pairs: dict[str, list[tuple[object, object]]] = {}
    for path in sorted(src.glob("*.dcm")):
        ds = dcmread(path)
        if ds.PixelData in outputs:
            pairs.setdefault(str(ds.PatientID), []).append((ds, outputs[ds.PixelData]))
    return pairs


def test_imported_pseudonyms_are_used(tmp_path: Path) -> None:
    config, src = _setup(tmp_path)
    r = run_cli(config, "pseudonyms", "import", str(_table(tmp_path / "table.csv")))
    assert r.returncode == 0, r.stderr
    assert "2 imported, 0 skipped" in r.stdout

    r = run_cli(config, "deidentify", str(src), "-o", str(tmp_path / "out"), "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "6 de-identified, 0 skipped" in r.stdout
    pairs = _by_original(src, tmp_path / "out")
    assert sorted(pairs) == sorted([*IMPORTED, NOT_IMPORTED])
    for original, (pseudo, name, offset) in IMPORTED.items():
        assert len(pairs[original]) == 2
        for before, after in pairs[original]:
            assert after.PatientID == pseudo
            assert str(after.PatientName) == (name or pseudo)
            if offset is not None and before.get("StudyDate"):
                shifted = datetime.strptime(before.StudyDate, "%Y%m%d") + timedelta(days=offset)
                assert after.StudyDate == shifted.strftime("%Y%m%d")
    # A patient not in the table gets a generated pseudonym ("generate", the default).
    for _, after in pairs[NOT_IMPORTED]:
        assert str(after.PatientID).startswith("DEID-")
    rows = _registry_rows(config)
    assert [row[:3] for row in rows if row[0] in IMPORTED] == [
        ("339833062", "RES-0001", "Subject^One"),
        ("6670427471", "RES-0002", "RES-0002"),
    ]
    drawn = next(row[3] for row in rows if row[0] == "6670427471")
    assert -365 <= drawn <= -1


def test_quarantine_unknown_patients(tmp_path: Path) -> None:
    config, src = _setup(tmp_path, 'unknown_patient = "quarantine"\n')
    r = run_cli(config, "pseudonyms", "import", str(_table(tmp_path / "table.csv")))
    assert r.returncode == 0, r.stderr

    r = run_cli(config, "deidentify", str(src), "-o", str(tmp_path / "out"), "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 de-identified, 2 skipped" in r.stdout
    report = r.stdout + r.stderr
    for path in src.glob(f"{NOT_IMPORTED}_*.dcm"):
        assert f"skipped {path.name}: {UNKNOWN_REASON}" in report
    assert "Traceback" not in report

    pairs = _by_original(src, tmp_path / "out")
    assert sorted(pairs) == sorted(IMPORTED)
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 4
    for original, (pseudo, _, _) in IMPORTED.items():
        assert all(after.PatientID == pseudo for _, after in pairs[original])
    # The unknown patient was not added to the registry.
    assert [row[0] for row in _registry_rows(config)] == sorted(IMPORTED)

    r = run_cli(config, "deidentify", str(src), "-o", str(tmp_path / "out2"), "-q", "--strict")
    assert r.returncode == 1


def test_bad_table_is_refused_whole(tmp_path: Path) -> None:
    config, _ = _setup(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "original_id,pseudonym,name,date_offset_days\n"
        "SECRET-A,RES-1,,\n"  # line 2: fine
        "SECRET-B,,,\n"  # line 3: empty pseudonym
        "SECRET-A,RES-3,,\n"  # line 4: original ID repeats line 2
        "SECRET-C,RES-1,,\n"  # line 5: pseudonym repeats line 2
        f"SECRET-D,{'X' * 65},,\n"  # line 6: pseudonym too long
        "SECRET-E,RES-6,,ten\n"  # line 7: offset not an integer
        ",RES-7,,\n"  # line 8: empty original ID
    )
    r = run_cli(config, "pseudonyms", "import", str(bad))
    assert r.returncode == 2
    for line, words in (
        (3, "pseudonym is empty"),
        (4, "original_id repeats line 2"),
        (5, "pseudonym repeats line 2"),
        (6, "longer than 64"),
        (7, "not an integer"),
        (8, "original_id is empty"),
    ):
        assert f"line {line}: " in r.stderr and words in r.stderr, r.stderr
    assert "line 2:" not in r.stderr
    assert "SECRET" not in r.stdout + r.stderr, "original IDs are never printed"
    assert _registry_rows(config) == []

    missing = tmp_path / "missing.csv"
    missing.write_text("patient,pseudonym\nSECRET-A,RES-1\n")
    r = run_cli(config, "pseudonyms", "import", str(missing))
    assert r.returncode == 2
    assert "line 1: missing column(s) original_id" in r.stderr
    assert _registry_rows(config) == []


def test_reimport_skips_and_conflict_is_refused(tmp_path: Path) -> None:
    config, _ = _setup(tmp_path)
    table = _table(tmp_path / "table.csv")
    assert run_cli(config, "pseudonyms", "import", str(table)).returncode == 0
    before = _registry_rows(config)

    r = run_cli(config, "pseudonyms", "import", str(table))
    assert r.returncode == 0, r.stderr
    assert "0 imported, 2 skipped" in r.stdout
    assert _registry_rows(config) == before

    # A new patient next to one whose pseudonym would change: nothing is written.
    conflict = tmp_path / "conflict.csv"
    conflict.write_text("original_id,pseudonym\nNEW-PATIENT,RES-0009\n339833062,RES-0099\n")
    r = run_cli(config, "pseudonyms", "import", str(conflict))
    assert r.returncode == 2
    assert "line 3: " in r.stderr and "different pseudonym" in r.stderr
    assert "339833062" not in r.stdout + r.stderr
    assert _registry_rows(config) == before

    # A pseudonym that another patient already has.
    taken = tmp_path / "taken.csv"
    taken.write_text("original_id,pseudonym\nNEW-PATIENT,RES-0001\n")
    r = run_cli(config, "pseudonyms", "import", str(taken))
    assert r.returncode == 2
    assert "line 2: " in r.stderr and "another patient" in r.stderr
    assert _registry_rows(config) == before
