"""Shared fixtures and helpers for tests that run a real liveroom server on 127.0.0.1.

Generic on purpose (later suites reuse them):

- :func:`make_config` builds a valid :class:`Config` on port 0 with test-friendly values;
  any section (or top-level setting) can be overridden: ``make_config(rooms={...})``.
- ``server`` yields a started :class:`LiveroomServer` with :func:`make_config` defaults;
  ``start_server(**overrides)`` starts more / differently configured ones, all closed at
  teardown.
- :func:`token` mints a token signed with the test secret.
- :class:`Peer` is a protocol-aware ``websockets`` client; :class:`RawClient` is a bare
  TCP socket that does the websocket handshake and then reads or writes exactly what a
  test says (slow consumers, silent peers, broken framing).
- :func:`bounded` caps a test's run time with ``asyncio.timeout``.
- ``redis_server``, ``redis_url`` and ``own_redis`` come from ``tests/redis_fixture.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.streams import StreamReader
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from engine.auth import Claims, Role, mint_token
from engine.config import Config, validate_config
from engine.room import Room
from engine.server import LiveroomServer
from protocol import (
    MSGPACK,
    Batch,
    ClientMessage,
    Codec,
    Comment,
    Join,
    Joined,
    Leave,
    Like,
    Ping,
    Pong,
    RoomEvent,
    SendComment,
    ServerMessage,
    Welcome,
)

# The Redis fixtures, for every test module (they start nothing until a test asks).
from tests.redis_cluster import redis_cluster_fixture as redis_cluster_fixture
from tests.redis_cluster import redis_cluster_url_fixture as redis_cluster_url_fixture
from tests.redis_fixture import own_redis_fixture as own_redis_fixture
from tests.redis_fixture import redis_server_fixture as redis_server_fixture
from tests.redis_fixture import redis_url_fixture as redis_url_fixture

__all__ = [
    "SECRET",
    "TEST_DEFAULTS",
    "Peer",
    "RawClient",
    "RecordingSubscriber",
    "ServerFactory",
    "bounded",
    "expect",
    "make_config",
    "parse_frame",
    "token",
    "wait_for_condition",
]

P = ParamSpec("P")
T = TypeVar("T")

SECRET = "test-secret-not-for-production"

TEST_DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {
        "host": "127.0.0.1",
        "port": 0,
        "close_timeout": 1.0,
        "handshake_timeout": 2.0,
        "uvloop": False,
    },
    "auth": {"secret": SECRET},
    "service": {"port": 0},  # a free port: concurrent test runs must not collide on 8766
    # Generous per-connection budgets so that tests sending many commands are not
    # throttled; the budget tests set their own. Short conflation tick: likes / viewers
    # show up fast.
    "rooms": {
        **{f"{kind}_rate": 10_000.0 for kind in ("comment", "like", "buy", "ping", "join")},
        **{f"{kind}_burst": 10_000 for kind in ("comment", "like", "buy", "ping", "join")},
        "conflate_interval_ms": 50.0,
    },
}


# --- configuration and server ----------------------------------------------------------


def make_config(**overrides: Any) -> Config:
    """A valid config on port 0 with :data:`TEST_DEFAULTS`, then ``overrides``.

    Each keyword names a field of :class:`Config`: a section takes a mapping of settings
    (``server={"max_connections": 2}``), a top-level setting takes its value
    (``log_level="debug"``). Unknown names raise ``TypeError``.
    """
    base = Config()
    fields = {f.name for f in dataclasses.fields(Config)}
    merged: dict[str, Any] = {name: dict(values) for name, values in TEST_DEFAULTS.items()}
    for name, value in overrides.items():
        if name not in fields:
            raise TypeError(f"make_config: Config has no field {name!r}")
        if isinstance(value, Mapping):
            merged.setdefault(name, {}).update(value)
        else:
            merged[name] = value
    changes: dict[str, Any] = {}
    for name, value in merged.items():
        if name not in fields:  # a default for a section this Config does not have
            continue
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            changes[name] = dataclasses.replace(current, **value)  # type: ignore[type-var]
        else:
            changes[name] = value
    config = dataclasses.replace(base, **changes)
    validate_config(config)
    return config


class ServerFactory(Protocol):
    async def __call__(self, config: Config | None = None, **overrides: Any) -> LiveroomServer: ...


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    """Start servers (``await start_server(rooms={...})``); all are closed at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(config: Config | None = None, **overrides: Any) -> LiveroomServer:
            cfg = config if config is not None else make_config(**overrides)
            async with asyncio.timeout(10):
                return await stack.enter_async_context(LiveroomServer(cfg))

        yield start
        async with asyncio.timeout(15):
            await stack.aclose()


@pytest.fixture
async def server(start_server: ServerFactory) -> LiveroomServer:
    """A started server with :func:`make_config` defaults."""
    return await start_server()


def token(
    user: str = "alice",
    rooms: Sequence[str] = ("*",),
    *,
    role: Role = Role.VIEWER,
    ttl: float = 3600.0,
    name: str | None = None,
    secret: str = SECRET,
) -> str:
    """A token for ``user`` admitting ``rooms``, expiring in ``ttl`` seconds (may be < 0)."""
    claims = Claims(
        user_id=user,
        name=user.title() if name is None else name,
        rooms=tuple(rooms),
        role=role,
        expires_at=time.time() + ttl,
    )
    return mint_token(secret, claims)


def server_url(srv: LiveroomServer, tok: str | None) -> str:
    return srv.url if tok is None else f"{srv.url}?token={tok}"


# --- generic helpers -----------------------------------------------------------------


def bounded(
    seconds: float,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate an async test: it fails with ``TimeoutError`` after ``seconds``."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            async with asyncio.timeout(seconds):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate


def expect(message: object, cls: type[T]) -> T:
    """``message``, asserted to be a ``cls``."""
    assert isinstance(message, cls), f"expected {cls.__name__}, got {message!r}"
    return message


async def wait_for_condition(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds; ``TimeoutError`` after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            if predicate():
                return
            await asyncio.sleep(interval)


# --- websockets client peer ----------------------------------------------------------


class Peer:
    """A ``websockets`` client speaking liveroom v1 with a chosen codec.

    Room events arriving in batches while a test waits for an answer are kept in
    :attr:`events`; other unrelated messages in :attr:`others`.
    """

    def __init__(self, ws: ClientConnection, codec: Codec) -> None:
        self.ws = ws
        self.codec = codec
        self.welcome: Welcome | None = None
        self.events: list[tuple[str, RoomEvent]] = []
        self.batches: list[Batch] = []
        self.others: list[ServerMessage] = []
        self.text_frames = 0
        self.binary_frames = 0
        self._rids = itertools.count(1)

    @classmethod
    async def open(
        cls,
        srv: LiveroomServer,
        tok: str | None,
        *,
        codec: Codec = MSGPACK,
        subprotocols: Sequence[str] | None = None,
        expect_welcome: bool = True,
        timeout: float = 5.0,
        **ws_options: Any,
    ) -> Peer:
        """Connect (offering ``codec``'s subprotocol unless ``subprotocols`` is given)."""
        offered = [codec.subprotocol] if subprotocols is None else list(subprotocols)
        ws_options.setdefault("close_timeout", 2)
        ws = await connect(
            server_url(srv, tok),
            subprotocols=[Subprotocol(s) for s in offered] or None,
            open_timeout=timeout,
            **ws_options,
        )
        peer = cls(ws, codec)
        if expect_welcome:
            peer.welcome = expect(await peer.recv(timeout), Welcome)
        return peer

    def next_rid(self) -> str:
        return f"r{next(self._rids)}"

    # raw I/O

    async def send(self, message: ClientMessage) -> None:
        data = self.codec.encode(message)
        await self.ws.send(data if self.codec.binary else data.decode())

    async def send_data(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 5.0) -> ServerMessage:
        """The next message, whatever it is."""
        async with asyncio.timeout(timeout):
            data = await self.ws.recv()
        if isinstance(data, str):
            self.text_frames += 1
            return self.codec.decode_server(data.encode())
        self.binary_frames += 1
        return self.codec.decode_server(data)

    async def _recv_keeping_events(self, timeout: float) -> ServerMessage | None:
        msg = await self.recv(timeout)
        if isinstance(msg, Batch):
            self.batches.append(msg)
            self.events.extend((msg.room, ev) for ev in msg.events)
            return None
        return msg

    async def answer(self, rid: str | int, timeout: float = 5.0) -> ServerMessage:
        """The answer carrying ``rid``; batches meanwhile go to :attr:`events`."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._recv_keeping_events(timeout)
                if msg is None:
                    continue
                if getattr(msg, "rid", None) == rid:
                    return msg
                self.others.append(msg)

    async def next_event(self, timeout: float = 5.0) -> tuple[str, RoomEvent]:
        """The next room event (kept ones first)."""
        async with asyncio.timeout(timeout):
            while not self.events:
                msg = await self._recv_keeping_events(timeout)
                if msg is not None:
                    self.others.append(msg)
        return self.events.pop(0)

    async def comments(self, n: int, timeout: float = 5.0) -> list[Comment]:
        """The next ``n`` comments, skipping conflated events."""
        out: list[Comment] = []
        async with asyncio.timeout(timeout):
            while len(out) < n:
                _, event = await self.next_event(timeout)
                if isinstance(event, Comment):
                    out.append(event)
        return out

    async def assert_no_comment(self, quiet: float = 0.3) -> None:
        """No comment arrives within ``quiet`` seconds."""
        with contextlib.suppress(TimeoutError):
            got = await self.comments(1, timeout=quiet)
            raise AssertionError(f"unexpected comment {got!r}")

    # commands

    async def call(self, message: ClientMessage, timeout: float = 5.0) -> ServerMessage:
        """Send ``message`` (which must carry a rid) and return the answer to it."""
        rid = getattr(message, "rid", None)
        assert rid is not None, "call() needs a message with a rid"
        await self.send(message)
        return await self.answer(rid, timeout)

    async def join(
        self, room: str, *, offset: int | None = None, epoch: str | None = None
    ) -> Joined:
        answer = await self.call(Join(room=room, offset=offset, epoch=epoch, rid=self.next_rid()))
        return expect(answer, Joined)

    async def comment(self, room: str, text: str) -> ServerMessage:
        return await self.call(SendComment(room=room, text=text, rid=self.next_rid()))

    async def like(self, room: str, count: int = 1) -> ServerMessage:
        return await self.call(Like(room=room, count=count, rid=self.next_rid()))

    async def leave(self, room: str) -> ServerMessage:
        return await self.call(Leave(room=room, rid=self.next_rid()))

    async def ping(self, timeout: float = 5.0) -> Pong:
        return expect(await self.call(Ping(rid=self.next_rid()), timeout), Pong)

    # closing

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; the close code it sent (None: no close frame)."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    await self.ws.recv()
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None

    async def close(self) -> None:
        async with asyncio.timeout(5):
            await self.ws.close()


# --- raw socket client ---------------------------------------------------------------


class RawClient:
    """A plain TCP socket that does the websocket handshake, then only what it is told.

    Incoming bytes are parsed with a sans-I/O ``ClientProtocol`` (into :attr:`frames`), but
    nothing is written back unless the test calls :meth:`send`, :meth:`send_raw` or
    :meth:`flush` (so pings stay unanswered and a close stays unacknowledged). Nothing is
    read from the socket either unless the test reads: a raw client that stops reading
    lets the server's output pile up.
    """

    def __init__(self, sock: socket.socket, proto: ClientProtocol) -> None:
        self.sock = sock
        self.proto = proto
        self.frames: list[Frame] = []
        self.response: Response | None = None
        self.eof = False
        self.bytes_received = 0
        self._seen = 0  # data frames already returned by next_message()

    @classmethod
    async def connect(
        cls,
        srv: LiveroomServer,
        tok: str | None,
        *,
        subprotocol: str | None = MSGPACK.subprotocol,
        rcvbuf: int | None = None,
        timeout: float = 5.0,
    ) -> RawClient:
        """Connect and complete the handshake; ``rcvbuf`` shrinks SO_RCVBUF first."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if rcvbuf is not None:  # before connect(), so that the TCP window is small too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        proto = ClientProtocol(
            parse_uri(server_url(srv, tok)),
            subprotocols=[Subprotocol(subprotocol)] if subprotocol else None,
            max_size=None,
        )
        client = cls(sock, proto)
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, ("127.0.0.1", srv.port))
                proto.send_request(proto.connect())
                await client.flush()
                while proto.state is State.CONNECTING and not client.eof:
                    await client.read_once()
        except BaseException:
            sock.close()
            raise
        if proto.handshake_exc is not None:
            sock.close()
            raise proto.handshake_exc
        return client

    async def read_once(self, size: int = 65536) -> int:
        """One ``recv`` from the socket into the parser; 0 at EOF (or reset)."""
        loop = asyncio.get_running_loop()
        try:
            data = await loop.sock_recv(self.sock, size)
        except ConnectionResetError:
            data = b""
        self.bytes_received += len(data)
        if data:
            self.proto.receive_data(data)
        else:
            self.eof = True
            self.proto.receive_eof()
        for event in self.proto.events_received():
            if isinstance(event, Frame):
                self.frames.append(event)
            elif isinstance(event, Response):
                self.response = event
        return len(data)

    async def read_until(self, done: Callable[[list[Frame]], bool], timeout: float = 5.0) -> None:
        """Read until ``done(frames)`` holds or the server closes the TCP connection."""
        async with asyncio.timeout(timeout):
            while not done(self.frames) and not self.eof:
                await self.read_once()

    async def read_until_close(self, timeout: float = 5.0) -> Close:
        """Read until a close frame arrives; return it (``AssertionError`` if none came)."""
        await self.read_until(lambda fs: any(f.opcode is Opcode.CLOSE for f in fs), timeout)
        closes = [f for f in self.frames if f.opcode is Opcode.CLOSE]
        assert closes, f"no close frame before EOF; got {[f.opcode for f in self.frames]}"
        return Close.parse(bytes(closes[0].data))

    def data_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.opcode in (Opcode.TEXT, Opcode.BINARY)]

    def messages(self, codec: Codec = MSGPACK) -> list[ServerMessage]:
        return [codec.decode_server(bytes(f.data)) for f in self.data_frames()]

    async def next_message(self, codec: Codec = MSGPACK, timeout: float = 5.0) -> ServerMessage:
        """The first data frame not yet returned by this method, decoded."""
        seen = self._seen
        await self.read_until(lambda fs: len(self.data_frames()) > seen, timeout)
        frames = self.data_frames()
        assert len(frames) > seen, "connection ended before the next message"
        self._seen = seen + 1
        return codec.decode_server(bytes(frames[seen].data))

    async def send(self, message: ClientMessage, codec: Codec = MSGPACK) -> None:
        """Send a correctly framed (masked) message."""
        data = codec.encode(message)
        if codec.binary:
            self.proto.send_binary(data)
        else:
            self.proto.send_text(data)
        await self.flush()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are, bypassing the websocket framing."""
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def flush(self) -> None:
        """Write what the parser wants to send (handshake, pongs, close reply, EOF)."""
        loop = asyncio.get_running_loop()
        for chunk in self.proto.data_to_send():
            if chunk:
                await loop.sock_sendall(self.sock, chunk)
            else:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


# --- a room subscriber that records frames (room and sale desk unit tests) ---------------


def parse_frame(data: bytes) -> Frame:
    """Parse exactly one complete, unmasked server frame from ``data``."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as stop:
        frame: Frame = stop.value
    else:
        raise AssertionError("incomplete frame")
    assert not reader.buffer, "bytes left over after one frame"
    assert frame.fin
    return frame


@dataclass(eq=False)
class RecordingSubscriber:
    """Records the complete frames a room writes to it; hashable by identity like a connection.

    It is its own sink; ``unsent`` is what it reports as its unsent bytes, and ``cut_off``
    counts the room's ``too_slow`` calls (each of which also makes it leave ``room``).
    """

    codec: Codec = MSGPACK
    frames: list[bytes] = field(default_factory=list)
    unsent: int = 0
    cut_off: int = 0
    room: Room | None = None

    @property
    def sink(self) -> RecordingSubscriber:
        return self

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def too_slow(self) -> None:
        self.cut_off += 1
        if self.room is not None:
            self.room.leave(self)

    def batches(self) -> list[Batch]:
        out = []
        for data in self.frames:
            frame = parse_frame(data)
            assert frame.opcode is (Opcode.BINARY if self.codec.binary else Opcode.TEXT)
            out.append(expect(self.codec.decode_server(bytes(frame.data)), Batch))
        return out

    def events(self) -> list[RoomEvent]:
        return [event for batch in self.batches() for event in batch.events]

    def of(self, cls: type[RoomEvent]) -> list[RoomEvent]:
        return [e for e in self.events() if isinstance(e, cls)]

    def comment_offsets(self) -> list[int]:
        return [e.offset for e in self.events() if isinstance(e, Comment)]
