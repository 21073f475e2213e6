"""Apply the PS3.15 Basic Application Confidentiality Profile to one dataset.

The profile is Table E.1-1 resolved for the options in force, optionally with a preset's
per-attribute choices laid over it (:mod:`.presets`); private attributes are removed, or
under Retain Safe Private judged by the TCIA private tag knowledge base (:mod:`.private`).
Text the profile keeps but cleans loses the instance's identifying values, collected at
any depth before anything changes, and the spans that identify by their form
(:mod:`.text`).

Speed matters (every received image passes through here), so the walk looks at tags
only and touches an element's value only when its action changes it: pydicom keeps
unread elements as undecoded raw bytes, and those are written back unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pydicom import config
from pydicom.datadict import keyword_for_tag, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from .dates import shift_date, shift_datetime
from .presets import HASH_NAME, LOOKUP, TCIA, canonical_preset
from .private import (
    DELETE,
    HASH,
    KEEP,
    OFFSET,
    OFFSET_SECONDS,
    Rule,
    Segment,
    Signature,
    keyed_hex,
    keyed_int,
    looks_like_uid,
    lookup,
    normalise_creator,
    shift_date_text,
)
from .profile import (
    BASIC_PROFILE_CODE,
    CODE_MEANINGS,
    OPTIONS,
    Profile,
    action_for,
    build_profile,
    canonical_option,
)
from .text import clean_text, collect_identifiers
from .uids import make_uid
from .vr import dictionary_vr

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
TRAILING_PADDING = 0xFFFCFFFC
CODE_VALUE = 0x00080100
LONG_CODE_VALUE = 0x00080119
URN_CODE_VALUE = 0x00080120
CODE_MEANING = 0x00080104
CODING_SCHEME_DESIGNATOR = 0x00080102
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063
DEIDENTIFICATION_METHOD_CODES = 0x00120064
LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED = 0x00280303

TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Text that no row of Table E.1-1 lists but that people write in: Code Meanings of
# local codes in any sequence ("CT CHEST for <name>"), curve and other descriptions.
# With Clean Descriptors (or the TCIA preset) it is cleaned like a C attribute: the
# instance's identifying values and what identifies by its form are taken out, the
# rest of the words stay. Short strings (SH: code values, station-like labels) are
# left to the leak gate.
FREE_TEXT_VRS = frozenset({"LO", "ST", "LT", "UT", "UC"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "DS"})

# D: a value that is valid for the VR and carries no information.
DUMMY: dict[str, object] = {
    "AE": "DEID",
    "AS": "000Y",
    "CS": "REMOVED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "SH": "REMOVED",
    "LO": "REMOVED",
    "ST": "REMOVED",
    "LT": "REMOVED",
    "UT": "REMOVED",
    "UC": "REMOVED",
    "PN": "REMOVED",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
}


@dataclass(frozen=True)
class PatientPseudonym:
    pseudo_id: str
    pseudo_name: str
    date_offset_days: int  # negative: dates move back


@dataclass(frozen=True)
class DeidSettings:
    """How to de-identify.

    ``uid_key`` keys every hash (UIDs, hashed names and private values); ``options`` are
    PS3.15 option names (any spelling :func:`canonical_option` accepts); ``uid_root``
    roots the new UIDs; ``method_text`` starts De-identification Method (0012,0063).
    ``preset`` lays curated per-attribute choices over the table: ``None`` (the PS3.15
    profile with ``options`` alone) or ``"tcia"`` (TCIA's choices, which also put
    Modified Dates, Retain Patient Characteristics, Clean Descriptors, Clean Structured
    Content and Retain Safe Private in force, and override Retain UIDs, Full Dates,
    Retain Device Identity and Retain Institution Identity). ``clean_patterns``: the C
    action also removes what identifies by its form (names after a title, phone
    numbers, e-mail addresses, URLs, street addresses, ZIP codes, SSNs, record numbers,
    written dates), not only the instance's own identifying values.
    """

    uid_key: bytes
    options: frozenset[str] = frozenset({"RetainLongitudinalTemporalInformationModifiedDates"})
    uid_root: str = "2.25."
    method_text: str = "deid-node"  # prefix for DeidentificationMethod (0012,0063)
    preset: str | None = None
    clean_patterns: bool = True

    def __post_init__(self) -> None:
        # "TCIA", " tcia ", "" and None are accepted; an unknown name fails here, when
        # the settings are made, not on the first image
        object.__setattr__(self, "preset", canonical_preset(self.preset))


@dataclass
class DeidResult:
    uid_map: dict[str, str]
    study_uid: tuple[str, str]
    series_uid: tuple[str, str]
    sop_instance_uid: tuple[str, str]
    actions: dict[str, int] = field(default_factory=dict)


class _Ctx:
    """Per-call state: the resolved profile and what has been done so far."""

    __slots__ = (
        "counts",
        "identifiers",
        "key",
        "offset",
        "patient",
        "patterns",
        "profile",
        "root",
        "shift",
        "uid_map",
    )

    def __init__(self, profile: Profile, patient: PatientPseudonym, settings: DeidSettings):
        self.profile = profile
        self.patient = patient
        self.shift = profile.modified_dates
        self.offset = patient.date_offset_days
        self.key = settings.uid_key
        self.root = settings.uid_root
        self.patterns = settings.clean_patterns
        self.uid_map: dict[str, str] = {}
        self.identifiers: list[str] = []
        self.counts = dict.fromkeys(
            (
                "removed",
                "emptied",
                "dummied",
                "uid",
                "date_shifted",
                "cleaned",
                "hashed",
                "pseudonymised",
                "private_removed",
                "private_kept",
                "private_hashed",
                "private_shifted",
            ),
            0,
        )

    def map_uid(self, old: str) -> str:
        new = self.uid_map.get(old)
        if new is None:
            new = make_uid(old, self.key, self.root)
            self.uid_map[old] = new
        return new


def _dictionary_vr(tag: int) -> str:
    return dictionary_vr(tag) or "UN"


def _vr(elem: DataElement | RawDataElement) -> str:
    """Effective VR: implicit-VR raw elements have none, and UN hides a known VR."""
    vr = elem.VR
    if vr is None or vr == "UN":
        return _dictionary_vr(elem.tag)
    if " or " in vr:
        return vr.split(" or ")[0]
    return vr


def _text(elem: DataElement | RawDataElement) -> str:
    """Value of an ASCII-only element (UI, DA, DT) as one backslash-joined string, without
    going through pydicom's value conversion."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\x00 ")
    if isinstance(value, str):
        return value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _is_empty(elem: DataElement | RawDataElement) -> bool:
    value = elem.value
    if value is None:
        return True
    if isinstance(value, bytes | str):
        return not value.strip(b"\x00 " if isinstance(value, bytes) else "\x00 ")
    try:
        return len(value) == 0
    except TypeError:
        return False


# String VRs whose encoded form is the ASCII text itself, padded to even length.
_ASCII_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)


def _put(ds: Dataset, tag: int, vr: str, value: object) -> None:
    """Set ``tag`` to ``value``. ASCII strings (UIDs, shifted dates, pseudonyms, the
    method attributes: most of what the node writes) are stored already encoded, as
    pydicom stores what it reads, so the writer copies them without converting; pydicom
    decodes them like read values if anything asks."""
    if vr in _ASCII_VRS:
        values = value if isinstance(value, list) else (value,)
        if all(type(v) is str and v.isascii() and "\\" not in v for v in values):
            text = "\\".join(values).encode("ascii")  # type: ignore[arg-type]
            if len(text) & 1:
                text += b"\x00" if vr == "UI" else b" "
            ds[tag] = RawDataElement(BaseTag(tag), vr, len(text), text, 0, False, True)
            return
    ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)


def handle_private(
    ds: Dataset,
    tags: list[int],
    profile: Profile,
    ctx: _Ctx | None = None,
    path: Signature = (),
) -> list[int]:
    """Decide the fate of the private (odd-group) elements ``tags`` of ``ds``, found
    under the sequences ``path``; returns the tags removed.

    Without the Retain Safe Private option every private element goes. With it, the TCIA
    private tag knowledge base decides per element, by (group, private creator, element
    byte) and the sequence path where the table gives one: keep (k; text cleaned of the
    instance's identifying values, sequences de-identified item by item), hash (h),
    shift a date (o, oi), or delete (d, na, anything unknown, everything the table does
    not list, elements without a private creator). A private creator stays only while
    an element of its block does. Without ``ctx`` (no key, no offset) only what the
    table keeps as it is survives.
    """
    if profile.private != "C":
        for tag in tags:
            del ds[tag]
        return list(tags)
    creators: dict[int, tuple[str, str]] = {}  # creator tag -> (as written, normalised)
    for tag in tags:
        if 0x10 <= tag & 0xFFFF <= 0xFF:
            written = _text(ds.get_item(tag)).strip("\x00 ")
            creators[tag] = (written, normalise_creator(written))
    removed: list[int] = []
    kept_blocks: set[int] = set()
    counts = ctx.counts if ctx is not None else None
    for tag in tags:
        low = tag & 0xFFFF
        if 0x10 <= low <= 0xFF:
            continue  # creators: decided once their blocks are
        creator_tag = (tag & 0xFFFF0000) | (low >> 8)
        creator = creators.get(creator_tag) if low >= 0x1000 else None
        kept = False
        if creator is not None and creator[1]:
            kept = _private_element(ds, tag, creator, ctx, path)
        if kept:
            kept_blocks.add(creator_tag)
            if counts is not None:
                counts["private_kept"] += 1
        else:
            if tag in ds:
                del ds[tag]
            removed.append(tag)
    for tag in creators:
        if tag not in kept_blocks:
            del ds[tag]
            removed.append(tag)
    return removed


@functools.lru_cache(maxsize=4096)
def _private_dictionary_vr(tag: int, creator: str) -> str | None:
    try:
        return private_dictionary_VR(tag, creator).split(" or ")[0]
    except (KeyError, ValueError):
        return None


def _private_element(
    ds: Dataset, tag: int, creator: tuple[str, str], ctx: _Ctx | None, path: Signature
) -> bool:
    """Apply the knowledge base to one private element; whether it stays."""
    raw = ds.get_item(tag)
    vr = raw.VR
    if vr is None:  # implicit VR: the private dictionary may know it
        vr = _private_dictionary_vr(tag, creator[0])
    leaf: Segment = (tag >> 16, creator[1], tag & 0xFF)
    found = lookup(path, leaf, vr or "")  # "": seen without a VR
    if found is None:
        return False
    vr = vr or "UN"
    disposition, rule = found
    if disposition == KEEP:
        return _keep_private(ds, tag, raw, vr, rule, ctx, (*path, leaf))
    if ctx is None or _is_empty(_loaded(ds, tag, raw)):
        # hashing and shifting need the key and the offset; an empty value hides
        # nothing and goes too
        return False
    if disposition == HASH:
        return _hash_private(ds, tag, vr, ctx)
    if disposition in (OFFSET, OFFSET_SECONDS):
        if not ctx.shift:
            return ctx.profile.full_dates  # Full Dates: kept as is; otherwise removed
        done = (
            _offset_private(ds, tag, vr, ctx)
            if disposition == OFFSET
            else _offset_seconds_private(ds, tag, vr, ctx)
        )
        if done:
            ctx.counts["private_shifted"] += 1
        return done
    return False


def _keep_private(
    ds: Dataset,
    tag: int,
    raw,
    vr: str,
    rule: Rule,
    ctx: _Ctx | None,
    inner: Signature,
) -> bool:
    """k: keep; a sequence is de-identified item by item (its own private elements
    judged under its path), text is cleaned like a kept description."""
    undefined = isinstance(raw, RawDataElement) and raw.length == 0xFFFFFFFF
    if vr == "SQ" or (vr == "UN" and undefined):
        elem = ds[tag]
        if elem.VR == "SQ":
            if ctx is None:
                return False  # nested standard elements need the full profile
            for item in elem.value or ():
                _walk(item, ctx, top=False, path=inner)
            return True
    if ctx is None or not (ctx.identifiers or ctx.patterns):
        return True
    if vr in TEXT_VRS:
        _clean(ds, tag, ctx)
    elif vr in ("UN", "OB") and any(v in TEXT_VRS for v in rule.by_vr):
        _clean_bytes(ds, tag, ctx)
    return True


def _clean_bytes(ds: Dataset, tag: int, ctx: _Ctx) -> None:
    """Clean text kept as bytes (a private element read without its VR)."""
    elem = ds[tag]
    value = elem.value
    if not isinstance(value, bytes) or not value or len(value) > 65536:
        return
    text = value.decode("latin-1")
    if not text.rstrip("\x00 ").isprintable():
        return
    cleaned = "\\".join(
        clean_text(v, ctx.identifiers, ctx.patterns) for v in text.rstrip("\x00 ").split("\\")
    )
    if cleaned != text.rstrip("\x00 "):
        data = cleaned.encode("latin-1", "replace")
        elem.value = data + b" " * (len(data) & 1)
        ctx.counts["cleaned"] += 1


def _binary(vr: str) -> bool:
    return vr in BINARY_VRS


def _put_text(ds: Dataset, tag: int, vr: str, values: list[str], uid: bool = False) -> None:
    """Write ``values`` back in the element's own VR (bytes for UN and OB)."""
    if _binary(vr):
        data = "\\".join(values).encode("ascii", "replace")
        pad = b"\x00" if uid else b" "
        _put(ds, tag, vr, data + pad * (len(data) & 1))
    else:
        _put(ds, tag, vr, values if len(values) > 1 else values[0])


def _hash_private(ds: Dataset, tag: int, vr: str, ctx: _Ctx) -> bool:
    """h: a keyed replacement valid for the VR: a UID through the same map as every
    other UID (references stay consistent), a number in range, text as short hex."""
    elem = ds[tag]
    value = elem.value
    if vr == "SQ" or value is None:
        return False
    if vr in NUMBER_VRS:
        values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        new = [keyed_int(str(v), ctx.key, vr) for v in values]
        if vr in ("FL", "FD", "DS"):
            new = [float(n % 1_000_000) for n in new]
        _put(ds, tag, vr, new if len(new) > 1 else new[0])
    else:
        text = _text(elem).strip("\x00 ")
        if not text.isprintable():
            return False
        parts = [p.strip("\x00 ") for p in text.split("\\")]
        uid = vr == "UI" or all(looks_like_uid(p) for p in parts if p)
        if uid:
            new_parts = [ctx.map_uid(p) if p else "" for p in parts]
        elif vr == "IS":
            new_parts = [str(keyed_int(p, ctx.key, vr)) if p else "" for p in parts]
        else:
            new_parts = [keyed_hex(p, ctx.key) if p else "" for p in parts]
        _put_text(ds, tag, vr, new_parts, uid)
    ctx.counts["private_hashed"] += 1
    return True


def _offset_private(ds: Dataset, tag: int, vr: str, ctx: _Ctx) -> bool:
    """o: a date (DA, DT, or a date written as text) moves by the patient's offset."""
    elem = ds[tag]
    if vr in NUMBER_VRS or vr == "SQ":
        return False
    text = _text(elem).strip("\x00 ")
    if vr == "DA":
        new = shift_date(text, ctx.offset)
    elif vr == "DT":
        new = shift_datetime(text, ctx.offset)
    else:
        if not text.isprintable():
            return False
        new = shift_date_text(text, ctx.offset) or ""
    if not new:
        return False
    _put_text(ds, tag, vr, [new])
    return True


SECONDS_PER_DAY = 86400


def _yyyymmdd(number: float) -> str | None:
    """``number`` as a YYYYMMDD date (1900-2099), or None. As seconds since 1970 such a
    value would fall in 1970-1973, long before the images it would time."""
    if not number.is_integer() or not 19000101 <= number <= 20991231:
        return None
    text = str(int(number))
    return text if shift_date(text, 0) == text else None


def _offset_seconds_private(ds: Dataset, tag: int, vr: str, ctx: _Ctx) -> bool:
    """oi: a date as seconds since 1970 (a number, or digits as text) moves by the
    patient's offset in days."""
    if vr in BINARY_VRS or vr == "SQ":
        return False  # byte order and width unknown
    elem = ds[tag]
    value = elem.value
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    delta = ctx.offset * SECONDS_PER_DAY
    new: list[object] = []
    for v in values:
        try:
            number = float(str(v).strip("\x00 "))
        except ValueError:
            return False
        as_date = _yyyymmdd(number)
        if as_date is not None:
            # a date written as the number YYYYMMDD, not as seconds
            moved = float(shift_date(as_date, ctx.offset) or "nan")
            if moved != moved:
                return False
        else:
            moved = number + delta
        if vr in ("UL", "US", "UV") and moved < 0:
            return False
        if vr in NUMBER_VRS and vr not in ("FL", "FD", "DS"):
            new.append(int(moved))
        elif vr in NUMBER_VRS:
            new.append(moved)
        else:
            new.append(str(int(moved)) if moved.is_integer() else repr(moved))
    if vr in NUMBER_VRS:
        _put(ds, tag, vr, new if len(new) > 1 else new[0])
    else:
        _put_text(ds, tag, vr, [str(v) for v in new])
    return True


def _shift(ds: Dataset, tag: int, vr: str, elem, ctx: _Ctx) -> None:
    old = _text(elem)
    if not old:
        return
    shifter = shift_date if vr == "DA" else shift_datetime
    _put(ds, tag, vr, shifter(old, ctx.offset))
    ctx.counts["date_shifted"] += 1


def _replace_uids(ds: Dataset, tag: int, elem, ctx: _Ctx) -> None:
    old = _text(elem)
    if not old:
        return
    values = [ctx.map_uid(v) if v else "" for v in (s.strip("\x00 ") for s in old.split("\\"))]
    _put(ds, tag, "UI", values if len(values) > 1 else values[0])
    ctx.counts["uid"] += 1


def _clean(ds: Dataset, tag: int, ctx: _Ctx) -> None:
    if not ctx.identifiers and not ctx.patterns:
        return
    elem = ds[tag]  # decoded with the dataset's character set
    value = elem.value
    if value is None or value == "":
        return
    ids, patterns = ctx.identifiers, ctx.patterns
    if not isinstance(value, MultiValue | list | tuple):
        new: object = clean_text(str(value), ids, patterns)
        changed = new != str(value)
    else:
        new = [clean_text(str(v), ids, patterns) for v in value]
        changed = new != [str(v) for v in value]
    if changed:
        elem.value = new
        ctx.counts["cleaned"] += 1


def _dummy_code_items(seq: Sequence) -> None:
    """D on a code sequence (Institution Code Sequence, Person Identification Code
    Sequence): the codes themselves name the institution or person, so replace them."""
    for item in seq:
        if LONG_CODE_VALUE in item or URN_CODE_VALUE in item or CODE_VALUE in item:
            for tag in (LONG_CODE_VALUE, URN_CODE_VALUE):
                if tag in item:
                    del item[tag]
            _put(item, CODE_VALUE, "SH", "REMOVED")
        if CODE_MEANING in item:
            _put(item, CODE_MEANING, "LO", "REMOVED")


def _recurse(
    ds: Dataset, tag: int, ctx: _Ctx, dummy_codes: bool = False, path: Signature = ()
) -> None:
    seq = ds[tag].value
    if not seq:
        return
    inner = (*path, (tag >> 16, None, tag & 0xFFFF))
    for item in seq:
        _walk(item, ctx, top=False, path=inner)
    if dummy_codes and _dictionary_keyword_is_code_sequence(tag):
        _dummy_code_items(seq)


@functools.lru_cache(maxsize=1024)
def _dictionary_keyword_is_code_sequence(tag: int) -> bool:
    return keyword_for_tag(tag).endswith("CodeSequence")


def _apply(ds: Dataset, tag: int, action: str, elem, ctx: _Ctx, path: Signature = ()) -> None:
    vr = _vr(elem)
    counts = ctx.counts
    if action == "X":
        del ds[tag]
        counts["removed"] += 1
    elif action == "Z":
        _put(ds, tag, vr, empty_value_for_VR(vr))
        counts["emptied"] += 1
    elif vr == "SQ":
        # K, C, D, U: keep the sequence and apply the profile to its items
        _recurse(ds, tag, ctx, dummy_codes=action == "D", path=path)
    elif vr in ("DA", "DT") and ctx.shift:
        # With the Modified Dates option every kept date moves by the patient's offset,
        # whatever the row says (D would destroy intervals, K from another option would
        # leak the real date).
        _shift(ds, tag, vr, elem, ctx)
    elif action == "K":
        return
    elif action in (LOOKUP, HASH_NAME):
        if _is_empty(elem):
            return
        if action == LOOKUP:
            patient = ctx.patient
            _put(ds, tag, vr, patient.pseudo_name if vr == "PN" else patient.pseudo_id)
            counts["pseudonymised"] += 1
        else:
            text = str(ds[tag].value)
            _put(ds, tag, vr if vr in TEXT_VRS else "LO", keyed_hex(text, ctx.key))
            counts["hashed"] += 1
    elif action == "U" or (action == "D" and vr == "UI"):
        _replace_uids(ds, tag, elem, ctx)
    elif action == "D":
        if _is_empty(elem):
            return  # nothing to hide; an empty type 2 value stays valid
        _put(ds, tag, vr, DUMMY.get(vr, empty_value_for_VR(vr)))
        counts["dummied"] += 1
    elif action == "C":
        if vr in TEXT_VRS:
            _clean(ds, tag, ctx)
        elif vr in BINARY_VRS or vr in ("DA", "DT"):
            # Cannot clean bytes, nor a date without an offset: fall back to the
            # Basic Profile action of the row.
            _apply(ds, tag, ctx.profile.basic.get(tag, "X"), elem, ctx)
        # TM, CS, AE, numbers: kept


def _walk(ds: Dataset, ctx: _Ctx, top: bool, path: Signature = ()) -> None:
    exact = ctx.profile.exact
    shift = ctx.shift
    cleans = ctx.profile.cleans_descriptors
    private: list[int] = []
    # Inside a kept private sequence the knowledge base may delete standard elements too.
    in_private = any(segment[1] is not None for segment in path)
    # items() hands out the stored (raw, unconverted) elements; the list() snapshot lets
    # us delete and replace while iterating.
    for tag, elem in list(ds.items()):
        t = int(tag)  # plain int: BaseTag comparisons go through Python-level __eq__
        group = t >> 16
        if group & 1:
            private.append(tag)
            continue
        if not t & 0xFFFF or t == TRAILING_PADDING:
            # Group lengths are retired and would be wrong after our changes; trailing
            # padding can hold leftovers of earlier data.
            del ds[tag]
            continue
        if top and t in (PATIENT_ID, PATIENT_NAME):
            continue  # replaced by the pseudonym afterwards
        if in_private:
            found = lookup(path, (group, None, t & 0xFFFF))
            if found is not None and found[0] == DELETE:
                del ds[tag]
                ctx.counts["removed"] += 1
                continue
        action = exact.get(t)
        if action is None and 0x5000 <= group <= 0x601E:
            action = action_for(ctx.profile, t)
        if action is not None:
            _apply(ds, tag, action, _loaded(ds, tag, elem), ctx, path)
            continue
        vr = elem.VR
        if vr is None or vr == "UN":
            vr = _dictionary_vr(t)
        if vr == "SQ":
            _recurse(ds, tag, ctx, path=path)
        elif shift and (vr == "DA" or vr == "DT"):
            _shift(ds, tag, vr, _loaded(ds, tag, elem), ctx)
        elif cleans and vr in FREE_TEXT_VRS:
            _clean(ds, tag, ctx)
    if private:
        removed = handle_private(ds, private, ctx.profile, ctx, path)
        ctx.counts["private_removed"] += len(removed)


def _loaded(ds: Dataset, tag: int, elem: DataElement | RawDataElement):
    """The element with its value read (a deferred-read raw element has value None)."""
    if isinstance(elem, RawDataElement) and elem.value is None:
        return ds.get_item(tag)
    return elem


def patient_key(ds: Dataset) -> tuple[str, str]:
    """(Issuer of Patient ID, Patient ID) of the original dataset: the key under which
    the pseudonym is looked up."""
    return _plain(ds, ISSUER_OF_PATIENT_ID), _plain(ds, PATIENT_ID)


def _plain(ds: Dataset, tag: int) -> str:
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return ""
    return str(elem.value).strip("\x00 ")


def _uid(ds: Dataset, tag: int) -> str:
    elem = ds.get_item(tag)
    return "" if elem is None else _text(elem).strip("\x00 ")


def _code_item(code: str) -> Dataset:
    item = Dataset()
    _put(item, CODE_VALUE, "SH", code)
    _put(item, CODING_SCHEME_DESIGNATOR, "SH", "DCM")
    _put(item, CODE_MEANING, "LO", CODE_MEANINGS[code])
    return item


def _record_method(ds: Dataset, profile: Profile, settings: DeidSettings) -> None:
    """Attributes that tell the receiver what was done (PS3.15 E.1.1)."""
    in_force = [name for name in OPTIONS if name in profile.options]
    codes = [BASIC_PROFILE_CODE] + [OPTIONS[name][1] for name in in_force]
    if profile.full_dates:
        temporal = "UNMODIFIED"
    elif profile.modified_dates:
        temporal = "MODIFIED"
    else:
        temporal = "REMOVED"
    _put(ds, PATIENT_IDENTITY_REMOVED, "CS", "YES")
    if profile.preset == TCIA:
        method = [f"{settings.method_text}: TCIA preset", "PS3.15 Basic Profile", *in_force]
    else:
        method = [f"{settings.method_text}: PS3.15 Basic Profile", *in_force]
    _put(ds, DEIDENTIFICATION_METHOD, "LO", method if len(method) > 1 else method[0])
    _put(ds, DEIDENTIFICATION_METHOD_CODES, "SQ", [_code_item(c) for c in codes])
    _put(ds, LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, "CS", temporal)


def deidentify(ds: Dataset, patient: PatientPseudonym, settings: DeidSettings) -> DeidResult:
    """De-identify ``ds`` in place (and its file meta) and report what changed."""
    profile = build_profile(
        frozenset(canonical_option(o) for o in settings.options), settings.preset
    )
    ctx = _Ctx(profile, patient, settings)
    if profile.cleans_text:
        ctx.identifiers = collect_identifiers(ds)
    old = (_uid(ds, STUDY_UID), _uid(ds, SERIES_UID), _uid(ds, SOP_INSTANCE_UID))

    _walk(ds, ctx, top=True)

    _put(ds, PATIENT_ID, "LO", patient.pseudo_id)
    _put(ds, PATIENT_NAME, "PN", patient.pseudo_name)
    _record_method(ds, profile, settings)
    new = (_uid(ds, STUDY_UID), _uid(ds, SERIES_UID), _uid(ds, SOP_INSTANCE_UID))

    meta = getattr(ds, "file_meta", None)
    if meta is not None and MEDIA_STORAGE_SOP_INSTANCE_UID in meta:
        media = _uid(meta, MEDIA_STORAGE_SOP_INSTANCE_UID)
        if new[2]:
            replacement = new[2]
        elif profile.exact.get(MEDIA_STORAGE_SOP_INSTANCE_UID) == "K" or not media:
            replacement = media
        else:
            replacement = ctx.map_uid(media)
        meta.MediaStorageSOPInstanceUID = replacement

    return DeidResult(
        uid_map=ctx.uid_map,
        study_uid=(old[0], new[0]),
        series_uid=(old[1], new[1]),
        sop_instance_uid=(old[2], new[2]),
        actions=ctx.counts,
    )
