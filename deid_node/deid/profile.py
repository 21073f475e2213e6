"""PS3.15 Table E.1-1 as a resolved per-tag action map.

The table is loaded once from package data and resolved per set of options, so the
per-element work in the engine is a single dict lookup.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from .presets import canonical_preset, options_in_force, overlay

# canonical option name -> (Table E.1-1 column key, DCM code value of CID 7050)
OPTIONS: dict[str, tuple[str, str]] = {
    "RetainSafePrivate": ("rtnSafePrivOpt", "113111"),
    "RetainUIDs": ("rtnUIDsOpt", "113110"),
    "RetainDeviceIdentity": ("rtnDevIdOpt", "113109"),
    "RetainInstitutionIdentity": ("rtnInstIdOpt", "113112"),
    "RetainPatientCharacteristics": ("rtnPatCharsOpt", "113108"),
    "RetainLongitudinalTemporalInformationFullDates": ("rtnLongFullDatesOpt", "113106"),
    "RetainLongitudinalTemporalInformationModifiedDates": ("rtnLongModifDatesOpt", "113107"),
    "CleanDescriptors": ("cleanDescOpt", "113105"),
    "CleanStructuredContent": ("cleanStructContOpt", "113104"),
    "CleanGraphics": ("cleanGraphOpt", "113103"),
    "CleanPixelData": ("", "113101"),
}

BASIC_PROFILE_CODE = "113100"

# DCM code value -> code meaning (PS3.16 CID 7050), used for (0012,0064).
CODE_MEANINGS: dict[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113102": "Clean Recognizable Visual Features Option",
    "113103": "Clean Graphics Option",
    "113104": "Clean Structured Content Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}

FULL_DATES = "RetainLongitudinalTemporalInformationFullDates"
MODIFIED_DATES = "RetainLongitudinalTemporalInformationModifiedDates"

# Compound actions exist because the standard defers to the IOD's attribute type; we have
# no IOD module tables, so pick the action that always keeps the instance valid.
_COMPOUND: dict[str, str] = {
    "X/Z": "Z",
    "X/D": "D",
    "Z/D": "D",
    "X/Z/D": "D",
    "X/Z/U*": "U",  # SQ: keep and recurse; UI: replace
}

CONTENT_SEQUENCE = 0x0040A730
TEXT_VALUE = 0x0040A160

_NOISE = re.compile(r"[\s_\-]+")


def _normalise(name: str) -> str:
    s = _NOISE.sub("", name).lower()
    s = s.removesuffix("option")
    return s.replace("with", "")


_BY_NORMALISED: dict[str, str] = {_normalise(n): n for n in OPTIONS}
_BY_CODE: dict[str, str] = {code: n for n, (_, code) in OPTIONS.items()}


def canonical_option(name: str) -> str:
    """Map a spelled-out option name (or its DCM code) to the canonical key.

    Configuration files and operators use the standard's long names; everything
    internal uses one spelling so caches and comparisons are exact.
    """
    key = name.strip()
    if key in OPTIONS:
        return key
    if key in _BY_CODE:
        return _BY_CODE[key]
    found = _BY_NORMALISED.get(_normalise(key))
    if found is None:
        raise ValueError(f"unknown de-identification option {name!r}; valid: {', '.join(OPTIONS)}")
    return found


@dataclass(frozen=True, eq=False)
class Profile:
    """Resolved actions for one set of options.

    ``exact`` maps an exact tag to its action (X, Z, D, K, C or U; compounds already
    resolved). ``curve`` applies to every element of the even groups 0x5000-0x501E,
    ``overlay`` maps an element number to its action in groups 0x6000-0x601E, and
    ``private`` applies to every odd-group tag (X: removed; C: the Retain Safe Private
    option, decided per element by the TCIA private tag knowledge base). ``basic`` holds
    the Basic Profile action of tags whose resolved action is C, for values that cannot
    be cleaned (binary VRs). Text Value (0040,A160), the free text of SR content items,
    is not a table row; it is given the action of Content Sequence so that report text
    never passes unexamined.

    With a ``preset``, ``options`` are the options in force (those the preset implies
    and the configured ones it does not contradict), and the preset's own choices
    replace the table's actions; they may add L (the pseudonym) and H (a keyed hash).
    """

    options: frozenset[str]
    exact: Mapping[int, str]
    basic: Mapping[int, str]
    curve: str | None
    overlay: Mapping[int, str]
    private: str
    preset: str | None = None

    @property
    def modified_dates(self) -> bool:
        """Dates are shifted (not removed, not kept verbatim)."""
        return MODIFIED_DATES in self.options and FULL_DATES not in self.options

    @property
    def full_dates(self) -> bool:
        """Dates are kept verbatim (Full Dates wins over Modified Dates: K beats C)."""
        return FULL_DATES in self.options

    @property
    def cleans_descriptors(self) -> bool:
        """Whether Clean Descriptors is in force (on its own or by the TCIA preset):
        then free text that no row lists is cleaned as well."""
        return "CleanDescriptors" in self.options

    @property
    def cleans_text(self) -> bool:
        """Whether the options in force can make a text attribute C (or keep private
        text), so the engine must collect the instance's identifying values before it
        changes anything."""
        return any(
            opt in self.options
            for opt in (
                "CleanDescriptors",
                "CleanStructuredContent",
                "CleanGraphics",
                "RetainDeviceIdentity",
                "RetainPatientCharacteristics",
                "RetainSafePrivate",  # kept private text is cleaned too
            )
        )


@functools.cache
def _table() -> tuple[dict, ...]:
    text = resources.files("deid_node.data").joinpath("ps3.15-table-e1-1.json").read_text("utf-8")
    return tuple(json.loads(text))


def _resolve(row: Mapping[str, str], keys: list[str]) -> tuple[str, str]:
    """Return (resolved action, resolved basic action) for one table row."""
    basic = _COMPOUND.get(row["basicProfile"], row["basicProfile"])
    given = [row[k] for k in keys if k in row]
    if not given:
        return basic, basic
    if "K" in given:
        return "K", basic
    if "C" in given:
        return "C", basic
    action = given[0]
    return _COMPOUND.get(action, action), basic


@functools.lru_cache(maxsize=64)
def build_profile(options: frozenset[str], preset: str | None = None) -> Profile:
    """Resolve Table E.1-1 for ``options``: an option's action overrides the basic one,
    and between options K beats C beats anything else. A ``preset`` adds the options it
    implies and then replaces the actions of the attributes it has a choice for."""
    preset = canonical_preset(preset)
    canonical = options_in_force(frozenset(canonical_option(o) for o in options), preset)
    keys = [OPTIONS[o][0] for o in OPTIONS if o in canonical and OPTIONS[o][0]]
    exact: dict[int, str] = {}
    basic: dict[int, str] = {}
    overlay_actions: dict[int, str] = {}
    curve: str | None = None
    private = "X"
    for row in _table():
        action, basic_action = _resolve(row, keys)
        ident = row["id"].lower()
        if ident.startswith("gggg"):
            private = action
        elif ident == "50xxxxxx":
            curve = action
        elif ident.startswith("60xx"):
            overlay_actions[int(ident[4:], 16)] = action
        else:
            tag = int(ident, 16)
            exact[tag] = action
            if action == "C":
                basic[tag] = basic_action
    # Text Value is not a row of the table, but it is the free text of SR content items:
    # it follows Content Sequence (D: dummy, C under Clean Structured Content: clean).
    exact.setdefault(TEXT_VALUE, exact[CONTENT_SEQUENCE])
    if exact[TEXT_VALUE] == "C":
        basic.setdefault(TEXT_VALUE, "D")
    if preset is not None:
        chosen = overlay(preset)
        for tag, action in chosen.exact.items():
            exact[tag] = action
            if action == "C":
                basic.setdefault(tag, "X")
        curve = chosen.curve or curve
        overlay_actions.update(chosen.overlay)
    return Profile(
        options=canonical,
        exact=MappingProxyType(exact),
        basic=MappingProxyType(basic),
        curve=curve,
        overlay=MappingProxyType(overlay_actions),
        private=private,
        preset=preset,
    )


def action_for(profile: Profile, tag: int) -> str | None:
    """Action for ``tag`` under ``profile``; None when the table does not list it."""
    action = profile.exact.get(tag)
    if action is not None:
        return action
    group = tag >> 16
    if group & 1:
        return profile.private
    if 0x5000 <= group <= 0x501E:
        return profile.curve
    if 0x6000 <= group <= 0x601E:
        return profile.overlay.get(tag & 0xFFFF)
    return None
