"""Typed messages of liveroom protocol v1: frozen, slotted dataclasses and their schemas.

Every message type has a wire name (``TYPE``) and a schema (``SCHEMA``): the wire key,
kind and bounds of each field, in wire order. The schema is the single source of truth
for encoding (``protocol.wire.to_wire``) and for validating untrusted input
(``protocol.wire.from_wire``); SPEC.md documents the same tables for frontend authors.
Nested values (:class:`Product`, :class:`SaleInfo`) have a schema but no ``TYPE``: they
travel as plain maps inside a message or event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

__all__ = [
    "BUY_STATUSES",
    "CLIENT_TYPES",
    "CONFLATED_EVENT_TYPES",
    "MAX_ATTRS",
    "MAX_ATTR_KEY_LENGTH",
    "MAX_ATTR_TEXT_LENGTH",
    "MAX_INT",
    "MAX_RID_LENGTH",
    "MAX_ROOM_LENGTH",
    "MAX_TEXT_LENGTH",
    "MAX_TOKEN_LENGTH",
    "OFFSET_EVENT_TYPES",
    "PROTOCOL_VERSION",
    "ROOM_EVENT_TYPES",
    "SALE_CLOSE_REASONS",
    "SALE_STATUSES",
    "SERVER_TYPES",
    "Ack",
    "AttrValue",
    "Attrs",
    "Batch",
    "Buy",
    "BuyResult",
    "ClientMessage",
    "Comment",
    "ConflatedEvent",
    "Error",
    "Field",
    "Join",
    "Joined",
    "Leave",
    "Left",
    "Like",
    "Likes",
    "Message",
    "OffsetEvent",
    "Ping",
    "Pinned",
    "Pong",
    "Product",
    "Purchase",
    "Refresh",
    "Refreshed",
    "Rid",
    "RoomEvent",
    "SaleClosed",
    "SaleInfo",
    "SaleOpened",
    "SendComment",
    "ServerMessage",
    "SoldOut",
    "Stock",
    "SystemMessage",
    "Unpinned",
    "Viewers",
    "Welcome",
]

PROTOCOL_VERSION = 1
MAX_ROOM_LENGTH = 64
MAX_RID_LENGTH = 64
MAX_TOKEN_LENGTH = 16384  # a ``refresh`` token; the message size limit applies as well
MAX_TEXT_LENGTH = 2000  # protocol ceiling; servers configure a lower comment limit
MAX_INT = 2**53 - 1  # largest integer every client language (JavaScript) holds exactly
MAX_ATTRS = 32  # most entries in an ``attrs`` map (``Product.extra``)
MAX_ATTR_KEY_LENGTH = 64
MAX_ATTR_TEXT_LENGTH = 1000

Rid = str | int
AttrValue = str | int | bool
Attrs = tuple[tuple[str, AttrValue], ...]
Kind = Literal["str", "room", "int", "bool", "rid", "events", "product", "sale", "attrs"]

BUY_STATUSES = ("ok", "sold_out", "limit_reached", "not_open", "error")
SALE_STATUSES = ("scheduled", "open", "sold_out", "closed", "ended")
SALE_CLOSE_REASONS = ("closed", "ended", "sold_out")


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a message schema.

    Args:
        attr: attribute name on the dataclass.
        key: key in the wire map.
        kind: ``str``, ``room`` (a room name under :func:`protocol.names.valid_room_name`;
            ``lo``/``hi`` unused), ``int``, ``bool``, ``rid`` (request id: str or int), ``events``
            (a list of room events), ``product`` (a :class:`Product` map), ``sale`` (a
            :class:`SaleInfo` map) or ``attrs`` (a map of str keys to str, int or bool
            values, held as a tuple of ``(key, value)`` pairs in wire order).
        required: whether the key must be present; optional fields default to ``None``
            (``rid``, ``off``, ``ep``) or to the dataclass default, and are left out of
            the wire map when ``None``.
        lo: minimum length for ``str``, minimum value for ``int``; for ``rid``, the
            minimum length of a string rid.
        hi: maximum length for ``str``, maximum value for ``int``; for ``attrs``, the
            maximum number of entries.
        choices: for ``str``, the only values allowed (empty: any value within bounds).
    """

    attr: str
    key: str
    kind: Kind
    required: bool = True
    lo: int = 0
    hi: int = MAX_INT
    choices: tuple[str, ...] = ()


RID = Field("rid", "rid", "rid", required=False)
ROOM = Field("room", "room", "str", lo=1, hi=MAX_ROOM_LENGTH)
# ``join`` alone checks the room-name rule: a name no connection can have joined gets
# ``not_joined`` from the server in every other command (SPEC.md §4.9).
ROOM_NAME = Field("room", "room", "room", lo=1, hi=MAX_ROOM_LENGTH)
TS = Field("ts", "ts", "int")
OFFSET = Field("offset", "off", "int")
SALE_ID = Field("sale_id", "sale", "str", lo=1, hi=64)


# --- nested values (inside messages and events) ----------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Product:
    """A product card (field kind ``product``): what a live room shows and sells.

    ``extra`` holds free-form attributes (e.g. ``("颜色", "黑")``, ``("stars", 5)``,
    ``("new", True)``) as ``(key, value)`` pairs in wire order; keys are unique.
    """

    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "str", lo=1, hi=64),
        Field("title", "title", "str", lo=1, hi=200),
        Field("price", "price", "int"),
        Field("currency", "currency", "str", required=False, lo=3, hi=3),
        Field("image", "image", "str", required=False, hi=1000),
        Field("extra", "extra", "attrs", required=False, hi=MAX_ATTRS),
    )
    id: str
    title: str
    price: int  # minor units (分, cents)
    currency: str | None = None  # ISO 4217 code, e.g. "CNY"
    image: str | None = None  # URL
    extra: Attrs | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SaleInfo:
    """A flash sale (秒杀) snapshot (field kind ``sale``)."""

    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "str", lo=1, hi=64),
        Field("product_id", "pid", "str", lo=1, hi=64),
        Field("price", "price", "int"),
        Field("limit", "limit", "int", lo=1),
        Field("stock", "stock", "int"),
        Field("remaining", "remaining", "int"),
        Field("starts", "starts", "int"),
        Field("ends", "ends", "int"),
        Field("status", "status", "str", choices=SALE_STATUSES),
    )
    id: str
    product_id: str
    price: int  # minor units (分, cents)
    limit: int  # most units one user may buy
    stock: int  # total units: initial + restocked
    remaining: int
    starts: int  # unix ms; purchases accepted from this instant…
    ends: int  # …until just before this one
    status: str  # scheduled | open | sold_out | closed | ended


# --- client to server -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """Join a room; with ``offset`` and ``epoch`` from an earlier session, resume it."""

    TYPE: ClassVar[str] = "join"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        ROOM_NAME,
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Buy:
    """Buy ``qty`` units in a flash sale of a joined room.

    ``rid`` is required: it is the idempotency key of the attempt. A retry with the same
    ``rid`` (same user, same sale) is never charged twice and gets the first answer.
    """

    TYPE: ClassVar[str] = "buy"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        ROOM,
        Field("sale", "sale", "str", lo=1, hi=64),
        Field("qty", "qty", "int", required=False, lo=1, hi=100),
        Field("rid", "rid", "rid", lo=1),
        Field("retry", "retry", "bool", required=False),
    )
    room: str
    sale: str
    qty: int = 1
    rid: Rid
    retry: bool | None = None  # true: a resend of an attempt whose answer was lost


@dataclass(frozen=True, slots=True, kw_only=True)
class Refresh:
    """Hand the server a fresh token for the same user before the current one expires.

    Answered by ``refreshed`` (the new token is in force) or by ``error``
    (``token_invalid``, ``token_expired``, ``forbidden_room``: the old token stays in force).
    """

    TYPE: ClassVar[str] = "refresh"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("token", "token", "str", lo=1, hi=MAX_TOKEN_LENGTH),
        RID,
    )
    token: str
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


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemMessage:
    """A host or service message to the room. Wire type ``system``."""

    TYPE: ClassVar[str] = "system"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("id", "id", "str", lo=1, hi=64),
        Field("text", "text", "str", hi=MAX_TEXT_LENGTH),
        TS,
        OFFSET,
    )
    id: str
    text: str
    ts: int  # unix ms
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Pinned:
    """A product was pinned (置顶): the room now shows this product card."""

    TYPE: ClassVar[str] = "pinned"
    SCHEMA: ClassVar[tuple[Field, ...]] = (Field("product", "product", "product"), TS, OFFSET)
    product: Product
    ts: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Unpinned:
    """The pinned product was taken down."""

    TYPE: ClassVar[str] = "unpinned"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("product_id", "pid", "str", lo=1, hi=64),
        TS,
        OFFSET,
    )
    product_id: str
    ts: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SaleOpened:
    """A flash sale was announced in the room (it may open later: see ``sale.status``)."""

    TYPE: ClassVar[str] = "sale_opened"
    SCHEMA: ClassVar[tuple[Field, ...]] = (Field("sale", "sale", "sale"), TS, OFFSET)
    sale: SaleInfo
    ts: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SaleClosed:
    """A flash sale is over: ``closed`` by the host, ``ended`` on time, or ``sold_out``."""

    TYPE: ClassVar[str] = "sale_closed"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        SALE_ID,
        Field("reason", "reason", "str", choices=SALE_CLOSE_REASONS),
        TS,
        OFFSET,
    )
    sale_id: str
    reason: str  # closed | ended | sold_out
    ts: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SoldOut:
    """A flash sale has no units left (a restock may follow)."""

    TYPE: ClassVar[str] = "sold_out"
    SCHEMA: ClassVar[tuple[Field, ...]] = (SALE_ID, TS, OFFSET)
    sale_id: str
    ts: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Purchase:
    """A viewer just bought (a masked name, e.g. ``小*``), for the room's ticker."""

    TYPE: ClassVar[str] = "purchase"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        SALE_ID,
        Field("name", "name", "str", hi=64),
        Field("qty", "qty", "int", lo=1),
        TS,
        OFFSET,
    )
    sale_id: str
    name: str  # masked display name
    qty: int
    ts: int
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Stock:
    """Units left in a flash sale (conflated: only the latest value per sale is sent)."""

    TYPE: ClassVar[str] = "stock"
    SCHEMA: ClassVar[tuple[Field, ...]] = (SALE_ID, Field("remaining", "remaining", "int"))
    sale_id: str
    remaining: int


OffsetEvent: TypeAlias = (
    Comment | SystemMessage | Pinned | Unpinned | SaleOpened | SaleClosed | SoldOut | Purchase
)
ConflatedEvent = Likes | Viewers | Stock
RoomEvent = OffsetEvent | ConflatedEvent


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
        Field("expires", "exp", "int", required=False),
    )
    version: int = PROTOCOL_VERSION
    session: str
    user_id: str
    name: str
    role: str
    heartbeat_ms: int
    server_time: int
    expires: int | None = None  # unix ms at which the token expires; None: anonymous


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
        Field("pin", "pin", "product", required=False),
        Field("sale", "sale", "sale", required=False),
        RID,
    )
    room: str
    epoch: str
    offset: int  # offset of the room's latest event (0: none yet)
    viewers: int
    likes: int
    resync: bool  # true: the client's offset could not be resumed, reset its view
    recent: tuple[RoomEvent, ...]
    pin: Product | None = None  # the pinned product, if any
    sale: SaleInfo | None = None  # the room's current flash sale, if any
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


@dataclass(frozen=True, slots=True, kw_only=True)
class BuyResult:
    """Answer to ``buy``, sent to the buyer only. Wire type ``buy_result``.

    ``status`` is one of ``ok``, ``sold_out``, ``limit_reached``, ``not_open``, ``error``.
    """

    TYPE: ClassVar[str] = "buy_result"
    SCHEMA: ClassVar[tuple[Field, ...]] = (
        Field("rid", "rid", "rid"),
        Field("sale", "sale", "str", lo=1, hi=64),
        Field("status", "status", "str", choices=BUY_STATUSES),
        Field("order", "order", "str", required=False, lo=1, hi=64),
        Field("qty", "qty", "int", required=False),
        Field("remaining", "remaining", "int", required=False),
        Field("msg", "msg", "str", required=False, hi=200),
    )
    rid: Rid
    sale: str
    status: str
    order: str | None = None  # the order id, when ok
    qty: int | None = None  # units bought (ok) or asked for
    remaining: int | None = None  # units left after this answer, when known
    msg: str | None = None  # human-readable reason; always set for error


@dataclass(frozen=True, slots=True, kw_only=True)
class Refreshed:
    """Answer to ``refresh``: the new token is in force until ``expires``."""

    TYPE: ClassVar[str] = "refreshed"
    SCHEMA: ClassVar[tuple[Field, ...]] = (Field("expires", "exp", "int"), RID)
    expires: int  # unix ms at which the new token expires
    rid: Rid | None = None


ClientMessage = Join | Leave | SendComment | Like | Ping | Buy | Refresh
ServerMessage = Welcome | Joined | Left | Batch | Ack | Error | Pong | BuyResult | Refreshed
Message = ClientMessage | ServerMessage | RoomEvent

CLIENT_TYPES: dict[str, type[ClientMessage]] = {
    cls.TYPE: cls for cls in (Join, Leave, SendComment, Like, Ping, Buy, Refresh)
}
SERVER_TYPES: dict[str, type[ServerMessage]] = {
    cls.TYPE: cls for cls in (Welcome, Joined, Left, Batch, Ack, Error, Pong, BuyResult, Refreshed)
}
OFFSET_EVENT_TYPES: dict[str, type[OffsetEvent]] = {
    cls.TYPE: cls
    for cls in (Comment, SystemMessage, Pinned, Unpinned, SaleOpened, SaleClosed, SoldOut, Purchase)
}
CONFLATED_EVENT_TYPES: dict[str, type[ConflatedEvent]] = {
    cls.TYPE: cls for cls in (Likes, Viewers, Stock)
}
ROOM_EVENT_TYPES: dict[str, type[RoomEvent]] = {**OFFSET_EVENT_TYPES, **CONFLATED_EVENT_TYPES}
