"""``deid-node verify``: de-identify part of the corpus, check it, then tamper with it.

The report must find what was put back (and say where), and never show the value.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from deid_node.verify import (
    Finding,
    check_pair,
    find_leaks,
    identifying_values,
    profile_for,
    render_json,
    render_table,
)

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus" / "pseudo-phi-burned-in"
MODIFIED = "RetainLongitudinalTemporalInformationModifiedDates"


def _cli(*args: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deid_node", *args, "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def deidentified(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """15 corpus files from several patients, de-identified with the CLI."""
    root = tmp_path_factory.mktemp("verify")
    src = root / "original"
    src.mkdir()
    files = sorted(CORPUS.glob("*.dcm"))
    for path in files[:: max(1, len(files) // 15)][:15]:
        shutil.copy(path, src / path.name)
    config = root / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{root / "data"}"\nworkers = 1\n')
    out = root / "output"
    done = _cli("deidentify", str(src), "-o", str(out), "-q", "--strict", config=config)
    assert done.returncode == 0, done.stderr
    return src, out, config


def _copy(deidentified: tuple[Path, Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    src, out, config = deidentified
    mine = tmp_path / "output"
    shutil.copytree(out, mine)
    return src, mine, config


def _report(src: Path, out: Path, config: Path) -> tuple[int, dict, str]:
    table = _cli("verify", str(src), str(out), config=config)
    as_json = _cli("verify", str(src), str(out), "--json", config=config)
    assert table.returncode == as_json.returncode, (table.stderr, as_json.stderr)
    return table.returncode, json.loads(as_json.stdout), table.stdout


def _original_of(output: Path, src: Path, config: Path) -> Dataset:
    """The original ``output`` came from, through the exported UID crosswalk."""
    done = _cli("crosswalk", "uids", "-o", "-", config=config)
    old_of = {new: old for old, new in csv.reader(done.stdout.splitlines()[1:])}
    wanted = old_of[dcmread(output).SOPInstanceUID]
    return next(ds for p in src.glob("*.dcm") if (ds := dcmread(p)).SOPInstanceUID == wanted)


def test_clean_output_passes(deidentified: tuple[Path, Path, Path]) -> None:
    src, out, config = deidentified
    code, report, table = _report(src, out, config)
    assert code == 0, table
    summary = report["summary"]
    assert report["ok"] is True
    assert summary["originals"] == summary["outputs"] == summary["paired"] == 15
    assert summary["leaks"] == summary["dates_not_shifted"] == summary["uids_not_replaced"] == 0
    assert summary["outputs_without_original"] == summary["originals_without_output"] == 0
    assert table.rstrip().endswith("OK")
    assert "0 leaks" in table


def test_patient_name_put_back_in_a_description(
    deidentified: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    src, out, config = _copy(deidentified, tmp_path)
    victim = sorted(out.glob("*.dcm"))[3]
    original = _original_of(victim, src, config)
    ds = dcmread(victim)
    name = str(original.PatientName)
    ds.StudyDescription = f"CT CHEST for {name.replace('^', ' ').title()}"
    ds.save_as(victim)

    code, report, table = _report(src, out, config)
    assert code == 1
    assert report["ok"] is False
    line = next(x for x in table.splitlines() if x.startswith(victim.name))
    assert "leak" in line
    assert "PatientName part found in (0008,1030) StudyDescription" in line
    entry = next(f for f in report["files"] if f["output"] == victim.name)
    assert {"check": "leak", "where": "(0008,1030) StudyDescription"}.items() <= (
        entry["findings"][0].items()
    )
    assert entry["findings"][0]["source"] == "(0010,0010) PatientName"
    # Only this file fails.
    assert [f["output"] for f in report["files"] if f["failed"]] == [victim.name]
    # The value itself is never shown.
    for text in (table, json.dumps(report)):
        for part in name.replace("^", " ").split():
            assert part.lower() not in text.lower()


def test_burned_in_name_put_back_is_a_pixel_leak(
    deidentified: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """verify reads the output's pixels with the pass's own detector and recogniser:
    the original's burned-in values put back are a leak, reported by place only."""
    from deid_node.deid.pixels.legible import legible_identifiers

    src, out, config = _copy(deidentified, tmp_path)
    # An output whose original shows an identifier the pass's reader can read (some
    # originals carry only text too small or faint for it).
    victim, original = next(
        (path, original)
        for path in sorted(out.glob("*.dcm"))
        if legible_identifiers(original := _original_of(path, src, config), original)
    )
    ds = dcmread(victim)
    ds.PixelData = original.PixelData
    ds.file_meta.TransferSyntaxUID = original.file_meta.TransferSyntaxUID
    ds.save_as(victim)

    code, report, table = _report(src, out, config)
    assert code == 1
    entry = next(f for f in report["files"] if f["output"] == victim.name)
    assert {"check": "leak", "where": "(7FE0,0010) PixelData frame 1"}.items() <= (
        entry["findings"][0].items()
    )
    assert [f["output"] for f in report["files"] if f["failed"]] == [victim.name]
    name = str(original.PatientName)
    for text in (table, json.dumps(report)):
        for part in name.replace("^", " ").split():
            assert part.lower() not in text.lower()


def test_original_study_date_put_back(
    deidentified: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    src, out, config = _copy(deidentified, tmp_path)
    victim = sorted(out.glob("*.dcm"))[7]
    original = _original_of(victim, src, config)
    ds = dcmread(victim)
    assert ds.StudyDate != original.StudyDate  # shifted by the node
    ds.StudyDate = original.StudyDate
    ds.save_as(victim)

    code, report, table = _report(src, out, config)
    assert code == 1
    assert f"{victim.name}" in table
    assert "date not shifted in (0008,0020) StudyDate" in table
    assert report["summary"]["dates_not_shifted"] == 1
    assert original.StudyDate not in table
    assert original.StudyDate not in json.dumps(report)


def test_original_uid_put_back(deidentified: tuple[Path, Path, Path], tmp_path: Path) -> None:
    src, out, config = _copy(deidentified, tmp_path)
    victim = sorted(out.glob("*.dcm"))[0]
    original = _original_of(victim, src, config)
    ds = dcmread(victim)
    ds.SeriesInstanceUID = original.SeriesInstanceUID
    ds.save_as(victim)

    code, _report_json, table = _report(src, out, config)
    assert code == 1
    assert "UID not replaced in (0020,000E) SeriesInstanceUID" in table
    assert original.SeriesInstanceUID not in table


def test_unpaired_files_are_listed(deidentified: tuple[Path, Path, Path], tmp_path: Path) -> None:
    src, out, config = _copy(deidentified, tmp_path)
    outputs = sorted(out.glob("*.dcm"))
    outputs[0].unlink()
    stranger = out / "stranger.dcm"
    ds = dcmread(outputs[1])
    ds.SOPInstanceUID = "2.25.1234"
    ds.file_meta.MediaStorageSOPInstanceUID = "2.25.1234"
    ds.save_as(stranger)
    (out / "notes.txt").write_text("not DICOM")

    code, report, table = _report(src, out, config)
    assert code == 0, table  # nothing leaked: missing files alone do not fail
    assert report["outputs_without_original"] == ["stranger.dcm"]
    assert len(report["originals_without_output"]) == 1
    assert report["summary"]["paired"] == 14
    assert "stranger.dcm" in table and "no-original" in table
    assert "no-output" in table


def test_missing_registry_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "nothing"}"\n')
    (tmp_path / "a").mkdir()
    done = _cli("verify", str(tmp_path / "a"), str(tmp_path / "a"), config=config)
    assert done.returncode == 2
    assert "no registry" in done.stderr
    assert not (tmp_path / "nothing").exists()  # verify creates nothing


# -- the checks on datasets built here ------------------------------------------------


def _pair() -> tuple[Dataset, Dataset]:
    original = Dataset()
    original.file_meta = FileMetaDataset()
    original.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    original.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    original.PatientName = "GARCIA^MARIA^ELENA"
    original.PatientID = "PID-98765"
    original.PatientBirthDate = "19600203"
    original.InstitutionName = "Lakeside General"
    original.StudyDate = "20200110"
    original.StudyInstanceUID = "1.2.3"
    original.SOPInstanceUID = "1.2.3.4"
    original.Modality = "CT"
    original.Rows = 4
    output = Dataset()
    output.file_meta = FileMetaDataset()
    output.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    output.file_meta.MediaStorageSOPInstanceUID = "2.25.9"
    output.PatientName = "DEID-X"
    output.PatientID = "DEID-X"
    output.StudyDate = "20191201"
    output.StudyInstanceUID = "2.25.8"
    output.SOPInstanceUID = "2.25.9"
    output.Modality = "CT"
    output.Rows = 4
    return original, output


def test_nothing_to_report_on_a_clean_pair() -> None:
    original, output = _pair()
    assert check_pair(original, output, profile_for([MODIFIED])) == []


def test_leaks_in_nested_sequences_and_private_elements() -> None:
    original, output = _pair()
    item = Dataset()
    item.TextValue = "seen by maria, follow-up"  # name part, any case
    output.ContentSequence = Sequence([Dataset(), item])
    output.add_new(0x00091010, "LO", "ACME 1.0")
    output.add_new(0x00091011, "UN", b"PID-98765 ")  # private, as raw bytes
    output.add_new(0x00091012, "LO", "born 02/03/1960")  # birth date, as typed
    leaks = find_leaks(output, identifying_values(original, profile_for([MODIFIED])))
    assert {(x.what, x.where) for x in leaks} == {
        ("PatientName part", "(0040,A730)[1].(0040,A160) TextValue"),
        ("PatientID", "(0009,1011) private"),
        ("PatientBirthDate", "(0009,1012) private"),
    }


def test_words_only_and_short_values_ignored() -> None:
    original, output = _pair()
    original.PatientName = "LI^AN"  # parts shorter than 3 letters: too common to report
    original.AccessionNumber = "12"
    output.StudyDescription = "MARIAN LAKESIDE GENERALS angle 12"  # no whole word matches
    assert find_leaks(output, identifying_values(original, profile_for([MODIFIED]))) == []


def test_placeholder_names_and_the_makers_name_are_no_leak() -> None:
    """Template names ("Last Name^First Name") are ordinary words elsewhere, and a site
    named like its vendor shows only the vendor in Manufacturer; the same values in a
    description still leak."""
    original, output = _pair()
    original.PatientName = "Last Name^First Name"
    original.InstitutionName = "TOSHIBA"
    output.Manufacturer = "TOSHIBA_MEC"
    item = Dataset()
    item.CodeMeaning = "Person Observer Name"
    output.ConceptNameCodeSequence = Sequence([item])
    profile = profile_for([MODIFIED])
    assert find_leaks(output, identifying_values(original, profile)) == []
    output.StudyDescription = "CT at TOSHIBA"
    leaks = find_leaks(output, identifying_values(original, profile))
    assert [x.describe() for x in leaks] == [
        "InstitutionName found in (0008,1030) StudyDescription"
    ]
    original.PatientName = "TOSHIBA^MARIA"  # a person's name is a leak anywhere
    leaks = find_leaks(output, identifying_values(original, profile))
    assert "PatientName part found in (0008,0070) Manufacturer" in [x.describe() for x in leaks]


def test_what_the_options_keep_is_no_leak() -> None:
    original, output = _pair()
    output.InstitutionName = "Lakeside General"
    kept = profile_for([MODIFIED, "RetainInstitutionIdentity"])
    assert find_leaks(output, identifying_values(original, kept)) == []
    leaks = find_leaks(output, identifying_values(original, profile_for([MODIFIED])))
    assert [x.describe() for x in leaks] == ["InstitutionName found in (0008,0080) InstitutionName"]


def test_dates_uids_and_missing_attributes() -> None:
    original, output = _pair()
    output.StudyDate = original.StudyDate
    output.SOPInstanceUID = original.SOPInstanceUID
    del output.Rows
    findings = check_pair(original, output, profile_for([MODIFIED]))
    assert set(findings) == {
        Finding("date-not-shifted", "(0008,0020) StudyDate"),
        Finding("uid-not-replaced", "(0008,0018) SOPInstanceUID"),
        Finding("missing", "(0028,0010) Rows"),
    }
    # Full dates and Retain UIDs keep them on purpose.
    on_purpose = profile_for(["RetainLongitudinalTemporalInformationFullDates", "RetainUIDs"])
    assert check_pair(original, output, on_purpose) == [Finding("missing", "(0028,0010) Rows")]


def test_attributes_the_profile_removes_are_not_missing() -> None:
    original, output = _pair()
    original.PatientSex = "F"  # Z in the Basic Profile, K with Retain Patient Characteristics
    assert check_pair(original, output, profile_for([MODIFIED])) == []
    kept = profile_for([MODIFIED, "RetainPatientCharacteristics"])
    assert check_pair(original, output, kept) == [Finding("missing", "(0010,0040) PatientSex")]


def test_renderings_name_the_file_not_the_value() -> None:
    from deid_node.verify import FileReport, Report

    report = Report("orig", "out", [MODIFIED])
    report.files.append(
        FileReport(
            "2.25.1.dcm",
            ["a.dcm"],
            [Finding("leak", "(0008,1030) StudyDescription", "PatientName part", "(0010,0010)")],
        )
    )
    table = render_table(report)
    assert "2.25.1.dcm" in table
    assert "PatientName part found in (0008,1030) StudyDescription" in table
    assert table.endswith("FAILED")
    data = json.loads(render_json(report))
    assert data["ok"] is False and data["summary"]["leaks"] == 1
