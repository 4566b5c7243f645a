"""Typed messages of liveroom protocol v1: frozen, slotted dataclasses and their schemas.

Every message type has a wire name (``TYPE``) and a schema (``SCHEMA``): the wire key,
kind and bounds of each field, in wire order. The schema is the single source of truth
for encoding (``protocol.wire.to_wire``) and for validating untrusted input
(``protocol.wire.from_wire``); SPEC.md documents the same tables for frontend authors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

__all__ = [
    "CLIENT_TYPES",
    "MAX_RID_LENGTH",
    "MAX_ROOM_LENGTH",
    "MAX_TEXT_LENGTH",
    "PROTOCOL_VERSION",
    "ROOM_EVENT_TYPES",
    "SERVER_TYPES",
    "Ack",
    "Batch",
    "ClientMessage",
    "Comment",
    "Error",
    "Field",
    "Join",
    "Joined",
    "Leave",
    "Left",
    "Like",
    "Likes",
    "Message",
    "Ping",
    "Pong",
    "Rid",
    "RoomEvent",
    "SendComment",
    "ServerMessage",
    "Viewers",
    "Welcome",
]

PROTOCOL_VERSION = 1
MAX_ROOM_LENGTH = 64
MAX_RID_LENGTH = 64
MAX_TEXT_LENGTH = 2000  # protocol ceiling; servers configure a lower comment limit
MAX_INT = 2**53 - 1  # largest integer every client language (JavaScript) holds exactly

Rid = str | int
Kind = Literal["str", "int", "bool", "rid", "events"]


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message schema.

    Args:
        attr: attribute name on the dataclass.
        key: key in the wire map.
        kind: ``str``, ``int``, ``bool``, ``rid`` (request id: str or int) or ``events``
            (a list of room events).
        required: whether the key must be present; optional fields default to ``None``
            (``rid``, ``off``, ``ep``) or to the dataclass default, and are left out of
            the wire map when ``None``.
        lo: minimum length for ``str``, minimum value for ``int``.
        hi: maximum length for ``str``, maximum value for ``int``.
    """

    attr: str
    key: str
    kind: Kind
    required: bool = True
    lo: int = 0
    hi: int = MAX_INT


RID = Field("rid", "rid", "rid", required=False)
ROOM = Field("room", "room", "str", lo=1, hi=MAX_ROOM_LENGTH)


# --- client to server -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """Join a room; with ``offset`` and ``epoch`` from an earlier session, resume it."""

    TYPE: ClassVar[str] = "join"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        ROOM,
        Field("offset", "off", "int", required=False),
        Field("epoch", "ep", "str", required=False, lo=1, hi=32),
        RID,
    )
    room: str
    offset: int | None = None
    epoch: str | None = None
    rid: Rid | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave:
    """Stop receiving a room's events."""

    TYPE: ClassVar[str] = "leave"
    SCHEMA: ClassVar[tuple[Field, ...]] = (ROOM, RID)
    room: str
    rid: Rid | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendComment:
    """Post a comment (弹幕) to a joined room. Wire type ``comment``."""

    TYPE: ClassVar[str] = "comment"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        ROOM,
        Field("text", "text", "str", hi=MAX_TEXT_LENGTH),
        RID,
    )
    room: str
    text: str
    rid: Rid | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Like:
    """Add ``count`` likes to a joined room."""

    TYPE: ClassVar[str] = "like"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        ROOM,
        Field("count", "n", "int", required=False, lo=1, hi=100),
        RID,
    )
    room: str
    count: int = 1
    rid: Rid | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Application-level ping; answered by ``pong`` with the server's clock."""

    TYPE: ClassVar[str] = "ping"
    SCHEMA: ClassVar[tuple[Field, ...]] = (RID,)
    rid: Rid | None = None


# --- room events (inside batch and joined) -------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Comment:
    """A comment as every viewer of the room sees it."""

    TYPE: ClassVar[str] = "comment"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "str", lo=1, hi=64),
        Field("user_id", "uid", "str", lo=1, hi=128),
        Field("name", "name", "str", hi=64),
        Field("text", "text", "str", hi=MAX_TEXT_LENGTH),
        Field("ts", "ts", "int"),
        Field("offset", "off", "int"),
    )
    id: str
    user_id: str
    name: str
    text: str
    ts: int  # server time of acceptance, unix milliseconds
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Likes:
    """The room's like total (conflated: only the latest total is sent)."""

    TYPE: ClassVar[str] = "likes"
    SCHEMA: ClassVar[tuple[Field, ...]] = (Field("total", "total", "int"),)
    total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Viewers:
    """The room's viewer count (conflated: only the latest count is sent)."""

    TYPE: ClassVar[str] = "viewers"
    SCHEMA: ClassVar[tuple[Field, ...]] = (Field("count", "count", "int"),)
    count: int


RoomEvent = Comment | Likes | Viewers


# --- server to client --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """First message on every connection, once the token is accepted."""

    TYPE: ClassVar[str] = "welcome"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("version", "v", "int"),
        Field("session", "sid", "str", lo=1, hi=64),
        Field("user_id", "uid", "str", lo=1, hi=128),
        Field("name", "name", "str", hi=64),
        Field("role", "role", "str", lo=1, hi=16),
        Field("heartbeat_ms", "hb", "int"),
        Field("server_time", "now", "int"),
    )
    version: int = PROTOCOL_VERSION
    session: str
    user_id: str
    name: str
    role: str
    heartbeat_ms: int
    server_time: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Joined:
    """Answer to ``join``: the room snapshot, or the events missed since ``offset``."""

    TYPE: ClassVar[str] = "joined"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        ROOM,
        Field("epoch", "ep", "str", lo=1, hi=32),
        Field("offset", "off", "int"),
        Field("viewers", "viewers", "int"),
        Field("likes", "likes", "int"),
        Field("resync", "resync", "bool"),
        Field("recent", "recent", "events"),
        RID,
    )
    room: str
    epoch: str
    offset: int  # offset of the room's latest event (0: none yet)
    viewers: int
    likes: int
    resync: bool  # true: the client's offset could not be resumed, reset its view
    recent: tuple[RoomEvent, ...]
    rid: Rid | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Left:
    """Answer to ``leave``."""

    TYPE: ClassVar[str] = "left"
    SCHEMA: ClassVar[tuple[Field, ...]] = (ROOM, RID)
    room: str
    rid: Rid | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """One or more room events in one frame, in offset order."""

    TYPE: ClassVar[str] = "batch"
    SCHEMA: ClassVar[tuple[Field, ...]] = (ROOM, Field("events", "ev", "events"))
    room: str
    events: tuple[RoomEvent, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """Success answer to a command that carried a request id (comment, like)."""

    TYPE: ClassVar[str] = "ack"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("rid", "rid", "rid"),
        Field("offset", "off", "int", required=False),
    )
    rid: Rid
    offset: int | None = None  # offset given to the accepted comment


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """A command was refused; the connection stays open."""

    TYPE: ClassVar[str] = "error"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("code", "code", "str", lo=1, hi=64),
        Field("message", "msg", "str", hi=1000),
        RID,
    )
    code: str
    message: str
    rid: Rid | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Answer to ``ping``."""

    TYPE: ClassVar[str] = "pong"
    SCHEMA: ClassVar[tuple[Field, ...]] = (Field("server_time", "now", "int"), RID)
    server_time: int
    rid: Rid | None = None


ClientMessage = Join | Leave | SendComment | Like | Ping
ServerMessage = Welcome | Joined | Left | Batch | Ack | Error | Pong
Message = ClientMessage | ServerMessage | RoomEvent

CLIENT_TYPES: dict[str, type[ClientMessage]] = {
    cls.TYPE: cls for cls in (Join, Leave, SendComment, Like, Ping)
}
SERVER_TYPES: dict[str, type[ServerMessage]] = {
    cls.TYPE: cls for cls in (Welcome, Joined, Left, Batch, Ack, Error, Pong)
}
ROOM_EVENT_TYPES: dict[str, type[RoomEvent]] = {cls.TYPE: cls for cls in (Comment, Likes, Viewers)}
