"""The TCIA preset over PS3.15 Table E.1-1, and the standard path without a preset.

TCIA's per-attribute choices replace the table's where TCIA has one; the options the
preset implies are stated truthfully in the method attributes. Without a preset the
engine must give exactly what it gave before presets existed.
"""

from __future__ import annotations

import copy
import hashlib
import io
import re
import warnings
from datetime import date, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from deid_node.deid.engine import DeidSettings, deidentify
from deid_node.deid.presets import (
    PRESETS,
    TCIA_OPTIONS,
    TCIA_OVERRIDES,
    canonical_preset,
    options_in_force,
    tcia_choices,
)
from deid_node.deid.private import keyed_hex
from deid_node.deid.profile import OPTIONS, action_for, build_profile
from deid_node.verify import check_pair, profile_for
from tests.dicom_io import encode_quietly as _encode
from tests.dicom_io import read_quietly as _read
from tests.test_deid_engine import (
    _UID,
    FULL,
    KEY,
    MODIFIED,
    OFFSET,
    PATIENT,
    SAMPLES,
    _leaks,
    _pixel_bytes,
    _run,
    _usable_sample,
)

TCIA = DeidSettings(uid_key=KEY, options=frozenset({MODIFIED}), preset="tcia")
MIDIB_OPTIONS = frozenset(
    {MODIFIED, "RetainPatientCharacteristics", "CleanDescriptors", "CleanStructuredContent"}
    | {"CleanGraphics"}
)

_SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CORPUS = sorted((_SHARED / "corpus" / "pseudo-phi-burned-in").glob("*.dcm"))
needs_corpus = pytest.mark.skipif(not CORPUS, reason="shared corpus not present")


def _shifted(da: str, days: int = OFFSET) -> str:
    d = date(int(da[:4]), int(da[4:6]), int(da[6:8])) + timedelta(days=days)
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _deid(ds: Dataset, settings: DeidSettings) -> tuple[bytes, Dataset]:
    deidentify(ds, PATIENT, settings)
    out = _encode(ds)
    return out, dcmread(io.BytesIO(out))


# -- naming and options ------------------------------------------------------------------


def test_preset_names() -> None:
    assert PRESETS == ("tcia",)
    assert canonical_preset(None) is None
    assert canonical_preset("  ") is None
    assert canonical_preset(" TCIA ") == "tcia"
    with pytest.raises(ValueError, match="tcia"):
        canonical_preset("nih")
    assert DeidSettings(uid_key=KEY, preset="TCIA").preset == "tcia"
    assert DeidSettings(uid_key=KEY).preset is None
    with pytest.raises(ValueError, match="unknown de-identification preset"):
        DeidSettings(uid_key=KEY, preset="strict")


def test_options_the_preset_puts_in_force() -> None:
    assert options_in_force(frozenset({"CleanGraphics"}), None) == {"CleanGraphics"}
    configured = frozenset({"RetainUIDs", FULL, "CleanGraphics", "CleanPixelData"})
    in_force = options_in_force(configured, "tcia")
    assert in_force == TCIA_OPTIONS | {"CleanGraphics", "CleanPixelData"}
    assert not in_force & TCIA_OVERRIDES
    profile = build_profile(configured, "tcia")
    assert profile.options == in_force
    assert profile.modified_dates and not profile.full_dates
    assert profile.private == "C"  # Remove Unsafe: the private tag knowledge base


def test_every_tcia_choice_is_in_the_profile() -> None:
    profile = build_profile(frozenset(), "tcia")
    expected = {
        "remove": {"X"},
        "empty": {"Z"},
        "replace": {"D"},
        "hashuid": {"U"},
        "incrementdate": {"C"},
        "time": {"K"},
        "process": {"K"},
        "lookup": {"L"},
        "hashname": {"H"},
        "keep": {"K", "C"},
    }
    for name, entries in tcia_choices().items():
        for entry in entries:
            match = re.fullmatch(r"\(0x([0-9A-F]{4}), 0x([0-9A-F]{4})\)", entry)
            if match is None:
                continue  # 50xx, 60xx, the private wildcard
            tag = int(match[1], 16) << 16 | int(match[2], 16)
            assert action_for(profile, tag) in expected[name], (name, entry)
    assert action_for(profile, 0x00081030) == "C"  # StudyDescription: kept, cleaned
    assert action_for(profile, 0x00101010) == "K"  # PatientAge
    assert action_for(profile, 0x50000010) == "X"  # curves
    assert action_for(profile, 0x60003000) == "X"  # overlay data
    assert action_for(profile, 0x60004000) == "X"  # overlay comments
    assert action_for(profile, 0x00280010) is None  # Rows: not listed anywhere
    # where TCIA is silent the table decides, with the implied options
    assert action_for(profile, 0x0040A160) == "C"  # Text Value, Clean Structured Content
    assert action_for(profile, 0x00100040) == "K"  # PatientSex (TCIA keep)
    basic = build_profile(frozenset({MODIFIED}))
    assert action_for(basic, 0x00204000) == "X"  # ImageComments: X in the basic table
    clean = build_profile(frozenset({MODIFIED, "CleanDescriptors"}))
    assert action_for(clean, 0x00204000) == "C"
    assert action_for(build_profile(frozenset({"CleanDescriptors"}), "tcia"), 0x00204000) == "X"


@pytest.mark.parametrize(
    "configured",
    [set(), {MODIFIED}, {"RetainUIDs", FULL}, {"CleanGraphics", "CleanPixelData"}],
    ids=lambda o: "+".join(sorted(o)) or "none",
)
def test_method_attributes_state_what_was_done(configured: set[str]) -> None:
    ds = _read(get_testdata_file("CT_small.dcm"))
    old_study = ds.StudyInstanceUID
    settings = DeidSettings(uid_key=KEY, options=frozenset(configured), preset="tcia")
    _, back = _deid(ds, settings)
    in_force = [o for o in OPTIONS if o in TCIA_OPTIONS or (o in configured and o in OPTIONS)]
    in_force = [o for o in in_force if o not in TCIA_OVERRIDES]
    codes = [i.CodeValue for i in back.DeidentificationMethodCodeSequence]
    assert codes == ["113100"] + [OPTIONS[o][1] for o in in_force]
    assert {"113107", "113108", "113105", "113104", "113111"} <= set(codes)
    assert "113110" not in codes and "113106" not in codes
    assert list(back.DeidentificationMethod) == [
        "deid-node: TCIA preset",
        "PS3.15 Basic Profile",
        *in_force,
    ]
    assert back.LongitudinalTemporalInformationModified == "MODIFIED"
    assert back.PatientIdentityRemoved == "YES"
    assert back.StudyInstanceUID != old_study  # RetainUIDs is overridden: hashuid


# -- actions on a real file -------------------------------------------------------------


def _prepared() -> Dataset:
    ds = _read(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Lindqvist^Annika"
    ds.StudyDescription = "CT HEAD for Annika Lindqvist, call 555-123-4567"
    ds.ImageComments = "scanned after hours"
    ds.AccessionNumber = "ACC20130713"
    ds.PatientBirthDate = "19760616"
    ds.StudyTime = "101500"
    ds.DeviceSerialNumber = "SN-998877"
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.PatientSex = "F"
    ds.PatientAge = "037Y"
    ds.add_new(0x300E0008, "PN", "Reviewer^Rita")  # ReviewerName: hashname
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    ds.ReferencedStudySequence = Sequence([ref])  # process
    source = Dataset()
    source.ReferencedSOPClassUID = ds.SOPClassUID
    source.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    source.PatientID = "MRN-4711"  # lookup, nested
    ds.SourceImageSequence = Sequence([source])  # process
    person = Dataset()
    person.ValueType = "PNAME"
    person.PersonName = "Osborne^Nick"  # replace
    text = Dataset()
    text.ValueType = "TEXT"
    text.TextValue = "Discussed with Nick Osborne on 07/13/2013."
    ds.ContentSequence = Sequence([person, text])  # process
    return ds


def test_tcia_actions_on_a_real_file() -> None:
    original = _prepared()
    out, back = _deid(copy.deepcopy(original), TCIA)
    assert "ImageComments" not in back  # remove
    assert "DeviceSerialNumber" not in back and "InstitutionName" not in back
    assert "TimezoneOffsetFromUTC" not in back
    assert back.AccessionNumber == "" and back.PatientBirthDate == ""  # empty
    assert back.StudyDescription == "CT HEAD for, call"  # keep: cleaned spans only
    assert back.StudyTime == "101500"  # time
    assert back.StudyDate == _shifted(original.StudyDate)  # incrementdate
    assert back.PatientSex == "F" and back.PatientAge == "037Y"  # keep
    assert back.PatientName == PATIENT.pseudo_name and back.PatientID == PATIENT.pseudo_id
    assert back.SourceImageSequence[0].PatientID == PATIENT.pseudo_id  # lookup, nested
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == back.SOPInstanceUID
    # process: the sequence stays, its UIDs replaced (the table would empty it)
    assert len(back.ReferencedStudySequence) == 1
    assert back.ReferencedStudySequence[0].ReferencedSOPInstanceUID == back.StudyInstanceUID
    assert back[0x300E0008].value == keyed_hex("Reviewer^Rita", KEY)  # hashname
    assert back.ContentSequence[0].PersonName == "REMOVED"  # replace
    assert back.ContentSequence[1].TextValue == "Discussed with on."
    for secret in (b"Lindqvist", b"Annika", b"Osborne", b"555-123", b"Rita", b"4711", b"07/13"):
        assert secret not in out

    # the same file on the standard path: the table's choices
    _, standard = _deid(copy.deepcopy(original), DeidSettings(uid_key=KEY, options=MIDIB_OPTIONS))
    assert standard.ImageComments == "scanned after hours"  # C, nothing to clean
    assert standard.DeviceSerialNumber == "REMOVED"
    assert len(standard.ReferencedStudySequence) == 0
    assert standard.TimezoneOffsetFromUTC == "+0100"
    assert standard.SourceImageSequence[0].PatientID == "REMOVED"  # D in the table


def test_overlays_and_curves_are_removed() -> None:
    ds = _read(get_testdata_file("examples_overlay.dcm"))
    assert 0x60003000 in ds
    _, back = _deid(ds, TCIA)
    assert 0x60003000 not in back
    assert 0x60000010 in back  # overlay rows: TCIA is silent, the table keeps them


@needs_corpus
@pytest.mark.parametrize("path", CORPUS[::10], ids=lambda p: p.name[:40])
def test_tcia_output_passes_verify(path: Path) -> None:
    """No identifying value of the original anywhere in the output (private elements and
    sequences included), every date shifted, every UID replaced."""
    original = _read(path)
    _, back = _deid(_read(path), TCIA)
    findings = check_pair(original, back, profile_for(TCIA_OPTIONS))
    assert [f.describe() for f in findings if f.check != "missing"] == []


# -- the standard path -------------------------------------------------------------------

# Digests of the encoded output, taken before presets, the knowledge base and the text
# patterns existed (same pydicom): without a preset and without an option that cleans
# text, nothing may have changed by a byte.
_BEFORE = {
    (
        "modified",
        "CT_small.dcm",
    ): "a27d2951e11e24c0bd81478cc99692a700891c3ae1f8db952c8f48e28a9082eb",
    (
        "modified",
        "MR_small.dcm",
    ): "3cd1d60a93874b7ece3c38246b98e2c9d9a4d0075fa42624b57dd3b0757f9553",
    ("modified", "test-SR.dcm"): "90fee0da7d9910ff66f9a5278b654f86a76af3346f4f5b0adf6b502c76a23eaa",
    ("modified", "rtplan.dcm"): "853ba442f0101335e921ac9902cc781d8e6e89e27271c305223091c5c594af45",
    (
        "modified",
        "JPEG2000.dcm",
    ): "c75bab1a99c4557f0d89c54a2549eb6b4cc2ce54e4617896818591b189388128",
    ("basic", "CT_small.dcm"): "c5c9759ae5a2fea223c7ff70fdfed14c362c7bcc84bd9bdcdf7cf354fbadb24a",
    ("basic", "MR_small.dcm"): "204dc5869815bb0646e2ecc7f025518a39f0eab8d357fb77845d6fa3ab62292c",
    ("basic", "test-SR.dcm"): "7964dae976e05fcbedf18a2b68a7961d3dc69d9e8f85980a82329a71ab19a441",
    ("basic", "rtplan.dcm"): "0ff80f77487ff0ae52fd52f1b0942b5e48976f901511b96445d3da3f78d0bbfd",
    ("basic", "JPEG2000.dcm"): "d724c64a9c0310a20edb2cab3eb9d7abea3f00e09cda64d566b5265fd3ddf7e3",
    ("full_uids_dev", "CT_small.dcm"): (
        "da423e00b58fe16d4160685c0cb34dfeb4cafba058b08b844bbb662c5d2fbdec"
    ),
    ("full_uids_dev", "MR_small.dcm"): (
        "1225e4374779e6b0714870c8e25f20aa0215b77eb3783396ba54f91fb1f9840b"
    ),
    ("full_uids_dev", "test-SR.dcm"): (
        "6ebf218906ecb77c1e5982baa2af052ab3c6c1a05282e7ed2c65343133bad2a8"
    ),
    ("full_uids_dev", "rtplan.dcm"): (
        "35f58d11be05681e467b502aaa5a8344b51017a83d2212013c826ab9e4f7580f"
    ),
    ("full_uids_dev", "JPEG2000.dcm"): (
        "2e143c5cb67b64ed37b45030fc3c882368a4893c9d89e8ba7fd0104159def275"
    ),
}
_OPTION_SETS = {
    "modified": frozenset({MODIFIED}),
    "basic": frozenset(),
    "full_uids_dev": frozenset({FULL, "RetainUIDs", "RetainDeviceIdentity"}),
}


@pytest.mark.parametrize(("options", "name"), sorted(_BEFORE), ids=lambda v: str(v))
def test_standard_path_is_unchanged_without_a_preset(options: str, name: str) -> None:
    ds = _read(get_testdata_file(name))
    settings = DeidSettings(uid_key=KEY, options=_OPTION_SETS[options], preset=None)
    deidentify(ds, PATIENT, settings)
    assert hashlib.sha256(_encode(ds)).hexdigest() == _BEFORE[(options, name)]


@needs_corpus
def test_no_preset_is_the_plain_profile() -> None:
    for path in CORPUS[::15]:
        plain = _read(path)
        deidentify(plain, PATIENT, DeidSettings(uid_key=KEY, options=MIDIB_OPTIONS))
        explicit = _read(path)
        deidentify(explicit, PATIENT, DeidSettings(uid_key=KEY, options=MIDIB_OPTIONS, preset=""))
        assert _encode(plain) == _encode(explicit)
        assert plain.DeidentificationMethod[0] == "deid-node: PS3.15 Basic Profile"


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_file_with_tcia_preset(path: Path) -> None:
    """Every pydicom and deid-data sample: de-identified with the preset, written, read
    back whole, its UIDs valid and its known PHI gone."""
    _usable_sample(path)
    original, result, out, back = _run(path, settings=TCIA)
    assert _leaks(original, out, _pixel_bytes(original)) == []
    assert _pixel_bytes(back) == _pixel_bytes(original)
    for elem in back.iterall():
        if elem.VR == "UI" and elem.value:
            for uid in elem.value if isinstance(elem.value, MultiValue) else [elem.value]:
                assert len(uid) <= 64 and _UID.match(uid), (elem.tag, uid)
    if original.get("StudyInstanceUID"):
        assert back.StudyInstanceUID == result.uid_map[original.StudyInstanceUID]
    assert back.DeidentificationMethod[0] == "deid-node: TCIA preset"


@needs_corpus
def test_deferred_read_gives_the_same_output_with_the_preset() -> None:
    """Values read lazily from disk (dcmread defer_size) are loaded before the instance's
    identifying values are collected: the name typed into the description still goes."""
    path = next(p for p in CORPUS if "Davidson" in str(_read(p).get("StudyDescription", "")))
    eager = _read(path)
    deidentify(eager, PATIENT, TCIA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deferred = dcmread(path, defer_size=8)
    deidentify(deferred, PATIENT, TCIA)
    assert _encode(deferred) == _encode(eager)
    assert "Davidson" not in deferred.StudyDescription
