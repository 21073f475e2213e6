"""Cleaning of free text (the C action on descriptors, report text and kept comments).

Descriptions are kept under the Clean Descriptors option because they carry research
value ("CT CHEST W CONTRAST"), but operators type names, IDs and dates into them.
Cleaning removes only the identifying spans and keeps the rest of the text:

- the identifying values of the same instance (names, IDs, addresses, the birth date
  in its common spellings), collected at any depth before anything is changed;
- what identifies by its form wherever it comes from: names after a title ("Dr. Jane
  Smith"), phone and fax numbers, e-mail addresses, URLs, street addresses, a US state
  with its ZIP code (and the city before it), SSNs, labelled record numbers ("MRN:
  A12345"), long digit runs, and dates in their common written forms.

The patterns are written so that ordinary clinical text (``MR BRAIN WO/W CONTRAST``,
``L1-L5``, ``2.5 mm``, ``120 kVp``, ``C3/4``) never matches.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .vr import dictionary_vr as _dictionary_vr

MIN_LENGTH = 2
MIN_NUMBER = 4  # a purely numeric identifier shorter than this is no identifier in text

TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
PATIENT_BIRTH_DATE = 0x00100030

# Identifying attributes of Table E.1-1 that are free text or categories rather than
# identifiers: their words are not removed from other texts.
_NOT_IDENTIFIERS = frozenset(
    {
        "Arbitrary",
        "BranchOfService",
        "RegionOfResidence",
        "ConfidentialityConstraintOnPatientDataDescription",
        "CountryOfResidence",
        "DeviceDescription",
        "EthnicGroup",
        "GPSMapDatum",
        "GPSSatellites",
        "ImagePresentationComments",
        "LensMake",
        "LensModel",
        "MilitaryRank",
        "ModifiedImageDescription",
        "PatientReligiousPreference",
        "PatientTransportArrangements",
        "PreMedication",
        "SourceManufacturer",
        "SpecialNeeds",
        "TextComments",
        "TextString",
        "TopicKeywords",
        "TopicSubject",
        "TopicTitle",
    }
)
# Identifiers that are not rows of the table (or not with a text VR there).
_EXTRA_IDENTIFIERS = ("MedicalRecordLocator", "PatientTelephoneNumbers", "OtherPatientIDs")

# Words that fill name fields of test and template data ("Last Name^First Name",
# "Enter text", "ANONYMOUS"): they name nobody, and removing them from report text
# would take ordinary words with them.
PLACEHOLDER_WORDS = frozenset(
    [
        "name",
        "first",
        "last",
        "middle",
        "given",
        "family",
        "enter",
        "text",
        "test",
        "patient",
        "anonymous",
        "anonymized",
        "anonymised",
        "unknown",
        "removed",
        "none",
        "null",
    ]
)

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


def date_variants(value: str) -> list[str]:
    """Common spellings of a YYYYMMDD date as people type them into free text."""
    match = _DA.match(value.strip())
    if not match:
        return []
    y, m, d = match.groups()
    mi, di = str(int(m)), str(int(d))
    forms = {y + m + d, f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}"}
    for mm, dd in ((m, d), (mi, di)):
        for sep in "/-.":
            forms.add(f"{mm}{sep}{dd}{sep}{y}")
            forms.add(f"{dd}{sep}{mm}{sep}{y}")
    return sorted(forms)


def name_parts(value: str) -> list[str]:
    """Family, given and middle name parts of a PN value (all component groups).

    Prefix and suffix ("Mr", "Dr", "Jr") are left out: removing them from descriptions
    would take unrelated words with them and they do not identify anyone.
    """
    parts: list[str] = []
    for group in value.split("="):
        for component in group.split("^")[:3]:
            parts.extend(w for w in re.split(r"[\s,]+", component) if len(w) >= MIN_LENGTH)
    return parts


# -- collecting the instance's identifying values ---------------------------------------


@functools.cache
def identifier_tags() -> frozenset[int]:
    """Tags whose values identify a person, a visit or a place: the text rows of Table
    E.1-1 that the Basic Profile does not keep and no descriptor option cleans, less the
    free-text ones, plus a few identifiers the table lists under another VR."""
    text = resources.files("deid_node.data").joinpath("ps3.15-table-e1-1.json").read_text("utf-8")
    found: set[int] = set()
    for row in json.loads(text):
        ident = row["id"].lower()
        if "x" in ident or ident.startswith("gggg") or row["basicProfile"] == "K":
            continue
        if any(k in row for k in ("cleanDescOpt", "rtnLongModifDatesOpt")):
            continue
        tag = int(ident, 16)
        if keyword_for_tag(tag) in _NOT_IDENTIFIERS:
            continue
        if _dictionary_vr(tag) in TEXT_VRS:
            found.add(tag)
    from pydicom.datadict import tag_for_keyword

    found.update(int(tag_for_keyword(k)) for k in _EXTRA_IDENTIFIERS)
    return frozenset(found)


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, MultiValue | list | tuple):
        value = [value]  # note: PersonName and str are iterable but single values
    return [s for s in (str(v).strip("\x00 ") for v in value) if s]


def _usable(value: str) -> bool:
    if len(value) < MIN_LENGTH or value.lower() in PLACEHOLDER_WORDS:
        return False
    return not value.isdigit() or len(value) >= MIN_NUMBER


def collect_identifiers(ds: Dataset) -> list[str]:
    """Identifying values of ``ds`` (read before any change) to remove from its free
    text: names in every PN attribute and the values of identifying attributes, at any
    depth (a person named in an SR content item is removed from the report text too),
    and the spellings of the birth date. Longest first."""
    found: set[str] = set()
    _collect(ds, found, identifier_tags(), 0)
    return _longest_first(found)


def identifiers_dated_and_named(ds: Dataset) -> tuple[list[str], set[tuple[str, str]]]:
    """What :func:`collect_identifiers` gives, and the (VR, value) pairs of every DA,
    DT and PN value of the public elements at any depth (the dates and names a
    burned-in annotation may show, whichever attribute holds them), from one walk
    of the dataset: the pixel pass needs both, on every image."""
    found: set[str] = set()
    dated: set[tuple[str, str]] = set()
    _collect(ds, found, identifier_tags(), 0, dated)
    return _longest_first(found), dated


def _longest_first(found: set[str]) -> list[str]:
    return sorted((v for v in found if _usable(v)), key=lambda v: (-len(v), v))


def _collect(
    ds: Dataset,
    found: set[str],
    tags: frozenset[int],
    depth: int,
    dated: set[tuple[str, str]] | None = None,
) -> None:
    for item, t, raw, vr in _public_elements(ds, depth):
        if dated is not None and vr in ("DA", "DT"):
            dated.update((vr, value) for value in _values(item, t, raw))
        if vr == "PN":
            for value in _values(item, t, raw):
                found.update(name_parts(value))
                if dated is not None:
                    dated.add((vr, value))
        elif t in tags:
            for value in _values(item, t, raw):
                found.add(" ".join(value.split()))
                if "Address" in (keyword_for_tag(t) or ""):
                    found.update(p.strip() for p in value.split(",") if len(p.strip()) >= 4)
        elif t == PATIENT_BIRTH_DATE:
            for value in _values(item, t, raw):
                found.update(date_variants(value))


def _public_elements(ds: Dataset, depth: int = 0) -> Iterator[tuple[Dataset, int, Any, str]]:
    """(dataset, tag, raw element, VR) of every public element that is not a sequence,
    at any depth (sequence items up to 32 deep), without converting values: the VR
    is read from the raw element, or from the dictionary where the file left it out."""
    for tag, raw in list(ds.items()):
        t = int(tag)
        if (t >> 16) & 1:
            continue  # private: vendors' copies of the standard values, and system names
        vr = raw.VR
        if vr is None or vr == "UN":
            vr = _dictionary_vr(t)
        if vr == "SQ":
            if depth < 32:
                for item in ds[t].value or ():
                    if isinstance(item, Dataset):
                        yield from _public_elements(item, depth + 1)
        else:
            yield ds, t, raw, vr


def _values(ds: Dataset, tag: int, raw) -> list[str]:
    """The values of an element as strings. Plain ASCII (the common case) is split
    here; anything else is decoded by pydicom with the dataset's character set."""
    value = raw.value
    if isinstance(raw, RawDataElement) and value is None and raw.length:
        raw = ds.get_item(tag)  # deferred read: load it from the file now
        value = raw.value
    if isinstance(raw, RawDataElement) and isinstance(value, bytes):
        if value.isascii() and b"\x1b" not in value:
            return [v for v in (s.strip("\x00 ") for s in value.decode("ascii").split("\\")) if v]
        try:
            value = ds[tag].value  # decoded with the dataset's character set
        except Exception:
            value = value.decode("latin-1")
    return _strings(value)


# -- patterns ------------------------------------------------------------------------------

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_MON = r"(?:0?[1-9]|1[0-2])"
_YEAR = r"(?:1[89]\d\d|20\d\d)"
# Dates stand alone: not inside a number, a version or a word ("_" separates, as in
# "DWI_20130713_1").
_ALNUM_BEFORE = r"(?<![^\W_])"
_ALNUM_AFTER = r"(?![^\W_])"
_DATES = (
    # 2013-07-13T10:15:00+01:00
    rf"{_ALNUM_BEFORE}(?<![.:/-]){_YEAR}-{_MON}-{_DAY}T\d{{2}}:\d{{2}}(?::\d{{2}}(?:\.\d+)?)?"
    rf"(?:Z|[+-]\d{{2}}:?\d{{2}})?{_ALNUM_AFTER}",
    # 2013-07-13, 2013/7/13
    rf"{_ALNUM_BEFORE}(?<![.:/-]){_YEAR}(?P<s1>[-/.]){_MON}(?P=s1){_DAY}"
    rf"{_ALNUM_AFTER}(?![/-]|\.\d)",
    # 07/13/2013, 13.07.2013, 7-13-2013
    rf"{_ALNUM_BEFORE}(?<![.:/-]){_DAY}(?P<s2>[-/.]){_DAY}(?P=s2){_YEAR}"
    rf"{_ALNUM_AFTER}(?![/-]|\.\d)",
    # 20130713
    rf"{_ALNUM_BEFORE}(?<!\.){_YEAR}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
    rf"{_ALNUM_AFTER}(?![.,]\d)",
    # 13 Jul 2013, 13-JUL-2013, 13th July, 2013
    rf"(?i:{_ALNUM_BEFORE}(?<!\.){_DAY}(?:st|nd|rd|th)?[ -]?{_MONTH}\.?,?[ -]?{_YEAR}"
    rf"{_ALNUM_AFTER})",
    # Jul 13 2013, July 13, 2013
    rf"(?i:{_ALNUM_BEFORE}(?<!\.){_MONTH}\.?[ -]{_DAY}(?:st|nd|rd|th)?,?[ -]{_YEAR}"
    rf"{_ALNUM_AFTER})",
    # July 2013, Sep1999, SEP-1999
    rf"(?i:{_ALNUM_BEFORE}(?<!\.){_MONTH}\.?,?[ -]?{_YEAR}{_ALNUM_AFTER})",
    # 1999-09, 1999/09 (a year and a month)
    rf"{_ALNUM_BEFORE}(?<![.:/-]){_YEAR}[-/](?:0[1-9]|1[0-2]){_ALNUM_AFTER}(?![-/.]\d)",
    # 09/23/99, 23-09-99, 23.09.99 (two-digit years; dotted only with two-digit fields,
    # which versions such as 1.5.10 do not have)
    rf"{_ALNUM_BEFORE}(?<![.:/-]){_DAY}(?P<s3>[-/]){_DAY}(?P=s3)\d{{2}}{_ALNUM_AFTER}(?![-/.]\d)",
    rf"{_ALNUM_BEFORE}(?<![.:/-])(?:0[1-9]|[12]\d|3[01])\.(?:0[1-9]|[12]\d|3[01])\.\d{{2}}"
    rf"{_ALNUM_AFTER}(?![-/.]\d)",
)

# A title, then one or two capitalised name words (an initial may stand between them).
# Titles are matched with their usual capitalisation only: "MR BRAIN" and "MS PROTOCOL"
# are modalities and diagnoses, "DR." with its full stop is a title.
_TITLE = r"(?:Dr|Mr|Mrs|Ms|Mx|Miss|Prof|Doctor)\.?|(?:DR|MR|MRS|MS|PROF)\."
_CAPITALISED = r"(?:Mc|Mac|O')?[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_UPPER = r"[A-Z]{2,}(?:[-'][A-Z]{2,})?"
_NAMES = (
    rf"(?<![\w.])(?:{_TITLE})\s+(?:{_CAPITALISED}\s+)?(?:[A-Z]\.?\s+)?{_CAPITALISED}(?!\w)",
    # all capitals: one word, a second only where the text or the clause ends
    rf"(?<![\w.])(?:{_TITLE})\s+{_UPPER}(?:\s+(?:[A-Z]\.?\s+)?{_UPPER}(?=\s*(?:$|[,;:)])))?(?!\w)",
)

_PHONES = (
    # 555-123-4567, (555) 123-4567, 555.123.4567, +1 555 123 4567, with an extension
    r"(?<![\w.+/-])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"(?:\s?(?:x|ext\.?|#)\s?\d{1,5})?(?![\w/-]|\.\d)",
    # international: +49 30 1234567, +44 (0)20 7946 0958
    r"(?<![\w+])\+(?=(?:[ .()-]{0,2}\d){8})[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}"
    r"(?:[ .-]?\d{2,8}){1,3}(?![\w/-]|\.\d)",
    # labelled: Tel: 030/1234567, Fax 0049-30-123456
    r"(?i:(?<!\w)(?:tel|phone|ph|fax|mobile|cell|pager)\.?\s*(?:no\.?|number|#)?\s*[:.]?\s*)"
    r"\+?\(?\d[\d ()./-]{5,}\d(?!\w)",
)

_EMAILS = (r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+",)
_URLS = (
    r"(?i:\b(?:https?|ftp)://[^\s<>\"]*[^\s<>\".,;:!?)\]]"
    r"|\bwww\.[\w-]+(?:\.[\w-]+)+(?:/[^\s<>\"]*[^\s<>\".,;:!?)\]])?)",
)

_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|"
    "NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR|GU|VI|AS|MP|AA|AE|AP"
)
# Street suffixes (USPS, as generators of synthetic data use them) in their written
# form, less those that are anatomy or clinical words too (Wall, Neck, Crest, Spur,
# Branch, Junction, Port, Loop, Field, View, Plain, Rest, Point, Run, Station, Center).
_SUFFIX_TEXT = (
    "Alley Annex Arcade Avenue Ave Bayou Beach Bluff Bluffs Bottom Boulevard Blvd "
    "Bridge Bridges Brook Brooks Burg Burgs Bypass Camp Canyon Cape Causeway "
    "Circle Circles Cir Cliff Cliffs Club Common Commons Corner Corners Court "
    "Courts Ct Cove Coves Creek Crescent Crossing Crossroad Dale Dam Divide "
    "Drive Drives Dr Estate Estates Expressway Extension Extensions Falls Ferry "
    "Flat Flats Ford Fords Forest Forge Forges Fort Freeway Garden "
    "Gardens Gateway Glen Glens Green Greens Grove Groves Harbor Harbors Haven Heights "
    "Highway Hwy Hill Hills Hollow Inlet Island Islands Isle Key Keys "
    "Knoll Knolls Lake Lakes Land Landing Lane Ln Light Lights Loaf Lock Locks Lodge "
    "Mall Manor Manors Meadow Meadows Mews Mill Mills Mission Motorway Mount Mountain "
    "Mountains Orchard Oval Overpass Park Parks Parkway Parkways Pkwy Pass Passage "
    "Pike Pine Pines Place Pl Plains Plaza Points Prairie Radial Ramp "
    "Ranch Rapid Rapids Ridge Ridges River Road Roads Rd Route Row Rue Shoal Shoals Shore "
    "Shores Skyway Spring Springs Square Squares Sq Stravenue Stream Street "
    "Streets St Summit Terrace Ter Throughway Trace Trafficway Trail Trl Trailer "
    "Tunnel Turnpike Underpass Unions Valley Valleys Via Viaduct Villa Village Villages "
    "Ville Vista Walk Walks Way Ways Well Wells"
)
# In all-capital text only the unmistakable suffixes count ("2 LATERAL VIEWS DR" is
# no address).
_SUFFIX_CAPS_TEXT = (
    "STREET ST AVENUE AVE ROAD RD LANE LN DRIVE BOULEVARD BLVD HIGHWAY HWY PARKWAY PKWY "
    "COURT PLACE TERRACE MANOR INLET SQUARE TRAIL"
)
_SUFFIX_WORDS = _SUFFIX_TEXT.split()
_SUFFIX_CAPS = _SUFFIX_CAPS_TEXT.split()
_SUFFIX_MIXED = "|".join(sorted(_SUFFIX_WORDS, key=len, reverse=True))
_SUFFIX_UPPER = "|".join(sorted(_SUFFIX_CAPS, key=len, reverse=True))
_UNIT = r"(?:\.?,?\s+(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Room|Rm\.?|#)\s*[A-Za-z]?\d+[A-Za-z]?)?"
_CITY_STATE_ZIP = (
    r"(?:\.?,?\s+(?:[A-Z][a-z]+\s+){0,2}[A-Z][a-z]+)?,\s*(?:"
    + _STATES
    + r")\s+\d{5}(?:-\d{4})?(?!\w)"
)
_ADDRESSES = (
    # 334 Michael Manor, 45166 Morgan Walks Suite 852 East Aaron, KS 93919
    rf"(?<![\w.])\d{{1,6}}\s+(?:{_CAPITALISED}\s+){{1,3}}(?:{_SUFFIX_MIXED})(?!\w)"
    rf"{_UNIT}(?:{_CITY_STATE_ZIP})?",
    rf"(?<![\w.])\d{{1,6}}\s+(?:[A-Z]{{2,}}\s+){{1,3}}(?:{_SUFFIX_UPPER})(?!\w){_UNIT}",
    # military: Unit 4899 Box 3625 DPO AP 93015, PSC 1234, Box 5678, APO AE 12345
    r"\b(?:Unit|PSC)\s+\d{3,5},?\s+Box\s+\d{3,5}(?:,?\s+[ADF]PO\s+A[AEP]\s+\d{5})?",
    r"\b(?:USNS|USNV|USS|USCGC)\s+[A-Z][a-z]+(?:,?\s+FPO\s+A[AEP]\s+\d{5})?",
    r"\b[ADF]PO\s+A[AEP]\s+\d{5}\b",
    # City, ST 12345 (a bare "ID 12345" is no address)
    r"(?:\b(?:[A-Z][a-z]+\s+){0,2}[A-Z][a-z]+|\b(?:[A-Z]+\s+){0,2}[A-Z]+),\s*(?:"
    + _STATES
    + r")\s+\d{5}(?:-\d{4})?(?![\w-])",
)

_IDS = (
    r"(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-])",  # SSN
    r"(?<![\w.,/:-])\d{9,}(?![\w/:-]|[.,]\d)",  # a long digit run: an MRN, an accession
)
# A labelled number: the label stays ("MRN:"), the value goes.
_LABELLED = re.compile(
    r"(?<!\w)(?P<label>(?:MRN|MR\s?\#|MR\s?No\.?|Med(?:ical)?\s+Rec(?:ord)?\.?"
    r"(?:\s+(?:No\.?|Number|\#))?|Patient\s+ID|Pat\.?\s*ID|PID|Acc(?:ession)?"
    r"(?:\s*(?:No\.?|Number|\#))?|SSN|Soc\.?\s*Sec\.?(?:\s*(?:No\.?|\#))?|ID)"
    r"\s*(?:[:\#=]\s*|\s+))"
    r"(?P<value>(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{3,})(?![\w-])",
    re.IGNORECASE,
)

PATTERN_KINDS = {
    "date": _DATES,
    "name": _NAMES,
    "phone": _PHONES,
    "email": _EMAILS,
    "url": _URLS,
    "address": _ADDRESSES,
    "id": _IDS,
}


@functools.cache
def _patterns() -> re.Pattern[str]:
    # Longer structures first: a URL before the e-mail inside it, an address before
    # the ZIP code at its end.
    order = ("url", "email", "address", "phone", "name", "date", "id")
    parts = [p for kind in order for p in PATTERN_KINDS[kind]]
    return re.compile("|".join(f"(?:{p})" for p in parts))


# Characters without which no pattern can match: most clinical texts skip the search.
_TRIGGER = re.compile(
    r"\d{3}|\d[/.-]\d\d?[/.-]\d\d|@|://|www\.|\b(?:Dr|DR|Mr|MR|Mrs|MRS|Ms|MS|Mx|Miss|Prof|PROF|Doctor)\b"
    r"|(?i:\b(?:mrn|id|pid|acc|accession|ssn|soc|med|medical|patient|pat|box|psc)\b)"
    rf"|\d\s+[A-Z][A-Za-z]*\s+(?:[A-Za-z]+\s+){{0,2}}(?i:{_SUFFIX_UPPER}|{_SUFFIX_MIXED})\b"
)


def remove_patterns(value: str) -> str:
    """``value`` without the spans that identify by their form (see the module text)."""
    marked = _mark_patterns(value)
    return value if marked is value else _tidy(marked)


def _mark_patterns(value: str) -> str:
    if not _TRIGGER.search(value):
        return value
    out = _patterns().sub(_MARK, value)
    out = _LABELLED.sub(lambda m: m["label"].rstrip() + _MARK, out)
    return value if out == value else out


# -- identifiers -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _pattern(identifiers: tuple[str, ...]) -> re.Pattern[str] | None:
    words = sorted({w for w in identifiers if len(w) >= MIN_LENGTH}, key=len, reverse=True)
    if not words:
        return None
    alternatives = "|".join(r"\s+".join(re.escape(p) for p in w.split()) for w in words)
    # A word boundary that treats "_" as a separator too ("DOE_JOHN" contains "DOE").
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)


# Where a span was taken out: the mark, with the blanks around it. Before punctuation
# or at the end of a line it goes with its blanks ("on 07/13/2013." -> "on."); anywhere
# else one blank stays between the words on either side, or none where the span was
# glued to them ("DWI_20130713_1" -> "DWI__1").
_MARK = "\ue000"  # a private-use character: never in DICOM text
_MARK_BEFORE_STOP = re.compile(r"[ \t]*\ue000[\ue000 \t]*(?=[.,;:!?)\]\r\n]|$)")
_MARK_BETWEEN = re.compile(r"[ \t]*\ue000[\ue000 \t]*")


def _between(match: re.Match[str]) -> str:
    # one blank where the span had blanks around it; none where it was glued in
    return " " if match.group().strip(_MARK) else ""


def _tidy(marked: str) -> str:
    return _MARK_BETWEEN.sub(_between, _MARK_BEFORE_STOP.sub("", marked)).strip(" ")


def clean_text(value: str, identifiers: list[str], patterns: bool = True) -> str:
    """Remove from ``value`` every whole-word, case-insensitive occurrence of
    ``identifiers`` and (with ``patterns``) every span that identifies by its form; only
    the blanks around what was removed are tidied, the rest of the text stays as it
    was."""
    if not value:
        return value
    marked = _mark_patterns(value) if patterns else value
    pattern = _pattern(tuple(identifiers)) if identifiers else None
    if pattern is not None:
        marked = pattern.sub(_MARK, marked)
    if marked is value or _MARK not in marked:
        return value
    return _tidy(marked)
