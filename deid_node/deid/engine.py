"""Apply the PS3.15 Basic Application Confidentiality Profile to one dataset.

Speed matters (every received image passes through here), so the walk looks at tags
only and touches an element's value only when its action changes it: pydicom keeps
unread elements as undecoded raw bytes, and those are written back unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from .dates import shift_date, shift_datetime
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
    uid_key: bytes
    options: frozenset[str] = frozenset({"RetainLongitudinalTemporalInformationModifiedDates"})
    uid_root: str = "2.25."
    method_text: str = "deid-node"  # prefix for DeidentificationMethod (0012,0063)


@dataclass
class DeidResult:
    uid_map: dict[str, str]
    study_uid: tuple[str, str]
    series_uid: tuple[str, str]
    sop_instance_uid: tuple[str, str]
    actions: dict[str, int] = field(default_factory=dict)


class _Ctx:
    """Per-call state: the resolved profile and what has been done so far."""

    __slots__ = ("counts", "identifiers", "key", "offset", "profile", "root", "shift", "uid_map")

    def __init__(self, profile: Profile, patient: PatientPseudonym, settings: DeidSettings):
        self.profile = profile
        self.shift = profile.modified_dates
        self.offset = patient.date_offset_days
        self.key = settings.uid_key
        self.root = settings.uid_root
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
                "private_removed",
            ),
            0,
        )

    def map_uid(self, old: str) -> str:
        new = self.uid_map.get(old)
        if new is None:
            new = make_uid(old, self.key, self.root)
            self.uid_map[old] = new
        return new


@functools.lru_cache(maxsize=8192)
def _dictionary_vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]  # ambiguous ("US or SS", "OB or OW"): the first is safe here


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


def _put(ds: Dataset, tag: int, vr: str, value: object) -> None:
    ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)


def handle_private(ds: Dataset, tags: list[int], profile: Profile) -> list[int]:
    """Decide the fate of the private (odd-group) elements ``tags`` of ``ds``; returns
    the tags removed.

    Hook for the Retain Safe Private option: with it on, the TCIA private tag knowledge
    base will decide per element (keep, delete, hash, offset). Until then every private
    element is kept in place when the option is on, and all are removed otherwise.
    """
    if profile.private == "X":
        for tag in tags:
            del ds[tag]
        return tags
    return []


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
    if not ctx.identifiers:
        return
    elem = ds[tag]  # decoded with the dataset's character set
    value = elem.value
    if value is None or value == "":
        return
    if not isinstance(value, MultiValue | list | tuple):
        new: object = clean_text(str(value), ctx.identifiers)
        changed = new != str(value)
    else:
        new = [clean_text(str(v), ctx.identifiers) for v in value]
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


def _recurse(ds: Dataset, tag: int, ctx: _Ctx, dummy_codes: bool = False) -> None:
    seq = ds[tag].value
    if not seq:
        return
    for item in seq:
        _walk(item, ctx, top=False)
    if dummy_codes and _dictionary_keyword_is_code_sequence(tag):
        _dummy_code_items(seq)


@functools.lru_cache(maxsize=1024)
def _dictionary_keyword_is_code_sequence(tag: int) -> bool:
    return keyword_for_tag(tag).endswith("CodeSequence")


def _apply(ds: Dataset, tag: int, action: str, elem, ctx: _Ctx) -> None:
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
        _recurse(ds, tag, ctx, dummy_codes=action == "D")
    elif vr in ("DA", "DT") and ctx.shift:
        # With the Modified Dates option every kept date moves by the patient's offset,
        # whatever the row says (D would destroy intervals, K from another option would
        # leak the real date).
        _shift(ds, tag, vr, elem, ctx)
    elif action == "K":
        return
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


def _walk(ds: Dataset, ctx: _Ctx, top: bool) -> None:
    exact = ctx.profile.exact
    shift = ctx.shift
    private: list[int] = []
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
        action = exact.get(t)
        if action is None and 0x5000 <= group <= 0x601E:
            action = action_for(ctx.profile, t)
        if action is not None:
            _apply(ds, tag, action, _loaded(ds, tag, elem), ctx)
            continue
        vr = elem.VR
        if vr is None or vr == "UN":
            vr = _dictionary_vr(t)
        if vr == "SQ":
            _recurse(ds, tag, ctx)
        elif shift and (vr == "DA" or vr == "DT"):
            _shift(ds, tag, vr, _loaded(ds, tag, elem), ctx)
    if private:
        removed = handle_private(ds, private, ctx.profile)
        ctx.counts["private_removed"] += len(removed)
        if len(removed) < len(private):
            gone = set(removed)
            for tag in private:
                if tag not in gone and tag in ds and ds.get_item(tag).VR == "SQ":
                    _recurse(ds, tag, ctx)


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
    method = [f"{settings.method_text}: PS3.15 Basic Profile", *in_force]
    _put(ds, DEIDENTIFICATION_METHOD, "LO", method if len(method) > 1 else method[0])
    _put(ds, DEIDENTIFICATION_METHOD_CODES, "SQ", [_code_item(c) for c in codes])
    _put(ds, LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, "CS", temporal)


def deidentify(ds: Dataset, patient: PatientPseudonym, settings: DeidSettings) -> DeidResult:
    """De-identify ``ds`` in place (and its file meta) and report what changed."""
    profile = build_profile(frozenset(canonical_option(o) for o in settings.options))
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
