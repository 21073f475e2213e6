"""C-STORE and C-ECHO command sets without a pydicom Dataset in between.

pynetdicom turns every DIMSE primitive it sends into a message whose command set
is a pydicom Dataset (built keyword by keyword, then encoded once more to learn
the group length), and every command set it receives back into such a Dataset,
converting each element to set the primitive's fields. For the two messages a
storage node exchanges per instance, the C-STORE request and its response, that
cost about 0.43 ms to send and 0.37 ms to receive each (2-core machine), on both
sides of the node: in the receiving process and in every worker that forwards.

Here those messages' command sets are encoded from the primitive's fields (0.06
ms) and decoded from the bytes directly (a received one becomes a pydicom
Dataset only if something asks for more than its command field), with
pynetdicom's own tables (which elements a message has, which of them the
primitive carries) and pydicom's data dictionary (tags and VRs), so the bytes on
the wire and the primitives handed to the service classes are the ones
pynetdicom makes. Anything else goes pynetdicom's
way: another message, an element of another VR, a value that is not plain
ASCII or holds a backslash, an empty value, or an event handler bound to
EVT_DIMSE_SENT (it is given the message object). Tests check bytes and
primitives against pynetdicom's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID
from pynetdicom import dimse, dimse_messages, dimse_primitives, dsutils, evt

_MESSAGES = (
    dimse_messages.C_STORE_RQ,
    dimse_messages.C_STORE_RSP,
    dimse_messages.C_ECHO_RQ,
    dimse_messages.C_ECHO_RSP,
)
_COMPUTED = ("CommandGroupLength", "CommandField", "CommandDataSetType")
_PAD = {"UI": b"\x00", "AE": b" ", "LO": b" ", "SH": b" ", "CS": b" "}


class EncodedCommandSet(bytes):
    """A command set already encoded (implicit VR little endian), in the place of
    the Dataset pynetdicom's ``encode_msg`` encodes."""


def _layout(cls: type) -> tuple[int, tuple[tuple[str, int, str], ...], str | None]:
    """A message class's Command Field value, its other elements (keyword, tag, VR)
    as pynetdicom lists them, and the primitive field holding its data set."""
    name = cls.__name__.replace("_", "-")
    field = {v[0]: k for k, v in dimse_messages._MESSAGE_TYPES.items()}[name]
    elements = tuple(
        (kw, int(tag_for_keyword(kw) or 0), dictionary_VR(kw))
        for kw in dimse_messages._COMMAND_SET_KEYWORDS[name]
        if kw not in _COMPUTED
    )
    return field, elements, dimse_messages._DATASET_KEYWORDS.get(cls.__name__)


_LAYOUTS = {cls: _layout(cls) for cls in _MESSAGES}
_BY_TAG = {
    cls: {tag: (kw, vr) for kw, tag, vr in elements}
    for cls, (_field, elements, _ds) in _LAYOUTS.items()
}


def _value_bytes(vr: str, value: Any) -> bytes | None:
    if value is None:
        return b""
    if vr == "US" and type(value) is int and 0 <= value <= 0xFFFF:
        return struct.pack("<H", value)
    if vr in _PAD and isinstance(value, str) and value.isascii():
        data = value.encode("ascii")
        return data + _PAD[vr] if len(data) % 2 else data
    return None


def command_set_bytes(primitive: Any, cls: type) -> tuple[bytes, Any, Any] | None:
    """The encoded command set of ``primitive`` sent as message ``cls``, with the
    message's data set and data set path; None where pynetdicom must do it."""
    layout = _LAYOUTS.get(cls)
    if layout is None:
        return None
    field, elements, dataset_keyword = layout
    items = []
    for keyword, tag, vr in elements:
        if hasattr(primitive, keyword):
            value = getattr(primitive, keyword)
            if value is None:
                continue  # pynetdicom deletes the element
        else:
            value = None  # pynetdicom leaves it in the set, empty
        data = _value_bytes(vr, value)
        if data is None:
            return None
        items.append((tag, data))
    data_set = BytesIO()
    has_data = False
    if dataset_keyword is not None:
        data_set = getattr(primitive, dataset_keyword)
        has_data = bool(data_set)
    path = getattr(primitive, "_dataset_path", None)
    has_data = has_data or bool(path)
    items.append((0x0100, struct.pack("<H", field)))
    items.append((0x0800, struct.pack("<H", 0x0001 if has_data else 0x0101)))
    items.sort()
    body = b"".join(struct.pack("<HHI", 0, tag & 0xFFFF, len(d)) + d for tag, d in items)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body, data_set, path


def _fast_send_msg(original: Callable[..., None]) -> Callable[..., None]:
    def send_msg(self: dimse.DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        if primitive.MessageIDBeingRespondedTo is None:
            cls = dimse._RQ_TO_MESSAGE.get(primitive.__class__)
        else:
            cls = dimse._RSP_TO_MESSAGE.get(primitive.__class__)
        encoded = None
        if cls in _LAYOUTS and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            encoded = command_set_bytes(primitive, cls)
        if encoded is None:
            original(self, primitive, context_id)
            return
        command_set, data_set, path = encoded
        msg = cls.__new__(cls)  # without the Dataset its __init__ builds
        msg.context_id = context_id
        msg.encoded_command_set = BytesIO()
        msg.command_set = EncodedCommandSet(command_set)
        msg.data_set = data_set
        msg._data_set_path = path
        msg._data_set_file = None
        pdus = msg.encode_msg(context_id, self.maximum_pdu_size)
        send_pdus = getattr(self.dul, "send_pdus", None)
        if send_pdus is not None and not self.assoc.get_handlers(evt.EVT_DATA_SENT):
            send_pdus(pdus)  # common._send_data_directly: together, where it can
        else:
            for pdata in pdus:
                self.dul.send_pdu(pdata)

    send_msg.__wrapped__ = original  # type: ignore[attr-defined]
    return send_msg


def _text(vr: str, data: bytes) -> str | None:
    if not data.isascii() or b"\\" in data:
        return None
    text = data.decode("ascii")
    return text.strip() if vr == "AE" else text.rstrip("\0 ")


def primitive_of(msg: Any) -> Any | None:
    """The primitive of a received C-STORE or C-ECHO message, decoded from its
    encoded command set; None where pynetdicom must do it."""
    by_tag = _BY_TAG.get(type(msg))
    if by_tag is None:
        return None
    raw = msg.encoded_command_set.getvalue()
    values: list[tuple[str, Any]] = []
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            return None
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        pos += 8
        data = raw[pos : pos + length]
        pos += length
        if group != 0 or len(data) != length or not length:
            return None
        if elem in (0x0000, 0x0100, 0x0800):
            continue  # group length, command field and data set type: not fields
        found = by_tag.get(elem)
        if found is None:
            return None
        keyword, vr = found
        value: Any
        if vr == "US":
            if length != 2:
                return None
            (value,) = struct.unpack("<H", data)
        elif vr in _PAD:
            value = _text(vr, data)
            if not value:
                return None
        else:
            return None
        values.append((keyword, value))
    name = type(msg).__name__
    primitive = dimse_messages._MSG_TO_PRIMITVE[name[: name.rfind("_R")]]()
    for keyword, value in values:
        if hasattr(primitive, keyword):
            setattr(primitive, keyword, value)
    dataset_keyword = _LAYOUTS[type(msg)][2]
    if dataset_keyword is not None:
        setattr(primitive, dataset_keyword, msg.data_set)
    primitive._context_id = msg.context_id
    primitive._dataset_path = msg._data_set_path
    primitive._dataset_file = msg._data_set_file
    return primitive


def _fast_to_primitive(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def message_to_primitive(self: Any) -> Any:
        primitive = primitive_of(self)
        return original(self) if primitive is None else primitive

    message_to_primitive.__wrapped__ = original  # type: ignore[attr-defined]
    return message_to_primitive


_FIELDS = {layout[0] for layout in _LAYOUTS.values()}


class _CommandSet:
    """A received C-STORE or C-ECHO command set, read only as far as pynetdicom's
    ``decode_msg`` reads it (Command Field, Command Data Set Type): the primitive is
    made from the bytes (:func:`primitive_of`). Anything else asked of it decodes
    the pydicom Dataset and answers from that."""

    def __init__(self, raw: bytes, field: int, data_set_type: int) -> None:
        self._raw = raw
        self._dataset: Any = None
        self.CommandField = field
        self.CommandDataSetType = data_set_type

    def _decoded(self) -> Any:
        if self._dataset is None:
            self._dataset = dsutils.decode(BytesIO(self._raw), True, True)
        return self._dataset

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._decoded(), name)

    def __iter__(self) -> Any:
        return iter(self._decoded())

    def __getitem__(self, key: Any) -> Any:
        return self._decoded()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._decoded()

    def __len__(self) -> int:
        return len(self._decoded())


def decode_command_set(
    data: BytesIO, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> Any:
    """pynetdicom's ``decode`` as ``decode_msg`` uses it (command sets only): a
    C-STORE or C-ECHO command set is not made into a Dataset unless asked."""
    if is_implicit_vr and is_little_endian and not deflated:
        raw = data.getvalue()
        found: dict[int, int] = {}
        pos, end = 0, len(raw)
        while pos + 8 <= end:
            group, elem, length = struct.unpack_from("<HHI", raw, pos)
            if group != 0 or pos + 8 + length > end:
                break
            if elem in (0x0100, 0x0800) and length == 2:
                (found[elem],) = struct.unpack_from("<H", raw, pos + 8)
            pos += 8 + length
        if pos == end and found.get(0x0100) in _FIELDS and 0x0800 in found:
            return _CommandSet(raw, found[0x0100], found[0x0800])
    return dsutils.decode(data, is_implicit_vr, is_little_endian, deflated)


# How many conformant UIDs ``set_uid`` remembers (then it starts again).
_CONFORMANT_KEPT = 4096


def _remembering_conformant(original: Callable[..., Any]) -> Callable[..., Any]:
    """pynetdicom's ``set_uid`` (the UID setters of every primitive), which builds and
    checks a UID each time it is set: twice for an instance's UID (its request, then
    the response the Storage SCP builds from it), every time for its SOP class. For
    a conformant UID it is a pure function (no warning, no error, whatever the
    conformance setting): those are answered from memory."""

    conformant: dict[str, UID] = {}  # checked already, by value

    def set_uid(value: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        if (type(value) is not str and type(value) is not UID) or args or kwargs:
            return original(value, name, *args, **kwargs)
        known = conformant.get(value)
        if known is not None:
            return known
        uid = original(value, name)
        if uid and uid.is_valid:
            if len(conformant) >= _CONFORMANT_KEPT:
                conformant.clear()
            conformant[str(uid)] = uid
        return uid

    set_uid.__wrapped__ = original  # type: ignore[attr-defined]
    return set_uid


def install() -> None:
    """Put the fast paths in pynetdicom's DIMSE provider and messages (once)."""
    if not hasattr(dimse_primitives.set_uid, "__wrapped__"):
        dimse_primitives.set_uid = _remembering_conformant(dimse_primitives.set_uid)
    provider = dimse.DIMSEServiceProvider
    if not getattr(provider.send_msg, "_deid_node_fast", False):
        send_msg = _fast_send_msg(provider.send_msg)
        send_msg._deid_node_fast = True  # type: ignore[attr-defined]
        provider.send_msg = send_msg  # type: ignore[method-assign]
    message = dimse_messages.DIMSEMessage
    if not getattr(message.message_to_primitive, "_deid_node_fast", False):
        to_primitive = _fast_to_primitive(message.message_to_primitive)
        to_primitive._deid_node_fast = True  # type: ignore[attr-defined]
        message.message_to_primitive = to_primitive  # type: ignore[method-assign]
    dimse_messages.decode = decode_command_set  # type: ignore[attr-defined]
