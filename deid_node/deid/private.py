"""The Retain Safe Private option, decided by TCIA's private tag knowledge base.

PS3.15 lets a de-identifier keep private attributes it knows to be safe. Which ones are
safe is vendor knowledge; The Cancer Imaging Archive curates it as a table of private
element signatures (group, private creator, element byte, and for nested elements the
sequence path above them) with a disposition each:

- ``k`` keep, ``d`` delete, ``h`` hash (a UID or an identifier: replaced by a keyed,
  consistent value), ``o`` offset (a date, shifted like the standard dates), ``oi``
  offset integer (a date as seconds since 1970, shifted by the same number of days),
  ``na`` not applicable (delete).

Everything the table does not list is deleted, and so is anything whose disposition is
empty or unknown.

Data: ``tcia-private-tag-kb.csv``, TCIA's private tag knowledge base (02-01-2024), as
formatted in MIC-DKFZ/miccai2024_midi-b-submission (Apache-2.0).
"""

from __future__ import annotations

import csv
import functools
import hmac
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from .dates import shift_date, shift_datetime

KEEP = "k"
DELETE = "d"
HASH = "h"
OFFSET = "o"
OFFSET_SECONDS = "oi"
DISPOSITIONS = frozenset({KEEP, DELETE, HASH, OFFSET, OFFSET_SECONDS})

# One step of a path: (group, private creator, element byte) for a private element,
# (group, None, element) for a standard one.
Segment = tuple[int, str | None, int]
Signature = tuple[Segment, ...]

# When one signature has rows that disagree (the VR an element was seen with decides in
# the table), an element of another VR gets the most protective of them.
_PROTECTIVE = (DELETE, HASH, OFFSET, OFFSET_SECONDS, KEEP)

_SEGMENT = re.compile(r"^\(([0-9a-fA-F]{4}),(.*)\)$")
_STANDARD = re.compile(r"^[0-9a-fA-F]{4}$")
# The creator may contain commas ("A.L.I. Technologies, Inc."); quotes around it are
# not reliable in the file (one side is often lost), so both are optional.
_PRIVATE = re.compile(r'^"?(.*?)"?,([0-9a-fA-F]{2})$', re.DOTALL)
_STEP = re.compile(r"\[<\d+>\]")


def normalise_creator(creator: str) -> str:
    """How a private creator is compared: lower case, padding stripped (inner spaces are
    significant: "SIEMENS CM VA0  CMS")."""
    return creator.strip("\x00 ").lower()


def parse_signature(pattern: str) -> Signature | None:
    """``(0008,1084)[<0>](312f,"Ramsoft ...",10)`` -> ((0x0008, None, 0x1084),
    (0x312F, "ramsoft ...", 0x10)); None when the text is not a signature."""
    segments: list[Segment] = []
    for text in _STEP.split(pattern.strip()):
        match = _SEGMENT.match(text.strip())
        if match is None:
            return None
        group, rest = int(match[1], 16), match[2]
        if _STANDARD.match(rest):
            segments.append((group, None, int(rest, 16)))
            continue
        private = _PRIVATE.match(rest)
        if private is None:
            return None
        segments.append((group, normalise_creator(private[1]), int(private[2], 16)))
    return tuple(segments) if segments else None


def _disposition(text: str) -> str:
    value = text.strip().lower()
    return value if value in DISPOSITIONS else DELETE  # na, empty, anything else


@dataclass(frozen=True)
class Rule:
    """The dispositions of one signature, per VR it was seen with."""

    by_vr: Mapping[str, str]
    merged: str  # for a VR the table has no row for

    def disposition(self, vr: str | None) -> str:
        """The row for ``vr``; an element whose VR is not known ("" or UN) takes the
        row of the other unknown spelling; any other VR the most protective row."""
        if vr is not None:
            found = self.by_vr.get(vr)
            if found is None and vr in ("", "UN"):
                found = self.by_vr.get("UN" if vr == "" else "")
            if found is not None:
                return found
        return self.merged


def load_rules(text: str) -> dict[Signature, Rule]:
    """Parse the knowledge base CSV (``element_sig_pattern, tag_name, vr,
    private_disposition``)."""
    rows: dict[Signature, dict[str, set[str]]] = {}
    for row in csv.DictReader(io.StringIO(text.lstrip("\ufeff"))):
        signature = parse_signature(row.get("element_sig_pattern") or "")
        if signature is None:
            continue
        vr = (row.get("vr") or "").strip().upper()
        seen = rows.setdefault(signature, {}).setdefault(vr, set())
        seen.add(_disposition(row.get("private_disposition") or ""))
    rules: dict[Signature, Rule] = {}
    for signature, per_vr in rows.items():
        by_vr = {vr: _most_protective(found) for vr, found in per_vr.items()}
        merged = _most_protective(set(by_vr.values()))
        rules[signature] = Rule(MappingProxyType(by_vr), merged)
    return rules


def _most_protective(found: set[str]) -> str:
    return next(d for d in _PROTECTIVE if d in found)


@functools.cache
def knowledge_base() -> Mapping[Signature, Rule]:
    """The packaged TCIA private tag knowledge base (parsed once per process)."""
    text = resources.files("deid_node.data").joinpath("tcia-private-tag-kb.csv").read_text("utf-8")
    return MappingProxyType(load_rules(text))


def lookup(path: Signature, leaf: Segment, vr: str | None = None) -> tuple[str, Rule] | None:
    """Disposition of the element ``leaf`` found under ``path`` (the sequences above it),
    with the rule it came from; None when the table does not know it.

    A signature with the exact path wins; an element the table lists only at the top
    level is judged by that row wherever it sits (the vendor's meaning does not change
    with nesting).
    """
    rules = knowledge_base()
    rule = rules.get((*path, leaf)) if path else None
    if rule is None:
        rule = rules.get((leaf,))
    if rule is None:
        return None
    return rule.disposition(vr), rule


# -- value transforms -------------------------------------------------------------------

_UID_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_INT_RANGES: dict[str, tuple[int, int]] = {
    "US": (0, 2**16),
    "SS": (0, 2**15),
    "UL": (0, 2**32),
    "SL": (0, 2**31),
    "UV": (0, 2**64),
    "SV": (0, 2**63),
    "IS": (0, 2**31),
}
HEX_LENGTH = 16  # fits SH (16 characters)


def keyed_hex(value: str, key: bytes) -> str:
    """A short keyed hash of ``value``: the same input and key always give the same
    output, and it cannot be reversed without the key."""
    digest = hmac.new(key, b"deid-node/hash\x00" + value.encode("utf-8", "surrogatepass"), "sha256")
    return digest.hexdigest()[:HEX_LENGTH].upper()


def keyed_int(value: str, key: bytes, vr: str) -> int:
    low, high = _INT_RANGES.get(vr, (0, 2**31))
    digest = hmac.new(key, b"deid-node/int\x00" + value.encode("utf-8", "surrogatepass"), "sha256")
    return low + int.from_bytes(digest.digest()[:8], "big") % (high - low)


def looks_like_uid(text: str) -> bool:
    return bool(_UID_TEXT.match(text)) and len(text) <= 64


def shift_date_text(text: str, days: int) -> str | None:
    """Shift a date written as text in a private element: DICOM DA/DT form
    (``20130713``, ``20130713101500.5``, ranges, several values), or ISO
    (``2013-07-13``, ``2013-07-13 10:15:00``, ``2013-07-13T10:15``). None when the text
    is not such a date (the caller then deletes the element)."""
    text = text.strip("\x00 ")
    if not text:
        return ""
    iso = _ISO.match(text)
    if iso:
        shifted = shift_date(iso[1].replace("-", ""), days)
        if not shifted:
            return None
        return f"{shifted[:4]}-{shifted[4:6]}-{shifted[6:]}{iso[2]}"
    if not _DICOM_DATE.match(text):
        return None
    shifted = shift_datetime(text, days)
    return shifted or None


_ISO = re.compile(
    r"^(\d{4}-\d{2}-\d{2})((?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?)$"
)
_DICOM_DATE = re.compile(r"^[0-9.+\-\\ ]{4,}$")
