"""The one matcher of original identifiers in a de-identified dataset: the leak gate
of the pipeline (:mod:`deid_node.deid.gate`) and ``deid-node verify`` both use it.

The needles are the original's identifying values (:func:`identifying_values`):
names and their parts, IDs, addresses, institution, physicians, the birth date in
every common spelling; whichever the profile in force does not keep. They are
looked for, as whole words, in every element that can hold free text, at any
depth, private and file meta included (:func:`find_hits`). A hit says where (tags
only) and what kind of value, never the value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from deid_node.deid.profile import Profile, action_for, build_profile, canonical_option
from deid_node.deid.text import date_variants, identifier_tags

DEFER_SIZE = 64 * 1024  # larger values (pixel data) stay on disk and are not searched
MIN_NAME_PART = 3  # name parts shorter than this are too common to report
MIN_VALUE = 3  # likewise for other values (alphanumeric characters)
MIN_NUMBER = 4  # purely numeric values ("1", "42") appear everywhere

# Text VRs: the Table E.1-1 rows of these VRs are where identifying text lives.
TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
# VRs searched for leaked values: everything that can hold free text.
HAYSTACK_VRS = TEXT_VRS | {"AE", "UR", "UN"}

PIXEL_DATA = 0x7FE00010
PATIENT_BIRTH_DATE = 0x00100030
# Written by the node itself (fixed text): not searched.
_NODE_WRITTEN = frozenset({0x00120062, 0x00120063, 0x00120064, 0x00280303})

# Name parts of the placeholder names test and template data use ("Last Name^First
# Name", "Test^S R", "Enter text"): ordinary words wherever else they appear ("Person
# Observer Name", coding scheme "TEST"), so not reported.
PLACEHOLDER_NAME_PARTS = frozenset(
    "name first last middle given family enter text test patient anonymous unknown".split()  # noqa: SIM905
)
# The equipment's maker (Manufacturer, Manufacturer's Model Name), which every profile
# keeps. A site named like its vendor (a vendor's own lab: InstitutionName "TOSHIBA",
# Manufacturer "TOSHIBA_MEC") shows the vendor there, not the site: an organisation's
# name found in these is no leak. People's names, IDs and dates still are.
MAKER_TAGS = frozenset({0x00080070, 0x00081090})
ORGANISATION_KINDS = frozenset({"InstitutionName", "InstitutionalDepartmentName"})


# A place in a dataset: ((tag, item index), ...) from the top; the leaf has index -1.
PathKey = tuple[tuple[int, int], ...]


def tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@functools.lru_cache(maxsize=4096)
def tag_name(tag: int) -> str:
    if (tag >> 16) & 1:
        return "private" if tag & 0xFFFF >= 0x0100 else "private creator"
    return keyword_for_tag(tag) or "unknown"


def render_path(path: PathKey) -> str:
    """``(0040,0275)[0].(0040,0007) ScheduledProcedureStepDescription``."""
    parts = [tag_text(t) + (f"[{i}]" if i >= 0 else "") for t, i in path]
    return ".".join(parts) + " " + tag_name(path[-1][0])


def _cheap_vr(raw: object, tag: int) -> str:
    """An element's VR without converting its value: as read (explicit VR), else
    the dictionary's; undefined length means a sequence; unknown is UN."""
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    if isinstance(raw, RawDataElement) and raw.length == 0xFFFFFFFF:
        return "SQ"
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def walk(
    ds: Dataset, prefix: PathKey = (), wanted: Callable[[int, str], bool] | None = None
) -> Iterator[tuple[PathKey, DataElement]]:
    """Every element of ``ds`` with its place, items of sequences at any depth included
    (with ``wanted``, only the elements it accepts by tag and VR, and sequences to
    look into: the others are not converted from their raw bytes, which is most of
    the cost on a large header).

    Values that were deferred (larger than :data:`DEFER_SIZE`, i.e. pixel data) are not
    read. An element whose value does not convert is given with its raw bytes.
    """
    for tag in list(ds.keys()):
        t = int(tag)
        try:
            raw = ds.get_item(t, keep_deferred=True)
        except Exception:
            continue
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            continue  # deferred: too large to be searched
        if wanted is not None:
            vr = _cheap_vr(raw, t)
            if vr != "SQ" and not wanted(t, vr):
                continue
        if isinstance(raw, DataElement):
            elem = raw  # converted already: no second lookup
        else:
            try:
                elem = ds[t]
            except Exception:
                if not isinstance(raw, RawDataElement):
                    continue
                elem = DataElement(t, raw.VR or "UN", raw.value or b"")
        key = (*prefix, (t, -1))
        if wanted is None or elem.VR != "SQ" or wanted(t, "SQ"):
            yield key, elem
        if elem.VR == "SQ" and elem.value:
            for i, item in enumerate(elem.value):
                if isinstance(item, Dataset):
                    yield from walk(item, (*prefix, (t, i)), wanted)


def element_strings(elem: DataElement) -> list[str]:
    """The values of ``elem`` as strings; bytes are read as Latin-1."""
    value = elem.value
    if value is None or elem.VR == "SQ":
        return []
    if isinstance(value, bytes | bytearray):
        if len(value) > DEFER_SIZE:
            return []
        text = bytes(value).decode("latin-1").replace("\x00", " ").strip()
        return [v.strip() for v in text.split("\\") if v.strip()]
    if isinstance(value, MultiValue | list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip("\x00 ")
    return [text] if text else []


def searchable(path: PathKey, elem: DataElement) -> bool:
    """Whether an element (at ``path``) is searched for leaked values."""
    return path[0][0] not in _NODE_WRITTEN and _haystack(path[-1][0], elem.VR)


def _haystack(tag: int, vr: str) -> bool:
    if tag == PIXEL_DATA:
        return False
    if vr in HAYSTACK_VRS:
        return True
    # Code strings hold defined terms ("TEXT", "HEAD"), where a name part would only
    # match by chance; private ones, and private binary values, can hold anything.
    return bool((tag >> 16) & 1) and vr in ("CS", "OB", "OW")


@functools.cache
def identifying_rows() -> dict[int, str]:
    """The engine's own identifying tags (text rows of Table E.1-1 that identify),
    with their keywords for the report."""
    return {tag: keyword_for_tag(tag) or f"{tag:08X}" for tag in identifier_tags()}


def profile_for(options: Iterable[str], preset: str | None = None) -> Profile:
    """The profile of ``options`` (any spelling) and ``preset``, as the engine builds it."""
    return build_profile(frozenset(canonical_option(o) for o in options), preset)


def _phi_tags(profile: Profile) -> dict[int, str]:
    """Identifying tags the profile does not keep (K) or clean (C)."""
    return {
        tag: kw
        for tag, kw in identifying_rows().items()
        if action_for(profile, tag) not in ("K", "C")
    }


@dataclass(frozen=True)
class Needle:
    kind: str  # "PatientName part", "PatientID", ...
    source: str  # "(0010,0010) PatientName"
    value: str
    pattern: re.Pattern[str]


_SPLIT_NAME = re.compile(r"[\s,^=]+")
_DUMMIES = frozenset({"REMOVED", "ANONYMOUS", "ANONYMIZED"})


def _bounded(text: str) -> re.Pattern[str]:
    # Whole words only, "_" counting as a separator ("DOE_JOHN" contains "DOE").
    body = r"\s+".join(re.escape(w) for w in text.split())
    return re.compile(rf"(?<![^\W_]){body}(?![^\W_])", re.IGNORECASE)


def _name_parts(value: str) -> list[str]:
    parts = []
    for group in value.split("="):
        for component in group.split("^")[:3]:  # family, given, middle
            parts.extend(w for w in _SPLIT_NAME.split(component) if len(w) >= MIN_NAME_PART)
    return parts


def _long_enough(value: str) -> bool:
    alnum = sum(c.isalnum() for c in value)
    if value.isdigit():
        return alnum >= MIN_NUMBER
    return alnum >= MIN_VALUE


def identifying_values(ds: Dataset, profile: Profile) -> list[Needle]:
    """Identifying values of the original ``ds`` (any depth) that must not survive."""
    phi = _phi_tags(profile)
    needles: dict[tuple[str, str], Needle] = {}

    def add(kind: str, source: str, value: str) -> None:
        value = " ".join(value.split())
        if not _long_enough(value) or value.upper() in _DUMMIES:
            return
        key = (kind, value.lower())
        if key not in needles:
            needles[key] = Needle(kind, source, value, _bounded(value))

    for path, elem in walk(ds, wanted=lambda tag, _vr: tag in phi or tag == PATIENT_BIRTH_DATE):
        tag = path[-1][0]
        if tag == PATIENT_BIRTH_DATE and action_for(profile, tag) != "K":
            source = render_path(path)
            for value in element_strings(elem):
                for variant in date_variants(value):
                    add("PatientBirthDate", source, variant)
            continue
        keyword = phi.get(tag)
        if keyword is None:
            continue
        source = render_path(path)
        for value in element_strings(elem):
            if elem.VR == "PN" or isinstance(elem.value, PersonName):
                for part in _name_parts(value):
                    add(f"{keyword} part", source, part)
            else:
                add(keyword, source, value)
    return sorted(needles.values(), key=lambda n: (-len(n.value), n.kind))


def reportable(needles: Iterable[Needle]) -> list[Needle]:
    """The needles worth looking for: not the placeholder name parts, which are
    ordinary words wherever else they appear."""
    return [
        n
        for n in needles
        if not (n.kind.endswith(" part") and n.value.lower() in PLACEHOLDER_NAME_PARTS)
    ]


@dataclass(frozen=True)
class Hit:
    """An original identifying value found in an output: where, and of what kind."""

    path: PathKey
    where: str  # rendered path: tags only, never the value
    kind: str  # "PatientName part", "PatientID", ...
    source: str  # the original attribute it came from
    in_meta: bool = False


def find_hits(output: Dataset, needles: list[Needle]) -> list[Hit]:
    """Where the values of ``needles`` occur in ``output`` (file meta included):
    one hit per kind of value and element."""
    needles = reportable(needles)
    if not needles:
        return []
    # One pattern for all: most elements hold none of the values, and one search
    # tells; the needles are tried one by one only where it finds something.
    any_needle = re.compile("|".join(f"(?:{n.pattern.pattern})" for n in needles), re.IGNORECASE)
    found: dict[tuple[str, str], Hit] = {}
    sources: list[tuple[bool, Iterable[tuple[PathKey, DataElement]]]] = [
        (False, walk(output, wanted=_haystack))
    ]
    meta = getattr(output, "file_meta", None)
    if meta is not None:
        sources.insert(0, (True, walk(meta, wanted=_haystack)))
    for in_meta, source in sources:
        for path, elem in source:
            if not searchable(path, elem):
                continue
            texts = element_strings(elem)
            if not texts or not any(any_needle.search(t) for t in texts):
                continue
            where = render_path(path)
            maker = path[-1][0] in MAKER_TAGS
            for needle in needles:
                if (needle.kind, where) in found or (maker and needle.kind in ORGANISATION_KINDS):
                    continue
                if any(needle.pattern.search(t) for t in texts):
                    found[(needle.kind, where)] = Hit(
                        path, where, needle.kind, needle.source, in_meta
                    )
    return list(found.values())
