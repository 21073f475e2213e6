"""Retain Safe Private with the TCIA private tag knowledge base.

The table itself (parsing its loosely quoted signatures, its dispositions) and what the
engine does with it on real files from pydicom, deid-data and the shared corpus: kept,
hashed, shifted and removed private elements, at the top level and inside sequences.
Every output is encoded and read back.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from datetime import date, timedelta
from pathlib import Path

import deid_data
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from deid_node.deid.engine import DeidSettings, PatientPseudonym, deidentify, handle_private
from deid_node.deid.private import (
    Rule,
    keyed_hex,
    knowledge_base,
    load_rules,
    lookup,
    parse_signature,
    shift_date_text,
)
from deid_node.deid.profile import build_profile
from deid_node.deid.text import PLACEHOLDER_WORDS
from tests.dicom_io import encode_quietly as _encode
from tests.dicom_io import read_quietly as _read

KEY = b"test-uid-key"
MODIFIED = "RetainLongitudinalTemporalInformationModifiedDates"
FULL = "RetainLongitudinalTemporalInformationFullDates"
OFFSET = -1234
PATIENT = PatientPseudonym("PSEUDO-0001", "PSEUDO^0001", OFFSET)
SAFE = DeidSettings(uid_key=KEY, options=frozenset({"RetainSafePrivate", MODIFIED}))
TCIA = DeidSettings(uid_key=KEY, options=frozenset({MODIFIED}), preset="tcia")

_DEID_DATA = Path(os.path.dirname(deid_data.__file__)) / "data"
_SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
CORPUS = sorted((_SHARED / "corpus" / "pseudo-phi-burned-in").glob("*.dcm"))
needs_corpus = pytest.mark.skipif(not CORPUS, reason="shared corpus not present")


def _roundtrip(ds: Dataset, settings: DeidSettings = SAFE, patient: PatientPseudonym = PATIENT):
    result = deidentify(ds, patient, settings)
    out = _encode(ds)
    back = dcmread(io.BytesIO(out))
    for elem in back.iterall():  # everything decodes
        _ = elem.value
    return result, out, back


def _shifted(da: str, days: int = OFFSET) -> str:
    d = date(int(da[:4]), int(da[4:6]), int(da[6:8])) + timedelta(days=days)
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


def _private(ds: Dataset) -> dict[int, object]:
    return {int(e.tag): e.value for e in ds if e.tag.group & 1}


# -- the knowledge base ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "signature"),
    [
        ('(0019,"GEMS_ACQU_01",10)', ((0x0019, "gems_acqu_01", 0x10),)),
        # the CSV lost the opening quote of most creators
        ('(0019,GEMS_ACQU_01",9d)', ((0x0019, "gems_acqu_01", 0x9D),)),
        # a comma inside the creator
        ('(3711,A.L.I. Technologies, Inc.",0c)', ((0x3711, "a.l.i. technologies, inc.", 0x0C),)),
        # inner spaces are part of the creator
        ('(0013,SIEMENS CM VA0  CMS",10)', ((0x0013, "siemens cm va0  cms", 0x10),)),
        ("(0009,,02)", ((0x0009, "", 0x02),)),
        (
            '(0008,1115)[<0>](0008,1140)[<1>](0009,GEIIS_RA1000",01)',
            ((0x0008, None, 0x1115), (0x0008, None, 0x1140), (0x0009, "geiis_ra1000", 0x01)),
        ),
        (
            '(2005,Philips MR Imaging DD 001",80)[<0>](0008,1155)',
            ((0x2005, "philips mr imaging dd 001", 0x80), (0x0008, None, 0x1155)),
        ),
        ("not a signature", None),
        ("(0019,GEMS_ACQU_01,1)", None),
    ],
)
def test_signature_parsing(pattern: str, signature: tuple | None) -> None:
    assert parse_signature(pattern) == signature


def test_dispositions_are_normalised_and_chosen_by_vr() -> None:
    rules = load_rules(
        "\ufeffelement_sig_pattern,tag_name,vr,private_disposition\n"
        '"(0029,MITRA MARKUP 1.0"",06)",Markup7,OB,k\n'
        '"(0029,MITRA MARKUP 1.0"",06)",Markup7,UN,d\n'
        '"(0019,GEMS_ACQU_01"",10)",x,DS, k\n'
        '"(0019,GEMS_ACQU_01"",11)",x,SS,K\n'
        '"(0019,GEMS_ACQU_01"",12)",x,SS,\n'
        '"(0019,GEMS_ACQU_01"",13)",x,SS,na\n'
        '"(0019,GEMS_ACQU_01"",14)",x,LO,oi\n'
        '"(0019,GEMS_ACQU_01"",15)",x,,k\n'
        '"(0019,GEMS_ACQU_01"",16)",x,DA,o\n'
        '"(0019,GEMS_ACQU_01"",16)",x,LO,h\n'
    )
    markup = rules[((0x0029, "mitra markup 1.0", 0x06),)]
    assert markup.disposition("OB") == "k"
    assert markup.disposition("UN") == "d"
    assert markup.disposition("LO") == "d"  # another VR: the most protective row
    acqu = {sig[0][2]: rule for sig, rule in rules.items() if sig[0][1] == "gems_acqu_01"}
    assert acqu[0x10].disposition("DS") == "k"  # " k"
    assert acqu[0x11].disposition("SS") == "k"  # "K"
    assert acqu[0x12].disposition("SS") == "d"  # empty: unknown, deleted
    assert acqu[0x13].disposition("SS") == "d"  # na
    assert acqu[0x14].disposition("LO") == "oi"
    assert acqu[0x15].disposition("") == "k"  # seen without a VR
    assert acqu[0x15].disposition("UN") == "k"  # an unknown VR either way
    assert acqu[0x16].merged == "h"  # hash protects more than an offset


def test_packaged_knowledge_base() -> None:
    kb = knowledge_base()
    assert len(kb) > 6000
    assert all(isinstance(rule, Rule) for rule in list(kb.values())[:50])
    assert lookup((), (0x0019, "gems_acqu_01", 0x9D), "DT")[0] == "o"  # Pulse Sequence Date
    assert lookup((), (0x0009, "gems_iden_01", 0xE3), "UI")[0] == "h"  # Equipment UID
    assert lookup((), (0x0009, "gems_iden_01", 0x27), "SL")[0] == "oi"  # Image Actual Date
    assert lookup((), (0x0019, "gems_acqu_01", 0x03), "DS")[0] == "k"
    assert lookup((), (0x0031, "mitra linked attributes 1.0", 0x20), "LO")[0] == "d"
    assert lookup((), (0x0031, "acme private 1.0", 0x20), "LO") is None  # not listed
    nested = ((0x0008, None, 0x1115), (0x0008, None, 0x1140))
    assert lookup(nested, (0x0009, "geiis_ra1000", 0x01), "CS")[0] == "k"
    assert lookup((), (0x0009, "geiis_ra1000", 0x01), "CS") is None  # only nested


def test_dates_written_as_text() -> None:
    assert shift_date_text("20130713", -3) == "20130710"
    assert shift_date_text("20130713101500.5", 1) == "20130714101500.5"
    assert shift_date_text("2013-07-13", -13) == "2013-06-30"
    assert shift_date_text("2013-07-13 10:15:00", 1) == "2013-07-14 10:15:00"
    assert shift_date_text("2013-07-13T10:15+01:00", 1) == "2013-07-14T10:15+01:00"
    assert shift_date_text("", 5) == ""
    assert shift_date_text("yesterday", 5) is None
    assert shift_date_text("20131313", 5) is None


# -- real files ------------------------------------------------------------------------


def test_ct_small_kept_shifted_and_removed() -> None:
    original = _read(get_testdata_file("CT_small.dcm"))
    result, out, back = _roundtrip(_read(get_testdata_file("CT_small.dcm")))
    kept = _private(back)
    # k: kept as they were
    for tag in (0x00091001, 0x00091004, 0x00191003, 0x00271041, 0x00431018):
        assert kept[tag] == original[tag].value
    assert kept[0x00090010] == "GEMS_IDEN_01"
    # d: the station name copy, binary blobs, counters the table does not trust
    for tag in (0x00091002, 0x00431028, 0x0043102A, 0x00211007, 0x000910E7):
        assert tag not in kept
    assert b"CT01" not in out.replace(bytes(original.PixelData), b"")
    # oi: a date as seconds since 1970 moves by the patient's offset
    seconds = OFFSET * 86400
    assert kept[0x00091027] == original[0x00091027].value + seconds
    assert kept[0x000910E9] == original[0x000910E9].value + seconds
    assert kept[0x00231070] == pytest.approx(original[0x00231070].value + seconds)
    assert result.actions["private_shifted"] == 3
    assert result.actions["private_kept"] > 100
    assert result.actions["private_removed"] >= 10
    method = [item.CodeValue for item in back.DeidentificationMethodCodeSequence]
    assert "113111" in method


def test_creator_stays_only_with_a_kept_element() -> None:
    ds = _read(_DEID_DATA / "humans" / "ctbrain1.dcm")
    assert ds[0x00310010].value == "MITRA LINKED ATTRIBUTES 1.0"
    _, _, back = _roundtrip(ds)
    kept = _private(back)
    assert 0x00310010 not in kept and 0x00311020 not in kept  # the table deletes it
    assert kept[0x00190010] == "SIEMENS CT VA0  COAD"  # block with kept elements
    blocks = {(t & 0xFFFF0000) | ((t & 0xFF00) >> 8) for t in kept if t & 0xFFFF >= 0x1000}
    creators = {t for t in kept if 0x10 <= t & 0xFFFF <= 0xFF}
    assert creators == blocks


@pytest.mark.parametrize(
    "name",
    [
        "ultrasounds/GREYSCALE_IMAGE.dcm",
        "ultrasounds/RGB_IMAGE.dcm",
        "humans/ctbrain1.dcm",
        "humans/ctbrain2.dcm",
    ],
)
@pytest.mark.parametrize("settings", [SAFE, TCIA], ids=["RetainSafePrivate", "tcia"])
def test_phi_in_private_tags_does_not_survive(name: str, settings: DeidSettings) -> None:
    """deid-data carries an other-patient ID in (0031,1020), the patient's and the
    referring physician's names in (0033,1013) and (0033,1019), and a copy of the
    clinical history in (0033,100C): the ID and the names may not leave anywhere (words
    that fill test names, like "TEST", name nobody), the private copies not at all."""
    original = _read(_DEID_DATA / name)
    other_id = str(original[0x00311020].value)
    names = [str(original[t].value) for t in (0x00331013, 0x00331019)]
    assert other_id and all(names) and original[0x0033100C].value
    _, out, back = _roundtrip(_read(_DEID_DATA / name), settings)
    text = out.replace(bytes(original.PixelData), b"").decode("latin-1")
    assert other_id not in text
    for value in names:
        for word in re.findall(r"[^\W_]{3,}", value):
            if word.lower() in PLACEHOLDER_WORDS:
                continue
            assert not re.search(rf"(?<![^\W_]){word}(?![^\W_])", text, re.IGNORECASE), name
    for tag in (0x00311020, 0x00331013, 0x00331019, 0x0033100C, 0x00330010, 0x00310010):
        assert tag not in back


def test_hashed_private_values_are_keyed_consistent_and_valid() -> None:
    ds = _read(get_testdata_file("CT_small.dcm"))
    study = ds.StudyInstanceUID
    ds.add_new(0x000910E3, "UI", study)  # GEMS_IDEN_01 Equipment UID: h
    ds.add_new(0x00090011, "LO", "GEMS_PETD_01")
    ds.add_new(0x00091107, "LO", "EXAM-4711")  # GEMS_PETD_01 Exam ID: h
    ds.add_new(0x0009110A, "LO", study)  # Scan ID, a UID written as LO: h
    ds.add_new(0x00090012, "LO", "FDMS 1.0")
    ds.add_new(0x00091205, "UN", study.encode() + b"\x00" * (len(study) % 2))  # Image UID
    result, out, back = _roundtrip(ds)
    # a UID goes through the same map as every other UID: references stay consistent
    assert back[0x000910E3].value == back.StudyInstanceUID == result.uid_map[study]
    assert back[0x0009110A].value == back.StudyInstanceUID
    assert back[0x00091205].value.rstrip(b"\x00").decode() == back.StudyInstanceUID
    assert back[0x00091107].value == keyed_hex("EXAM-4711", KEY)
    assert len(back[0x00091107].value) == 16 and b"EXAM-4711" not in out
    assert back[0x00090011].value == "GEMS_PETD_01"
    assert result.actions["private_hashed"] == 4
    assert study.encode() not in out
    again = _read(get_testdata_file("CT_small.dcm"))
    again.add_new(0x00090011, "LO", "GEMS_PETD_01")
    again.add_new(0x00091107, "LO", "EXAM-4711")
    deidentify(again, PATIENT, DeidSettings(uid_key=b"other", options=SAFE.options))
    assert again[0x00091107].value not in ("EXAM-4711", back[0x00091107].value)


def test_private_dates_written_as_text_are_shifted_or_removed() -> None:
    ds = _read(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00090011, "LO", "GEMS_PETD_01")
    ds.add_new(0x00091105, "LO", "2013-07-13 10:15:00")  # Patient DateTime: o
    ds.add_new(0x0009110D, "SH", "20130713101500")  # Scan Date Time: o
    ds.add_new(0x0009110E, "LO", "not a date")  # Scan Ready: o, unreadable -> removed
    _, out, back = _roundtrip(ds)
    new_day = _shifted("20130713")
    assert back[0x00091105].value == f"{new_day[:4]}-{new_day[4:6]}-{new_day[6:]} 10:15:00"
    assert back[0x0009110D].value == new_day + "101500"
    assert 0x0009110E not in back
    assert b"2013-07-13" not in out and b"20130713" not in out


@needs_corpus
def test_corpus_private_dates_are_shifted() -> None:
    """The corpus GE MR files carry a private DT (GEMS_ACQU_01 Pulse Sequence Date, o)
    and a date written as the number YYYYMMDD where GE puts seconds (Image Actual Date,
    oi): both move by the patient's offset."""
    paths = [p for p in CORPUS if 0x0019109D in _read(p)]
    assert paths
    for path in paths[:3]:
        original = _read(path)
        _, _, back = _roundtrip(_read(path))
        old = str(original[0x0019109D].value)
        assert str(back[0x0019109D].value) == _shifted(old[:8]) + old[8:]
        if 0x00091027 in original:
            number = original[0x00091027].value
            assert back[0x00091027].value == int(_shifted(str(number)))
        assert back[0x00130010].value == "CTP"  # kept: its block has kept elements


def test_private_dates_under_full_dates_and_without_a_date_option() -> None:
    original = _read(get_testdata_file("CT_small.dcm"))
    full = DeidSettings(uid_key=KEY, options=frozenset({"RetainSafePrivate", FULL}))
    _, _, back = _roundtrip(_read(get_testdata_file("CT_small.dcm")), full)
    assert back[0x00091027].value == original[0x00091027].value  # kept as it is
    bare = DeidSettings(uid_key=KEY, options=frozenset({"RetainSafePrivate"}))
    _, _, back = _roundtrip(_read(get_testdata_file("CT_small.dcm")), bare)
    assert 0x00091027 not in back and 0x00231070 not in back  # dates removed
    assert back[0x00191003].value == original[0x00191003].value


def test_private_elements_inside_sequences_are_judged_by_their_path() -> None:
    ds = _read(get_testdata_file("MR_small.dcm"))
    sop = ds.SOPInstanceUID
    # standard sequences above a private element: the table keeps it only there
    image = Dataset()
    image.ReferencedSOPClassUID = ds.SOPClassUID
    image.ReferencedSOPInstanceUID = sop
    image.add_new(0x00090010, "LO", "GEIIS_RA1000")
    image.add_new(0x00091001, "CS", "KEEPME")
    series = Dataset()
    series.SeriesInstanceUID = ds.SeriesInstanceUID
    series.ReferencedImageSequence = Sequence([image])
    ds.ReferencedSeriesSequence = Sequence([series])
    ds.add_new(0x00090010, "LO", "GEIIS_RA1000")
    ds.add_new(0x00091001, "CS", "DROPME")  # same element at the top: not listed
    # a private sequence the table keeps, with private and standard elements inside
    plan = Dataset()
    plan.add_new(0x20050010, "LO", "Philips MR Imaging DD 001")
    plan.add_new(0x2005103F, "SL", 5)  # k under this path
    plan.add_new(0x20051040, "SL", 7)  # d under this path
    plan.ReferencedSOPInstanceUID = sop  # standard UID: replaced like everywhere
    plan.PatientName = "Someone^Else"  # standard PHI: the table still applies
    ds.add_new(0x20050010, "LO", "Philips MR Imaging DD 001")
    ds.add_new(0x20051080, "SQ", Sequence([plan]))
    # a kept private sequence with a standard element the table deletes there
    ves = Dataset()
    ves.AccessionNumber = "ACC-99887766"
    ves.add_new(0x00510010, "LO", "GEMS_CT_VES_01")
    ds.add_new(0x00510010, "LO", "GEMS_CT_VES_01")
    ds.add_new(0x00511001, "SQ", Sequence([ves]))

    result, out, back = _roundtrip(ds)
    nested = back.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert nested[0x00091001].value == "KEEPME"
    assert nested[0x00090010].value == "GEIIS_RA1000"
    assert 0x00091001 not in back and 0x00090010 not in back
    item = back[0x20051080].value[0]
    assert item[0x2005103F].value == 5
    assert 0x20051040 not in item
    assert item.ReferencedSOPInstanceUID == back.SOPInstanceUID == result.uid_map[sop]
    assert str(item.get("PatientName", "")) in ("", PATIENT.pseudo_name)
    assert b"Someone" not in out
    ves_item = back[0x00511001].value[0]
    assert "AccessionNumber" not in ves_item
    assert b"ACC-99887766" not in out


def test_kept_private_text_is_cleaned_of_the_instance_identifiers() -> None:
    ds = _read(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Lindqvist^Annika"
    ds[0x00091004].value = "HiSpeed Lindqvist 555-123-4567"  # k (SH)
    _, out, back = _roundtrip(ds)
    assert back[0x00091004].value == "HiSpeed"
    assert b"Lindqvist" not in out and b"555-123" not in out


def test_implicit_vr_file_is_judged_like_the_explicit_one() -> None:
    """Written with implicit VR, private elements come back without their VR; the
    private dictionary (or the table's rows seen without a VR) stands in."""
    ds = _read(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf)
    implicit = dcmread(io.BytesIO(buf.getvalue()))
    assert implicit.get_item(0x00191003).VR is None
    _, _, back_implicit = _roundtrip(implicit)
    _, _, back_explicit = _roundtrip(_read(get_testdata_file("CT_small.dcm")))
    assert _private(back_implicit) == _private(back_explicit)
    assert 0x00091002 not in back_implicit  # the station name copy, whatever its VR


def test_without_key_and_offset_only_kept_values_survive() -> None:
    ds = _read(get_testdata_file("CT_small.dcm"))
    private = [int(t) for t in ds.keys() if t.group & 1]  # noqa: SIM118
    removed = handle_private(ds, private, build_profile(frozenset({"RetainSafePrivate"})))
    assert 0x00091027 in removed  # oi needs the offset
    assert 0x00191003 not in removed and 0x00191003 in ds
    kept = {int(t) for t in ds.keys() if t.group & 1}  # noqa: SIM118
    assert set(removed) | kept == set(private)
    ds = _read(get_testdata_file("CT_small.dcm"))
    assert handle_private(ds, private, build_profile(frozenset())) == private
    assert not [t for t in ds.keys() if t.group & 1]  # noqa: SIM118
