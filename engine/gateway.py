"""Websocket gateway: one thin ``asyncio.Protocol`` per connection over websockets' sans-I/O core.

The ``websockets`` ``ServerProtocol`` does the handshake, framing, size limits, ping/pong
and the closing handshake; this module authenticates, decodes commands with the
negotiated codec and hands them to rooms.

Guarantees:
- A connection's output is bounded: once its unsent bytes exceed
  ``server.write_buffer_limit`` it is closed with 4008 (slow consumer) and nothing more is
  queued for it; a peer that never completes the close is aborted after
  ``server.close_timeout``.
- A connection is in rooms only while open: it leaves them all before its transport is
  closed, because rooms write their frames straight to its transport.
- Bad input from one peer closes at most that peer's connection, with the close code
  SPEC.md documents; a refused command gets an ``error`` answer echoing its request id.
- Quiet peers are pinged every ``heartbeat_interval``; peers silent for ``idle_timeout``
  are closed with 4009. Handshakes that do not finish in ``handshake_timeout`` are dropped.
  A connection whose token expires is closed with 4002, unless a ``refresh`` put a fresh
  token for the same user (admitting every joined room) in force first.
- Every command kind has a per-connection budget (token buckets: comments, likes, buy
  presses, pings and refreshes, joins and leaves; ``rooms.*_rate`` / ``*_burst``); a
  command over its budget gets ``rate_limited`` and does nothing. A like counts at most
  ``rooms.max_likes_per_message``.
- Anonymous viewers join only rooms this node holds (they cannot create rooms); a join
  that would add a room beyond ``rooms.max_rooms`` is refused with ``rooms_full``.
- Close reasons are cut to 123 UTF-8 bytes on a character boundary. A connection failed
  before the peer's close (1009 on an oversized message) is half-closed and read until
  the peer closes or ``close_timeout``, so a peer still writing reads the close frame
  instead of a reset. An internal error closes that one connection with 1011.
- No task per connection: one sweeper walks all connections for timers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import typing
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from websockets.exceptions import NegotiationError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from engine.auth import (
    Claims,
    TokenError,
    TokenExpired,
    TokenInvalid,
    anonymous_claims,
    verify_token,
)
from engine.config import Config, node_id
from engine.limits import ConnectionGuard
from engine.relay import Relay
from engine.room import UNSTAMPED, Hub, Room, RoomsFull
from engine.sales import SaleDesk
from engine.trace import TraceRecorder
from engine.wsframe import data_frame
from protocol import (
    CODECS,
    MSGPACK,
    Buy,
    BuyResult,
    CloseCode,
    Codec,
    Comment,
    Error,
    ErrorCode,
    Join,
    Leave,
    Left,
    Like,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Refresh,
    Refreshed,
    SendComment,
    Welcome,
    codec_for,
)

__all__ = ["Connection", "Gateway", "GatewayStatistics"]

_UNAVAILABLE = "room state unavailable (the node cannot reach Redis); not taken, try again later"

log = logging.getLogger("liveroom.gateway")
_ws_log = logging.getLogger("liveroom.ws")
_SUBPROTOCOLS = [Subprotocol(name) for name in CODECS]
_CONTROL_CHARS = frozenset(chr(c) for c in (*range(0x20), 0x7F))


def _select_subprotocol(
    protocol: ServerProtocol, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Ours that the client offers (our order); none offered means msgpack (``codec_for``).

    websockets' default refuses a client that offers no subprotocol with 400.
    """
    if not offered:
        return None
    for subprotocol in _SUBPROTOCOLS:
        if subprotocol in offered:
            return subprotocol
    raise NegotiationError("unsupported subprotocol; expected one of " + ", ".join(_SUBPROTOCOLS))


def _release_handshake(ws: ServerProtocol) -> bool:
    """Free the handshake request that websockets' server parser keeps alive; True if done.

    ``ServerProtocol.parse`` holds the parsed ``Request`` (headers and all, about 2.5 KB)
    in a local variable for the whole life of the connection. When the parser is idle at
    the top of its frame loop (suspended in ``StreamReader.at_eof``, which waits only with
    nothing buffered), it is swapped for a fresh base-class frame parser, which is in the
    very same state. In any other state nothing is touched (only memory is at stake), and
    the caller tries again after the next read. The chain is checked exactly, so a future
    websockets whose parser looks different is simply left alone.
    """
    outer = ws.parser
    frames = getattr(outer, "gi_yieldfrom", None)
    inner = getattr(frames, "gi_yieldfrom", None)
    if (
        ws.state is not State.OPEN
        or ws.reader.buffer
        or getattr(frames, "gi_code", None) is not WsProtocol.parse.__code__
        or getattr(inner, "gi_code", None) is not type(ws.reader).at_eof.__code__
        or getattr(inner, "gi_yieldfrom", None) is not None
    ):
        return False
    fresh = WsProtocol.parse(ws)
    next(fresh)
    ws.parser = fresh
    outer.close()
    return True


def _now_ms() -> int:
    return int(time.time() * 1000)


def _spend(due: float, now: float, rate: float, burst: int) -> float | None:
    """One unit of a token bucket (``rate``/s, bursts of ``burst``) kept as one float.

    GCRA: ``due`` is when the bucket is full again; a command is allowed while that lies
    at most ``burst - 1`` intervals ahead. Returns the new ``due``, or None: over budget.
    """
    interval = 1.0 / rate
    if due < now:
        due = now
    if due - now > (burst - 1) * interval:
        return None
    return due + interval


MAX_CLOSE_REASON: Final = 123
"""Bytes of UTF-8 a close reason may have (RFC 6455: a control frame's payload is at most
125 bytes, two of which carry the code)."""


def close_reason(text: str) -> str:
    """``text`` cut to at most :data:`MAX_CLOSE_REASON` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_CLOSE_REASON:
        return text
    return data[:MAX_CLOSE_REASON].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    connections: int
    authenticated: int
    accepted_total: int
    closed_by_code: dict[int, int]
    unsent_bytes: int  # bytes written to connections and not yet taken by the kernel


class Gateway:
    """All connections of this process, their shared settings, and the timer sweep."""

    def __init__(self, config: Config, hub: Hub, desk: SaleDesk | None = None) -> None:
        self.config = config
        self.hub = hub
        self.desk = desk
        self.relay: Relay | None = None  # shared rooms (broker.backend redis), set by the server
        self.trace: TraceRecorder | None = None  # rooms.trace_dir: viewer actions recorded
        self.connections: dict[Connection, None] = {}
        self.accepted_total = 0
        self.closed_by_code: dict[int, int] = {}
        # Connections held (1013 beyond), descriptor checks: the server sets the effective one.
        self.guard = ConnectionGuard(config.server.max_connections)
        self._session_ids = itertools.count(1)
        self._session_prefix = os.urandom(4).hex()
        self.accepting = True
        self.node_id = node_id(config)  # this node, in logs, /health and metrics
        self.drained = asyncio.Event()  # set once shutting down and no connection is left

    def new_session_id(self) -> str:
        return f"{self._session_prefix}-{next(self._session_ids):x}"

    def __call__(self) -> Connection:
        """Protocol factory for ``loop.create_server``."""
        return Connection(self)

    def sweep(self) -> None:
        """Run every connection's timers: handshake, token expiry, heartbeat, idle, close."""
        srv = self.config.server
        now = time.monotonic()
        wall = time.time()
        for conn in list(self.connections):
            conn.check_timers(
                now,
                srv.handshake_timeout,
                srv.heartbeat_interval,
                srv.idle_timeout,
                srv.close_timeout,
                wall=wall,
            )

    async def run_sweeper(self) -> None:
        interval = min(1.0, self.config.server.heartbeat_interval / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def close_all(self, code: CloseCode, reason: str) -> None:
        self.accepting = False
        for conn in list(self.connections):
            conn.close(code, reason)
        if not self.connections:
            self.drained.set()

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(
            connections=len(self.connections),
            authenticated=sum(1 for c in self.connections if c.claims is not None),
            accepted_total=self.accepted_total,
            closed_by_code=dict(self.closed_by_code),
            unsent_bytes=sum(
                c.transport.get_write_buffer_size()
                for c in self.connections
                if c.transport is not None
            ),
        )


class Connection(asyncio.Protocol):
    """One websocket peer. All methods run on the event loop thread and never block."""

    __slots__ = (
        "_buy_due",
        "_comment_due",
        "_cork",
        "_fragment_op",
        "_fragments",
        "_handshake_held",
        "_join_due",
        "_like_due",
        "_limit",
        "_ping_due",
        "claims",
        "closing_since",
        "codec",
        "gateway",
        "last_ping",
        "last_recv",
        "open",
        "opened_at",
        "rooms",
        "session",
        "transport",
        "ws",
    )

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.ws = ServerProtocol(
            subprotocols=_SUBPROTOCOLS,
            select_subprotocol=_select_subprotocol,
            max_size=gateway.config.server.max_message_size,
            logger=_ws_log,
        )
        self.codec: Codec = MSGPACK
        self.claims: Claims | None = None
        self.session = ""
        self.rooms: dict[str, Room] = {}
        self.open = False  # True between welcome and close: room frames may be written
        self.opened_at = self.last_recv = self.last_ping = time.monotonic()
        self.closing_since: float | None = None
        self._fragments: list[bytes] | None = None
        self._cork: list[bytes] | None = None
        self._handshake_held = True  # websockets' parser still references the request
        self._limit = gateway.config.server.write_buffer_limit
        self._fragment_op = Opcode.BINARY
        # Budgets per command kind (see _spend): when each one's bucket is full again.
        self._comment_due = self._like_due = self._buy_due = 0.0
        self._ping_due = self._join_due = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports implement asyncio.Transport without subclassing it.
        self.transport = typing.cast(asyncio.Transport, transport)
        gateway = self.gateway
        if not gateway.guard.admit(transport, len(gateway.connections)):  # near the fd limit
            self.transport.abort()
            return
        self.gateway.connections[self] = None

    def data_received(self, data: bytes) -> None:
        self.last_recv = time.monotonic()
        ws = self.ws
        ws.receive_data(data)
        # Answers to everything in this read (acks, errors, pongs) leave in one write.
        self._cork = []
        try:
            for event in ws.events_received():
                if isinstance(event, Frame):
                    self._on_frame(event)
                elif isinstance(event, Request):
                    self._on_request(event)
            self._write_pending()
        except Exception:  # a bug of ours: this peer is closed, the server lives on
            log.exception("closing connection %s after an internal error", self.session)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._uncork()
        if self._handshake_held and ws.state is State.OPEN:
            self._handshake_held = not _release_handshake(ws)

    def _uncork(self) -> None:
        cork, self._cork = self._cork, None
        if cork:
            self._write(cork[0] if len(cork) == 1 else b"".join(cork))

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._write_pending()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._leave_all()
        gateway = self.gateway
        gateway.connections.pop(self, None)
        if not gateway.accepting and not gateway.connections:
            gateway.drained.set()
        # The code this server closed with (ws.close_code would be the peer's, and only
        # once the websockets state machine saw EOF, which it rarely has by now).
        close_sent = self.ws.close_sent
        code = close_sent.code if close_sent is not None else None
        if code is not None:
            by_code = self.gateway.closed_by_code
            by_code[code] = by_code.get(code, 0) + 1

    # --- output -----------------------------------------------------------------------

    @property
    def sink(self) -> asyncio.Transport:
        """Where rooms write their batch frames: the transport itself (see engine/room.py).

        Rooms write only while this connection is open: it leaves them all as it closes.
        """
        assert self.transport is not None
        return self.transport

    def too_slow(self) -> None:
        """More unsent bytes than the limit: close with the slow-consumer code."""
        self.close(CloseCode.SLOW_CONSUMER, "slow consumer: too many unsent bytes")

    def over_budget(self) -> None:
        """Cut off by the node's write budget: 4008, and the transport aborted at once.

        A stalled reader would never read the close frame, and its buffer must be freed
        now; the close frame is still recorded as sent (``closed_by_code``).
        """
        self.close(CloseCode.SLOW_CONSUMER, "slow consumer: node write budget exceeded")
        if self.transport is not None:
            self.transport.abort()

    def send_frame(self, frame: bytes) -> None:
        """Queue a complete websocket frame; cut the peer off if it reads too slowly."""
        if self.open:
            self._write(frame)

    def _write(self, data: bytes) -> None:
        """Write to the transport (or the cork, while a read is handled); enforce the limit."""
        if self._cork is not None:
            self._cork.append(data)
            return
        transport = self.transport
        assert transport is not None
        transport.write(data)
        if transport.get_write_buffer_size() > self._limit and self.open:
            self.too_slow()

    def send(self, message: Message) -> None:
        self._send_payload(self.codec.encode(message))

    def _ack(self, rid: str | int, offset: int | None = None) -> None:
        self._send_payload(self.codec.encode_ack(rid, offset))  # no Ack object: hot path

    def _send_payload(self, payload: bytes) -> None:
        """One message encoded with this connection's codec, framed as its codec wants."""
        self.send_frame(data_frame(payload, binary=self.codec.binary))

    def close(self, code: CloseCode, reason: str) -> None:
        """Start the closing handshake with ``code``; no more room frames are written."""
        self.open = False
        self._leave_all()
        if self.closing_since is None:
            self.closing_since = time.monotonic()
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, close_reason(reason))
            self._write_pending()
        elif self.ws.state is State.CONNECTING and self.transport is not None:
            self.transport.abort()

    def _write_pending(self) -> None:
        transport = self.transport
        assert transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self._write(chunk)
            else:  # SEND_EOF: the websocket is done; close once the buffer is flushed
                self._uncork()
                self.open = False
                self._leave_all()  # rooms write to open connections only
                if self.closing_since is None:
                    self.closing_since = time.monotonic()
                if self.ws.close_rcvd is None and transport.can_write_eof():
                    # Failed before the peer's close (e.g. 1009 on an oversized message):
                    # half-close and read on until the peer closes (or close_timeout). A
                    # peer still writing would otherwise get a TCP reset that destroys the
                    # close frame it has not read yet.
                    transport.write_eof()
                else:  # closing handshake done (or TLS, which cannot half-close)
                    transport.close()

    def check_timers(
        self,
        now: float,
        handshake: float,
        heartbeat: float,
        idle: float,
        close: float,
        *,
        wall: float,
    ) -> None:
        """Enforce the timers at monotonic ``now`` (token expiry at unix time ``wall``)."""
        transport = self.transport
        if transport is None:
            return
        claims = self.claims
        if self.closing_since is not None:
            if now - self.closing_since > close:
                transport.abort()
        elif self.ws.state is State.CONNECTING:
            if now - self.opened_at > handshake:
                transport.abort()
        elif claims is not None and claims.expires_at <= wall:
            self.close(CloseCode.TOKEN_EXPIRED, "token expired: connect with a fresh token")
        elif now - self.last_recv > idle:
            self.close(CloseCode.IDLE_TIMEOUT, f"idle for more than {idle:g} s")
        elif now - self.last_recv > heartbeat and now - self.last_ping > heartbeat:
            self.last_ping = now
            self.ws.send_ping(b"")
            self._write_pending()

    # --- handshake and authentication -----------------------------------------------------

    def _on_request(self, request: Request) -> None:
        ws = self.ws
        response = ws.accept(request)
        ws.send_response(response)
        self._write_pending()  # the 101 response must precede any frame
        if response.status_code != 101:
            return
        gateway = self.gateway
        self.codec = codec_for(ws.subprotocol)
        self.session = gateway.new_session_id()
        if not gateway.accepting:
            self.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        if len(gateway.connections) > gateway.guard.max_connections:  # handshakes count too
            gateway.guard.refusal()
            self.close(CloseCode.TRY_AGAIN_LATER, "server full, try again later")
            return
        try:
            claims = self._authenticate(request)
        except TokenError as exc:
            self.close(CloseCode(exc.close_code), f"{exc.code}: {exc}")
            return
        self.claims = claims
        self.open = True
        gateway.accepted_total += 1
        self.send(
            Welcome(
                session=self.session,
                user_id=claims.user_id,
                name=claims.name,
                role=str(claims.role),
                heartbeat_ms=int(gateway.config.server.heartbeat_interval * 1000),
                server_time=_now_ms(),
                expires=None if claims.anonymous else int(claims.expires_at * 1000),
            )
        )

    def _authenticate(self, request: Request) -> Claims:
        auth = self.gateway.config.auth
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        token = query.get("token", [""])[0]
        header = request.headers.get("Authorization", "")
        if not token and header.lower().startswith("bearer "):
            token = header[7:].strip()
        if not token:
            if auth.allow_anonymous:
                return anonymous_claims(self.session, time.time())
            raise TokenInvalid("a token is required")
        return verify_token(auth.secret, token, time.time())

    # --- incoming messages --------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        op = frame.opcode
        payload = bytes(frame.data)
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if frame.fin:
                self._on_message(op, payload)
            else:
                self._fragments, self._fragment_op = [payload], op
        elif op is Opcode.CONT and self._fragments is not None:
            self._fragments.append(payload)
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._on_message(self._fragment_op, data)
        elif op is Opcode.CLOSE:
            self.open = False
            self._leave_all()

    def _on_message(self, op: Opcode, data: bytes) -> None:
        if not self.open:
            return
        codec = self.codec
        if (op is Opcode.BINARY) != codec.binary:
            kind = "binary" if op is Opcode.BINARY else "text"
            self.close(CloseCode.UNSUPPORTED_DATA, f"{kind} frames are not {codec.subprotocol}")
            return
        try:
            message = codec.decode_client(data)
        except ProtocolError as exc:
            if exc.close_code is not None:
                self.close(exc.close_code, str(exc))
            else:
                self.send(Error(code=exc.code, message=str(exc), rid=exc.rid))
            return
        if isinstance(message, SendComment):
            self._on_comment(message)
        elif isinstance(message, Buy):
            self._on_buy(message)
        elif isinstance(message, Like):
            self._on_like(message)
        elif isinstance(message, Join):
            self._on_join(message)
        elif isinstance(message, Leave):
            self._on_leave(message)
        elif isinstance(message, Ping):
            self._on_ping(message)
        elif isinstance(message, Refresh):
            self._on_refresh(message)

    def _on_ping(self, msg: Ping) -> None:
        rooms = self.gateway.config.rooms
        if self._take("ping", rooms.ping_rate, rooms.ping_burst, msg.rid):
            self.send(Pong(server_time=_now_ms(), rid=msg.rid))

    def _on_refresh(self, msg: Refresh) -> None:
        """Put a fresh token for the same user in force (it shares the ping budget)."""
        rooms = self.gateway.config.rooms
        if not self._take("ping", rooms.ping_rate, rooms.ping_burst, msg.rid):
            return
        claims = self.claims
        assert claims is not None
        try:
            fresh = verify_token(self.gateway.config.auth.secret, msg.token, time.time())
        except TokenExpired as exc:
            self._refuse(ErrorCode.TOKEN_EXPIRED, str(exc), msg.rid)
            return
        except TokenError as exc:
            self._refuse(ErrorCode.TOKEN_INVALID, str(exc), msg.rid)
            return
        if claims.anonymous or fresh.user_id != claims.user_id:
            self._refuse(ErrorCode.TOKEN_INVALID, "the token is for another user", msg.rid)
            return
        barred = [name for name in self.rooms if not fresh.can_join(name)]
        if barred:
            self._refuse(
                ErrorCode.FORBIDDEN_ROOM, f"token does not admit joined room {barred[0]!r}", msg.rid
            )
            return
        self.claims = fresh
        self.send(Refreshed(expires=int(fresh.expires_at * 1000), rid=msg.rid))

    def _refuse(self, code: ErrorCode, message: str, rid: str | int | None) -> None:
        self.send(Error(code=code, message=message, rid=rid))

    def _on_join(self, msg: Join) -> None:
        claims = self.claims
        assert claims is not None
        rooms = self.gateway.config.rooms
        if not self._take("join", rooms.join_rate, rooms.join_burst, msg.rid):
            return
        if not claims.can_join(msg.room):
            self._refuse(
                ErrorCode.FORBIDDEN_ROOM, f"token does not admit room {msg.room!r}", msg.rid
            )
            return
        hub = self.gateway.hub
        if (
            claims.anonymous
            and self.gateway.relay is None
            and msg.room not in self.rooms
            and hub.get(msg.room) is None
        ):
            self._refuse(
                ErrorCode.ROOM_NOT_LIVE,
                f"room {msg.room!r} is not live here; anonymous viewers cannot open rooms",
                msg.rid,
            )
            return
        if not self._make_room_for(msg):
            return
        try:
            room = hub.room(msg.room)
        except RoomsFull as exc:
            self._refuse(ErrorCode.ROOMS_FULL, f"{exc}; try again later", msg.rid)
            return
        relay = self.gateway.relay
        if relay is not None and not relay.linked(room):
            # A shared room this node does not follow yet: answer once its snapshot is in.
            relay.link(room, lambda error: self._linked(room, msg, error))
            return
        self._join(room, msg)

    def _linked(self, room: Room, msg: Join, error: BaseException | None) -> None:
        """A shared room's snapshot is loaded (or could not be): finish the join."""
        if not self.open:
            return
        if error is not None or self.gateway.hub.get(msg.room) is not room:
            self._refuse(ErrorCode.UNAVAILABLE, "room state unavailable; try again later", msg.rid)
            return
        claims = self.claims
        assert claims is not None
        if claims.anonymous and not (room.offset or room.likes or room.viewer_total):
            self._refuse(
                ErrorCode.ROOM_NOT_LIVE,
                f"room {msg.room!r} is not live; anonymous viewers cannot open rooms",
                msg.rid,
            )
            return
        if self._make_room_for(msg):  # again: the connection may have joined meanwhile
            self._join(room, msg)

    def _make_room_for(self, msg: Join) -> bool:
        """Leave ``msg.room`` if joined (a second join restarts the subscription), else
        check the rooms-per-connection limit; False after refusing the join."""
        room = self.rooms.pop(msg.room, None)
        if room is not None:
            room.leave(self)
            return True
        limit = self.gateway.config.rooms.max_rooms_per_connection
        if len(self.rooms) >= limit:
            self._refuse(ErrorCode.TOO_MANY_ROOMS, f"at most {limit} rooms per connection", msg.rid)
            return False
        return True

    def _join(self, room: Room, msg: Join) -> None:
        if self.gateway.desk is not None:
            self.gateway.desk.attach(room)  # the room's current sale, for the snapshot
        result = room.join(self, offset=msg.offset, epoch=msg.epoch, rid=msg.rid)
        self.rooms[msg.room] = room
        self._send_payload(result.payload(self.codec))
        self._trace(msg.room, "join")

    def _on_leave(self, msg: Leave) -> None:
        rooms = self.gateway.config.rooms
        if not self._take("join", rooms.join_rate, rooms.join_burst, msg.rid):
            return
        room = self.rooms.pop(msg.room, None)
        if room is None:
            self._refuse(ErrorCode.NOT_JOINED, f"not in room {msg.room!r}", msg.rid)
            return
        room.leave(self)
        self.send(Left(room=msg.room, rid=msg.rid))
        self._trace(msg.room, "leave")

    def _writable_room(self, room_name: str, rid: str | int | None) -> Room | None:
        room = self.rooms.get(room_name)
        if room is None:
            self._refuse(ErrorCode.NOT_JOINED, f"join room {room_name!r} first", rid)
            return None
        claims = self.claims
        assert claims is not None
        if not claims.can_write:
            self._refuse(ErrorCode.READ_ONLY, "anonymous viewers are read-only", rid)
            return None
        return room

    def _on_comment(self, msg: SendComment) -> None:
        room = self._writable_room(msg.room, msg.rid)
        if room is None:
            return
        text = msg.text.strip()
        rooms = self.gateway.config.rooms
        if not text:
            self._refuse(ErrorCode.EMPTY_COMMENT, "comment text is empty", msg.rid)
        elif len(text) > rooms.max_comment_length:
            limit = rooms.max_comment_length
            self._refuse(ErrorCode.COMMENT_TOO_LONG, f"comment longer than {limit}", msg.rid)
        # isprintable() is True for most texts and excludes every control character.
        elif not text.isprintable() and not _CONTROL_CHARS.isdisjoint(text):
            self._refuse(ErrorCode.INVALID_FIELD, "text: control characters", msg.rid)
        elif (
            due := _spend(
                self._comment_due, self.last_recv, rooms.comment_rate, rooms.comment_burst
            )
        ) is None:
            rate = rooms.comment_rate
            self._refuse(ErrorCode.RATE_LIMITED, f"more than {rate:g} comments/s", msg.rid)
        else:
            self._comment_due = due
            claims = self.claims
            assert claims is not None
            self._trace(room.name, "comment", len=len(text))
            relay = self.gateway.relay
            if relay is None:
                offset = room.publish_comment(user_id=claims.user_id, name=claims.name, text=text)
                if msg.rid is not None:
                    self._ack(msg.rid, offset)
            elif not relay.healthy:
                self._refuse(ErrorCode.UNAVAILABLE, _UNAVAILABLE, msg.rid)
            else:
                comment = Comment(
                    id=UNSTAMPED,
                    user_id=claims.user_id,
                    name=claims.name,
                    text=text,
                    ts=_now_ms(),
                    offset=0,
                )
                relay.submit(room.name, comment, lambda offset: self._published(msg.rid, offset))

    def _published(self, rid: str | int | None, offset: int | None) -> None:
        """A shared room's comment was acknowledged by the broker with ``offset`` (or not)."""
        if offset is None:
            self._refuse(ErrorCode.UNAVAILABLE, _UNAVAILABLE, rid)
        elif rid is not None:
            self._ack(rid, offset)

    def _take(self, kind: str, rate: float, burst: int, rid: str | int | None) -> bool:
        """Spend one unit of the ``kind`` budget (``_<kind>_due``); else refuse the command."""
        attr = f"_{kind}_due"
        due = _spend(getattr(self, attr), self.last_recv, rate, burst)
        if due is None:
            self._refuse(ErrorCode.RATE_LIMITED, f"more than {rate:g} {kind} messages/s", rid)
            return False
        setattr(self, attr, due)
        return True

    def _on_buy(self, msg: Buy) -> None:
        room = self._writable_room(msg.room, msg.rid)
        desk = self.gateway.desk
        if room is None:
            return
        rooms = self.gateway.config.rooms
        if not self._take("buy", rooms.buy_rate, rooms.buy_burst, msg.rid):
            return
        if desk is None:
            self.send(BuyResult(rid=msg.rid, sale=msg.sale, status="error", msg="no sales here"))
            return
        claims = self.claims
        assert claims is not None
        self._trace(room.name, "buy", sale=msg.sale, qty=msg.qty)
        desk.buy(
            room,
            user_id=claims.user_id,
            name=claims.name,
            sale_id=msg.sale,
            quantity=msg.qty,
            rid=msg.rid,
            retry=bool(msg.retry),
            answer=self.send,
        )

    def _on_like(self, msg: Like) -> None:
        room = self._writable_room(msg.room, msg.rid)
        if room is None:
            return
        rooms = self.gateway.config.rooms
        if not self._take("like", rooms.like_rate, rooms.like_burst, msg.rid):
            return
        relay = self.gateway.relay
        if relay is not None and not relay.healthy:
            self._refuse(ErrorCode.UNAVAILABLE, _UNAVAILABLE, msg.rid)
            return
        room.add_likes(min(msg.count, rooms.max_likes_per_message))
        self._trace(room.name, "like", n=min(msg.count, rooms.max_likes_per_message))
        if msg.rid is not None:
            self._ack(msg.rid)

    def _leave_all(self) -> None:
        if self.rooms:
            for room in self.rooms.values():
                room.leave(self)
                self._trace(room.name, "leave")
            self.rooms.clear()

    def _trace(self, room: str, action: str, **fields: str | int) -> None:
        """Record an accepted action when the node records traces (``rooms.trace_dir``)."""
        trace = self.gateway.trace
        if trace is not None and self.claims is not None:
            trace.record(room, self.claims.user_id, action, **fields)
