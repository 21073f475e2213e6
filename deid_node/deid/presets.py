"""Presets: curated per-attribute choices laid over PS3.15 Table E.1-1.

The ``tcia`` preset follows The Cancer Imaging Archive's own de-identification choices
(``tcia-deid-attributes.json``): for every attribute TCIA lists, its action replaces the
table's; where TCIA is silent the table decides, with the options the preset implies
plus those configured (unless the preset contradicts them).

TCIA action -> what the engine does:

- ``remove`` -> X; ``empty`` -> Z; ``replace`` -> D (a dummy value valid for the VR);
- ``keep`` -> K, or C for a text attribute (kept, identifying spans cleaned out);
- ``hashuid`` -> U (keyed UID, consistent with every other replaced UID);
- ``incrementdate`` -> dates shifted by the patient's offset; ``time`` -> K;
- ``process`` -> the sequence is kept and its items de-identified by the same rules;
- ``lookup`` -> the pseudonym (Patient's Name and ID); ``hashname`` -> keyed hash (H);
- ``Remove Unsafe`` (private attributes) -> the Retain Safe Private option, decided by
  the TCIA private tag knowledge base (see :mod:`deid_node.deid.private`).

Data: ``tcia-deid-attributes.json``, TCIA's curation choices, as formatted in
MIC-DKFZ/miccai2024_midi-b-submission (Apache-2.0).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from .vr import dictionary_vr as _dictionary_vr

TCIA = "tcia"
PRESETS = (TCIA,)

MODIFIED = "RetainLongitudinalTemporalInformationModifiedDates"
FULL = "RetainLongitudinalTemporalInformationFullDates"

# What the TCIA choices amount to in PS3.15 terms (these codes go into the method code
# sequence): dates shifted, characteristics and descriptions kept (cleaned), structured
# content processed and cleaned, safe private attributes kept.
TCIA_OPTIONS = frozenset(
    {
        MODIFIED,
        "RetainPatientCharacteristics",
        "CleanDescriptors",
        "CleanStructuredContent",
        "RetainSafePrivate",
    }
)
# Options the TCIA choices contradict: configured together with the preset they are
# not in force (and not declared): TCIA hashes UIDs, shifts dates, removes device
# serial numbers and station names, and removes institution names.
TCIA_OVERRIDES = frozenset(
    {"RetainUIDs", FULL, "RetainDeviceIdentity", "RetainInstitutionIdentity"}
)

TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
LOOKUP = "L"  # the pseudonym
HASH_NAME = "H"  # a keyed hash

_ACTIONS: dict[str, str] = {
    "remove": "X",
    "empty": "Z",
    "replace": "D",
    "hashuid": "U",
    "incrementdate": "C",  # with Modified Dates in force: shifted
    "time": "K",
    "process": "K",  # sequences: kept, items de-identified
    "lookup": LOOKUP,
    "hashname": HASH_NAME,
}
_ENTRY = re.compile(r"\(0x([0-9A-Fa-fx]{4}), 0x([0-9A-Fa-fx]{4})\)")


def canonical_preset(name: str | None) -> str | None:
    """``None`` or ``""`` (no preset) or a known preset name, any case."""
    if name is None or not name.strip():
        return None
    key = name.strip().lower()
    if key not in PRESETS:
        raise ValueError(f"unknown de-identification preset {name!r}; valid: {', '.join(PRESETS)}")
    return key


def options_in_force(options: frozenset[str], preset: str | None) -> frozenset[str]:
    """The PS3.15 options a preset puts in force together with the configured ones."""
    if preset == TCIA:
        return TCIA_OPTIONS | (options - TCIA_OVERRIDES)
    return options


@dataclass(frozen=True)
class Overlay:
    """Actions a preset sets, in the profile's terms."""

    exact: Mapping[int, str]
    curve: str | None  # 50xx
    overlay: Mapping[int, str]  # 60xx element -> action


@functools.cache
def tcia_choices() -> Mapping[str, tuple[str, ...]]:
    """TCIA's lists as shipped: action name -> tag entries (``(0x0008, 0x0080)``)."""
    data = resources.files("deid_node.data").joinpath("tcia-deid-attributes.json")
    raw = json.loads(data.read_text("utf-8"))
    return MappingProxyType({k: tuple(v) for k, v in raw.items() if isinstance(v, list)})


@functools.cache
def overlay(preset: str) -> Overlay:
    if preset != TCIA:
        raise ValueError(f"unknown de-identification preset {preset!r}")
    exact: dict[int, str] = {}
    overlay_actions: dict[int, str] = {}
    curve: str | None = None
    for name, entries in tcia_choices().items():
        action = _ACTIONS.get(name)
        if action is None:
            continue  # "Remove Unsafe": the private attributes, decided by the KB
        for entry in entries:
            match = _ENTRY.fullmatch(entry.strip())
            if match is None:
                continue
            group, element = match[1].lower(), match[2].lower()
            if group == "50xx":
                curve = action
            elif group == "60xx":
                overlay_actions[int(element, 16)] = action
            elif "x" not in group + element:
                tag = int(group, 16) << 16 | int(element, 16)
                if name == "keep" and _dictionary_vr(tag) in TEXT_VRS:
                    action_for_tag = "C"  # kept, and cleaned of identifying spans
                else:
                    action_for_tag = action
                exact[tag] = action_for_tag
    return Overlay(MappingProxyType(exact), curve, MappingProxyType(overlay_actions))
