"""One passive viewer of the swarm: a bare ``asyncio.Protocol`` that speaks just enough
websocket (RFC 6455, client side) and liveroom v1 to join one room and count what it gets.

The swarm (``loadtest/swarm.py``) holds thousands of these per process, so a viewer is a
slotted object with no task and no await: the HTTP upgrade, ``welcome``, ``join`` /
``joined``, pings, close frames and every received frame are handled in the protocol
callbacks; timers (watch time, backoff, deadlines) live in the swarm's one scheduler,
reached through :class:`Host`.

Guarantees:

- Counting is exact and cheap. Every viewer counts frames and bytes. A **sampled** viewer
  decodes every message: it checks each offset-carrying event against its stored offset
  (SPEC §8: ``off`` <= stored is a duplicate; ``off`` > stored + 1 loses the gap's size,
  unless a resync came) and records the delivery latency of comments (receipt wall time
  minus the event's ``ts``) in a fixed-bucket histogram (:data:`LAT_BUCKETS`). The other
  viewers never decode a ``batch``: they walk frame headers, read the event count from the
  msgpack array header (a batch payload always starts with ``{"t": "batch", "room": ROOM,
  "ev": [``) and subtract the conflated events (``likes``, ``viewers``, ``stock``: no
  offset), found by their byte signature ``a1 74 <type name>``, which no valid UTF-8
  string and no protocol integer can contain. So ``events`` counts offset-carrying events
  for every viewer alike.
- A viewer resumes after a reconnect with ``join`` carrying its last offset and epoch. A
  sampled viewer knows its last offset; the others use ``joined.off`` plus the
  offset-carrying events counted since, which is exact as long as the server sends every
  event (which the sampled viewers check).
- Pings are answered; a close frame from the server is echoed and the server's EOF
  awaited (the swarm aborts it after a deadline). Client frames are masked with the
  all-zero key (valid per RFC 6455, free to apply).
- A viewer dropped by a fault (:meth:`Viewer.drop`) loses its connection without a close
  frame, as in a network cut; it is counted in ``dropped`` (not as a close) and then
  reconnects and resumes like any viewer whose connection was lost.
- Counters are cumulative, in one :class:`Tally` per process shared by all viewers; the
  swarm turns them into per-second records. The latency histogram merges exactly across
  seconds and processes (:func:`merge_hist`, :func:`hist_percentile`).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any, Protocol, cast

import msgpack

from protocol import MSGPACK

__all__ = [
    "CLOSING",
    "CONFLATED_TYPES",
    "CONNECTING",
    "DONE",
    "FATAL_CLOSES",
    "IDLE",
    "JOINING",
    "LAT_BUCKETS",
    "LAT_KEYS",
    "LIVE",
    "UPGRADING",
    "WELCOME",
    "Host",
    "Tally",
    "Viewer",
    "Wire",
    "array_count",
    "client_frame",
    "hist_percentile",
    "lat_index",
    "merge_hist",
]

# --- latency histogram -------------------------------------------------------------------

LAT_BUCKETS: tuple[float, ...] = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000,
    3000, 5000, math.inf,
)  # fmt: skip
"""Upper bounds (ms, inclusive) of the latency buckets; the last one takes the rest."""

LAT_KEYS: tuple[str, ...] = tuple("inf" if math.isinf(b) else str(int(b)) for b in LAT_BUCKETS)
"""The buckets' keys in the JSONL records: ``"1"``, ``"2"``, … ``"5000"``, ``"inf"``."""

_FINITE = LAT_BUCKETS[:-1]


def lat_index(ms: float) -> int:
    """Index in :data:`LAT_BUCKETS` of the bucket a latency of ``ms`` falls in (the first
    bound >= ``ms``; negative values, from clock rounding, fall in the first)."""
    return bisect.bisect_left(_FINITE, ms)


def merge_hist(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """The sum of two latency histograms (``{"<upper ms>": count}``, as in the records),
    with only non-zero buckets, in bucket order. Exact: merging slices or seconds in any
    order gives the same histogram.

    Raises:
        ValueError: a key that is not one of :data:`LAT_KEYS`.
    """
    for key in (*a, *b):
        if key not in _KEY_SET:
            raise ValueError(f"unknown latency bucket {key!r}")
    out: dict[str, int] = {}
    for key in LAT_KEYS:
        n = a.get(key, 0) + b.get(key, 0)
        if n:
            out[key] = n
    return out


_KEY_SET = frozenset(LAT_KEYS)


def hist_percentile(h: Mapping[str, int], q: float) -> float | None:
    """The upper bound (ms) of the bucket holding the ``q``-th percentile (``q`` in 0..100,
    e.g. 99) of histogram ``h``: the smallest bound that at least ``q`` % of the samples
    lie under; ``math.inf`` if that is the last bucket, None if ``h`` is empty.

    Raises:
        ValueError: ``q`` outside 0..100, or a key that is not one of :data:`LAT_KEYS`.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside 0..100")
    counts = merge_hist(h, {})
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total / 100.0))
    seen = 0
    for key, bound in zip(LAT_KEYS, LAT_BUCKETS, strict=True):
        seen += counts.get(key, 0)
        if seen >= rank:
            return bound
    return math.inf  # not reached: the last bucket completes the count


# --- wire helpers ----------------------------------------------------------------------

_ZERO_MASK = b"\x00\x00\x00\x00"
_LINGER_RST = struct.pack("ii", 1, 0)
_KEY = base64.b64encode(os.urandom(16)).decode()

CONFLATED_TYPES = ("likes", "viewers", "stock")
"""Room events without an offset (SPEC §7), told apart in a batch by their signature."""

FATAL_CLOSES = frozenset({1002, 1003, 1007, 1009, 4001, 4003})
"""Close codes after which a viewer does not reconnect (SPEC §11: a bug, or a token the
swarm cannot fix by retrying)."""


def client_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A final client frame, masked with the all-zero key (so the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 0x10000:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + _ZERO_MASK + payload


def upgrade_request(authority: str, token: str | None, path: str = "/") -> bytes:
    """The HTTP upgrade request for the msgpack subprotocol (``authority``: "host:port"),
    the token, if any, in the query string."""
    if token:
        path = f"{path}{'&' if '?' in path else '?'}token={token}"
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {authority}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {_KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {MSGPACK.subprotocol}\r\n"
        "\r\n"
    ).encode()


def array_count(data: bytes | bytearray, at: int) -> int:
    """Item count of the msgpack array header at ``data[at]`` (0 if it is not one)."""
    a = data[at]
    if a & 0xF0 == 0x90:
        return a & 0x0F
    if a == 0xDC:
        return (data[at + 1] << 8) | data[at + 2]
    if a == 0xDD:
        return int.from_bytes(data[at + 1 : at + 5], "big")
    return 0


class Wire:
    """What every viewer of one swarm sends and looks for: the room, the server's address,
    the batch prefix and the conflated events' signatures."""

    __slots__ = ("authority", "conflated", "path", "prefix", "prefix_len", "room")

    def __init__(self, room: str, authority: str, path: str) -> None:
        self.room = room
        self.authority = authority  # Host header: "host:port"
        self.path = path  # request target without the token: "/", "/live?x=1"
        self.prefix = MSGPACK.encode_batch(room, [])[:-1]  # up to the ``ev`` array header
        self.prefix_len = len(self.prefix)
        self.conflated = tuple(b"\xa1t" + msgpack.packb(name) for name in CONFLATED_TYPES)

    def upgrade_request(self, token: str) -> bytes:
        """The HTTP upgrade for the msgpack subprotocol, the token in the query string."""
        return upgrade_request(self.authority, token, self.path)

    def join(self, rid: int, offset: int | None, epoch: str | None) -> bytes:
        """A ``join`` frame: fresh, or resuming from ``offset`` in ``epoch``."""
        msg: dict[str, object] = {"t": "join", "room": self.room}
        if offset is not None and epoch is not None:
            msg["off"] = offset
            msg["ep"] = epoch
        msg["rid"] = rid
        return client_frame(msgpack.packb(msg))


# --- counters ----------------------------------------------------------------------------


class Tally:
    """Cumulative counters of all viewers of one process (gauges: ``connections``,
    ``sockets``). Plain attributes: a viewer adds to them without a call."""

    COUNTERS = (
        "joins",
        "leaves",
        "reconnects",
        "connect_failures",
        "frames",
        "events",
        "bytes",
        "lost",
        "dups",
        "resyncs",
        "sampled_events",
        "dropped",
    )
    """The counters a per-second record reports as differences."""

    __slots__ = (
        "bytes",
        "closes",
        "connect_failures",
        "connections",
        "dropped",
        "dups",
        "errors",
        "events",
        "frames",
        "gave_up",
        "joins",
        "lat",
        "leaves",
        "lost",
        "peak",
        "reconnects",
        "resyncs",
        "sampled",
        "sampled_events",
        "sockets",
        "viewers_total",
    )

    def __init__(self) -> None:
        self.connections = 0  # viewers joined and not (yet) gone: the gauge
        self.peak = 0  # highest ``connections`` seen
        self.sockets = 0  # sockets open (descriptors), joined or not
        self.joins = 0  # viewers that got their first ``joined``
        self.leaves = 0  # viewers that left at the end of their watch time (churn)
        self.reconnects = 0  # connections re-established (resume ``joined``) after a loss
        self.dropped = 0  # live connections cut by a ``drop_viewers`` fault (they reconnect)
        self.connect_failures = 0  # attempts that ended before ``joined``
        self.frames = 0  # data frames received
        self.events = 0  # offset-carrying events received (batches, resumed ``recent``)
        self.bytes = 0  # bytes received, handshake included
        self.lost = 0  # events missed by sampled viewers (offset gaps, no resync)
        self.dups = 0  # events received again by sampled viewers
        self.resyncs = 0  # ``joined`` with resync true: to a resume, or unsolicited
        self.sampled_events = 0  # the share of ``events`` received by sampled viewers
        self.viewers_total = 0  # viewer identities started
        self.sampled = 0  # of which sampled
        self.gave_up = 0  # viewers that stopped after a fatal close code
        self.closes: dict[int, int] = {}  # close codes from the server (1006: no close frame)
        self.errors: dict[str, int] = {}  # join refusals and connect errors, by code
        self.lat = [0] * len(LAT_BUCKETS)  # comment latencies seen by sampled viewers

    def counters(self) -> tuple[int, ...]:
        """The values of :attr:`COUNTERS`, in that order."""
        return tuple(getattr(self, name) for name in self.COUNTERS)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def close(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1


# --- the viewer --------------------------------------------------------------------------


class Host(Protocol):
    """What a viewer needs of its swarm."""

    @property
    def tally(self) -> Tally: ...

    @property
    def wire(self) -> Wire: ...

    def joined(self, viewer: Viewer, first: bool) -> None:
        """``viewer`` got the answer to its join (``first``: its first ever)."""
        ...

    def ended(self, viewer: Viewer) -> None:
        """``viewer``'s connection is gone (or never came up): reconnect, replace or stop."""
        ...

    def check_later(self, viewer: Viewer, delay: float) -> None:
        """Abort ``viewer``'s current connection unless it is live ``delay`` s from now."""
        ...


# Viewer states.
IDLE, CONNECTING, UPGRADING, WELCOME, JOINING, LIVE, CLOSING, DONE = range(8)


class Viewer(asyncio.Protocol):
    """One viewer identity: its connection, and its reconnections with resume.

    The same object is the protocol of each of its successive connections (one at a
    time: a new one starts only after :meth:`connection_lost` of the last one).
    """

    __slots__ = (
        "attempts",
        "buf",
        "close_code",
        "epoch",
        "gen",
        "host",
        "joined_once",
        "k",
        "leaving",
        "offset",
        "rid",
        "sampled",
        "source",
        "state",
        "tally",
        "token",
        "transport",
        "uid",
        "was_live",
        "watch",
        "wire",
    )

    def __init__(
        self, host: Host, k: int, uid: str, *, sampled: bool, watch: float, source: str
    ) -> None:
        self.host = host
        self.tally = host.tally
        self.wire = host.wire
        self.k = k
        self.uid = uid
        self.sampled = sampled
        self.watch = watch  # seconds to stay once joined; 0: to the end of the show
        self.source = source  # source address to bind ("" : the system's choice)
        self.token: str | None = None  # minted at the first connect (again after a 4002)
        self.state = IDLE
        self.transport: asyncio.Transport | None = None
        self.gen = 0  # connection attempts so far (deadline checks name one)
        self.attempts = 0  # failed attempts in a row (backoff)
        self.rid = 0  # the rid of the current connection's join
        self.joined_once = False
        self.was_live = False  # the current (or last) connection got its ``joined``
        self.leaving = False  # leaving for good: watch time over, or the show ended
        self.close_code = 0  # close code the server sent on this connection (0: none)
        self.offset = 0  # last offset held (resume)
        self.epoch: str | None = None  # its epoch; None until the first joined
        self.buf = bytearray()  # handshake bytes, then the start of a partial frame

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = tr = cast(asyncio.Transport, transport)
        self.state = UPGRADING
        self.close_code = 0
        self.was_live = False
        self.buf.clear()
        assert self.token is not None
        tr.write(self.wire.upgrade_request(self.token))

    def connection_lost(self, exc: Exception | None) -> None:
        tally = self.tally
        tally.sockets -= 1
        if self.state == LIVE:
            tally.connections -= 1
        if self.close_code == 0 and self.state in (LIVE, JOINING, WELCOME):
            tally.close(1006)  # gone without a close frame
        self.transport = None
        self.buf = bytearray()
        self.state = IDLE
        self.host.ended(self)

    def data_received(self, data: bytes) -> None:
        self.tally.bytes += len(data)
        buf = self.buf
        if self.state == UPGRADING:
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self._fail("http_oversized")
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                parts = status.split()
                self._fail(
                    f"http_{parts[1].decode(errors='replace')}" if len(parts) > 1 else "http"
                )
                return
            del buf[: end + 4]
            self.state = WELCOME
            if not buf:
                return
            data = bytes(buf)
            buf.clear()
        elif self.state >= CLOSING and self.close_code:
            return  # the close handshake is done: nothing more is read
        if buf:
            buf += data
            self._frames(buf)
        else:
            self._frames(data)

    # --- frames ----------------------------------------------------------------------

    def _frames(self, data: bytes | bytearray) -> None:
        """Walk the complete frames in ``data``; keep a partial one in :attr:`buf`."""
        n = len(data)
        pos = 0
        frames = events = 0
        fast = self.state == LIVE and not self.sampled
        wire = self.wire
        prefix = wire.prefix
        plen = wire.prefix_len
        p1, p2, p3 = wire.conflated
        now_ms = 0.0
        while n - pos >= 2:
            b0 = data[pos]
            ln = data[pos + 1] & 0x7F  # server frames are unmasked
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (data[pos + 2] << 8) | data[pos + 3]
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hl = 10
            start = pos + hl
            end = start + ln
            if end > n:
                break
            pos = end
            op = b0 & 0x0F
            if op == 0x2:
                frames += 1
                if fast and data.startswith(prefix, start) and ln > plen:
                    count = array_count(data, start + plen)
                    if count:
                        count -= (
                            data.count(p1, start, end)
                            + data.count(p2, start, end)
                            + data.count(p3, start, end)
                        )
                    events += count
                    continue
                if not now_ms:
                    now_ms = time.time() * 1000.0
                self._message(bytes(data[start:end]), now_ms)
                fast = self.state == LIVE and not self.sampled
            elif op == 0x9:  # ping
                if self.transport is not None and self.state < CLOSING:
                    self.transport.write(client_frame(bytes(data[start:end]), 0xA))
            elif op == 0x8:
                self._closed_by_server(bytes(data[start:end]))
                pos = n  # nothing after a close frame counts
                break
            elif op in (0x0, 0x1):
                frames += 1  # not sent by liveroom (no fragments, no text on msgpack)
        tally = self.tally
        tally.frames += frames
        if events:
            tally.events += events
            self.offset += events
        buf = self.buf
        if data is buf:
            del buf[:pos]
        elif pos < n:
            buf += data[pos:]

    def _message(self, payload: bytes, now_ms: float) -> None:
        try:
            msg = msgpack.unpackb(payload, raw=False)
        except Exception:  # any garbage from the server is counted, not raised
            self.tally.error("undecodable")
            return
        if not isinstance(msg, dict):
            self.tally.error("undecodable")
            return
        kind = msg.get("t")
        if kind == "batch":
            if msg.get("room") == self.wire.room and self.state == LIVE:
                self._events(msg.get("ev"), now_ms, live=True)
        elif kind == "welcome":
            if self.state == WELCOME and self.transport is not None:
                self.rid += 1
                offset = self.offset if self.epoch is not None else None
                self.transport.write(self.wire.join(self.rid, offset, self.epoch))
                self.state = JOINING
        elif kind == "joined":
            self._joined(msg, now_ms)
        elif kind == "error":
            self.tally.error(str(msg.get("code")))
            if self.state == JOINING and msg.get("rid") == self.rid:
                self._fail("")  # the join was refused: try again later

    def _joined(self, msg: dict[str, Any], now_ms: float) -> None:
        if msg.get("room") != self.wire.room:
            return
        answer = self.state == JOINING and msg.get("rid") == self.rid
        unsolicited = self.state == LIVE and msg.get("rid") is None
        if not (answer or unsolicited):
            return
        tally = self.tally
        resync = msg.get("resync") is True
        resuming = answer and self.epoch is not None
        if resync and (resuming or unsolicited):
            tally.resyncs += 1
        elif resuming:  # the events missed while away, after the stored offset
            self._events(msg.get("recent"), now_ms, live=False)
        off = msg.get("off")
        self.offset = off if isinstance(off, int) else 0
        ep = msg.get("ep")
        self.epoch = ep if isinstance(ep, str) else ""
        if unsolicited:
            return
        self.state = LIVE
        self.was_live = True
        self.attempts = 0
        tally.connections += 1
        if tally.connections > tally.peak:
            tally.peak = tally.connections
        first = not self.joined_once
        self.joined_once = True
        if first:
            tally.joins += 1
        else:
            tally.reconnects += 1
        self.host.joined(self, first)

    def _events(self, evs: object, now_ms: float, *, live: bool) -> None:
        """Count offset-carrying events; sampled viewers check offsets and latency."""
        if not isinstance(evs, list):
            return
        tally = self.tally
        if not self.sampled:  # a resume's ``recent``: just count
            n = sum(1 for ev in evs if isinstance(ev, dict) and isinstance(ev.get("off"), int))
            tally.events += n
            self.offset += n
            return
        last = self.offset
        n = 0
        for ev in evs:
            if not isinstance(ev, dict):
                continue
            off = ev.get("off")
            if not isinstance(off, int):
                continue  # conflated, or unknown without offset
            n += 1
            if off <= last:
                tally.dups += 1
                continue
            if off > last + 1:
                tally.lost += off - last - 1
            last = off
            if live and ev.get("t") == "comment":
                ts = ev.get("ts")
                if isinstance(ts, int):
                    tally.lat[lat_index(now_ms - ts)] += 1
        self.offset = last
        tally.events += n
        tally.sampled_events += n

    def _closed_by_server(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        tally = self.tally
        if self.state == CLOSING:  # the echo of our own close: the server closes TCP next
            self.close_code = code
            return
        self.close_code = code
        tally.close(code)
        if self.state == LIVE:
            tally.connections -= 1
        self.state = CLOSING
        if self.transport is not None:  # echo it; the server then closes TCP
            self.transport.write(client_frame(payload[:2], 0x8))
            self.host.check_later(self, 2.0)

    def _fail(self, code: str) -> None:
        """This attempt failed before joining: count why and drop the connection."""
        if code:
            self.tally.error(code)
        self.abort()

    # --- driven by the swarm ---------------------------------------------------------

    def leave(self) -> None:
        """Leave for good: a close 1000 if connected (the server closes TCP after it)."""
        self.leaving = True
        tr = self.transport
        if tr is None:
            return
        if self.state == LIVE:
            self.tally.connections -= 1
        if self.state in (LIVE, JOINING, WELCOME) and not self.close_code:
            self.state = CLOSING
            tr.write(client_frame(b"\x03\xe8", 0x8))
            self.host.check_later(self, 2.0)
        elif self.state != CLOSING:
            self.abort()

    def drop(self) -> bool:
        """Cut a live connection as a network failure would: no close frame, the socket
        reset at once (:meth:`abort`). The viewer is not leaving, so :meth:`Host.ended`
        follows and it reconnects with backoff and resumes from its offset. Returns whether
        it was live (only a live connection is dropped)."""
        if self.state != LIVE or self.leaving or self.transport is None:
            return False
        self.tally.dropped += 1
        self.abort()
        return True

    def abort(self) -> None:
        """Drop the connection at once (RST, no TIME_WAIT); :meth:`connection_lost` follows."""
        tr = self.transport
        if tr is None:
            return
        if self.state == LIVE:
            self.tally.connections -= 1
        self.state = CLOSING  # dropped by us: not counted as a close without a frame
        sock = tr.get_extra_info("socket")
        if sock is not None:
            # ValueError: uvloop's socket of a transport whose descriptor is already closed
            # (a connection cancelled mid-handshake at the end of the run).
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        tr.abort()
