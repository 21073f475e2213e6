"""The leak gate: the last check of every instance before it is written or sent.

The profile removes or cleans the attributes Table E.1-1 lists, but identifiers
also sit where no table row points: a patient's name in a local procedure code's
Code Meaning, a physician in an overlay description, an ID in a private block of
a creator nobody knows. After de-identification, every element at every depth
(private, UN and file meta included) is searched for the instance's *own*
original identifying values (:mod:`deid_node.deid.leaks`, the matcher ``deid-node
verify`` uses too), and what is found is acted on:

- ``clean`` (the default): in a text value the matched spans are taken out (the
  rest of the text stays); any other element holding one (UN, OB, OW, a private
  code string) is removed. The instance is searched again, and if anything is
  still found it is quarantined (fail closed).
- ``quarantine``: any hit quarantines the instance.

A reason names tags only, never a value. The gate cannot be turned off.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from deid_node.deid.leaks import Hit, Needle, PathKey, find_hits, reportable

GATE_MODES = ("clean", "quarantine")

# VRs whose values are text: a hit there is cleaned span by span.
_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "UR"})
# What is left of a PN value once its parts are taken out: separators only.
_EMPTY_NAME = re.compile(r"^[\s^=]*$")
_BLANKS = re.compile(r"[ \t]{2,}")
# How many places a reason names before "and N more".
_REASON_PLACES = 3


class LeakFound(Exception):
    """An original identifier the gate would not (or could not) take out; the
    message names tags only."""

    def __init__(self, message: str, hits: int) -> None:
        super().__init__(message)
        self.hits = hits


@dataclass(frozen=True)
class GateOutcome:
    hits: int  # identifying values found (one per kind of value and element)
    cleaned: int  # elements changed or removed


def close_leaks(ds: Dataset, needles: Sequence[Needle], mode: str = "clean") -> GateOutcome:
    """Search ``ds`` (de-identified, file meta included) for ``needles`` (the
    original's identifying values) and clean or refuse it as ``mode`` says.

    Raises :class:`LeakFound` in ``quarantine`` mode on any hit, and in ``clean``
    mode when a hit survives cleaning."""
    if mode not in GATE_MODES:
        raise ValueError(f"unknown leak gate mode {mode!r}")
    needles = reportable(needles)  # what is taken out is what is looked for
    hits = find_hits(ds, needles)
    if not hits:
        return GateOutcome(0, 0)
    if mode == "quarantine":
        raise LeakFound(f"identifier left after de-identification in {_places(hits)}", len(hits))
    places = {(h.in_meta, h.path) for h in hits}
    for in_meta, path in places:
        top = ds.file_meta if in_meta else ds
        _clean_element(top, path, needles)
    left = find_hits(ds, needles)
    if left:
        raise LeakFound(f"identifier could not be removed from {_places(left)}", len(hits))
    return GateOutcome(len(hits), len(places))


def _places(hits: Sequence[Hit]) -> str:
    wheres = sorted({h.where for h in hits})
    text = ", ".join(wheres[:_REASON_PLACES])
    if len(wheres) > _REASON_PLACES:
        text += f" and {len(wheres) - _REASON_PLACES} more"
    return text


def _container(top: Dataset, path: PathKey) -> Dataset:
    """The dataset (item) that holds the element at ``path``."""
    ds = top
    for tag, index in path[:-1]:
        ds = ds[tag].value[index]
    return ds


def _clean_element(top: Dataset, path: PathKey, needles: Sequence[Needle]) -> None:
    ds = _container(top, path)
    tag = path[-1][0]
    elem = ds[tag]
    private = bool((tag >> 16) & 1)
    if elem.VR not in _TEXT_VRS or isinstance(elem.value, bytes | bytearray):
        del ds[tag]  # binary or unknown: its value cannot be cleaned piece by piece
        return
    values = list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]
    cleaned = [_without(str(v), needles, elem.VR == "PN") for v in values]
    kept = [v for v in cleaned if v]
    if not kept and private:
        del ds[tag]
    elif elem.VR == "PN":
        elem.value = [PersonName(v) for v in kept] if len(kept) > 1 else (kept[0] if kept else "")
    else:
        elem.value = kept if len(kept) > 1 else (kept[0] if kept else "")


def _without(text: str, needles: Sequence[Needle], name: bool) -> str:
    """``text`` with every span a needle matches taken out, blanks tidied."""
    for needle in needles:
        text = needle.pattern.sub(" ", text)
    text = _BLANKS.sub(" ", text).strip()
    if name and _EMPTY_NAME.match(text):
        return ""
    return text
