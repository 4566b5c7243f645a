"""Codecs of protocol v1: message <-> bytes for ``liveroom.v1.msgpack`` and ``liveroom.v1.json``.

A codec turns typed messages into the payload of one websocket message and back. Decoding
untrusted bytes raises only :class:`~protocol.errors.ProtocolError` subclasses. For the
fan-out hot path a codec also encodes a room event once (``encode_event``) and splices
already-encoded events into a ``batch`` or ``joined`` payload (``encode_batch``,
``encode_joined``) without decoding or re-encoding them; the result is byte-identical to
encoding the whole message at once.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import msgpack
import orjson

from protocol.errors import MalformedMessage
from protocol.messages import (
    CLIENT_TYPES,
    SERVER_TYPES,
    Ack,
    ClientMessage,
    Joined,
    Message,
    Rid,
    RoomEvent,
    ServerMessage,
)
from protocol.wire import from_wire, to_wire

__all__ = [
    "CODECS",
    "DEFAULT_SUBPROTOCOL",
    "JSON",
    "MSGPACK",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "codec_for",
    "unpack_untrusted",
]

# Decoder bounds for untrusted input: generous for any valid message, small enough that a
# hostile payload cannot make the decoder allocate much more than the payload itself.
_MAX_ITEMS: Final = 4096
_ACK_RID, _ACK_OFFSET = (f.key for f in Ack.SCHEMA)  # wire keys, in wire order


class Codec:
    """Common interface; see :class:`MsgpackCodec` and :class:`JsonCodec`."""

    name: str = ""
    subprotocol: str = ""
    binary: bool = True  # websocket opcode: binary (True) or text (False)

    def dumps(self, obj: Any) -> bytes:
        raise NotImplementedError

    def loads(self, data: bytes, *, max_items: int = _MAX_ITEMS) -> Any:
        """Decode bytes into plain values; raises :class:`MalformedMessage` only.

        ``max_items`` bounds each container (client messages: 4096, SPEC §12); server
        messages have no item bound, so :meth:`decode_server` passes the payload's size
        (every item takes at least one byte: allocation stays bounded by the payload).
        """
        raise NotImplementedError

    def _splice(
        self, head: dict[str, Any], key: str, parts: Sequence[bytes], tail: dict[str, Any]
    ) -> bytes:
        raise NotImplementedError

    def encode(self, message: Message) -> bytes:
        """Encode any message (client, server or room event)."""
        return self.dumps(to_wire(message))

    def encode_ack(self, rid: Rid, offset: int | None = None) -> bytes:
        """The bytes of ``encode(Ack(rid=rid, offset=offset))``, without building the Ack.

        Every accepted comment is answered with one, so it skips the message object.
        """
        if offset is None:
            return self.dumps({"t": Ack.TYPE, _ACK_RID: rid})
        return self.dumps({"t": Ack.TYPE, _ACK_RID: rid, _ACK_OFFSET: offset})

    def encode_event(self, event: RoomEvent) -> bytes:
        """Encode one room event, for splicing into batches with :meth:`encode_batch`."""
        return self.dumps(to_wire(event))

    def encode_batch(self, room: str, parts: Sequence[bytes]) -> bytes:
        """Payload of ``{"t": "batch", "room": room, "ev": [...]}`` from encoded events."""
        return self._splice({"t": "batch", "room": room}, "ev", parts, {})

    def encode_joined(self, joined: Joined, parts: Sequence[bytes]) -> bytes:
        """Payload of ``joined`` whose ``recent`` list is the encoded events ``parts``.

        ``joined.recent`` is ignored; ``parts`` stand in its place. The keys before
        ``recent`` in schema order go before it, the keys after it (``pin``, ``sale``,
        ``rid``) after it, so the result equals encoding the whole message.
        """
        items = list(to_wire(joined).items())
        i = next(n for n, (k, _) in enumerate(items) if k == "recent")
        return self._splice(dict(items[:i]), "recent", parts, dict(items[i + 1 :]))

    def decode_client(self, data: bytes) -> ClientMessage:
        """Decode a client-to-server message.

        Raises:
            MalformedMessage: not one well-formed map in this codec.
            UnknownMessageType: unknown ``t``.
            InvalidField: a field missing, mistyped or out of range.
        """
        return from_wire(self.loads(data), CLIENT_TYPES)

    def decode_server(self, data: bytes) -> ServerMessage:
        """Decode a server-to-client message (clients, tests); raises as :meth:`decode_client`.

        A server message's containers may hold more than 4096 items (a ``joined`` of a
        room with a large ``rooms.snapshot_size``, a resume's ``batch``)."""
        return from_wire(self.loads(data, max_items=max(_MAX_ITEMS, len(data))), SERVER_TYPES)


def unpack_untrusted(data: bytes, max_items: int = _MAX_ITEMS) -> Any:
    """msgpack.unpackb with the limits for untrusted input.

    No bin or ext value anywhere (not even an empty one, as a value, a key, nested or
    under an unknown key), string map keys only, containers of at most ``max_items``
    items (4096 by default), at most 1024 nested containers, no string longer than the
    payload itself.

    Raises:
        ValueError: a ``bin`` or ``ext`` value (besides the library's own errors for
            malformed or over-limit input).
    """
    # max_bin_len=0 and max_ext_len=0 still let length-0 values through: the ext hook
    # refuses those exts, and a cheap scan refuses empty bins (``c4 00``, ``c5 00 00``,
    # ``c6 00 00 00 00``): only a payload holding a bin marker byte anywhere (rare: never
    # in ASCII or CJK text) pays for the walk of the decoded value.
    obj = msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
        use_list=True,
        max_bin_len=0,
        max_ext_len=0,
        max_array_len=max_items,
        max_map_len=max_items,
        max_str_len=len(data),
        ext_hook=_refuse_ext,
    )
    if (0xC4 in data or 0xC5 in data or 0xC6 in data) and _holds_bytes(obj):
        raise ValueError("bin values are not part of the protocol")
    return obj


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError(f"ext values are not part of the protocol (type {code})")


def _holds_bytes(obj: Any) -> bool:
    """Whether a decoded value holds ``bytes`` anywhere: as itself, a map key or a value.

    Iterative, so a value nested as deep as the decoder allows needs no recursion.
    """
    stack = [obj]
    pop, push = stack.pop, stack.append
    while stack:
        value = pop()
        kind = type(value)
        if kind is bytes:
            return True
        if kind is dict:
            for k, v in value.items():
                if type(k) is bytes:
                    return True
                push(v)
        elif kind is list:
            stack.extend(value)
    return False


def _msgpack_container_header(n: int, small: int, b16: int, b32: int) -> bytes:
    if n < 16:
        return bytes((small | n,))
    if n < 0x10000:
        return struct.pack(">BH", b16, n)
    return struct.pack(">BI", b32, n)


class MsgpackCodec(Codec):
    """MessagePack (the production codec), via the ``msgpack`` C extension.

    Maps have string keys; strings are UTF-8 ``str`` types, never ``bin``; integers use
    their shortest form. Extension types, binary strings (even empty ones, anywhere in the
    message) and non-string map keys are not part of the protocol: malformed (close 1007).
    """

    name = "msgpack"
    subprotocol = "liveroom.v1.msgpack"
    binary = True

    def __init__(self) -> None:
        # One reused Packer: a third cheaper than msgpack.packb per call (bench/codec.py).
        # Not thread-safe; a codec belongs to one event loop thread, and packing never
        # re-enters itself.
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def dumps(self, obj: Any) -> bytes:
        return self._pack(obj)  # type: ignore[no-any-return]

    def loads(self, data: bytes, *, max_items: int = _MAX_ITEMS) -> Any:
        try:
            return unpack_untrusted(data, max_items)
        except Exception as exc:  # the C unpacker raises many types; all mean "malformed"
            raise MalformedMessage(f"not a msgpack message: {type(exc).__name__}") from None

    def _splice(
        self, head: dict[str, Any], key: str, parts: Sequence[bytes], tail: dict[str, Any]
    ) -> bytes:
        # Hand-assembled map: header, head pairs, key + array header + parts, tail pairs.
        # Written by hand because it is the fan-out hot path: events are encoded once.
        out = [_msgpack_container_header(len(head) + 1 + len(tail), 0x80, 0xDE, 0xDF)]
        pack = self._pack
        out.extend(pack(k) + pack(v) for k, v in head.items())
        out.append(pack(key))
        out.append(_msgpack_container_header(len(parts), 0x90, 0xDC, 0xDD))
        out.extend(parts)
        out.extend(pack(k) + pack(v) for k, v in tail.items())
        return b"".join(out)


class JsonCodec(Codec):
    """JSON (for debugging and browser consoles), via ``orjson``: compact, UTF-8, text frames."""

    name = "json"
    subprotocol = "liveroom.v1.json"
    binary = False

    def dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def loads(self, data: bytes, *, max_items: int = _MAX_ITEMS) -> Any:
        # orjson has no item bound; a JSON item takes at least two bytes, so the
        # message size limit bounds what a client message can hold.
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"not a JSON message: {exc.msg}") from None

    def _splice(
        self, head: dict[str, Any], key: str, parts: Sequence[bytes], tail: dict[str, Any]
    ) -> bytes:
        out = orjson.dumps(head)[:-1] + b',"' + key.encode() + b'":[' + b",".join(parts) + b"]"
        if tail:
            out += b"," + orjson.dumps(tail)[1:-1]
        return out + b"}"


MSGPACK: Final = MsgpackCodec()
JSON: Final = JsonCodec()
CODECS: Final[dict[str, Codec]] = {c.subprotocol: c for c in (MSGPACK, JSON)}
DEFAULT_SUBPROTOCOL: Final = MSGPACK.subprotocol


def codec_for(subprotocol: str | None) -> Codec:
    """The codec of a negotiated subprotocol; no subprotocol means msgpack."""
    if subprotocol is None:
        return MSGPACK
    return CODECS[subprotocol]
