"""Cleaning of free text (the C action on descriptors).

Descriptions are kept under the Clean Descriptors option because they carry research
value ("CT CHEST W CONTRAST"), but operators type patient names and IDs into them. This
module removes the identifying values of the same instance; a later issue extends it.
"""

from __future__ import annotations

import functools
import re

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

MIN_LENGTH = 2

# Top-level attributes whose values identify the patient or the visit.
_NAME_KEYWORDS = (
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "OperatorsName",
    "RequestingPhysician",
)
_ID_KEYWORDS = (
    "PatientID",
    "OtherPatientIDs",
    "AccessionNumber",
    "AdmissionID",
    "MedicalRecordLocator",
    "PatientTelephoneNumbers",
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


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)  # by keyword: the value, not the element
    if value is None:
        return []
    if not isinstance(value, MultiValue | list | tuple):
        value = [value]  # note: PersonName and str are iterable but single values
    return [str(v).strip() for v in value if str(v).strip()]


def collect_identifiers(ds: Dataset) -> list[str]:
    """Identifying values of ``ds`` (read before any change) to remove from its free text."""
    found: list[str] = []
    for keyword in _NAME_KEYWORDS:
        for value in _values(ds, keyword):
            found.extend(name_parts(value))
    for keyword in _ID_KEYWORDS:
        found.extend(_values(ds, keyword))
    for item in ds.get("OtherPatientIDsSequence", None) or []:
        found.extend(_values(item, "PatientID"))
    for value in _values(ds, "PatientBirthDate"):
        found.extend(date_variants(value))
    unique = {v for v in found if len(v) >= MIN_LENGTH}
    return sorted(unique, key=lambda v: (-len(v), v))


@functools.lru_cache(maxsize=256)
def _pattern(identifiers: tuple[str, ...]) -> re.Pattern[str] | None:
    words = sorted({w for w in identifiers if len(w) >= MIN_LENGTH}, key=len, reverse=True)
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in words)
    # A word boundary that treats "_" as a separator too ("DOE_JOHN" contains "DOE").
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])", re.IGNORECASE)


_SPACES = re.compile(r"[ \t]{2,}")


def clean_text(value: str, identifiers: list[str]) -> str:
    """Remove every whole-word, case-insensitive occurrence of ``identifiers`` from
    ``value`` and collapse the doubled spaces that leaves behind."""
    pattern = _pattern(tuple(identifiers))
    if pattern is None or not value:
        return value
    cleaned, count = pattern.subn("", value)
    if not count:
        return value
    return _SPACES.sub(" ", cleaned).strip(" ")
