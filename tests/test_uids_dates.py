"""UID replacement, date shifting and free-text cleaning: the value-level building blocks."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from deid_node.deid.dates import shift_date, shift_datetime
from deid_node.deid.text import (
    clean_text,
    collect_identifiers,
    date_variants,
    name_parts,
    remove_patterns,
)
from deid_node.deid.uids import make_uid

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_ROOTS = st.sampled_from(
    [
        "2.25.",
        "2.25",
        "1.2.826.0.1.3680043.8.498.",
        "1.3.6.1.4.1.99999.1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.",
        "1.2.3",
        "0.1.",
    ]
)
_DATES = st.dates(min_value=date(1800, 1, 1), max_value=date(2200, 12, 31))
_OFFSETS = st.integers(min_value=-40_000, max_value=40_000)


def _da(d: date) -> str:
    return f"{d.year:04d}{d.month:02d}{d.day:02d}"


# -- make_uid ----------------------------------------------------------------------------


@given(original=st.text(max_size=80), key=st.binary(max_size=64), root=_ROOTS)
def test_make_uid_is_a_valid_uid(original: str, key: bytes, root: str) -> None:
    uid = make_uid(original, key, root)
    assert len(uid) <= 64
    assert _UID.match(uid), uid
    assert uid.startswith(root if root.endswith(".") else root + ".")
    assert make_uid(original, key, root) == uid  # deterministic


def test_make_uid_default_root_is_128_bit_decimal() -> None:
    uid = make_uid("1.2.3.4", b"key")
    assert uid.startswith("2.25.")
    assert int(uid[5:]) < 2**128
    assert uid == make_uid("1.2.3.4", b"key", "2.25.")


def test_make_uid_fills_the_room_under_a_long_root() -> None:
    root = "1.2.826.0.1.3680043.8.498."
    uid = make_uid("1.2.3.4", b"key", root)
    assert len(uid) == 64


def test_make_uid_depends_on_value_and_key_but_not_padding() -> None:
    a = make_uid("1.2.840.113619.2.55.3.1", b"k1")
    assert make_uid("1.2.840.113619.2.55.3.2", b"k1") != a
    assert make_uid("1.2.840.113619.2.55.3.1", b"k2") != a
    assert make_uid("1.2.840.113619.2.55.3.1\x00", b"k1") == a
    assert make_uid("1.2.840.113619.2.55.3.1 ", b"k1") == a


@pytest.mark.parametrize("root", ["", "1..2.", "01.2.", "1.2.a.", "1.2.3" * 30])
def test_make_uid_rejects_bad_roots(root: str) -> None:
    with pytest.raises(ValueError):
        make_uid("1.2.3", b"k", root)


# -- shift_date --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20200301", -1, "20200229"),  # leap year
        ("20190301", -1, "20190228"),
        ("19000301", -1, "19000228"),  # 1900: not a leap year
        ("20000301", -1, "20000229"),  # 2000: leap year
        ("20000229", 365, "20010228"),
        ("20000229", 366, "20010301"),
        ("20240229", -1461, "20200229"),
        ("20201231", 1, "20210101"),
        ("20200115", 0, "20200115"),
        ("2020.03.01", -1, "20200229"),  # ACR-NEMA spelling, written as DA
        ("20200101-20201231", -10, "20191222-20201221"),  # range
        ("-20200110", -10, "-20191231"),
        ("20200110-", -10, "20191231-"),
        ("20200110\\20200210", 5, "20200115\\20200215"),  # multi-valued
        ("20200110 ", 1, "20200111"),  # padding
        ("", -5, ""),
        ("   ", -5, ""),
    ],
)
def test_shift_date(value: str, days: int, expected: str) -> None:
    assert shift_date(value, days) == expected


@pytest.mark.parametrize(
    "value", ["2020", "202001", "20201301", "20200230", "yesterday", "2020-13-45"]
)
def test_shift_date_never_leaks_what_it_cannot_parse(value: str) -> None:
    assert shift_date(value, -30) == ""


def test_shift_date_out_of_range_is_dropped() -> None:
    assert shift_date("00010101", -1) == ""
    assert shift_date("99991231", 1) == ""


@given(d=_DATES, days=_OFFSETS)
def test_shift_date_matches_calendar_and_inverts(d: date, days: int) -> None:
    shifted = shift_date(_da(d), days)
    assert shifted == _da(d + timedelta(days=days))
    assert shift_date(shifted, -days) == _da(d)


@given(a=_DATES, b=_DATES, days=_OFFSETS)
def test_shift_date_keeps_intervals(a: date, b: date, days: int) -> None:
    def parse(s: str) -> date:
        return date(int(s[:4]), int(s[4:6]), int(s[6:]))

    sa, sb = parse(shift_date(_da(a), days)), parse(shift_date(_da(b), days))
    assert sb - sa == b - a


# -- shift_datetime ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "days", "expected"),
    [
        ("20200301120000", -1, "20200229120000"),
        ("20200301120000.123456", -1, "20200229120000.123456"),
        ("20200301120000.123456-0500", -1, "20200229120000.123456-0500"),
        ("20200301235959+1400", 1, "20200302235959+1400"),
        ("202003011200", -1, "202002291200"),
        ("2020030112", -1, "2020022912"),
        ("20200301", -1, "20200229"),
        ("20200301-0500", -1, "20200229-0500"),
        ("202003", -10, "202003"),  # month precision: the middle of March moves to March
        ("202003", -20, "202002"),
        ("2020", -100, "2020"),  # year precision: the middle of 2020 stays in 2020
        ("2020", -200, "2019"),
        ("2020+0100", -200, "2019+0100"),
        ("20200101000000-20200102000000", -1, "20191231000000-20200101000000"),
        ("20200101120000-0500-20200102", -1, "20191231120000-0500-20200101"),
        ("-20200101", -1, "-20191231"),
        ("20200101-", -1, "20191231-"),
        ("2020-2021", -200, "2019-2020"),
        ("20200101\\20200102", 1, "20200102\\20200103"),
        ("", 3, ""),
    ],
)
def test_shift_datetime(value: str, days: int, expected: str) -> None:
    assert shift_datetime(value, days) == expected


@pytest.mark.parametrize("value", ["20200230120000", "2020030112000x", "202003011200+9999", "noon"])
def test_shift_datetime_never_leaks_what_it_cannot_parse(value: str) -> None:
    assert shift_datetime(value, 7) == ""


@given(
    d=_DATES,
    days=_OFFSETS,
    time=st.from_regex(r"\A([01][0-9]|2[0-3])([0-5][0-9])([0-5][0-9])(\.[0-9]{1,6})?\Z"),
    tz=st.sampled_from(["", "+0000", "-0500", "+0530", "+1400", "-1200"]),
)
def test_shift_datetime_keeps_time_fraction_and_offset(
    d: date, days: int, time: str, tz: str
) -> None:
    value = _da(d) + time + tz
    shifted = shift_datetime(value, days)
    assert shifted == _da(d + timedelta(days=days)) + time + tz
    assert shift_datetime(shifted, -days) == value


# -- text cleaning -----------------------------------------------------------------------


def test_clean_text_removes_whole_words_case_insensitively() -> None:
    ids = ["DAVIDSON", "DOUGLAS", "292821506"]
    assert clean_text("XR CHEST for Douglas Davidson", ids) == "XR CHEST for"
    assert clean_text("MRN 292821506 follow up", ids) == "MRN follow up"
    assert clean_text("Douglasville clinic", ids) == "Douglasville clinic"  # not a word
    assert clean_text("DOUGLAS_DAVIDSON scan", ids) == "_ scan"
    assert clean_text("nothing here", ids) == "nothing here"
    assert clean_text("anything", []) == "anything"
    assert clean_text("", ids) == ""


def test_clean_text_escapes_regex_characters() -> None:
    assert clean_text("id A+B.(1) done", ["A+B.(1)"]) == "id done"
    assert clean_text("id AxB.(1) done", ["A+B.(1)"]) == "id AxB.(1) done"


def test_birth_date_variants_are_removed() -> None:
    variants = date_variants("19760616")
    for form in ("19760616", "1976-06-16", "06/16/1976", "16.06.1976", "6/16/1976"):
        assert form in variants
        assert clean_text(f"born {form} in X", variants) == "born in X"
    assert date_variants("1976") == []


def test_name_parts_skip_prefix_and_suffix() -> None:
    assert name_parts("Davidson^Douglas^J^Mr^Jr") == ["Davidson", "Douglas"]
    assert name_parts("Van Der Berg^Anna Maria") == ["Van", "Der", "Berg", "Anna", "Maria"]
    assert name_parts("Yamada^Tarou=山田^太郎") == ["Yamada", "Tarou", "山田", "太郎"]


# -- identifying patterns in free text --------------------------------------------------

# Descriptions, protocols and comments as scanners and RIS write them: not one character
# of them may go.
CLINICAL_TEXTS = [
    "CHEST PA AND LATERAL",
    "CT ABDOMEN PELVIS W CONTRAST",
    "MR BRAIN WO/W CONTRAST",
    "T2 FLAIR AX",
    "3D TOF",
    "Dose 5 mGy",
    "2.5 mm",
    "120 kVp",
    "L1-L5",
    "C3/4",
    "MRI ABDOMEN PELVIS W+WO CONT",
    "CT HIP W/O CONTRAST,BILAT",
    "XR C Spine Comp Min 4 Views",
    "5.10 WALL  CHEST ABDOMEN PELVIS WITH CONTRAST",
    "NEPHRO  4.0  B40f  M_0.4",
    "Sn ULTRAVIST 240/200ML\r\nNS/100ML, ISTAT=0.7 mg/dL",
    "G1.0e#1.60+0.20,MDR0.2AM0.6",
    "Lossy compression with JPEG baseline, IJG quality factor 90, compression ratio 15.512",
    "JPEG 2000 irreversible (lossy) 2097:1",
    "SmartScore - Gated 0.5 sec",
    "Medium Soft Tissue 20-55 lb",
    "Seizure, new, acute, hx of trauma, > 18 yrs~RIS COMMENTS- CT 776 NO CONTRAST AT ALL",
    "Q53.21-Abdominal testis, bilateral;; Z13.820-Encounter for screening",
    "MS PROTOCOL",
    "DR CHEST 2 VIEWS",
    "2 LATERAL VIEWS DR",
    "MRS single voxel TE 35",
    "1.1 Routine Brain",
    "US CHEST WALL/SOFT TISSUE",
    "CT, HEAD/BRAIN WO CONTRAST",
    "LIVER-PELVIS/HASTE_AXIAL_P",
    "Vendor: DRC; Product: BRICK/ARRAY; Version: v1.0",
    "PET/CT 1 Bed 3 min",
    "FOV 350 mm 512 x 512",
    "CTDIvol 12.34 mGy DLP 456.7 mGy*cm",
    "Series 1001 Acq 3 Img 45",
    "ECG 12 lead 25 mm/s 10 mm/mV",
    "TR 2000 TE 80 b=1000 s/mm2",
    "Mammo MLO CC 2 views",
    "2 Iliac Crest lesions",
    "1 Chest Port placement",
    "T1 MPRAGE 1x1x1mm",
    "120kV 250mAs 0.625 mm x 64",
    "Time 12:30:45",
    "UTC offset +0100",
    "window 400/40",
    "follow-up in 3 months",
    "Contrast 100 ml Omnipaque 350 at 3 ml/s",
    "Stress test 10 METS",
]

# Identifying spans (left) inside ordinary text: the span goes, the text stays.
PHI_SPANS = [
    "Dr. John Smith",
    "Dr Smith",
    "Mrs. Jane Doe",
    "DR. SMITH",
    "Prof. Anna Schmidt",
    "555-123-4567",
    "(555) 123-4567",
    "245.688.0307x852",
    "+49 30 1234567",
    "+44 (0)20 7946 0958",
    "Tel: 030/1234567",
    "Fax 0049-30-123456",
    "jane.doe@example.org",
    "https://example.org/p?id=3",
    "www.example.com/x",
    "334 Michael Manor Sarahview, PA 56560",
    "12148 Donna Overpass Apt. 115 North Sherry, TN 60972",
    "7296 Wyatt Light Suite 457 Port Kristi, CO 16956",
    "Unit 4899 Box 3625 DPO AP 93015",
    "123 MAIN STREET",
    "42 Baker Street",
    "Springfield, IL 62704",
    "123-45-6789",
    "123456789012",
    "2013-07-13",
    "07/13/2013",
    "13.07.2013",
    "13 Jul 2013",
    "Jul 13 2013",
    "July 13, 2013",
    "13-JUL-2013",
    "20130713",
]


@pytest.mark.parametrize("text", CLINICAL_TEXTS)
def test_clinical_text_is_not_touched(text: str) -> None:
    assert clean_text(text, []) == text
    assert remove_patterns(text) == text


@pytest.mark.parametrize("span", PHI_SPANS)
def test_identifying_spans_are_removed_and_nothing_else(span: str) -> None:
    assert remove_patterns(span) == ""
    assert clean_text(f"CT HEAD W/O {span} follow-up", []) == "CT HEAD W/O follow-up"
    assert clean_text(f"seen {span}.", []) == "seen."


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("MRN: A1234567 follow up", "MRN: follow up"),  # the label stays
        ("Patient ID 98765 CT", "Patient ID CT"),
        ("Acc# 20010706E403961", "Acc#"),
        ("ID 2", "ID 2"),  # too short to be a record number
        ("XR CHEST for Dr. John Smith, call 555-123-4567", "XR CHEST for, call"),
        ("CT 2013-07-13\r\nnext line", "CT\r\nnext line"),
        ("DR. SMITH CHEST PA", "CHEST PA"),  # all capitals: one name word
        ("ref DR. JOHN SMITH", "ref"),  # ... two where the clause ends
        ("POST  CONTRAST 07/13/2013", "POST  CONTRAST"),  # other spacing kept
    ],
)
def test_pattern_cleaning_keeps_the_rest(text: str, cleaned: str) -> None:
    assert clean_text(text, []) == cleaned


def test_patterns_can_be_switched_off() -> None:
    assert clean_text("call 555-123-4567", [], patterns=False) == "call 555-123-4567"
    assert clean_text("DOE call 555-123-4567", ["DOE"], patterns=False) == "call 555-123-4567"


def test_identifiers_are_collected_at_any_depth() -> None:
    ds = Dataset()
    ds.PatientName = "Davidson^Douglas"
    ds.PatientID = "292821506"
    ds.AccessionNumber = "12"  # too short to find in text
    ds.PatientBirthDate = "19760616"
    ds.InstitutionAddress = "334 Michael Manor, Sarahview, PA 56560"
    ds.EthnicGroup = "NEURO"  # a category, not an identifier
    item = Dataset()
    item.PersonName = "Okonkwo^Adaeze"
    inner = Dataset()
    inner.VerifyingObserverName = "Enter^Text"  # placeholders name nobody
    inner.OtherPatientIDs = "E40404040404"
    item.ContentSequence = Sequence([inner])
    ds.ContentSequence = Sequence([item])
    ds.add_new(0x00331013, "PN", "Private^Copy")  # private: not collected
    found = collect_identifiers(ds)
    for value in (
        "Davidson",
        "Douglas",
        "292821506",
        "Okonkwo",
        "Adaeze",
        "E40404040404",
        "1976-06-16",
        "06/16/1976",
        "334 Michael Manor, Sarahview, PA 56560",
        "Sarahview",
    ):
        assert value in found
    for value in ("12", "NEURO", "Enter", "Text", "Private", "Copy"):
        assert value not in found
    assert found == sorted(found, key=lambda v: (-len(v), v))


def test_dates_glued_to_words_and_iso_datetimes() -> None:
    assert clean_text("DWI_20130713_1", []) == "DWI__1"
    assert clean_text("T1 2013-07-13T10:15:00+01:00 post", []) == "T1 post"
    assert clean_text("v2013.1.2 and 1.2.840.2013.07.13", []) == "v2013.1.2 and 1.2.840.2013.07.13"
    assert clean_text("ratio 20130713.5", []) == "ratio 20130713.5"
