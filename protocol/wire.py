"""Conversion between typed messages and their wire maps, validating untrusted maps.

``to_wire`` turns a message into the plain map that a codec serialises (``t`` first,
then the schema's fields in order, ``None`` optionals left out; nested values such as a
:class:`~protocol.messages.Product` become maps the same way, without ``t``).
``from_wire`` checks a decoded map against the schema of its type and builds the
message; it raises only :class:`~protocol.errors.ProtocolError` subclasses, whatever the
map holds. Unknown keys are ignored (in nested maps too), and so are events of unknown
type inside an event list (``ev``, ``recent``): both may be added within v1. Fields of kind
``room`` (``join.room``) follow the one room-name rule of :mod:`protocol.names`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from protocol.errors import InvalidField, MalformedMessage, UnknownMessageType
from protocol.messages import (
    MAX_ATTR_KEY_LENGTH,
    MAX_ATTR_TEXT_LENGTH,
    MAX_INT,
    MAX_RID_LENGTH,
    ROOM_EVENT_TYPES,
    Attrs,
    AttrValue,
    Field,
    Message,
    Product,
    Rid,
    RoomEvent,
    SaleInfo,
)
from protocol.names import ASCII_ROOM_NAME, ROOM_NAME_RULE, valid_room_name

__all__ = ["event_from_wire", "from_wire", "to_wire"]

M = TypeVar("M")

# Classes of the nested map kinds.
_NESTED: dict[str, type[Product] | type[SaleInfo]] = {"product": Product, "sale": SaleInfo}


def to_wire(message: Message) -> dict[str, Any]:
    """Return the wire map of ``message`` (events and nested values inside are mapped too).

    Raises:
        ValueError: an ``attrs`` value repeats a key (it could not survive the wire map).
    """
    cls = type(message)
    try:
        flat = _FLAT_ENCODERS[cls]
    except KeyError:
        flat = _FLAT_ENCODERS[cls] = _flat_encoder(cls)
    if flat is not None:
        return flat(message)
    return _put_fields(message, {"t": message.TYPE})


_SCALAR_KINDS = frozenset({"str", "room", "int", "bool", "rid"})
_FLAT_ENCODERS: dict[type, Callable[[Any], dict[str, Any]] | None] = {}


def _flat_encoder(cls: type) -> Callable[[Any], dict[str, Any]] | None:
    """A function equal to ``_put_fields(m, {"t": m.TYPE})`` for a schema of scalar fields.

    Generated once per class (as ``dataclasses`` generates ``__init__``): straight-line
    attribute reads with no per-field kind dispatch, because events are encoded on the
    fan-out hot path. None for schemas with events, nested maps or attrs.
    """
    schema: tuple[Field, ...] = cls.SCHEMA  # type: ignore[attr-defined]
    if not all(f.kind in _SCALAR_KINDS and f.attr.isidentifier() for f in schema):
        return None
    lines = ["def encode(m):", f"    out = {{'t': {cls.TYPE!r}}}"]  # type: ignore[attr-defined]
    for f in schema:
        lines += [f"    v = m.{f.attr}", f"    if v is not None: out[{f.key!r}] = v"]
    lines.append("    return out")
    return _define("encode", lines, {})


def _put_fields(obj: Any, out: dict[str, Any]) -> dict[str, Any]:
    for f in obj.SCHEMA:
        value = getattr(obj, f.attr)
        if value is None:
            continue
        if f.kind == "events":
            value = [to_wire(ev) for ev in value]
        elif f.kind in _NESTED:
            value = _put_fields(value, {})
        elif f.kind == "attrs":
            pairs = value
            value = dict(pairs)
            if len(value) != len(pairs):
                raise ValueError(f"{f.key}: repeated keys in {pairs!r}")
        out[f.key] = value
    return out


def _read_rid(obj: Mapping[Any, Any]) -> Rid | None:
    return _valid_rid(obj.get("rid"))


def _valid_rid(rid: Any) -> Rid | None:
    """``rid`` if it is a usable request id (a short string or a safe integer), else None."""
    if isinstance(rid, str) and len(rid) <= MAX_RID_LENGTH:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool) and -(2**53) < rid < 2**53:
        return rid
    return None


def _check(f: Field, value: Any, rid: Rid | None, prefix: str = "") -> Any:
    """Validate one present field value; return the value to store on the message.

    ``prefix`` is the path of the enclosing nested map (``"pin."``), for error messages.
    """
    key = prefix + f.key
    if f.kind == "str":
        if not isinstance(value, str):
            raise InvalidField(f"{key}: expected a string", field=key, rid=rid)
        if f.choices:
            if value not in f.choices:
                raise InvalidField(
                    f"{key}: must be one of {', '.join(f.choices)}", field=key, rid=rid
                )
        elif not f.lo <= len(value) <= f.hi:
            raise InvalidField(
                f"{key}: length must be {f.lo}..{f.hi}, got {len(value)}", field=key, rid=rid
            )
        return value
    if f.kind == "room":
        if not isinstance(value, str):
            raise InvalidField(f"{key}: expected a string", field=key, rid=rid)
        if not valid_room_name(value):
            raise InvalidField(f"{key}: must be {ROOM_NAME_RULE}", field=key, rid=rid)
        return value
    if f.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidField(f"{key}: expected an integer", field=key, rid=rid)
        if not f.lo <= value <= f.hi:
            raise InvalidField(f"{key}: must be in {f.lo}..{f.hi}", field=key, rid=rid)
        return value
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise InvalidField(f"{key}: expected a boolean", field=key, rid=rid)
        return value
    if f.kind == "rid":
        if _valid_rid(value) is None:
            raise InvalidField(
                f"rid: expected a string of at most {MAX_RID_LENGTH} characters or an integer",
                field="rid",
            )
        if isinstance(value, str) and len(value) < f.lo:
            raise InvalidField("rid: must not be empty", field="rid")
        return value
    if f.kind == "events":
        if not isinstance(value, list):
            raise InvalidField(f"{key}: expected a list of events", field=key, rid=rid)
        # Event types added later within v1 are skipped, not refused (SPEC.md, versioning).
        return tuple(event_from_wire(item) for item in value if not _is_unknown_event(item))
    if f.kind == "attrs":
        return _check_attrs(f, value, rid, key)
    return _build(_NESTED[f.kind], value, rid, key + ".")


def _check_attrs(f: Field, value: Any, rid: Rid | None, key: str) -> Attrs:
    """An ``attrs`` map: at most ``f.hi`` entries of str key to str, int or bool."""
    if not isinstance(value, dict):
        raise InvalidField(f"{key}: expected a map", field=key, rid=rid)
    if len(value) > f.hi:
        raise InvalidField(f"{key}: at most {f.hi} entries", field=key, rid=rid)
    out: list[tuple[str, AttrValue]] = []
    for k, v in value.items():
        if not isinstance(k, str) or len(k) > MAX_ATTR_KEY_LENGTH:
            raise InvalidField(
                f"{key}: keys must be strings of at most {MAX_ATTR_KEY_LENGTH} characters",
                field=key,
                rid=rid,
            )
        if v is None:  # nil is the same as an absent key
            continue
        ok = (
            isinstance(v, bool)
            or (isinstance(v, int) and -MAX_INT <= v <= MAX_INT)
            or (isinstance(v, str) and len(v) <= MAX_ATTR_TEXT_LENGTH)
        )
        if not ok:
            raise InvalidField(
                f"{key}.{k[:40]}: expected a string of at most {MAX_ATTR_TEXT_LENGTH}"
                f" characters, an integer with |value| < 2^53 or a boolean",
                field=f"{key}.{k}",
                rid=rid,
            )
        out.append((k, v))
    return tuple(out)


def _is_unknown_event(item: Any) -> bool:
    """Whether ``item`` is a well-formed map naming an event type this version lacks."""
    return (
        isinstance(item, dict)
        and isinstance(item.get("t"), str)
        and item["t"] not in ROOM_EVENT_TYPES
    )


def _build(cls: type[M], obj: Any, rid: Rid | None, prefix: str = "") -> M:
    """Validate the map ``obj`` against ``cls.SCHEMA`` and build a ``cls``."""
    if not isinstance(obj, dict):
        where = prefix[:-1]
        raise InvalidField(f"{where}: expected a map", field=where, rid=rid)
    try:
        build = _BUILDERS[cls]
    except KeyError:
        build = _BUILDERS[cls] = _builder(cls)
    return build(obj, rid, prefix)  # type: ignore[no-any-return]


_BUILDERS: dict[type, Callable[[dict[str, Any], Rid | None, str], Any]] = {}


def _missing(key: str, rid: Rid | None) -> InvalidField:
    return InvalidField(f"{key}: missing", field=key, rid=rid)


def _fast_test(f: Field, i: int) -> str:
    """Source of a quick test that ``v`` is valid for ``f`` as it is, or ``"False"``.

    True means :func:`_check` would accept ``v`` unchanged; False means "ask :func:`_check`",
    which raises the precise error (so every message stays in one place).
    """
    if f.kind == "str" and f.choices:
        return f"type(v) is str and v in C{i}"
    if f.kind == "str":
        return f"type(v) is str and {f.lo} <= len(v) <= {f.hi}"
    if f.kind == "room":  # one C-level regex match for ASCII names; others ask _check
        return "type(v) is str and ROOM_ASCII(v) is not None"
    if f.kind == "int":
        return f"type(v) is int and {f.lo} <= v <= {f.hi}"
    if f.kind == "bool":
        return "type(v) is bool"
    if f.kind == "rid":
        bound = 2**53
        return (
            f"(type(v) is str and {f.lo} <= len(v) <= {MAX_RID_LENGTH})"
            f" or (type(v) is int and {-bound} < v < {bound})"
        )
    return "False"


def _builder(cls: type) -> Callable[[dict[str, Any], Rid | None, str], Any]:
    """A function equal to the schema walk: each field read, tested, checked, then ``cls(...)``.

    Generated once per class (as ``dataclasses`` generates ``__init__``), because every
    client message is validated on the intake hot path: straight-line code with each
    field's bounds inlined. Only valid values take the quick test; anything else goes
    to :func:`_check`, the one place that explains errors.
    """
    schema: tuple[Field, ...] = cls.SCHEMA  # type: ignore[attr-defined]
    namespace: dict[str, Any] = {
        "cls": cls,
        "_check": _check,
        "_missing": _missing,
        "ROOM_ASCII": ASCII_ROOM_NAME.fullmatch,
    }
    lines = ["def build(obj, rid, prefix):", "    kw = {}"]
    for i, f in enumerate(schema):
        namespace[f"F{i}"] = f
        namespace[f"C{i}"] = frozenset(f.choices)
        lines.append(f"    v = obj.get({f.key!r})")
        if f.required:
            lines += ["    if v is None:", f"        raise _missing(prefix + {f.key!r}, rid)"]
        else:
            lines += ["    if v is None:", "        pass"]
        lines += [
            f"    elif {_fast_test(f, i)}:",
            f"        kw[{f.attr!r}] = v",
            "    else:",
            f"        kw[{f.attr!r}] = _check(F{i}, v, rid, prefix)",
        ]
    lines.append("    return cls(**kw)")
    return _define("build", lines, namespace)


def _define(name: str, lines: list[str], namespace: dict[str, Any]) -> Callable[..., Any]:
    """Run the source of ``def name`` (built from our own schemas only); return the function."""
    exec("\n".join(lines), namespace)
    return namespace[name]  # type: ignore[no-any-return]


def from_wire(obj: Any, types: Mapping[str, type[M]]) -> M:
    """Build the message that the decoded map ``obj`` describes.

    Args:
        obj: a value freshly decoded from untrusted bytes.
        types: the message types acceptable here, by wire name.

    Raises:
        MalformedMessage: ``obj`` is not a map with a string ``t``.
        UnknownMessageType: ``t`` names no type in ``types``.
        InvalidField: a field is missing, mistyped or out of range (in a nested map:
            ``field`` is the dotted path, e.g. ``pin.price``); unknown keys are ignored
            (forward compatibility).
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
    return _build(cls, obj, rid)


def event_from_wire(obj: Any) -> RoomEvent:
    """Build a room event from its decoded map (see :func:`from_wire`)."""
    try:
        return from_wire(obj, ROOM_EVENT_TYPES)
    except UnknownMessageType as exc:
        raise InvalidField(str(exc), field="ev") from None
