"""Date shifting for DA and DT values.

One offset per patient keeps intervals between a patient's studies intact (the point of
the Retain Longitudinal Temporal Information with Modified Dates option). Anything that
cannot be parsed is returned empty: an unshifted date would leak the real one.
"""

from __future__ import annotations

import datetime as _dt
import re

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DA_LEGACY = re.compile(r"^(\d{4})[.\-](\d{2})[.\-](\d{2})$")  # ACR-NEMA / ISO spelling
_DT = re.compile(
    r"^(?P<y>\d{4})"
    r"(?:(?P<m>\d{2})(?:(?P<d>\d{2})"
    r"(?P<time>\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?"
    r"(?P<tz>[+-]\d{4})?$"
)


def _plus(date: _dt.date, days: int) -> _dt.date | None:
    try:
        return date + _dt.timedelta(days=days)
    except OverflowError:
        return None


def _ymd(y: str, m: str, d: str) -> _dt.date | None:
    try:
        return _dt.date(int(y), int(m), int(d))
    except ValueError:
        return None


def _shift_one_da(value: str, days: int) -> str | None:
    match = _DA.match(value) or _DA_LEGACY.match(value)
    if not match:
        return None
    date = _ymd(*match.groups())
    shifted = _plus(date, days) if date else None
    return _da(shifted) if shifted else None


def _da(date: _dt.date) -> str:
    # strftime("%Y") does not zero-pad years below 1000 on every platform
    return f"{date.year:04d}{date.month:02d}{date.day:02d}"


def _split_values(value: str) -> list[str]:
    return [v.strip("\x00 ") for v in value.split("\\")]


def _shift_values(value: str, days: int, one) -> str:  # type: ignore[no-untyped-def]
    """Shift each value of a multi-valued DA or DT (single dates or ranges) with ``one``."""
    value = value.strip("\x00 ")
    if not value:
        return ""
    out = []
    for item in _split_values(value):
        if not item:
            out.append("")
            continue
        single = one(item, days)
        out.append(single if single is not None else (_shift_range(item, days, one) or ""))
    return "\\".join(out) if any(out) else ""


def shift_date(value: str, days: int) -> str:
    """Shift a DA value (single, multi-valued, or range ``A-B``, ``-B``, ``A-``) by
    ``days``; legacy ``YYYY.MM.DD`` is accepted and written as ``YYYYMMDD``. Returns ""
    for an unparseable value."""
    return _shift_values(value, days, _shift_one_da)


def _valid_tz(tz: str | None) -> bool:
    if not tz:
        return True
    hours, minutes = int(tz[1:3]), int(tz[3:5])
    return hours <= 14 and minutes < 60


def _shift_one_dt(value: str, days: int) -> str | None:
    match = _DT.match(value)
    if not match or not _valid_tz(match["tz"]):
        return None
    year, month, day = match["y"], match["m"], match["d"]
    tz = match["tz"] or ""
    if day is not None:
        date = _ymd(year, month, day)
        shifted = _plus(date, days) if date else None
        if shifted is None:
            return None
        return _da(shifted) + (match["time"] or "") + tz
    # Partial precision: shift the middle of the period so that the period moves by the
    # same amount on average, then write back at the same precision.
    anchor = _ymd(year, month or "07", "15" if month else "01")
    shifted = _plus(anchor, days) if anchor else None
    if shifted is None:
        return None
    return _da(shifted)[: 6 if month else 4] + tz


def _shift_range(value: str, days: int, one) -> str | None:
    """Shift ``A-B`` where either side may be empty; tries every hyphen because DT offsets
    contain one too."""
    for i, ch in enumerate(value):
        if ch != "-":
            continue
        left, right = value[:i], value[i + 1 :]
        if not left and not right:
            return None
        new_left = one(left, days) if left else ""
        new_right = one(right, days) if right else ""
        if new_left is not None and new_right is not None:
            return f"{new_left}-{new_right}"
    return None


def shift_datetime(value: str, days: int) -> str:
    """Shift the date part of a DT value by ``days``; the time, fraction and UTC offset
    are kept. Handles partial precision (``YYYY``, ``YYYYMM``), multiple values and
    ranges. Returns "" for an unparseable value."""
    return _shift_values(value, days, _shift_one_dt)
