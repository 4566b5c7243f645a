"""Conversion between typed messages and their wire maps, validating untrusted maps.

``to_wire`` turns a message into the plain map that a codec serialises (``t`` first,
then the schema's fields in order, ``None`` optionals left out). ``from_wire`` checks a
decoded map against the schema of its type and builds the message; it raises only
:class:`~protocol.errors.ProtocolError` subclasses, whatever the map holds. Unknown keys
are ignored, and so are events of unknown type inside an event list (``ev``, ``recent``):
both may be added within v1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from protocol.errors import InvalidField, MalformedMessage, UnknownMessageType
from protocol.messages import (
    MAX_RID_LENGTH,
    ROOM_EVENT_TYPES,
    Field,
    Message,
    Rid,
    RoomEvent,
)

__all__ = ["event_from_wire", "from_wire", "to_wire"]

M = TypeVar("M")


def to_wire(message: Message) -> dict[str, Any]:
    """Return the wire map of ``message`` (events inside are mapped too)."""
    out: dict[str, Any] = {"t": message.TYPE}
    for f in message.SCHEMA:
        value = getattr(message, f.attr)
        if value is None:
            continue
        if f.kind == "events":
            value = [to_wire(ev) for ev in value]
        out[f.key] = value
    return out


def _read_rid(obj: Mapping[Any, Any]) -> Rid | None:
    rid = obj.get("rid")
    if isinstance(rid, str) and len(rid) <= MAX_RID_LENGTH:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool) and -(2**53) < rid < 2**53:
        return rid
    return None


def _check(f: Field, value: Any, rid: Rid | None) -> Any:
    """Validate one present field value; return the value to store on the message."""
    if f.kind == "str":
        if not isinstance(value, str):
            raise InvalidField(f"{f.key}: expected a string", field=f.key, rid=rid)
        if not f.lo <= len(value) <= f.hi:
            raise InvalidField(
                f"{f.key}: length must be {f.lo}..{f.hi}, got {len(value)}", field=f.key, rid=rid
            )
        return value
    if f.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidField(f"{f.key}: expected an integer", field=f.key, rid=rid)
        if not f.lo <= value <= f.hi:
            raise InvalidField(f"{f.key}: must be in {f.lo}..{f.hi}", field=f.key, rid=rid)
        return value
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise InvalidField(f"{f.key}: expected a boolean", field=f.key, rid=rid)
        return value
    if f.kind == "rid":
        if _read_rid({"rid": value}) is None:
            raise InvalidField(
                f"rid: expected a string of at most {MAX_RID_LENGTH} characters or an integer",
                field="rid",
            )
        return value
    # events
    if not isinstance(value, list):
        raise InvalidField(f"{f.key}: expected a list of events", field=f.key, rid=rid)
    # Event types added later within v1 are skipped, not refused (SPEC.md, versioning).
    return tuple(event_from_wire(item) for item in value if not _is_unknown_event(item))


def _is_unknown_event(item: Any) -> bool:
    """Whether ``item`` is a well-formed map naming an event type this version lacks."""
    return (
        isinstance(item, dict)
        and isinstance(item.get("t"), str)
        and item["t"] not in ROOM_EVENT_TYPES
    )


def from_wire(obj: Any, types: Mapping[str, type[M]]) -> M:
    """Build the message that the decoded map ``obj`` describes.

    Args:
        obj: a value freshly decoded from untrusted bytes.
        types: the message types acceptable here, by wire name.

    Raises:
        MalformedMessage: ``obj`` is not a map with a string ``t``.
        UnknownMessageType: ``t`` names no type in ``types``.
        InvalidField: a field is missing, mistyped or out of range; unknown keys are
            ignored (forward compatibility).
    """
    if not isinstance(obj, dict):
        raise MalformedMessage("a message must be a map")
    kind = obj.get("t")
    rid = _read_rid(obj)
    if not isinstance(kind, str):
        raise MalformedMessage("a message must have a string field 't'", rid=rid)
    cls = types.get(kind)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {kind[:40]!r}", rid=rid)
    kwargs: dict[str, Any] = {}
    for f in cls.SCHEMA:  # type: ignore[attr-defined]
        if f.key in obj and obj[f.key] is not None:
            kwargs[f.attr] = _check(f, obj[f.key], rid)
        elif f.required:
            raise InvalidField(f"{f.key}: missing", field=f.key, rid=rid)
    return cls(**kwargs)


def event_from_wire(obj: Any) -> RoomEvent:
    """Build a room event from its decoded map (see :func:`from_wire`)."""
    try:
        return from_wire(obj, ROOM_EVENT_TYPES)
    except UnknownMessageType as exc:
        raise InvalidField(str(exc), field="ev") from None
