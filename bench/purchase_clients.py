"""Cheap websocket buyers for the purchase benchmark: hundreds of sockets in one process.

Each buyer is a bare ``asyncio.Protocol``: it does the HTTP upgrade by hand (msgpack
subprotocol, token in the query string), joins its room, and then, while the pool runs,
keeps exactly one Buy in flight: a new one (fresh integer rid) as soon as the answer to the
previous one arrives. Room batches (the "someone bought" fan-out every viewer of the room
gets) are recognised by their first bytes and skipped without decoding; only
``buy_result`` and the few control messages are decoded.

Guarantees:
- No task per connection, no await per frame: everything happens in ``data_received``.
- Sending is bounded: at most ``limit`` buys per phase, and none once :meth:`BuyerPool.stop`
  ran; :meth:`BuyerPool.drain` waits (bounded) for the answers still owed.
- Latency is client-side: ``perf_counter`` at send to ``perf_counter`` when the answer's
  frame was parsed (same process, same clock), recorded only while ``recording``.
- :meth:`BuyerPool.abort_all` resets every socket (SO_LINGER 0): no TIME_WAIT left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import msgpack

from bench.rawws import ZERO_MASK, OpenResult, client_frame, open_all, upgrade_request

__all__ = ["Buyer", "BuyerPool", "OpenResult", "client_frame"]

_LINGER_RST = struct.pack("ii", 1, 0)
_BUY_RESULT = b"\xa1t\xaabuy_result"  # after the map header: {"t": "buy_result", ...
_BATCH = b"\xa1t\xa5batch"  # {"t": "batch", ...
_PONG_EMPTY = b"\x8a\x80" + ZERO_MASK


class _Sink:
    """What every buyer of a pool reports into, and the pool's switches."""

    __slots__ = (
        "answered",
        "bytes_in",
        "closes",
        "errors",
        "frames_in",
        "latencies",
        "limit",
        "recording",
        "running",
        "sent",
        "skipped_frames",
        "statuses",
    )

    def __init__(self) -> None:
        self.running = False  # buyers send a new buy per answer while true
        self.recording = False  # latencies are kept while true
        self.limit = 0  # buys the phase may still send
        self.sent = 0
        self.answered = 0
        self.frames_in = 0
        self.bytes_in = 0
        self.skipped_frames = 0  # room batches skipped undecoded
        self.statuses: Counter[str] = Counter()  # buy answers by status (+ msg for errors)
        self.errors: Counter[str] = Counter()  # ``error`` messages by code
        self.closes: Counter[str] = Counter()
        self.latencies: list[float] = []  # seconds, send -> answer


class Buyer(asyncio.Protocol):
    """One websocket buyer (see the module docstring)."""

    __slots__ = (
        "_buf",
        "_buy_prefix",
        "_join_room",
        "_next_rid",
        "_request",
        "_upgraded",
        "in_flight",
        "joined",
        "ready",
        "sent_at",
        "sink",
        "transport",
    )

    def __init__(
        self,
        sink: _Sink,
        request: bytes,
        room: str,
        sale: str,
        first_rid: int,
        ready: asyncio.Future[None],
    ) -> None:
        self.sink = sink
        self._request = request
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._upgraded = False
        self.joined = False
        self.in_flight = False
        self.sent_at = 0.0
        self._next_rid = first_rid
        # {"t": "buy", "room": room, "sale": sale, "qty": 1, "rid": <rid>}: all but the rid
        full = msgpack.packb({"t": "buy", "room": room, "sale": sale, "qty": 1, "rid": 0})
        assert full.endswith(b"\xa3rid\x00")
        self._buy_prefix: bytes = full[:-1]
        self._join_room = room

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = tr = cast(asyncio.Transport, transport)
        sock = tr.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tr.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc!r}"))
        if self.in_flight:
            self.sink.closes["lost with a buy in flight"] += 1
            self.in_flight = False

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        sink.bytes_in += len(data)
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self._upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._buf = data
                return
            head = data[:end]
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                return
            self._upgraded = True
            data = data[end + 4 :]
        pos = 0
        size = len(data)
        while size - pos >= 2:
            b0 = data[pos]
            n = data[pos + 1] & 0x7F
            at = pos + 2
            if n == 126:
                if size - at < 2:
                    break
                n = (data[at] << 8) | data[at + 1]
                at += 2
            elif n == 127:
                if size - at < 8:
                    break
                n = int.from_bytes(data[at : at + 8], "big")
                at += 8
            if size - at < n:
                break
            pos = at + n
            sink.frames_in += 1
            op = b0 & 0x0F
            if op == 0x2:
                if data.startswith(_BATCH, at + 1):
                    sink.skipped_frames += 1
                elif data.startswith(_BUY_RESULT, at + 1):
                    self._answer(data[at:pos])
                else:
                    self._message(data[at:pos])
            elif op == 0x9:  # ping -> pong (the server pings quiet peers only)
                if self.transport is not None:
                    self.transport.write(client_frame(data[at:pos], 0xA) if n else _PONG_EMPTY)
            elif op == 0x8:
                code = int.from_bytes(data[at : at + 2], "big") if n >= 2 else 1005
                sink.closes[f"{code} {data[at + 2 : pos].decode(errors='replace')}"] += 1
                if self.transport is not None:
                    self.transport.close()
                return
        if pos < size:
            self._buf = data[pos:]

    def _answer(self, payload: bytes) -> None:
        now = time.perf_counter()
        sink = self.sink
        msg: dict[str, Any] = msgpack.unpackb(payload)
        status = msg.get("status", "?")
        if status != "ok":
            status = f"{status}: {msg.get('msg')}"
        sink.statuses[status] += 1
        if not self.in_flight:
            return
        self.in_flight = False
        sink.answered += 1
        if sink.recording:
            sink.latencies.append(now - self.sent_at)
        if sink.running and sink.limit > 0:
            self.buy()

    def buy(self) -> None:
        transport = self.transport
        if transport is None or self.in_flight:
            return
        sink = self.sink
        sink.limit -= 1
        sink.sent += 1
        rid = self._next_rid
        self._next_rid = rid + 1
        self.in_flight = True
        self.sent_at = time.perf_counter()
        transport.write(client_frame(self._buy_prefix + msgpack.packb(rid)))

    def _message(self, payload: bytes) -> None:
        msg: dict[str, Any] = msgpack.unpackb(payload)
        kind = msg.get("t")
        if kind == "welcome":
            join = msgpack.packb({"t": "join", "room": self._join_room, "rid": "j"})
            assert self.transport is not None
            self.transport.write(client_frame(join))
        elif kind == "joined":
            self.joined = True
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "error":
            self.sink.errors[str(msg.get("code"))] += 1
            if not self.joined:
                self._fail(f"error before joining: {msg}")
            elif self.in_flight and msg.get("rid") is not None:
                self.in_flight = False  # a refused buy is an answer too
                self.sink.answered += 1
                if self.sink.running and self.sink.limit > 0:
                    self.buy()

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        transport.abort()


class BuyerPool:
    """The buyers of one benchmark phase against one server."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.sink = _Sink()
        self.buyers: list[Buyer] = []

    async def open(
        self,
        tokens: Sequence[str],
        rooms: Sequence[str],
        sales: Sequence[str],
        *,
        concurrency: int = 64,
        timeout: float = 15.0,
    ) -> OpenResult:
        """Connect and join one buyer per token (``rooms[i]``, buying in ``sales[i]``)."""
        loop = asyncio.get_running_loop()
        buyers = [
            Buyer(
                self.sink,
                upgrade_request(self.host, self.port, token),
                rooms[i],
                sales[i],
                1,
                loop.create_future(),
            )
            for i, token in enumerate(tokens)
        ]
        self.buyers.extend(buyers)

        return await open_all(
            buyers,
            lambda buyer: cast(Buyer, buyer).ready,
            self.host,
            self.port,
            concurrency=concurrency,
            timeout=timeout,
            per_second=100,
        )

    def start(self, limit: int, active: int | None = None) -> None:
        """The first ``active`` (default: every) joined buyers send a buy, then one per
        answer, ``limit`` in all."""
        sink = self.sink
        sink.limit = limit
        sink.running = True
        buyers = self.buyers if active is None else self.buyers[:active]
        for buyer in buyers:
            if buyer.joined and sink.limit > 0:
                buyer.buy()

    def stop(self) -> None:
        self.sink.running = False

    def outstanding(self) -> int:
        return sum(1 for b in self.buyers if b.in_flight)

    async def drain(self, timeout: float) -> int:
        """Wait (at most ``timeout`` s) for the answers still owed; return how many are left."""
        for _ in range(max(1, int(timeout / 0.02))):
            if not self.outstanding():
                break
            await asyncio.sleep(0.02)
        return self.outstanding()

    def abort_all(self) -> None:
        for buyer in self.buyers:
            buyer.abort()
