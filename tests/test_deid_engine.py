"""De-identification engine and profile: real files in, written bytes checked.

Every check here runs on files from the shared pseudo-PHI corpus or from pydicom's and
deid-data's test files; the output is encoded with the original transfer syntax and read
back, because what leaves the node is bytes, not a Dataset.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import statistics
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import deid_data
import pytest
from pydicom import dcmread
from pydicom.charset import convert_encodings, encode_string
from pydicom.data.data_manager import DATA_ROOT, external_data_sources
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from deid_node.deid.engine import (
    DeidResult,
    DeidSettings,
    PatientPseudonym,
    deidentify,
    handle_private,
    patient_key,
)
from deid_node.deid.profile import (
    OPTIONS,
    action_for,
    build_profile,
    canonical_option,
)
from tests.dicom_io import encode_quietly as _encode
from tests.dicom_io import read_quietly as _read

KEY = b"test-uid-key"
MODIFIED = "RetainLongitudinalTemporalInformationModifiedDates"
FULL = "RetainLongitudinalTemporalInformationFullDates"
OFFSET = -1234
PATIENT = PatientPseudonym("PSEUDO-0001", "PSEUDO^0001", OFFSET)
SETTINGS = DeidSettings(uid_key=KEY)

# The shared folder sits beside the repository (see shared/README.md).
_SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CORPUS = sorted((_SHARED / "corpus" / "pseudo-phi-burned-in").glob("*.dcm"))
needs_corpus = pytest.mark.skipif(not CORPUS, reason="shared corpus not present")

_TEST_FILES = Path(DATA_ROOT) / "test_files"
_CHARSET_FILES = Path(DATA_ROOT) / "charset_files"
_PYDICOM_DATA = external_data_sources().get("pydicom-data")
_SAMPLE_DIRS = [
    _TEST_FILES,
    _CHARSET_FILES,
    Path(os.path.dirname(deid_data.__file__)) / "data",
]
if _PYDICOM_DATA is not None:
    _SAMPLE_DIRS.append(Path(_PYDICOM_DATA.data_path))
SAMPLES = sorted({p for d in _SAMPLE_DIRS for p in d.rglob("*.dcm")}, key=lambda p: p.name)

# Attributes whose original values must not survive anywhere in the output.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "PerformingPhysicianName",
    "OperatorsName",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "IssuerOfPatientID",
    "StationName",
)
# Kept on purpose; a PHI value that is part of one of these (an institution named
# "TOSHIBA" in a file made by "TOSHIBA_MEC") is not a leak.
RETAINED_KEYWORDS = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions")
ALLOWED_NEW_TAGS = {0x00100010, 0x00100020, 0x00120062, 0x00120063, 0x00120064, 0x00280303}
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


# -- helpers -------------------------------------------------------------------------


def _usable_sample(path: Path) -> Dataset:
    """The file read fresh, or skip when pydicom itself cannot read and re-write it."""
    try:
        ds = _read(path)
        if len(ds) == 0 or "SOPClassUID" not in ds:
            pytest.skip("not a composite instance")
        _encode(ds)
    except pytest.skip.Exception:
        raise
    except Exception as exc:
        pytest.skip(f"pydicom cannot round-trip it: {type(exc).__name__}")
    return _read(path)


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None:
        return []
    if not isinstance(value, MultiValue | list):
        value = [value]
    return [str(v).strip() for v in value if str(v).strip()]


def _phi(ds: Dataset) -> dict[str, str]:
    """Original identifying strings (length >= 4) of ``ds`` -> keyword."""
    retained = " ".join(v for kw in RETAINED_KEYWORDS for v in _values(ds, kw))
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        retained += " " + str(meta.get("ImplementationVersionName", ""))
    found = {}
    for keyword in PHI_KEYWORDS:
        for value in _values(ds, keyword):
            if len(value) >= 4 and value not in retained:
                found[value] = keyword
    return found


def _encodings(ds: Dataset) -> list[str]:
    try:
        return convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6")
    except Exception:
        return ["iso8859"]


def _leaks(original: Dataset, out: bytes, pixel: bytes | None) -> list[str]:
    """Original PHI strings still present in the encoded output (pixel data excluded)."""
    if pixel:
        out = out.replace(pixel, b"")
    encodings = _encodings(original)
    leaks = []
    for value, keyword in _phi(original).items():
        forms = set()
        with contextlib.suppress(Exception):  # not encodable: cannot be in the output
            forms.add(encode_string(value, encodings))
        if value.isascii():
            forms.add(value.encode("ascii"))
        if any(len(f) >= 4 and f in out for f in forms):
            leaks.append(f"{keyword}={value!r}")
    return leaks


def _pixel_bytes(ds: Dataset) -> bytes | None:
    elem = ds.get_item(0x7FE00010)
    return None if elem is None else bytes(elem.value)


def _run(path: Path, patient: PatientPseudonym = PATIENT, settings: DeidSettings = SETTINGS):
    """(original, result, encoded output, output read back)."""
    original = _read(path)
    ds = _read(path)
    result = deidentify(ds, patient, settings)
    out = _encode(ds)
    back = dcmread(io.BytesIO(out), force=True)
    for elem in back.iterall():  # decode everything: the output must be readable
        _ = elem.value
    return original, result, out, back


def _top_tags(ds: Dataset) -> list[int]:
    return [int(e.tag) for e in ds]


def _all_tags(ds: Dataset) -> list[int]:
    return [int(e.tag) for e in ds.iterall()]


def _shifted(da: str, days: int) -> str:
    d = date(int(da[:4]), int(da[4:6]), int(da[6:8])) + timedelta(days=days)
    return d.strftime("%Y%m%d")


def _method_codes(ds: Dataset) -> list[str]:
    return [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


# -- the shared corpus -----------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name[:60])
def test_corpus_file_is_deidentified(path: Path) -> None:
    original, result, out, back = _run(path)

    assert _leaks(original, out, _pixel_bytes(original)) == []
    # Name words typed into descriptions ("... for Douglas Davidson") are gone too.
    text = out.replace(_pixel_bytes(original) or b"\x00", b"").decode("latin-1").lower()
    for word in re.split(r"[\^ =]+", str(original.PatientName)):
        if len(word) >= 4:
            assert not re.search(rf"(?<![a-z0-9]){re.escape(word.lower())}(?![a-z0-9])", text)

    tags = _all_tags(back)
    assert not [t for t in tags if (t >> 16) & 1], "private tags remain"
    assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert back.SOPClassUID == original.SOPClassUID
    assert _pixel_bytes(back) == _pixel_bytes(original)

    assert back.PatientID == PATIENT.pseudo_id
    assert str(back.PatientName) == PATIENT.pseudo_name
    assert back.PatientIdentityRemoved == "YES"
    assert back.LongitudinalTemporalInformationModified == "MODIFIED"
    assert _method_codes(back) == ["113100", "113107"]

    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert back[kw].value != original[kw].value
        assert back[kw].value == result.uid_map[original[kw].value]
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert result.sop_instance_uid == (original.SOPInstanceUID, back.SOPInstanceUID)

    if original.get("StudyDate"):
        assert back.StudyDate == _shifted(original.StudyDate, OFFSET)

    new_tags = set(_top_tags(back)) - set(_top_tags(original))
    assert new_tags <= ALLOWED_NEW_TAGS


@needs_corpus
def test_corpus_uids_consistent_per_study_and_dates_per_patient() -> None:
    """Files of one study get one new Study UID, whichever order they come in; each
    patient's dates move by that patient's own offset, so intervals survive."""
    offsets: dict[tuple[str, str], int] = {}
    new_study: dict[str, set[str]] = defaultdict(set)
    new_series: dict[str, set[str]] = defaultdict(set)
    sops: set[str] = set()
    for n, path in enumerate(reversed(CORPUS)):
        ds = _read(path)
        key = patient_key(ds)
        offsets.setdefault(key, -(100 + 37 * len(offsets)))
        patient = PatientPseudonym(f"P{len(offsets)}", f"P^{len(offsets)}", offsets[key])
        old_date = ds.get("StudyDate", "")
        result = deidentify(ds, patient, SETTINGS)
        back = dcmread(io.BytesIO(_encode(ds)))
        new_study[result.study_uid[0]].add(back.StudyInstanceUID)
        new_series[result.series_uid[0]].add(back.SeriesInstanceUID)
        sops.add(back.SOPInstanceUID)
        if old_date:
            assert back.StudyDate == _shifted(old_date, offsets[key]), path.name
        assert n + 1 == len(sops)
    assert len(offsets) == 8
    assert all(len(v) == 1 for v in new_study.values())
    assert all(len(v) == 1 for v in new_series.values())
    assert len({next(iter(v)) for v in new_study.values()}) == len(new_study)
    assert not set(new_study) & {next(iter(v)) for v in new_study.values()}


@needs_corpus
def test_same_input_same_output_bytes() -> None:
    outputs = []
    for _ in range(2):
        ds = _read(CORPUS[0])
        deidentify(ds, PATIENT, SETTINGS)
        outputs.append(_encode(ds))
    assert outputs[0] == outputs[1]
    ds = _read(CORPUS[0])
    deidentify(ds, PATIENT, DeidSettings(uid_key=b"another key"))
    assert ds.StudyInstanceUID != dcmread(io.BytesIO(outputs[0])).StudyInstanceUID


@needs_corpus
def test_nested_dates_are_shifted_and_counted() -> None:
    original = _read(CORPUS[0])
    old = original.ContributingEquipmentSequence[0].ContributionDateTime
    _, result, _, back = _run(CORPUS[0])
    new = back.ContributingEquipmentSequence[0].ContributionDateTime
    assert new == _shifted(old[:8], OFFSET) + old[8:]
    assert result.actions["date_shifted"] >= 5
    assert result.actions["private_removed"] > 0
    assert isinstance(result, DeidResult)


def test_dates_outside_the_table_are_shifted_everywhere() -> None:
    """Table E.1-1 does not list every date attribute; with Modified Dates none of them
    may keep its real value, nested or not, and what cannot be parsed is emptied."""
    ds = _read(_TEST_FILES / "CT_small.dcm")
    ds.StudyUpdateDateTime = "20040120101500.5+0100"  # DT, not in the table
    ds.SecondaryReviewDate = "20040121"  # DA, not in the table
    item = Dataset()
    item.ExpiryDate = "20050229"  # not a date: must not survive
    item.ProcedureCreationDate = "20031231"
    ds.ContributingEquipmentSequence = Sequence([item])
    deidentify(ds, PATIENT, SETTINGS)
    back = dcmread(io.BytesIO(_encode(ds)))
    assert back.StudyUpdateDateTime == _shifted("20040120", OFFSET) + "101500.5+0100"
    assert back.SecondaryReviewDate == _shifted("20040121", OFFSET)
    nested = back.ContributingEquipmentSequence[0]
    assert nested.ExpiryDate == ""
    assert nested.ProcedureCreationDate == _shifted("20031231", OFFSET)


@pytest.mark.parametrize(
    ("vr", "value"),
    [
        ("UI", "2.25.123"),  # odd: NUL padded
        ("UI", ["1.2.3", "1.2.34"]),
        ("DA", "20200101"),
        ("DT", "20200101101500.5"),  # odd: space padded
        ("PN", "DEID-ABC"),
        ("LO", ["deid-node: PS3.15 Basic Profile", "Clean Descriptors"]),
        ("CS", "YES"),
        ("SH", ""),
        ("IS", "12"),
        ("LO", "Müller"),  # not ASCII: pydicom encodes it
        ("LO", "a\\b"),  # a backslash inside one value: pydicom decides
        ("US", 5),
    ],
)
def test_values_the_engine_writes_encode_as_pydicom_would(vr: str, value: object) -> None:
    """_put stores ASCII text already encoded; the bytes written and the value read back
    must be what a pydicom DataElement gives, in both byte orders and VR encodings."""
    from pydicom.dataelem import DataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from deid_node.deid.engine import _put

    tag = 0x00100021
    for implicit, little in ((False, True), (True, True), (False, False)):
        ours, theirs = Dataset(), Dataset()
        _put(ours, tag, vr, value)
        theirs[tag] = DataElement(tag, vr, value)
        encoded = []
        for ds in (ours, theirs):
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = implicit, little
            ds.set_original_encoding(implicit, little, "iso8859")
            write_dataset(fp, ds)
            encoded.append(fp.getvalue())
        assert encoded[0] == encoded[1]
        assert ours[tag].value == theirs[tag].value


@needs_corpus
def test_deferred_read_gives_the_same_output() -> None:
    """Elements read lazily from disk (dcmread defer_size) are loaded before use."""
    ds = _read(CORPUS[1])
    deidentify(ds, PATIENT, SETTINGS)
    deferred = dcmread(CORPUS[1], defer_size=8)
    deidentify(deferred, PATIENT, SETTINGS)
    assert _encode(deferred) == _encode(ds)


@needs_corpus
def test_deidentify_is_fast() -> None:
    """The node's budget is ~100 images/s for everything; de-identification must be a
    small part of it (measured on the corpus: about 0.5 ms per file with the default
    options, 1 ms with the TCIA preset, which also cleans text and judges every private
    element). The best of three runs per file filters out a busy machine."""
    blobs = [p.read_bytes() for p in CORPUS]
    tcia = DeidSettings(uid_key=KEY, options=frozenset({MODIFIED}), preset="tcia")
    for settings in (SETTINGS, tcia):
        deidentify(dcmread(io.BytesIO(blobs[0])), PATIENT, settings)  # tables loaded
        best = []
        for blob in blobs:
            runs = []
            for _ in range(3):
                ds = dcmread(io.BytesIO(blob))
                start = time.perf_counter()
                deidentify(ds, PATIENT, settings)
                runs.append(time.perf_counter() - start)
            best.append(min(runs))
        assert statistics.median(best) < 0.004, settings


# -- pydicom / deid-data sample files ----------------------------------------------------


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_file_is_deidentified_and_writable(path: Path) -> None:
    _usable_sample(path)
    original, result, out, back = _run(path)

    assert _leaks(original, out, _pixel_bytes(original)) == []
    assert not [t for t in _all_tags(back) if (t >> 16) & 1]
    assert back.SOPClassUID == original.SOPClassUID
    meta = getattr(original, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        assert back.file_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    assert _pixel_bytes(back) == _pixel_bytes(original)
    for elem in back.iterall():
        if elem.VR == "UI" and elem.value:
            for uid in elem.value if isinstance(elem.value, MultiValue) else [elem.value]:
                assert len(uid) <= 64 and _UID.match(uid), (elem.tag, uid)
    if original.get("StudyInstanceUID"):
        assert back.StudyInstanceUID == result.uid_map[original.StudyInstanceUID]
    study_date = original.get("StudyDate") or ""
    if re.fullmatch(r"\d{8}", study_date):
        assert back.StudyDate == _shifted(study_date, OFFSET)
    assert _method_codes(back) == ["113100", "113107"]


@pytest.mark.parametrize(
    ("directory", "name", "syntax"),
    [
        (_TEST_FILES, "MR_small_implicit.dcm", "1.2.840.10008.1.2"),
        (_TEST_FILES, "MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
        (_TEST_FILES, "image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
        (_TEST_FILES, "JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
        (_TEST_FILES, "SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5"),
        (_TEST_FILES, "rtdose.dcm", "1.2.840.10008.1.2"),
        (_CHARSET_FILES, "chrH31.dcm", "1.2.840.10008.1.2.1"),
    ],
)
def test_encodings_are_covered(directory: Path, name: str, syntax: str) -> None:
    """Guard against the sample filter silently skipping the hard cases."""
    path = directory / name
    original, _, out, back = _run(path)
    assert original.file_meta.TransferSyntaxUID == syntax
    assert back.file_meta.TransferSyntaxUID == syntax
    assert _pixel_bytes(back) == _pixel_bytes(original)
    assert back.PatientID == PATIENT.pseudo_id
    assert back.get("SpecificCharacterSet") == original.get("SpecificCharacterSet")
    assert _leaks(original, out, _pixel_bytes(original)) == []


def test_non_ascii_person_name_is_gone() -> None:
    original, _, out, back = _run(_CHARSET_FILES / "chrH31.dcm")
    assert "山田" in str(original.PatientName)
    assert encode_string("山田", _encodings(original)) not in out
    assert str(back.PatientName) == PATIENT.pseudo_name


def test_structured_report_nested_content() -> None:
    original, result, _, back = _run(_TEST_FILES / "test-SR.dcm")
    old = [e for e in original.iterall()]
    new = [e for e in back.iterall()]
    # nested DateTime values moved, nested UIDs mapped, free text and names dummied
    old_dt = [e.value for e in old if e.VR == "DT" and e.value]
    new_dt = [e.value for e in new if e.VR == "DT" and e.value]
    assert len(old_dt) == len(new_dt) > 2
    assert new_dt == [_shifted(v[:8], OFFSET) + v[8:] for v in old_dt]
    assert all(e.value == "REMOVED" for e in new if e.tag == 0x0040A160)
    assert [e for e in new if e.tag == 0x0040A160]
    assert all(str(e.value) == "REMOVED" for e in new if e.tag in (0x0040A075, 0x0040A123))
    assert all(e.value in result.uid_map.values() for e in new if e.tag == 0x0040A124)
    predecessor = back.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == back.StudyInstanceUID
    assert predecessor.ReferencedSeriesSequence[0].SeriesInstanceUID == back.SeriesInstanceUID
    coding_uids = {e.value for e in old if e.tag == 0x0008010C}
    assert coding_uids and coding_uids == {e.value for e in new if e.tag == 0x0008010C}


def test_rt_references_stay_consistent() -> None:
    """Frame of reference and referenced instances map exactly like the originals, so
    an RT structure set still points at its de-identified images."""
    original, result, _, back = _run(_TEST_FILES / "rtstruct.dcm")
    old_refs = [e.value for e in original.iterall() if e.tag in (0x00200052, 0x00081155)]
    new_refs = [e.value for e in back.iterall() if e.tag in (0x00200052, 0x00081155)]
    assert old_refs and len(old_refs) == len(new_refs)
    assert new_refs == [result.uid_map[v] for v in old_refs]
    old_classes = [e.value for e in original.iterall() if e.tag == 0x00081150]
    assert old_classes == [e.value for e in back.iterall() if e.tag == 0x00081150]

    original, result, _, back = _run(_TEST_FILES / "rtplan.dcm")
    old_refs = [e.value for e in original.iterall() if e.tag == 0x00081155]
    assert [e.value for e in back.iterall() if e.tag == 0x00081155] == [
        result.uid_map[v] for v in old_refs
    ]
    assert back.RTPlanDate == _shifted(original.RTPlanDate, OFFSET)


def test_overlays_removed_and_group_lengths_dropped() -> None:
    path = _TEST_FILES / "examples_overlay.dcm"
    original, _, _, back = _run(path)
    assert 0x60003000 in original
    assert 0x60003000 not in back
    assert 0x60000010 in back  # overlay rows: not in the table, kept
    assert not [t for t in _all_tags(back) if t & 0xFFFF == 0]


def test_sequences_removed_emptied_and_dummied() -> None:
    ds = _read(_TEST_FILES / "CT_small.dcm")
    name = str(ds.InstitutionName)
    item = Dataset()
    item.PatientID = "OTHER-ID-4711"
    ds.OtherPatientIDsSequence = Sequence([item])  # X
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.ReferencedStudySequence = Sequence([ref])  # X/Z -> Z
    code = Dataset()
    code.CodeValue = "JFK01"
    code.CodingSchemeDesignator = "L"
    code.CodeMeaning = name
    ds.InstitutionCodeSequence = Sequence([code])  # X/Z/D -> D
    img = Dataset()
    img.ReferencedSOPClassUID = ds.SOPClassUID
    img.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([img])  # X/Z/U* -> keep, map UIDs
    old_sop = ds.SOPInstanceUID

    deidentify(ds, PATIENT, SETTINGS)
    back = dcmread(io.BytesIO(_encode(ds)))
    assert "OtherPatientIDsSequence" not in back
    assert len(back.ReferencedStudySequence) == 0
    assert back.InstitutionCodeSequence[0].CodeMeaning == "REMOVED"
    assert back.InstitutionCodeSequence[0].CodeValue == "REMOVED"
    assert back.ReferencedImageSequence[0].ReferencedSOPInstanceUID == back.SOPInstanceUID
    assert back.ReferencedImageSequence[0].ReferencedSOPClassUID == back.SOPClassUID
    assert back.SOPInstanceUID != old_sop
    assert name.encode() not in _encode(back)


def test_patient_key_reads_original_values() -> None:
    ds = _read(_TEST_FILES / "CT_small.dcm")
    ds.IssuerOfPatientID = " HOSP "
    assert patient_key(ds) == ("HOSP", str(ds.PatientID).strip())
    del ds.IssuerOfPatientID
    del ds.PatientID
    assert patient_key(ds) == ("", "")


# -- options -----------------------------------------------------------------------------


def _ct(options: set[str], extra: dict[str, str] | None = None) -> tuple[Dataset, Dataset]:
    original = _read(_TEST_FILES / "CT_small.dcm")
    for keyword, value in (extra or {}).items():
        setattr(original, keyword, value)
    ds = copy.deepcopy(original)
    deidentify(ds, PATIENT, DeidSettings(uid_key=KEY, options=frozenset(options)))
    return original, dcmread(io.BytesIO(_encode(ds)))


def test_retain_uids_keeps_uids() -> None:
    original, back = _ct({"RetainUIDs", MODIFIED})
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert back[kw].value == original[kw].value
    assert back.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    _, changed = _ct({MODIFIED})
    assert changed.StudyInstanceUID != original.StudyInstanceUID


def test_retain_device_identity_keeps_serial_number() -> None:
    extra = {"DeviceSerialNumber": "SN-998877", "StationName": "CTSTATION7"}
    _, back = _ct({"RetainDeviceIdentity"}, extra)
    assert back.DeviceSerialNumber == "SN-998877"
    assert back.StationName == "CTSTATION7"
    _, back = _ct(set(), extra)
    assert back.DeviceSerialNumber == "REMOVED"
    assert back.StationName == "REMOVED"
    _, back = _ct(set(), {"StationName": ""})
    assert back.StationName == ""  # D on an empty value: nothing to hide, nothing added


def test_full_dates_keep_dates_and_no_option_removes_them() -> None:
    original, back = _ct({FULL})
    assert back.StudyDate == original.StudyDate
    assert back.ContentDate == original.ContentDate
    assert back.LongitudinalTemporalInformationModified == "UNMODIFIED"
    _, back = _ct(set())
    assert back.StudyDate == ""
    assert "AcquisitionDate" not in back or back.AcquisitionDate == ""
    assert back.LongitudinalTemporalInformationModified == "REMOVED"
    _, back = _ct({MODIFIED})
    assert back.StudyDate == _shifted(original.StudyDate, OFFSET)
    assert back.LongitudinalTemporalInformationModified == "MODIFIED"


def test_modified_dates_shift_even_where_another_option_keeps() -> None:
    """Retain Device Identity says K for calibration dates; with Modified Dates the real
    date must still not leave."""
    extra = {"DateOfLastCalibration": "20031101"}
    _, back = _ct({"RetainDeviceIdentity", MODIFIED}, extra)
    assert back.DateOfLastCalibration == _shifted("20031101", OFFSET)
    _, back = _ct({"RetainDeviceIdentity", FULL}, extra)
    assert back.DateOfLastCalibration == "20031101"


def test_retain_institution_and_patient_characteristics() -> None:
    original, back = _ct({"RetainInstitutionIdentity", "RetainPatientCharacteristics"})
    assert back.InstitutionName == original.InstitutionName
    assert back.PatientSex == original.PatientSex
    _, back = _ct(set())
    assert back.get("InstitutionName") in (None, "REMOVED")
    assert back.PatientSex == ""


def test_retain_safe_private_follows_the_knowledge_base() -> None:
    """JPEG2000.dcm (GE Genie): the TCIA private tag knowledge base keeps the
    acquisition parameters it knows to be safe and deletes the rest (the patient's name
    written as "Patient,The", series names, dates, an element it does not list)."""
    path = _TEST_FILES / "JPEG2000.dcm"
    original = _read(path)
    private = [t for t in _top_tags(original) if t >> 16 & 1]
    assert private
    settings = DeidSettings(uid_key=KEY, options=frozenset({"RetainSafePrivate", MODIFIED}))
    _, result, out, back = _run(path, settings=settings)
    kept = {t: back[t].value for t in _top_tags(back) if t >> 16 & 1}
    for tag in (0x0009102E, 0x0011100B, 0x00111019, 0x00111033, 0x00111035, 0x00131010):
        assert kept[tag] == original[tag].value  # k
    for tag in (0x00091040, 0x00091042, 0x00091010, 0x0009101E, 0x00091030):
        assert tag not in kept  # d, or not in the table
    assert kept[0x00090010] == kept[0x00110010] == kept[0x00130010] == "GEMS_GENIE_1"
    assert b"Patient,The" not in out
    assert result.actions["private_kept"] == len([t for t in kept if t & 0xFFFF >= 0x1000])
    assert result.actions["private_removed"] == len(private) - len(kept)
    assert handle_private(_read(path), private, build_profile(frozenset())) == private


@needs_corpus
def test_clean_descriptors_removes_names_but_keeps_the_description() -> None:
    original = _read(CORPUS[0])
    assert "Douglas Davidson" in original.StudyDescription
    options = frozenset({"CleanDescriptors", MODIFIED})
    _, result, out, back = _run(CORPUS[0], settings=DeidSettings(uid_key=KEY, options=options))
    assert back.StudyDescription == "XR CHEST AP PORTABLE for"
    assert b"Davidson" not in out
    assert result.actions["cleaned"] >= 1


def test_clean_descriptors_removes_what_identifies_by_its_form() -> None:
    """Names after a title, phone numbers and dates typed into a description go, even
    when they are not values of the instance; the description stays."""
    ds = _read(_TEST_FILES / "CT_small.dcm")
    ds.StudyDescription = "CT HEAD W/O CONTRAST per Dr. Helen Marsh 13 Jul 2013 (555) 123-4567"
    ds.SeriesDescription = "AX 5mm 120 kVp L1-L5"
    original = copy.deepcopy(ds)
    options = frozenset({"CleanDescriptors", MODIFIED})
    deidentify(ds, PATIENT, DeidSettings(uid_key=KEY, options=options))
    back = dcmread(io.BytesIO(_encode(ds)))
    assert back.StudyDescription == "CT HEAD W/O CONTRAST per"
    assert back.SeriesDescription == original.SeriesDescription
    # without the patterns only the instance's own values are removed
    ds = copy.deepcopy(original)
    settings = DeidSettings(uid_key=KEY, options=options, clean_patterns=False)
    deidentify(ds, PATIENT, settings)
    assert ds.StudyDescription == original.StudyDescription


def test_nested_person_name_is_removed_from_the_report_text() -> None:
    """A person named in an SR content item (PersonName inside ContentSequence) is
    dummied in place and taken out of the report's free text too."""
    path = _TEST_FILES / "reportsi.dcm"
    ds = _read(path)
    items = ds.ContentSequence
    named = next(i for i in items if "PersonName" in i)
    named.PersonName = "Okonkwo^Adaeze"
    text = next(i for i in items if "TextValue" in i)
    text.TextValue = "Findings discussed with Adaeze Okonkwo by phone."
    options = frozenset({"CleanStructuredContent", MODIFIED})
    result = deidentify(ds, PATIENT, DeidSettings(uid_key=KEY, options=options))
    out = _encode(ds)
    back = dcmread(io.BytesIO(out))
    texts = [i.TextValue for i in back.ContentSequence if "TextValue" in i]
    assert texts[0] == "Findings discussed with by phone."
    assert b"Okonkwo" not in out and b"Adaeze" not in out
    assert result.actions["cleaned"] >= 1


@pytest.mark.parametrize(
    "options",
    [
        set(),
        {MODIFIED},
        {FULL, "RetainUIDs", "RetainDeviceIdentity"},
        {"CleanDescriptors", "CleanStructuredContent", "CleanGraphics", "CleanPixelData"},
        set(OPTIONS) - {FULL},
    ],
    ids=lambda o: "+".join(sorted(o)) or "basic",
)
def test_method_code_sequence_lists_profile_and_options(options: set[str]) -> None:
    _, back = _ct(options)
    expected = {"113100"} | {OPTIONS[o][1] for o in options}
    codes = _method_codes(back)
    assert codes[0] == "113100"
    assert sorted(codes) == sorted(expected)
    assert all(i.CodingSchemeDesignator == "DCM" for i in back.DeidentificationMethodCodeSequence)
    meanings = {i.CodeValue: i.CodeMeaning for i in back.DeidentificationMethodCodeSequence}
    assert meanings["113100"] == "Basic Application Confidentiality Profile"
    if MODIFIED in options:
        assert meanings["113107"] == (
            "Retain Longitudinal Temporal Information Modified Dates Option"
        )
    method = _values(back, "DeidentificationMethod")
    assert method == ["deid-node: PS3.15 Basic Profile", *(o for o in OPTIONS if o in options)]
    assert all(len(v) <= 64 for v in method)


def test_spelled_out_options_are_accepted_by_the_engine() -> None:
    spelled = "Retain Longitudinal Temporal Information with Modified Dates Option"
    original, back = _ct({spelled})
    assert back.StudyDate == _shifted(original.StudyDate, OFFSET)
    with pytest.raises(ValueError, match="RetainUIDs"):
        _ct({"Retain Everything"})


# -- profile resolution ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("Retain Safe Private Option", "RetainSafePrivate"),
        ("Retain UIDs Option", "RetainUIDs"),
        ("Retain Device Identity Option", "RetainDeviceIdentity"),
        ("Retain Institution Identity Option", "RetainInstitutionIdentity"),
        ("Retain Patient Characteristics Option", "RetainPatientCharacteristics"),
        ("Retain Longitudinal Temporal Information with Full Dates Option", FULL),
        ("Retain Longitudinal Temporal Information with Modified Dates Option", MODIFIED),
        ("retain_longitudinal_temporal_information_modified_dates", MODIFIED),
        ("Clean Descriptors Option", "CleanDescriptors"),
        ("clean-structured-content", "CleanStructuredContent"),
        ("CLEAN GRAPHICS", "CleanGraphics"),
        ("Clean Pixel Data Option", "CleanPixelData"),
        ("RetainUIDs", "RetainUIDs"),
        ("113110", "RetainUIDs"),
    ],
)
def test_canonical_option(name: str, canonical: str) -> None:
    assert canonical_option(name) == canonical


def test_canonical_option_rejects_unknown_names() -> None:
    with pytest.raises(ValueError) as info:
        canonical_option("Retain Everything Option")
    assert all(name in str(info.value) for name in OPTIONS)


def test_options_table() -> None:
    assert len(OPTIONS) == 11
    assert OPTIONS[MODIFIED] == ("rtnLongModifDatesOpt", "113107")
    assert OPTIONS["CleanPixelData"] == ("", "113101")


def test_build_profile_resolution() -> None:
    basic = build_profile(frozenset())
    assert build_profile(frozenset()) is basic  # cached
    assert action_for(basic, 0x00080050) == "Z"  # Accession Number
    assert action_for(basic, 0x00181000) == "D"  # Device Serial Number X/Z/D
    assert action_for(basic, 0x00080022) == "Z"  # Acquisition Date X/Z
    assert action_for(basic, 0x00081140) == "U"  # Referenced Image Sequence X/Z/U*
    assert action_for(basic, 0x0020000D) == "U"
    assert action_for(basic, 0x00080020) == "Z"  # Study Date
    assert action_for(basic, 0x00280010) is None  # Rows: not in the table
    assert action_for(basic, 0x00080016) is None  # SOP Class UID: kept
    assert action_for(basic, 0x00091001) == "X"  # private
    assert action_for(basic, 0x00090010) == "X"  # private creator
    assert action_for(basic, 0x50020010) == "X"  # curve data, any even 50xx group
    assert action_for(basic, 0x501E3000) == "X"
    assert action_for(basic, 0x50200010) is None  # outside the repeating range
    assert action_for(basic, 0x60043000) == "X"  # overlay data
    assert action_for(basic, 0x60024000) == "X"  # overlay comments
    assert action_for(basic, 0x60000010) is None  # overlay rows

    modified = build_profile(frozenset({MODIFIED}))
    assert action_for(modified, 0x00080020) == "C"
    assert action_for(modified, 0x00080030) == "C"  # Study Time
    both = build_profile(frozenset({MODIFIED, FULL}))
    assert action_for(both, 0x00080020) == "K"  # K beats C
    device = build_profile(frozenset({"RetainDeviceIdentity", MODIFIED}))
    assert action_for(device, 0x00181200) == "K"  # Date of Last Calibration
    assert action_for(device, 0x00181000) == "K"
    assert action_for(device, 0x00080055) == "C"  # Station AE Title
    uids = build_profile(frozenset({"RetainUIDs"}))
    assert action_for(uids, 0x00080018) == "K"
    assert action_for(uids, 0x00081140) == "K"
    private = build_profile(frozenset({"RetainSafePrivate"}))
    assert action_for(private, 0x00091001) == "C"
    spelled = build_profile(frozenset({"Retain UIDs Option"}))
    assert spelled.options == frozenset({"RetainUIDs"})
    graphics = build_profile(frozenset({"CleanGraphics"}))
    assert action_for(graphics, 0x60003000) == "C"
    assert action_for(graphics, 0x50000010) == "C"
