"""The viewer swarm: one scenario's passive audience as cheap asyncio (uvloop) websocket
connections, thousands per process, following the scenario's timeline from a start time.

Run ``python -m loadtest.swarm --scenario smoke --url ws://127.0.0.1:8765/`` (see
``--help``), or ``await run_swarm(...)`` in-process. Viewer *k* of the slice joins at
``start_at + join_time(k)``; with a watch time each viewer leaves after an exponential
random time and a new viewer (new user id) takes its place while the show lasts; at
``start_at + duration`` everyone leaves (close 1000). A viewer closed by the server, or
whose connection fails, reconnects with jittered backoff (0.5 s doubling to 5 s) and
resumes with its last offset and epoch (SPEC §8). What one viewer does and counts is in
``loadtest/swarm_conn.py``.

Faults: the swarm carries out the scenario's ``drop_viewers`` faults (the runner does the
other kinds; the swarm ignores them). At ``start_at + fault.at`` each swarm process cuts a
``fault.share`` (rounded to the nearest) of its viewers connected at that moment, all at
once, chosen with ``scenario.rng("drop", <fault's index in faults>, slice)``: the socket is
reset with no close frame, as in a network cut, and each of them reconnects with the
usual jittered backoff and resumes from its offset (a reconnect storm). The records show
the storm and its recovery: ``dropped``, ``connections_min``, ``reconnects``, and
``lost`` / ``dups`` / ``resyncs`` for the resumes.

Guarantees:

- Bounded: the run ends by itself at ``start_at + duration + DRAIN`` whatever the server
  does (connections still open then are reset); the CLI also has a watchdog thread that
  ends the process a few seconds after that if the event loop is stuck.
- Within the open-files limit: the soft limit is raised to the hard one; a slice whose
  peak needs more connections than the limit less :data:`FD_RESERVE` is refused before
  anything connects (:class:`SwarmError`, exit status 2), and open sockets never exceed
  that share (churn waits for a descriptor rather than fail).
- Past the ephemeral-port limit: each socket is bound to a source address before it
  connects (``IP_BIND_ADDRESS_NO_PORT``, so the port is picked per destination), viewers
  spread round-robin over as many ``127.0.0.x`` addresses as needed for at most
  :data:`SOURCE_CAP` connections each (or the ``--sources`` given).
- Output (``--out``), JSON lines: one ``"kind": "swarm"`` record per second of show time
  (``t`` = 0, 1, … ``ceil(duration) - 1``), then one ``"kind": "swarm_summary"``.
  Latency histograms use the fixed buckets :data:`LAT_BUCKETS` (only non-zero ones
  written), so that :func:`merge_hist` and :func:`hist_percentile` merge slices exactly.
- Deterministic choices: which viewers are sampled and how long each watches come from
  ``scenario.rng("viewer", slice, k)``; user ids are ``v<slice>-<k>``, unique per slice and
  per viewer (a replacement after churn is a new viewer; a reconnect is the same one).

Records (counters are the second's differences, totals in the summary):

- ``swarm``: ``slice``, ``t``, ``connections`` (viewers joined at the second's end),
  ``joins`` (viewers' first ``joined``), ``leaves`` (watch time over), ``reconnects``
  (``joined`` again after a loss), ``connect_failures`` (attempts that never got
  ``joined``), ``frames``, ``events`` (offset-carrying events received, all viewers),
  ``bytes``, ``lost`` / ``dups`` (sampled viewers' offset gaps / repeats), ``resyncs``,
  ``dropped`` (live connections cut by ``drop_viewers`` faults), ``connections_min`` (the
  lowest ``connections`` seen during the second, sampled every :data:`TICK` and right
  after a drop: the dip of a storm that ``connections`` at the second's end may miss),
  ``closes`` (``{"<code>": n}`` sent by the server; ``1006``: lost without a close
  frame), ``lat_hist`` (comments' delivery latency, sampled viewers, live batches only),
  ``cpu_s``, and ``sampled_events`` (the sampled viewers' share of ``events``: the
  denominator of a loss rate).
- ``swarm_summary``: ``slice``, ``peak_connections``, ``events``, ``frames``, ``bytes``,
  ``lost``, ``dups``, ``resyncs``, ``cpu_s`` (from the show's start), ``rss_kb`` (peak),
  ``sources``, ``viewers_total`` (identities started), and ``slices``, ``joins``,
  ``leaves``, ``reconnects``, ``connect_failures``, ``sampled`` (sampled identities),
  ``sampled_events``, ``gave_up`` (stopped after a close code that forbids retrying),
  ``closes``, ``lat_hist``, ``errors`` (join refusals, connect errors, timeouts by
  code), ``max_connections`` (this process's cap), ``drain_s`` (time the final closes
  took), ``dropped`` and ``drops``: one entry per ``drop_viewers`` fault carried out,
  ``{"fault": <index in faults>, "at": <s into the show>, "connected": <live before>,
  "dropped": n, "recovered_s": <s until this slice was back to "connected" live viewers,
  or null if not before the show's end>}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import heapq
import ipaddress
import itertools
import math
import os
import resource
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson

from engine.auth import Claims, Role, mint_token
from loadtest.scenario import Fault, Scenario, ScenarioError, load_scenario
from loadtest.swarm_conn import (
    CLOSING,
    CONNECTING,
    DONE,
    FATAL_CLOSES,
    IDLE,
    LAT_BUCKETS,
    LAT_KEYS,
    LIVE,
    Tally,
    Viewer,
    Wire,
    hist_percentile,
    merge_hist,
)

__all__ = [
    "DRAIN",
    "FD_RESERVE",
    "LAT_BUCKETS",
    "SOURCE_CAP",
    "SwarmError",
    "hist_percentile",
    "main",
    "merge_hist",
    "parse_sources",
    "run_swarm",
]

DRAIN = 3.0
"""Seconds after the show's end for the viewers' close handshakes; then the run ends."""
FD_RESERVE = 256
"""Descriptors kept free for everything else of the process (output, loop, stdio)."""
SOURCE_CAP = 20_000
"""Most connections the default source-address spread puts on one address."""
CONNECT_TIMEOUT = 5.0  # TCP connect
JOIN_TIMEOUT = 10.0  # from the start of an attempt to ``joined``
CLOSE_TIMEOUT = 2.0  # from a close frame to the server's EOF
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 5.0
MAX_INFLIGHT = 256  # connection attempts in their TCP connect at once
TICK = 0.01  # scheduler period, s
WATCHDOG_GRACE = 5.0  # the CLI's watchdog fires this long after the run's bound

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_CONNECT, _LEAVE, _CHECK = range(3)


class SwarmError(Exception):
    """The swarm cannot run as asked; the message says why (the CLI exits 2 with it)."""


# --- setup helpers -------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise this process's open-files limit to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_slice(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)``, with 0 <= I < N.

    Raises:
        SwarmError: not of that form.
    """
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise SwarmError(f"--slice: {text!r} is not I/N with 0 <= I < N")
    return i, n


def _parse_url(url: str) -> tuple[str, int, str, str]:
    """``(host, port, request target, Host header)`` of a ``ws://`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise SwarmError(f"--url: {url!r}: only ws:// URLs (no TLS in the swarm)")
    if not parts.hostname:
        raise SwarmError(f"--url: {url!r} names no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise SwarmError(f"--url: {url!r}: bad port") from None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return parts.hostname, port, target, parts.netloc


def parse_sources(spec: str | None, target: str, peak: int) -> list[str]:
    """The source addresses to bind, from ``--sources``.

    ``spec``: ``"127.0.0.1-127.0.0.4"`` (a range of the last octets), ``"a,b,…"``, or a
    count ``"N"`` (``127.0.0.1`` … ``127.0.0.N``); None: as many ``127.0.0.x`` as needed for
    at most :data:`SOURCE_CAP` each when ``target`` (the server's address) is loopback,
    else none (the system picks). Every address is checked by binding a socket to it.

    Raises:
        SwarmError: malformed, more than 254 addresses, a count for a non-loopback target,
            or an address this machine cannot bind.
    """
    loopback = ipaddress.ip_address(target).is_loopback
    addresses: list[str]
    if spec is None:
        if not loopback:
            return []
        count = max(1, math.ceil(peak / SOURCE_CAP))
        spec = str(count)
    spec = spec.strip()
    try:
        if spec.isdigit():
            count = int(spec)
            if not 1 <= count <= 254:
                raise SwarmError(f"--sources: {spec}: a count of 1..254 addresses")
            if not loopback:
                raise SwarmError(
                    "--sources: a count means 127.0.0.x, which cannot reach "
                    f"{target}: give the addresses"
                )
            addresses = [f"127.0.0.{i}" for i in range(1, count + 1)]
        elif "-" in spec:
            low_text, _, high_text = spec.partition("-")
            low = ipaddress.IPv4Address(low_text.strip())
            high = ipaddress.IPv4Address(high_text.strip())
            if high < low or int(high) - int(low) >= 254:
                raise SwarmError(f"--sources: {spec}: an increasing range of at most 254")
            addresses = [str(ipaddress.IPv4Address(a)) for a in range(int(low), int(high) + 1)]
        else:
            addresses = [str(ipaddress.IPv4Address(a.strip())) for a in spec.split(",")]
    except ipaddress.AddressValueError as exc:
        raise SwarmError(f"--sources: {spec}: {exc}") from None
    for address in addresses:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, 0))
            except OSError as exc:
                raise SwarmError(f"--sources: cannot bind {address}: {exc.strerror}") from None
    return addresses


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_kb() -> int:
    """This process's peak resident set (KB): VmHWM, which, unlike ``ru_maxrss``, does not
    carry over the parent's peak through fork and exec."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _hist(counts: Sequence[int]) -> dict[str, int]:
    return {key: n for key, n in zip(LAT_KEYS, counts, strict=True) if n}


def _codes(closes: dict[int, int]) -> dict[str, int]:
    return {str(code): n for code, n in sorted(closes.items()) if n}


# --- the swarm -----------------------------------------------------------------------


class _Drop:
    """One ``drop_viewers`` fault carried out by this process, and its recovery."""

    __slots__ = ("at", "connected", "dropped", "fault", "fired", "recovered_s")

    def __init__(self, fault: int, at: float, connected: int, dropped: int, fired: float) -> None:
        self.fault = fault  # index in the scenario's faults
        self.at = at  # seconds into the show (the fault's)
        self.connected = connected  # live viewers just before: the level to get back to
        self.dropped = dropped
        self.fired = fired  # loop time of the drop
        self.recovered_s: float | None = 0.0 if dropped == 0 else None

    def as_record(self) -> dict[str, Any]:
        recovered = None if self.recovered_s is None else round(self.recovered_s, 3)
        return {
            "fault": self.fault,
            "at": self.at,
            "connected": self.connected,
            "dropped": self.dropped,
            "recovered_s": recovered,
        }


class _Swarm:
    """One process's share of the audience: its viewers, one scheduler, the records."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        addr: tuple[str, int],
        wire: Wire,
        secret: str,
        start_at: float,
        slice_index: int,
        slice_count: int,
        sources: list[str],
        max_sockets: int,
        out: IO[bytes] | None,
        progress: bool,
    ) -> None:
        self.full = scenario
        self.scenario = scenario.slice(slice_index, slice_count)
        self.addr = addr
        self.wire = wire
        self.tally = Tally()
        self.secret = secret
        self.start_at = start_at
        self.slice_index = slice_index
        self.slice_count = slice_count
        self.sources = sources
        self.max_sockets = max_sockets
        self.out = out
        self.progress = progress
        self.expires_at = start_at + scenario.duration + 3600.0
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time() + (start_at - time.time())  # show start, loop time
        self.end = self.t0 + scenario.duration
        self.over = False  # the show has ended: nobody (re)connects any more
        self._heap: list[tuple[float, int, int, Viewer, int]] = []
        self._seq = itertools.count()
        self._pending: deque[Viewer] = deque()  # viewers to connect, first come first
        self._alive: set[Viewer] = set()  # viewers not retired
        self._connects: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._backoff = scenario.rng("backoff", slice_index)
        self._next_replacement = self.scenario.viewers.peak  # ids after the initial ones
        self._last = self.tally.counters()
        self._last_closes: dict[int, int] = {}
        self._last_lat = list(self.tally.lat)
        self._cpu0 = self._last_cpu = _cpu()
        self._n_records = math.ceil(scenario.duration)  # one per second of show time
        self._recorded = 0
        self._drain_s = 0.0
        self._conn_min = 0  # lowest ``connections`` seen in the current second
        faults = [(f.at, i, f) for i, f in enumerate(scenario.faults) if f.kind == "drop_viewers"]
        self._faults: deque[tuple[float, int, Fault]] = deque(
            sorted(faults, key=lambda item: (item[0], item[1]))
        )
        self._drops: list[_Drop] = []  # carried out, in order
        self._recovering: list[_Drop] = []  # carried out, not yet recovered

    # --- Host (called by viewers) -----------------------------------------------------

    def joined(self, viewer: Viewer, first: bool) -> None:
        if first and viewer.watch > 0:
            self._push(self.loop.time() + viewer.watch, _LEAVE, viewer)
        if self._recovering:
            connections = self.tally.connections
            now = self.loop.time()
            for drop in [d for d in self._recovering if connections >= d.connected]:
                drop.recovered_s = now - drop.fired
                self._recovering.remove(drop)

    def ended(self, viewer: Viewer) -> None:
        if viewer.leaving or self.over:
            self._retire(viewer)
            return
        if viewer.close_code in FATAL_CLOSES:
            self.tally.gave_up += 1
            self._retire(viewer)
            return
        if not viewer.was_live:
            self.tally.connect_failures += 1
        if viewer.close_code == 4002:
            viewer.token = None  # expired: a fresh one at the next attempt
        viewer.attempts += 1
        ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (viewer.attempts - 1))
        delay = ceiling * (0.5 + 0.5 * self._backoff.random())
        self._push(self.loop.time() + delay, _CONNECT, viewer)

    def check_later(self, viewer: Viewer, delay: float) -> None:
        self._push(self.loop.time() + delay, _CHECK, viewer)

    # --- viewers -----------------------------------------------------------------------

    def _push(self, when: float, action: int, viewer: Viewer) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action, viewer, viewer.gen))

    def _spawn(self, k: int) -> None:
        """Start viewer ``k`` of this slice: draw its choices, queue its first connect."""
        viewers = self.scenario.viewers
        rng = self.full.rng("viewer", self.slice_index, k)
        sampled = rng.random() < viewers.sampled
        watch = rng.expovariate(1.0 / viewers.watch_time) if viewers.watch_time > 0 else 0.0
        source = self.sources[k % len(self.sources)] if self.sources else ""
        uid = f"v{self.slice_index}-{k}"
        viewer = Viewer(self, k, uid, sampled=sampled, watch=watch, source=source)
        self.tally.viewers_total += 1
        self.tally.sampled += sampled
        self._alive.add(viewer)
        self._pending.append(viewer)

    def _retire(self, viewer: Viewer) -> None:
        viewer.state = DONE
        self._alive.discard(viewer)

    def _drop_viewers(self, index: int, fault: Fault) -> None:
        """Carry out ``drop_viewers`` fault ``index``: cut a ``fault.share`` of the live
        viewers at once (they reconnect and resume: see :meth:`ended`)."""
        live = sorted((v for v in self._alive if v.state == LIVE and not v.leaving), key=_k)
        n = min(len(live), math.floor(fault.share * len(live) + 0.5))
        chosen = self.full.rng("drop", index, self.slice_index).sample(live, n)
        dropped = sum(viewer.drop() for viewer in chosen)
        drop = _Drop(index, fault.at, len(live), dropped, self.loop.time())
        self._drops.append(drop)
        if drop.recovered_s is None:
            self._recovering.append(drop)
        if self.progress:
            print(
                f"swarm {self.slice_index}/{self.slice_count} t={fault.at:g}s "
                f"drop_viewers: dropped {dropped} of {len(live)}",
                file=sys.stderr,
                flush=True,
            )

    def _due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, action, viewer, gen = heapq.heappop(heap)
            if viewer not in self._alive:
                continue
            if action == _CONNECT:
                if viewer.state == IDLE and not viewer.leaving:
                    self._pending.append(viewer)
            elif action == _LEAVE:
                if viewer.leaving:
                    continue
                self.tally.leaves += 1
                viewer.leave()
                if viewer.transport is None and viewer.state == IDLE:
                    self._retire(viewer)  # waiting for a reconnect: just gone
                if not self.over:
                    k = self._next_replacement
                    self._next_replacement += 1
                    self._spawn(k)
            elif gen == viewer.gen and viewer.transport is not None and viewer.state != LIVE:
                # _CHECK: not live in time, or the close is stuck
                self.tally.error("close_timeout" if viewer.state == CLOSING else "join_timeout")
                viewer.abort()

    def _start_connects(self) -> None:
        pending = self._pending
        tg = self._tg
        assert tg is not None
        while (
            pending
            and len(self._connects) < MAX_INFLIGHT
            and self.tally.sockets + len(self._connects) < self.max_sockets
        ):
            viewer = pending.popleft()
            if viewer not in self._alive or viewer.state != IDLE:
                continue
            if viewer.leaving:
                self._retire(viewer)
                continue
            viewer.state = CONNECTING  # from now on its connect task owns it
            task = tg.create_task(self._connect(viewer))
            self._connects.add(task)
            task.add_done_callback(self._connects.discard)

    async def _connect(self, viewer: Viewer) -> None:
        """One connection attempt up to the transport; the protocol does the rest."""
        viewer.gen += 1
        viewer.was_live = False
        viewer.close_code = 0
        if viewer.token is None:
            viewer.token = mint_token(
                self.secret,
                Claims(
                    user_id=viewer.uid,
                    name=viewer.uid,
                    rooms=(self.scenario.room,),
                    role=Role.VIEWER,
                    expires_at=self.expires_at,
                ),
            )
        self.check_later(viewer, JOIN_TIMEOUT)
        tally = self.tally
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:  # out of descriptors, say: try again later
            tally.error(_error_name(exc))
            viewer.state = IDLE
            self.ended(viewer)
            return
        tally.sockets += 1
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if viewer.source:
                sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((viewer.source, 0))
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self.loop.sock_connect(sock, self.addr)
                await self.loop.create_connection(lambda: viewer, sock=sock)
        except (OSError, TimeoutError) as exc:
            tally.error(_error_name(exc))
            self._drop_attempt(viewer, sock)
            return
        except asyncio.CancelledError:
            self._drop_attempt(viewer, sock)
            raise
        if viewer.leaving or self.over:
            viewer.leave()

    def _drop_attempt(self, viewer: Viewer, sock: socket.socket) -> None:
        """A connection attempt failed or was cancelled before the protocol took over."""
        if viewer.transport is not None:  # connection_lost will follow
            viewer.abort()
            return
        sock.close()
        self.tally.sockets -= 1
        viewer.state = IDLE
        self.ended(viewer)

    # --- timeline ------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        loop = self.loop
        try:
            async with asyncio.timeout_at(self.end + DRAIN), asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
                    await asyncio.sleep(max(0.0, self.t0 - loop.time()))
                    self._cpu0 = self._last_cpu = _cpu()
                    await self._show()
                    await self._leave_all()
                finally:
                    self.over = True
                    for task in list(self._connects):
                        task.cancel()
        except TimeoutError:
            pass
        self.over = True
        self._drain_s = max(0.0, loop.time() - self.end)
        for viewer in list(self._alive):
            viewer.abort()
        for _ in range(3):  # let the transports report connection_lost
            await asyncio.sleep(0)
        self._records_until(math.inf)  # only if the show was cut short by the bound
        return self._summary()

    async def _show(self) -> None:
        """Follow the join curve and the timers until the show's end; write the records."""
        loop = self.loop
        scenario = self.scenario
        peak = scenario.viewers.peak
        launched = 0
        while True:
            now = loop.time()
            if now >= self.end:
                break
            elapsed = now - self.t0
            self._records_until(elapsed)  # the seconds complete before this tick's work
            while launched < peak and scenario.join_time(launched) <= elapsed:
                self._spawn(launched)
                launched += 1
            self._due(now)
            faults = self._faults
            while faults and faults[0][0] <= elapsed:
                _, index, fault = faults.popleft()
                self._drop_viewers(index, fault)
            self._start_connects()
            self._conn_min = min(self._conn_min, self.tally.connections)
            await asyncio.sleep(max(0.0, min(TICK, self.end - now)))
        self.over = True
        self._records_until(math.inf)

    async def _leave_all(self) -> None:
        """Everyone leaves (close 1000); wait for the server to close them (bounded by the
        caller's deadline)."""
        for task in list(self._connects):
            task.cancel()
        for viewer in list(self._alive):
            viewer.leave()
            if viewer.transport is None and viewer.state == IDLE:
                self._retire(viewer)
        while self.tally.sockets > 0 or self._connects:
            self._due(self.loop.time())  # close deadlines
            await asyncio.sleep(0.02)

    # --- output --------------------------------------------------------------------------

    def _records_until(self, elapsed: float) -> None:
        """Write the records of the seconds of show time complete at ``elapsed``."""
        while self._recorded < self._n_records and elapsed >= self._recorded + 1:
            self._record(self._recorded)
            self._recorded += 1

    def _record(self, t: int) -> None:
        tally = self.tally
        now = tally.counters()
        deltas = (a - b for a, b in zip(now, self._last, strict=True))
        diff = dict(zip(Tally.COUNTERS, deltas, strict=True))
        self._last = now
        closes = {
            code: n - self._last_closes.get(code, 0)
            for code, n in tally.closes.items()
            if n != self._last_closes.get(code, 0)
        }
        self._last_closes = dict(tally.closes)
        lat = [a - b for a, b in zip(tally.lat, self._last_lat, strict=True)]
        self._last_lat = list(tally.lat)
        cpu = _cpu()
        cpu_s = cpu - self._last_cpu
        self._last_cpu = cpu
        record = {
            "kind": "swarm",
            "slice": self.slice_index,
            "t": t,
            "connections": tally.connections,
            "joins": diff["joins"],
            "leaves": diff["leaves"],
            "reconnects": diff["reconnects"],
            "connect_failures": diff["connect_failures"],
            "frames": diff["frames"],
            "events": diff["events"],
            "bytes": diff["bytes"],
            "lost": diff["lost"],
            "dups": diff["dups"],
            "resyncs": diff["resyncs"],
            "closes": _codes(closes),
            "lat_hist": _hist(lat),
            "cpu_s": round(cpu_s, 4),
            "sampled_events": diff["sampled_events"],
            "dropped": diff["dropped"],
            "connections_min": min(self._conn_min, tally.connections),
        }
        self._conn_min = tally.connections
        self._write(record)
        if self.progress:
            p99 = hist_percentile(_hist(lat), 99)
            p99_text = "-" if p99 is None else f"{p99:g}ms"
            print(
                f"swarm {self.slice_index}/{self.slice_count} t={t}s "
                f"conn={tally.connections} ev/s={diff['events']} p99<={p99_text} "
                f"lost={tally.lost} cpu={cpu_s * 100:.0f}%",
                file=sys.stderr,
                flush=True,
            )

    def _summary(self) -> dict[str, Any]:
        tally = self.tally
        summary: dict[str, Any] = {
            "kind": "swarm_summary",
            "slice": self.slice_index,
            "peak_connections": tally.peak,
            "events": tally.events,
            "frames": tally.frames,
            "bytes": tally.bytes,
            "lost": tally.lost,
            "dups": tally.dups,
            "resyncs": tally.resyncs,
            "cpu_s": round(_cpu() - self._cpu0, 3),
            "rss_kb": _peak_rss_kb(),
            "sources": list(self.sources),
            "viewers_total": tally.viewers_total,
            "slices": self.slice_count,
            "joins": tally.joins,
            "leaves": tally.leaves,
            "reconnects": tally.reconnects,
            "connect_failures": tally.connect_failures,
            "sampled": tally.sampled,
            "sampled_events": tally.sampled_events,
            "gave_up": tally.gave_up,
            "closes": _codes(tally.closes),
            "lat_hist": _hist(tally.lat),
            "errors": dict(sorted(tally.errors.items())),
            "max_connections": self.max_sockets,
            "drain_s": round(self._drain_s, 3),
            "dropped": tally.dropped,
            "drops": [drop.as_record() for drop in self._drops],
        }
        self._write(summary)
        return summary

    def _write(self, record: dict[str, Any]) -> None:
        if self.out is not None:
            self.out.write(orjson.dumps(record) + b"\n")
            self.out.flush()


def _k(viewer: Viewer) -> int:
    return viewer.k


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno_{exc.errno}")
    return type(exc).__name__


# --- entry points ----------------------------------------------------------------------


async def run_swarm(
    scenario: Scenario,
    url: str,
    secret: str,
    start_at: float,
    slice_index: int = 0,
    slice_count: int = 1,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
    *,
    sources: str | None = None,
) -> dict[str, Any]:
    """Run this process's slice of ``scenario``'s audience against the engine at ``url``.

    Args:
        scenario: the show (the whole of it: the slice is taken here).
        url: the engine's websocket URL, ``ws://HOST:PORT/``.
        secret: the engines' ``auth.secret``, to mint the viewers' tokens.
        start_at: the show's start, unix seconds; before it the swarm only waits.
        slice_index, slice_count: which share of the audience (``Scenario.slice``).
        out: a JSONL file for the per-second records and the summary (truncated first).
        progress: one progress line per second on stderr.
        sources: ``--sources`` (see :func:`parse_sources`); None: as needed.

    Returns:
        The summary record (also the last line of ``out``).

    Raises:
        SwarmError: a bad URL, slice or sources, no secret, or a slice that needs more
            connections than this process may open; raised before anything connects.
    """
    if not secret:
        raise SwarmError("no secret: give --secret or set LIVEROOM_AUTH_SECRET")
    if not 0 <= slice_index < slice_count:
        raise SwarmError(f"--slice: {slice_index}/{slice_count} is not I/N with 0 <= I < N")
    host, port, target, authority = _parse_url(url)
    try:
        address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except (OSError, IndexError) as exc:
        raise SwarmError(f"--url: cannot resolve {host!r}: {exc}") from None
    mine = scenario.slice(slice_index, slice_count)
    peak = mine.viewers.peak
    limit = raise_nofile()
    allowed = limit - FD_RESERVE
    if peak > allowed:
        raise SwarmError(
            f"slice {slice_index}/{slice_count} of {scenario.name!r} needs {peak} "
            f"connections at its peak, but this process may open at most {max(allowed, 0)} "
            f"(open-files limit {limit} less a reserve of {FD_RESERVE}): raise the limit "
            "or split the audience over more slices (--slice I/N)"
        )
    addresses = parse_sources(sources, address, peak)
    wire = Wire(scenario.room, authority, target)
    with contextlib.ExitStack() as stack:
        stream: IO[bytes] | None = None
        if out is not None:
            stream = stack.enter_context(await asyncio.to_thread(Path(out).open, "wb"))
        swarm = _Swarm(
            scenario,
            addr=(address, port),
            wire=wire,
            secret=secret,
            start_at=start_at,
            slice_index=slice_index,
            slice_count=slice_count,
            sources=addresses,
            max_sockets=allowed,
            out=stream,
            progress=progress,
        )
        return await swarm.run()


def _watchdog(deadline: float) -> None:
    """End the process at ``deadline`` (unix seconds) if it is still running then."""

    def fire() -> None:
        print("swarm: watchdog: still running past the run's bound, exiting", file=sys.stderr)
        os._exit(3)

    timer = threading.Timer(max(0.0, deadline - time.time()), fire)
    timer.daemon = True
    timer.start()


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m loadtest.swarm`` command; returns the exit status (2: bad usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.swarm",
        description="Passive viewers of a scenario as cheap websocket connections.",
    )
    parser.add_argument("--scenario", required=True, help="scenario name or TOML path")
    parser.add_argument("--url", required=True, help="the engine: ws://127.0.0.1:PORT/")
    parser.add_argument("--secret", help="auth secret (default: $LIVEROOM_AUTH_SECRET)")
    parser.add_argument(
        "--start-at", type=float, help="show start, unix seconds (default: now + 1 s)"
    )
    parser.add_argument("--slice", default="0/1", help="this process's share: I/N (0/1)")
    parser.add_argument(
        "--sources",
        help="source addresses: 127.0.0.1-127.0.0.N, a,b,..., or a count (default: as needed)",
    )
    parser.add_argument("--out", type=Path, help="JSONL file: per-second records, summary")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="one progress line per second on stderr",
    )
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
        slice_index, slice_count = parse_slice(args.slice)
    except (ScenarioError, SwarmError) as exc:
        parser.exit(2, f"swarm: error: {exc}\n")
    secret = args.secret or os.environ.get("LIVEROOM_AUTH_SECRET", "")
    start_at = args.start_at if args.start_at is not None else time.time() + 1.0
    _watchdog(start_at + scenario.duration + DRAIN + WATCHDOG_GRACE)
    try:
        import uvloop

        uvloop.run(
            run_swarm(
                scenario,
                args.url,
                secret,
                start_at,
                slice_index,
                slice_count,
                args.out,
                args.progress,
                sources=args.sources,
            )
        )
    except SwarmError as exc:
        parser.exit(2, f"swarm: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
