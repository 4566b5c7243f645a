"""Cheap websocket clients for the fan-out benchmark: thousands of sockets in one process.

Each client is a bare ``asyncio.Protocol`` that does the HTTP upgrade by hand and then,
for most connections, only walks websocket frame headers (server frames are unmasked, so
a header is 2-10 bytes) to count frames, bytes and events. The event count of a batch is
read from the msgpack array header at a fixed place in the payload, without decoding it:
a batch payload always starts with ``{"t": "batch", "room": ROOM, "ev": [`` (checked
against the real codec). A few sampled connections decode every payload to check offsets
(gaps, duplicates) and latency; commenters decode only their acks and errors.

Guarantees:
- No task per connection and no await per frame: everything happens in ``data_received``.
- Pings are answered (pong) so the server's idle timeout never fires on a viewer.
- Client frames are masked with an all-zero key (valid per RFC 6455; free to apply).
- ``ClientPool.abort_all`` resets every socket (SO_LINGER 0), leaving no TIME_WAIT behind.

Latency: a commenter puts its send time (``time.time()`` in microseconds, 16 digits) at
the start of the comment text; a sampled reader subtracts it from its own receive time.
Both run in this process, so the clocks agree.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack

from bench.rawws import SUBPROTOCOL, OpenResult, client_frame, open_all, upgrade_request
from loadtest.swarm_conn import array_count  # the swarm counts batch events the same way
from protocol import MSGPACK

__all__ = [
    "ROOM",
    "SUBPROTOCOL",
    "BenchConn",
    "ClientPool",
    "Commenter",
    "Counters",
    "OpenResult",
    "Sink",
    "client_frame",
]

ROOM = "bench"
BATCH_PREFIX = MSGPACK.encode_batch(ROOM, [])[:-1]
"""Payload bytes of every batch of ROOM up to its event array header."""
_PLEN = len(BATCH_PREFIX)

_LINGER_RST = struct.pack("ii", 1, 0)
_TEXT_LEN = 64
_FILLER = "great deal on the red jacket, buy two get one free! " * 2

VIEWER, SAMPLED, COMMENTER = 0, 1, 2


class Sink:
    """What all connections of a pool report into, and the flood switch of commenters."""

    __slots__ = (
        "closes",
        "decode_every",
        "error_codes",
        "fanout_us",
        "flood_left",
        "flood_until",
        "handshake_failures",
        "latencies_us",
        "lost_connections",
    )

    def __init__(self) -> None:
        self.latencies_us: list[int] = []  # receive time - commenter's send time
        self.fanout_us: list[int] = []  # receive time - server's acceptance time (ts, in ms)
        self.decode_every = 1  # sampled readers decode one batch in this many (1: all, gaps)
        self.closes: dict[int, int] = {}  # close code sent by the server -> connections
        self.error_codes: dict[str, int] = {}  # ``error`` answers by code
        self.lost_connections = 0  # transports lost while the pool was running
        self.handshake_failures = 0
        self.flood_until = 0.0  # loop time until which commenters answer an ack with a comment
        self.flood_left = 0  # comments the flood may still send


class BenchConn(asyncio.Protocol):
    """One benchmark websocket client.

    ``kind`` is VIEWER (counts frames/events from headers once joined), SAMPLED (decodes
    every batch: offsets and latency) or COMMENTER (see :class:`Commenter`). With
    ``join`` false (raw baseline server) the connection is ready right after the 101.
    """

    __slots__ = (
        "_buf",
        "_handshaking",
        "_join",
        "_request",
        "closed",
        "dups",
        "events",
        "fast",
        "frames",
        "gaps",
        "kind",
        "last_off",
        "nbytes",
        "ready",
        "sink",
        "skip",
        "stash",
        "transport",
    )

    def __init__(
        self,
        sink: Sink,
        request: bytes,
        ready: asyncio.Future[None],
        *,
        kind: int = VIEWER,
        join: bool = True,
    ) -> None:
        self.sink = sink
        self.kind = kind
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.frames = 0  # binary frames received
        self.events = 0  # events in batch frames received
        self.nbytes = 0  # bytes received after the handshake (and a little before)
        self.gaps = 0  # offsets skipped (sampled readers)
        self.dups = 0  # offsets seen again or out of order (sampled readers)
        self.last_off = -1
        self.closed = False
        self.fast = False  # header-only parsing
        self.skip = 0  # payload bytes of the current frame still to skip (fast mode)
        self.stash = b""  # start of a frame cut by a read boundary (fast mode)
        self._buf = bytearray()  # full-parse buffer
        self._handshaking = True
        self._request = request
        self._join = join

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = tr = cast(asyncio.Transport, transport)
        sock = tr.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        tr.write(self._request)

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        if self.fast:
            self._fast(data)
        else:
            self._slow(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sink.lost_connections += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost before ready: {exc}"))

    # --- header-only path ---------------------------------------------------------------

    def _fast(self, data: bytes) -> None:
        if self.stash:
            data = self.stash + data
            self.stash = b""
        n = len(data)
        pos = self.skip
        if pos >= n:
            self.skip = pos - n
            return
        frames = events = 0
        while True:
            avail = n - pos
            if avail < 2:
                break
            b0 = data[pos]
            ln = data[pos + 1]
            if ln < 126:
                hl = 2
            elif ln == 126:
                if avail < 4:
                    break
                ln = (data[pos + 2] << 8) | data[pos + 3]
                hl = 4
            else:
                if avail < 10:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hl = 10
            op = b0 & 0x0F
            if op == 2:
                if ln > _PLEN:
                    if avail < hl + _PLEN + 5 and avail < hl + ln:
                        break  # the array header is in the next read
                    start = pos + hl
                    if data.startswith(BATCH_PREFIX, start):
                        events += array_count(data, start + _PLEN)
                    elif self.kind == COMMENTER:
                        if avail < hl + ln:
                            break  # an answer is decoded whole: wait for all of it
                        self._message(data[start : start + ln])
                elif self.kind == COMMENTER:
                    if avail < hl + ln:
                        break
                    self._message(data[pos + hl : pos + hl + ln])
                frames += 1
            elif op >= 8:
                if avail < hl + ln:
                    break
                self._control(op, data[pos + hl : pos + hl + ln])
            pos += hl + ln
            if pos >= n:
                break
        self.frames += frames
        self.events += events
        if pos >= n:
            self.skip = pos - n
        else:
            self.skip = 0
            self.stash = data[pos:]

    # --- full path: handshake, setup, sampled readers, commenters -----------------------

    def _slow(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._handshaking:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail("handshake response too long")
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            del buf[: end + 4]
            self._handshaking = False
            if not status.startswith(b"HTTP/1.1 101"):
                self._fail(f"handshake refused: {status[:80]!r}")
                return
            self._opened()
            if self.fast:  # raw baseline viewer: header-only from the first frame
                rest = bytes(buf)
                buf.clear()
                if rest:
                    self._fast(rest)
                return
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
            end = pos + hl + ln
            if end > n:
                break
            payload = bytes(buf[pos + hl : end])
            pos = end
            op = b0 & 0x0F
            if op == 2:
                self.frames += 1
                self._message(payload)
            elif op >= 8:
                self._control(op, payload)
            if self.fast:  # joined: the rest of the stream is read header-only
                rest = bytes(buf[pos:])
                buf.clear()
                if rest:
                    self._fast(rest)
                return
        del buf[:pos]

    def _opened(self) -> None:
        if not self._join:
            self._set_ready()
            self.fast = self.kind == VIEWER
            return
        join = msgpack.packb({"t": "join", "room": ROOM, "rid": 0})
        assert self.transport is not None
        self.transport.write(client_frame(join))

    def _set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        self.sink.handshake_failures += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def _control(self, op: int, payload: bytes) -> None:
        if op == 0x9:  # ping -> pong
            assert self.transport is not None
            self.transport.write(client_frame(payload, 0xA))
        elif op == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            closes = self.sink.closes
            closes[code] = closes.get(code, 0) + 1

    def _message(self, payload: bytes) -> None:
        if payload.startswith(BATCH_PREFIX):
            every = self.sink.decode_every
            if self.kind != SAMPLED or (every > 1 and self.frames % every):
                self.events += array_count(payload, _PLEN)
                self.last_off = -1 if self.kind == SAMPLED else self.last_off
                return
            self._batch(msgpack.unpackb(payload, raw=False)["ev"])
            return
        msg: dict[str, Any] = msgpack.unpackb(payload, raw=False)
        kind = msg.get("t")
        if kind == "joined":
            self.last_off = int(msg["off"])
            self._set_ready()
            # Viewers only count; commenters count batches and decode only their answers.
            self.fast = self.kind in (VIEWER, COMMENTER)
        elif kind == "ack":
            self._ack(msg.get("off"))
        elif kind == "error":
            codes = self.sink.error_codes
            code = str(msg.get("code"))
            codes[code] = codes.get(code, 0) + 1
            if msg.get("rid") is not None:
                self._ack(None)

    def _batch(self, evs: list[dict[str, Any]]) -> None:
        self.events += len(evs)
        now_us = int(time.time() * 1_000_000)
        lat = self.sink.latencies_us
        fan = self.sink.fanout_us
        last = self.last_off
        for ev in evs:
            off = ev.get("off")
            if off is None:
                continue  # likes / viewers
            if off != last + 1 and last >= 0:
                if off > last:
                    self.gaps += off - last - 1
                else:
                    self.dups += 1
            last = off
            text = ev.get("text", "")
            if text.startswith("t="):
                lat.append(now_us - int(text[2:18]))
                fan.append(now_us - ev["ts"] * 1000)
        self.last_off = last

    def _ack(self, off: int | None) -> None:
        """A comment was answered (commenters only)."""


class Commenter(BenchConn):
    """A connection that posts comments: paced by the caller, or flooding with a window."""

    __slots__ = ("_out", "acked", "cid", "max_off", "outstanding", "sent")

    def __init__(self, sink: Sink, request: bytes, ready: asyncio.Future[None], cid: int) -> None:
        super().__init__(sink, request, ready, kind=COMMENTER)
        self.cid = cid
        self.sent = 0
        self.acked = 0  # acks and refusals
        self.outstanding = 0
        self.max_off = 0  # highest offset acked
        self._out: list[bytes] | None = None  # comments to send when the current read is done

    def data_received(self, data: bytes) -> None:
        # The comments that this read's acks call for leave in one write, not one each:
        # a system call per comment would make the client, not the server, the bottleneck.
        out: list[bytes] = []
        self._out = out
        try:
            super().data_received(data)
        finally:
            self._out = None
            if out and self.transport is not None and not self.closed:
                self.transport.write(b"".join(out))

    def send_comment(self) -> None:
        """Post one comment (about 64 characters) whose text starts with the send time."""
        if self.closed or self.transport is None:
            return
        self.sent += 1
        head = f"t={int(time.time() * 1_000_000):016d} c={self.cid:02d} k={self.sent:09d} "
        text = head + _FILLER[: _TEXT_LEN - len(head)]
        payload = msgpack.packb({"t": "comment", "room": ROOM, "text": text, "rid": self.sent})
        self.outstanding += 1
        if self._out is not None:
            self._out.append(client_frame(payload))
        else:
            self.transport.write(client_frame(payload))

    def _ack(self, off: int | None) -> None:
        self.outstanding -= 1
        self.acked += 1
        if off is not None and off > self.max_off:
            self.max_off = off
        sink = self.sink
        if sink.flood_left > 0 and time.monotonic() < sink.flood_until:
            sink.flood_left -= 1
            self.send_comment()


@dataclass(frozen=True, slots=True)
class Counters:
    """Totals over a set of connections at one moment."""

    frames: int
    events: int
    nbytes: int
    per_conn_frames: tuple[int, ...]
    per_conn_events: tuple[int, ...]


class ClientPool:
    """The benchmark's connections to one server."""

    def __init__(self, host: str, port: int, *, join: bool) -> None:
        self.host = host
        self.port = port
        self.join = join
        self.sink = Sink()
        self.viewers: list[BenchConn] = []
        self.sampled: list[BenchConn] = []
        self.commenters: list[Commenter] = []

    async def _open(
        self,
        conns: Sequence[BenchConn],
        *,
        concurrency: int,
        timeout: float,
    ) -> OpenResult:
        return await open_all(
            conns,
            lambda conn: cast(BenchConn, conn).ready,
            self.host,
            self.port,
            concurrency=concurrency,
            timeout=timeout,
            per_second=200,
        )

    async def open_commenters(self, tokens: Sequence[str], *, timeout: float = 15.0) -> OpenResult:
        loop = asyncio.get_running_loop()
        conns = [
            Commenter(
                self.sink, upgrade_request(self.host, self.port, tok), loop.create_future(), i
            )
            for i, tok in enumerate(tokens)
        ]
        self.commenters.extend(conns)
        return await self._open(conns, concurrency=64, timeout=timeout)

    async def open_viewers(
        self,
        count: int,
        token: str | None,
        *,
        sampled: int,
        concurrency: int = 256,
        timeout: float = 20.0,
    ) -> OpenResult:
        """Open ``count`` viewers; ``sampled`` of them, spread evenly, decode payloads."""
        loop = asyncio.get_running_loop()
        request = upgrade_request(self.host, self.port, token)
        every = max(1, count // sampled) if sampled > 0 else 0
        conns: list[BenchConn] = []
        picked = 0
        for i in range(count):
            is_sampled = every > 0 and i % every == 0 and picked < sampled
            picked += is_sampled
            conn = BenchConn(
                self.sink,
                request,
                loop.create_future(),
                kind=SAMPLED if is_sampled else VIEWER,
                join=self.join,
            )
            if is_sampled:
                self.sampled.append(conn)
            conns.append(conn)
        self.viewers.extend(conns)
        return await self._open(conns, concurrency=concurrency, timeout=timeout)

    def counters(self, conns: Sequence[BenchConn] | None = None) -> Counters:
        conns = self.viewers if conns is None else conns
        frames = tuple(c.frames for c in conns)
        events = tuple(c.events for c in conns)
        return Counters(
            frames=sum(frames),
            events=sum(events),
            nbytes=sum(c.nbytes for c in conns),
            per_conn_frames=frames,
            per_conn_events=events,
        )

    def open_viewer_count(self) -> int:
        return sum(1 for c in self.viewers if not c.closed)

    def max_offset(self) -> int:
        return max((c.max_off for c in self.commenters), default=0)

    def outstanding(self) -> int:
        return sum(c.outstanding for c in self.commenters if not c.closed)

    def comments_sent(self) -> int:
        return sum(c.sent for c in self.commenters)

    def start_flood(self, *, seconds: float, limit: int, window: int) -> None:
        """Commenters keep ``window`` comments each in flight until stopped or exhausted."""
        sink = self.sink
        sink.flood_until = time.monotonic() + seconds
        sink.flood_left = limit
        for _ in range(window):
            for c in self.commenters:
                if sink.flood_left <= 0:
                    return
                sink.flood_left -= 1
                c.send_comment()

    def stop_flood(self) -> None:
        self.sink.flood_left = 0
        self.sink.flood_until = 0.0

    def abort_all(self) -> None:
        """Reset every connection at once (RST, no TIME_WAIT)."""
        for conn in (*self.commenters, *self.viewers):
            if conn.transport is not None and not conn.closed:
                conn.transport.abort()
