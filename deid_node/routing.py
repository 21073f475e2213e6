"""Routing rules: which destinations an instance goes to.

A rule is a set of conditions, all of which must hold. A condition names the
calling AE title (``calling_ae``) or any top-level DICOM attribute by keyword,
and lists the values it accepts; each value is a glob pattern (``*``, ``?``,
``[...]``; a value without them matches exactly, case-sensitively). A
multi-valued attribute (Image Type, for instance) matches when any of its
values does; an absent or empty attribute counts as the empty string.

Rules are evaluated on the ORIGINAL dataset, in the worker that reads it for
de-identification anyway, so routing never costs a second decode. Nothing here
logs or reports the values it compared: they are PHI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

CALLING_AE = "calling_ae"
NO_DESTINATION_REASON = "no destination matches"


@dataclass(frozen=True)
class Condition:
    key: str  # "calling_ae" or a DICOM keyword
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    conditions: tuple[Condition, ...] = ()


class Routable(Protocol):
    name: str
    route: Route | None
    fallback: bool


def parse_route(table: Any) -> Route:
    """Validate a ``route`` table from node.toml; ValueError names the bad key."""
    if not isinstance(table, dict):
        raise ValueError(f"route: must be a table, got {type(table).__name__}")
    conditions = []
    for key, value in table.items():
        if key != CALLING_AE:
            tag = tag_for_keyword(key)
            if tag is None:
                raise ValueError(
                    f"route.{key}: not a DICOM keyword (use calling_ae or a keyword such as "
                    "Modality, StationName, SeriesDescription)"
                )
            if tag >> 16 == 0x0002:
                raise ValueError(f"route.{key}: file meta attributes cannot be routed on")
            if dictionary_VR(tag) == "SQ":
                raise ValueError(f"route.{key}: a sequence cannot be matched")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError(f"route.{key}: an empty list matches nothing")
        patterns = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise ValueError(
                    f"route.{key}: values are strings or numbers, got {type(v).__name__}"
                )
            patterns.append(str(v).strip())
        conditions.append(Condition(key, tuple(patterns)))
    return Route(tuple(conditions))


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None:
        return [""]
    if isinstance(value, MultiValue | list | tuple):
        return [str(v).strip() for v in value] or [""]
    if isinstance(value, bytes):
        return [value.decode("ascii", "replace").strip()]
    return [str(value).strip()]


def route_matches(route: Route | None, calling_ae: str, ds: Dataset) -> bool:
    """Whether every condition of ``route`` holds (no route: everything matches)."""
    if route is None:
        return True
    for cond in route.conditions:
        values = [calling_ae.strip()] if cond.key == CALLING_AE else _values(ds, cond.key)
        if not any(fnmatchcase(v, p) for v in values for p in cond.patterns):
            return False
    return True


def choose_destinations(
    destinations: Sequence[Routable], calling_ae: str, ds: Dataset
) -> tuple[str, ...]:
    """Names of the destinations ``ds`` goes to, in configuration order.

    Fallback destinations receive what no other destination takes. An empty
    answer means the instance matches nothing and is to be quarantined.
    """
    chosen = tuple(
        d.name for d in destinations if not d.fallback and route_matches(d.route, calling_ae, ds)
    )
    return chosen or tuple(d.name for d in destinations if d.fallback)
