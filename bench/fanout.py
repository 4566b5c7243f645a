"""Fan-out benchmark: one liveroom room with N viewers against a raw transport.write loop.

Run: ``.venv/bin/python -m bench.fanout [--quick]`` (full: N = 1000, 5000, 10000, 5 rounds
each, in about 13 minutes; quick: N = 1000 with short phases and 1 round, about a minute).

For each N the benchmark starts, in its own process pinned to one core, a liveroom server
(``liveroom serve`` configured by ``LIVEROOM_*`` variables) and then the raw baseline
(``bench/fanout_baseline.py``); the clients (``bench/fanout_clients.py``) run in this
process on the other core. It measures:

(a) idle: server RSS (``/proc/PID/status`` VmRSS) before and after N viewers joined one
    room -> KB per idle connection (the same for the raw server, for comparison);
(b) fixed rate: 200 and 1000 comments/s for a few seconds -> events/s delivered to the N
    viewers, latency p50/p99/max (sampled readers), events lost;
(c) max rate: each commenter keeps one comment in flight and sends the next as soon as
    the previous one is acked, which keeps every batch frame full -> batch frames/s and
    events/s delivered to the N viewers, latency. The frames target is judged here;
(d) intake flood: the same with ``flood_window`` comments in flight per commenter, so the
    server also takes in as many comments as it can -> the same figures plus comments/s
    taken in. Reported, not judged: the raw loop takes nothing in, so here the frames
    ratio measures the cost of intake (see ``python -m bench.intake``), not of fan-out;
(e) raw baseline: frames/s for frames of as many events as liveroom's mean batch in (c)
    and in (d), and for a one-event frame (what writing every event separately delivers).

Results: a table on stdout, ``bench/results/fanout.json`` (every figure) and
``bench/results/fanout.md`` (tables, targets, machine, parameters). Every phase is bounded
in time and count, the whole run has a time budget, and server processes are killed in
``finally`` blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import itertools
import json
import os
import re
import statistics
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench.fanout_clients import ROOM, ClientPool, Counters
from bench.machine import describe
from bench.procs import machine_busy_cpu, proc_cpu, raise_nofile, self_cpu
from bench.report import log, percentile, table, targets_table
from engine.auth import Claims, Role, mint_token
from engine.config import Config, env_var_name
from engine.wsframe import data_frame
from protocol import MSGPACK, Comment

__all__ = ["Params", "main"]

HOST = "127.0.0.1"
SECRET = "fanout-bench-secret"
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
_LISTENING = re.compile(r"listening on wss?://[^\s/]+:(\d+)/")

# Targets from the issue.
TARGET_FRAMES_RATIO = 0.9
TARGET_KB_PER_CONN = 5.0
TARGET_P99_MS = 50.0
TARGET_P99_N = 5000
TARGET_P99_RATE = 200


@dataclass(frozen=True, slots=True)
class Params:
    sizes: tuple[int, ...] = (1000, 5000, 10000)
    rates: tuple[int, ...] = (200, 1000)
    rate_seconds: float = 10.0
    max_warmup: float = 1.0
    max_seconds: float = 8.0
    base_warmup: float = 1.0
    base_seconds: float = 5.0
    commenters: int = 8
    # Max rate (judged): one comment in flight per commenter, the next one sent on its ack:
    # the room's frames are always full, and intake stays a few % of the server's core.
    window: int = 1
    # Intake flood (reported): this many in flight per commenter (0: skip the phase).
    flood_window: int = 8
    flood_limit: int = 5_000_000  # comments per max-rate phase, at most
    sampled: int = 50  # viewers that decode payloads (offsets, latency)
    rounds: int = 5  # max-rate liveroom / raw pairs per N (fresh processes each round)
    # At max rate (and in the raw runs) sampled viewers decode one batch in 32: at 1k viewers
    # one in 8 kept the client core saturated (the server then idled ~3% waiting on it).
    max_decode_every: int = 32
    settle: float = 1.5  # seconds after the viewers joined, before measuring idle RSS
    drain_timeout: float = 8.0
    write_buffer_limit: int = 1 << 20  # raw server: skip a peer with more unsent bytes
    pin: bool = True
    budget: float = 1800.0  # seconds for the whole run


QUICK = Params(
    sizes=(1000,),
    rate_seconds=3.0,
    max_seconds=3.0,
    base_seconds=2.0,
    drain_timeout=5.0,
    rounds=1,
    budget=180.0,
)


# --------------------------------------------------------------------------- processes


class ServerProc:
    """A server subprocess: its pid for RSS and CPU, its output lines, a bounded stop."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.tail: deque[str] = deque(maxlen=40)  # last stderr lines, for diagnostics
        self.lines: asyncio.Queue[str] = asyncio.Queue()  # stdout lines (raw server)
        self.port_found: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._readers: list[asyncio.Task[None]] = []

    @classmethod
    async def start(
        cls, name: str, argv: Sequence[str], env: dict[str, str], cpu: set[int] | None
    ) -> ServerProc:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        if cpu:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, cpu)
        self = cls(name, proc)
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, is_stdout=True)),
            asyncio.create_task(self._read(proc.stderr, is_stdout=False)),
        ]
        return self

    async def _read(self, stream: asyncio.StreamReader, *, is_stdout: bool) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                if not self.port_found.done():
                    self.port_found.set_exception(
                        RuntimeError(f"{self.name} exited: {' | '.join(self.tail)}")
                    )
                return
            line = raw.decode(errors="replace").rstrip()
            if is_stdout:
                if not self.port_found.done() and line.startswith("{"):
                    self.port_found.set_result(int(json.loads(line)["port"]))
                else:
                    self.lines.put_nowait(line)
            else:
                self.tail.append(line)
                match = _LISTENING.search(line)
                if match and not self.port_found.done():
                    self.port_found.set_result(int(match.group(1)))

    async def port(self, timeout: float = 20.0) -> int:
        return await asyncio.wait_for(asyncio.shield(self.port_found), timeout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and its parts RssAnon (heap: what connections cost) and RssFile (mappings)."""
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as fp:
            for line in fp:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(line.split()[1])
        return out

    def _gone(self) -> RuntimeError:
        return RuntimeError(
            f"{self.name} exited (rc {self.proc.returncode}): {' | '.join(self.tail)[-1500:]}"
        )

    def cpu_seconds(self) -> float:
        seconds = proc_cpu(self.pid)
        if seconds is None:
            raise self._gone()
        return seconds

    async def command(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    async def reply(self, timeout: float) -> dict[str, Any]:
        line = await asyncio.wait_for(self.lines.get(), timeout)
        result: dict[str, Any] = json.loads(line)
        return result

    async def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL; reap the output readers."""
        proc = self.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait_for(proc.wait(), 5.0)
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not self.port_found.done():
            self.port_found.cancel()
        elif not self.port_found.cancelled():
            self.port_found.exception()  # mark retrieved


def _liveroom_argv(optimize: bool) -> list[str]:
    """``liveroom serve``; with ``optimize``, the same CLI under ``python -O`` (no asserts)."""
    script = Path(sys.executable).with_name("liveroom")
    if script.exists() and not optimize:
        return [str(script), "serve"]
    flags = ["-O"] if optimize else []
    return [sys.executable, *flags, "-c", "from engine.cli import main; main()", "serve"]


_KNOBS = ("LIVEROOM_ROOMS_FANOUT_SLICE", "LIVEROOM_ROOMS_MIN_FLUSH_INTERVAL_MS")


def _liveroom_env(n: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a bench server for ``n`` viewers; ``extra`` settings go last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEROOM_")}
    env.update(
        {
            "LIVEROOM_SERVER_HOST": HOST,
            "LIVEROOM_SERVER_PORT": "0",
            "LIVEROOM_SERVER_MAX_CONNECTIONS": str(n + 1000),
            "LIVEROOM_ROOMS_COMMENT_RATE": "100000",
            "LIVEROOM_ROOMS_COMMENT_BURST": "100000",
            "LIVEROOM_AUTH_SECRET": SECRET,
            "LIVEROOM_LOG_LEVEL": "warning",
            "PYTHONPATH": os.pathsep.join(x for x in (str(REPO_ROOT), env.get("PYTHONPATH")) if x),
        }
    )
    for knob in _KNOBS:
        if knob in os.environ:  # tuning experiments: pass these through, recorded in the report
            env[knob] = os.environ[knob]
    # Other listeners of the node (e.g. the internal service API) take a free port, so a
    # bench server never collides with a dev server or a test run on the default ports.
    defaults = Config()
    for section in ("service",):
        if hasattr(getattr(defaults, section, None), "port"):
            env[env_var_name(f"{section}.port")] = "0"
    env.update(extra or {})
    return env


async def _probe_liveroom(argv: list[str], cpu: set[int] | None) -> tuple[bool, str]:
    """Whether the server completes one websocket handshake and join; else its log tail."""
    server = await ServerProc.start("liveroom probe", argv, _liveroom_env(10), cpu)
    pool: ClientPool | None = None
    try:
        pool = ClientPool(HOST, await server.port(), join=True)
        res = await pool.open_viewers(1, _token("probe", "probe"), sampled=0, timeout=5.0)
        return res.failed == 0, " | ".join(server.tail)
    finally:
        if pool is not None:
            pool.abort_all()
        await server.stop()


# --------------------------------------------------------------------------- measuring


def _latency_ms(samples_us: list[int]) -> dict[str, float | int | None]:
    if not samples_us:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    values = sorted(samples_us)
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) / 1000, 2),
        "p90": round(percentile(values, 90) / 1000, 2),
        "p99": round(percentile(values, 99) / 1000, 2),
        "max": round(values[-1] / 1000, 2),
    }


@dataclass(slots=True)
class _Mark:
    """Counters, CPU times and clock at one moment of a phase."""

    at: float
    counters: Counters
    server_cpu: float
    client_cpu: float
    system_cpu: float

    @classmethod
    def take(cls, pool: ClientPool, server: ServerProc) -> _Mark:
        return cls(
            time.monotonic(),
            pool.counters(),
            server.cpu_seconds(),
            self_cpu(),
            machine_busy_cpu(),
        )


def _rates(a: _Mark, b: _Mark) -> dict[str, Any]:
    seconds = b.at - a.at
    frames = b.counters.frames - a.counters.frames
    events = b.counters.events - a.counters.events
    nbytes = b.counters.nbytes - a.counters.nbytes
    per_conn = [
        y - x for x, y in zip(a.counters.per_conn_frames, b.counters.per_conn_frames, strict=True)
    ]
    return {
        "seconds": round(seconds, 3),
        "frames": frames,
        "events": events,
        "frames_per_s": round(frames / seconds),
        "events_per_s": round(events / seconds),
        "mbytes_per_s": round(nbytes / seconds / 1e6, 1),
        "events_per_frame": round(events / frames, 2) if frames else 0.0,
        "bytes_per_frame": round(nbytes / frames, 1) if frames else 0.0,
        "frames_per_conn_min": min(per_conn, default=0),
        "frames_per_conn_max": max(per_conn, default=0),
        "server_cpu_pct": round((b.server_cpu - a.server_cpu) / seconds * 100, 1),
        "client_cpu_pct": round((b.client_cpu - a.client_cpu) / seconds * 100, 1),
        # everything else on the machine (other processes, interrupts): noise indicator
        "other_cpu_pct": max(
            0.0,
            round(
                (
                    (b.system_cpu - a.system_cpu)
                    - (b.server_cpu - a.server_cpu)
                    - (b.client_cpu - a.client_cpu)
                )
                / seconds
                * 100,
                1,
            ),
        ),
    }


async def _measure(
    pool: ClientPool, server: ServerProc, seconds: float, step: float = 1.0
) -> list[_Mark]:
    """Marks every ``step`` seconds over ``seconds`` (first and last included)."""
    marks = [_Mark.take(pool, server)]
    end = marks[0].at + seconds
    while (left := end - time.monotonic()) > 0.05:
        await asyncio.sleep(min(step, left))
        marks.append(_Mark.take(pool, server))
    return marks


def _window_stats(marks: list[_Mark]) -> dict[str, Any]:
    """Median and best of the per-step rates: robust to bursts of other work on the box."""
    frames = [
        (b.counters.frames - a.counters.frames) / (b.at - a.at)
        for a, b in itertools.pairwise(marks)
    ]
    events = [
        (b.counters.events - a.counters.events) / (b.at - a.at)
        for a, b in itertools.pairwise(marks)
    ]
    if not frames:
        return {}
    return {
        "frames_per_s_median": round(statistics.median(frames)),
        "frames_per_s_best": round(max(frames)),
        "frames_per_s_worst": round(min(frames)),
        "events_per_s_median": round(statistics.median(events)),
        "windows": len(frames),
    }


async def _drain(pool: ClientPool, start_off: int, before: Counters, timeout: float) -> float:
    """Wait until every comment was answered and every viewer counted them all.

    Returns the seconds waited (``timeout`` when it gave up).
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pool.outstanding() == 0:
            final = pool.max_offset()
            expected = final - start_off
            total = pool.counters().events - before.events
            open_viewers = pool.open_viewer_count()
            sampled_done = pool.sink.decode_every > 1 or all(
                c.closed or c.last_off >= final for c in pool.sampled
            )
            if sampled_done and total >= expected * open_viewers:
                return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return timeout


def _loss(pool: ClientPool, start_off: int, before: Counters) -> dict[str, int]:
    """Events missing per viewer (all viewers, by count) and offset gaps (sampled)."""
    final = pool.max_offset()
    expected = final - start_off
    after = pool.counters()
    lost = extra = 0
    for conn, x, y in zip(pool.viewers, before.per_conn_events, after.per_conn_events, strict=True):
        if conn.closed:
            continue
        delta = y - x
        lost += max(0, expected - delta)
        extra += max(0, delta - expected)
    return {
        "comments_published": expected,
        "lost_events": lost,
        "extra_events": extra,  # e.g. viewer-count events; non-zero hides no loss of comments
        "sampled_offset_gaps": sum(c.gaps for c in pool.sampled),
        "sampled_offset_dups": sum(c.dups for c in pool.sampled),
        "sampled_missing_tail": sum(max(0, final - c.last_off) for c in pool.sampled),
    }


def _reset_sampled(pool: ClientPool) -> None:
    pool.sink.latencies_us = []
    pool.sink.fanout_us = []
    for conn in pool.sampled:
        conn.gaps = conn.dups = 0


async def _fixed_rate(pool: ClientPool, server: ServerProc, rate: int, p: Params) -> dict[str, Any]:
    """Comments paced at ``rate`` per second in total, round-robin over the commenters."""
    _reset_sampled(pool)
    start_off = pool.max_offset()
    total = int(rate * p.rate_seconds)
    commenters = pool.commenters
    a = _Mark.take(pool, server)
    give_up = a.at + p.rate_seconds * 1.5 + 2  # a client too busy to keep the pace stops here
    sent = 0
    for k in range(total):
        delay = a.at + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif time.monotonic() > give_up:
            break
        commenters[k % len(commenters)].send_comment()
        sent += 1
    b = _Mark.take(pool, server)
    drain_s = await _drain(pool, start_off, a.counters, p.drain_timeout)
    result = {"target_rate": rate, "comments_sent": sent, **_rates(a, b)}
    result["expected_events_per_s"] = round(sent / (b.at - a.at)) * len(pool.viewers)
    result["latency_ms"] = _latency_ms(pool.sink.latencies_us)
    result["fanout_latency_ms"] = _latency_ms(pool.sink.fanout_us)
    result.update(_loss(pool, start_off, a.counters))
    result["drain_s"] = round(drain_s, 3)
    return result


async def _max_rate(pool: ClientPool, server: ServerProc, p: Params, window: int) -> dict[str, Any]:
    """Commenters keep ``window`` comments each in flight: a new one for every ack."""
    start_off = pool.max_offset()
    sent0 = pool.comments_sent()
    before = pool.counters()
    pool.sink.decode_every = p.max_decode_every
    pool.start_flood(seconds=p.max_warmup + p.max_seconds + 0.2, limit=p.flood_limit, window=window)
    try:
        await asyncio.sleep(p.max_warmup)
        _reset_sampled(pool)
        marks = await _measure(pool, server, p.max_seconds)
    finally:
        pool.stop_flood()
    drain_s = await _drain(pool, start_off, before, p.drain_timeout)
    result = {
        "commenters": len(pool.commenters),
        "window": window,
        "comments_sent": pool.comments_sent() - sent0,
        **_rates(marks[0], marks[-1]),
        **_window_stats(marks),
    }
    result["latency_ms"] = _latency_ms(pool.sink.latencies_us)
    result["fanout_latency_ms"] = _latency_ms(pool.sink.fanout_us)
    result.update(_loss(pool, start_off, before))
    pool.sink.decode_every = 1
    result["sampled_decode_every"] = p.max_decode_every
    result["drain_s"] = round(drain_s, 3)
    return result


async def _settle(pool: ClientPool, quiet: float = 0.3, timeout: float = 10.0) -> None:
    """Wait until the viewers stop receiving bytes (buffers drained)."""
    t0 = time.monotonic()
    last = -1
    quiet_since = time.monotonic()
    while time.monotonic() - t0 < timeout:
        now_bytes = sum(c.nbytes for c in pool.viewers)
        if now_bytes != last:
            last = now_bytes
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet:
            return
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- runs


def _token(user_id: str, name: str) -> str:
    claims = Claims(
        user_id=user_id,
        name=name,
        rooms=(ROOM,),
        role=Role.VIEWER,
        expires_at=time.time() + 3600,
    )
    return mint_token(SECRET, claims)


def _per_conn(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """KB per connection from RssAnon (the figure judged) and from VmRSS.

    VmRSS also counts file-backed pages (interpreter, shared libraries), which the kernel
    may page out or in at any moment (this VM runs DAMON with a pageout scheme), so its
    delta can be off by megabytes; connections cost anonymous memory only.
    """
    return {
        "idle_kb_per_conn": round((after["RssAnon"] - before["RssAnon"]) / n, 2),
        "idle_kb_per_conn_vmrss": round((after["VmRSS"] - before["VmRSS"]) / n, 2),
    }


def _check_open(what: str, opened: int, failed: int, first_error: str) -> None:
    if failed:
        log(f"  {what}: {failed} of {opened + failed} failed to open: {first_error}")
    if failed > max(5, (opened + failed) // 100):
        raise RuntimeError(f"{what}: {failed} connections failed: {first_error}")


async def _run_liveroom(
    n: int, p: Params, cpu: set[int] | None, argv: list[str], *, full: bool = True
) -> dict[str, Any]:
    """One server process and N viewers: idle memory, fixed rates (if ``full``), max rate."""
    server = await ServerProc.start("liveroom", argv, _liveroom_env(n), cpu)
    pool: ClientPool | None = None
    out: dict[str, Any] = {}
    try:
        port = await server.port()
        await asyncio.sleep(0.5)
        mem_start = server.memory_kb()
        pool = ClientPool(HOST, port, join=True)
        tokens = [_token(f"c{i:02d}", f"commenter {i}") for i in range(p.commenters)]
        res = await pool.open_commenters(tokens)
        _check_open("commenters", res.opened, res.failed, res.first_error)
        await asyncio.sleep(0.5)
        mem_before = server.memory_kb()
        # Two halves, memory after each: the second half gives the marginal cost of a
        # connection, free of one-off growth (heap arenas, first-use caches).
        half = n // 2
        token = _token("viewer", "viewer")
        res1 = await pool.open_viewers(half, token, sampled=p.sampled // 2)
        _check_open("viewers", res1.opened, res1.failed, res1.first_error)
        await asyncio.sleep(min(1.0, p.settle))
        mem_half = server.memory_kb()
        res = await pool.open_viewers(n - half, token, sampled=p.sampled - p.sampled // 2)
        _check_open("viewers", res.opened, res.failed, res.first_error)
        seconds = res1.seconds + res.seconds
        log(f"  liveroom: {res1.opened + res.opened} viewers joined in {seconds:.1f} s")
        gc.collect()
        gc.freeze()
        await asyncio.sleep(p.settle)
        mem_idle = server.memory_kb()
        out["memory_kb"] = {
            "start": mem_start,
            "before_viewers": mem_before,
            "half": mem_half,
            "idle": mem_idle,
        }
        out["connect_seconds"] = round(seconds, 2)
        out["connections_per_s"] = round(n / seconds)
        out.update(_per_conn(mem_before, mem_idle, n))
        out["idle_kb_per_conn_marginal"] = round(
            (mem_idle["RssAnon"] - mem_half["RssAnon"]) / (n - half), 2
        )
        log(
            f"  liveroom idle: {out['idle_kb_per_conn']} KB/conn anon "
            f"(second half: {out['idle_kb_per_conn_marginal']}), "
            f"{out['idle_kb_per_conn_vmrss']} KB/conn VmRSS (VmRSS {mem_idle['VmRSS']} KB)"
        )
        # Later rounds repeat only the latency target's rate: its p99 is judged on the median.
        for rate in p.rates if full else [r for r in p.rates if r == TARGET_P99_RATE]:
            r = await _fixed_rate(pool, server, rate, p)
            out[f"rate{rate}"] = r
            lat = r["latency_ms"]
            log(
                f"  liveroom {rate}/s: {r['events_per_s']:,} events/s, p50 {lat['p50']} "
                f"p99 {lat['p99']} max {lat['max']} ms (fan-out p50 "
                f"{r['fanout_latency_ms']['p50']} p99 {r['fanout_latency_ms']['p99']}), "
                f"lost {r['lost_events']}, {_cpu_text(r)}"
            )
        for phase, window in _max_phases(p):
            r = await _max_rate(pool, server, p, window)
            out[phase] = r
            log(
                f"  liveroom {phase} (window {window}): {r['frames_per_s']:,} frames/s, "
                f"{r['events_per_s']:,} events/s, {r['events_per_frame']} ev/frame, "
                f"{round(r['events_per_s'] / n):,} comments/s in, "
                f"p99 {r['latency_ms']['p99']} ms, lost {r['lost_events']}, {_cpu_text(r)}"
            )
        out["memory_kb"]["after_max"] = server.memory_kb()
        out["server_closes"] = dict(pool.sink.closes)
        out["errors"] = dict(pool.sink.error_codes)
        out["viewers_open_at_end"] = pool.open_viewer_count()
        return out
    finally:
        if pool is not None:
            pool.abort_all()
        gc.unfreeze()
        await server.stop()
        if server.proc.returncode not in (0, -15, None):
            out["server_exit"] = server.proc.returncode
        out["server_log_tail"] = [line for line in server.tail if "effective config" not in line][
            -5:
        ]


def _cpu_text(r: dict[str, Any]) -> str:
    """A phase's CPU use for the progress log: server, client, rest of the machine."""
    return f"cpu srv {r['server_cpu_pct']}% cli {r['client_cpu_pct']}% other {r['other_cpu_pct']}%"


_RAW_KEY = {"max": "batch", "flood": "flood"}  # liveroom max-rate phase -> raw result


def _max_phases(p: Params) -> list[tuple[str, int]]:
    """The max-rate phases, each with its comments in flight per commenter."""
    return [("max", p.window)] + ([("flood", p.flood_window)] if p.flood_window else [])


def _raw_events(lr: dict[str, Any], p: Params) -> dict[str, int]:
    """Events per raw frame for each max-rate phase: that phase's mean batch, rounded."""
    return {phase: max(1, round(lr[phase]["events_per_frame"])) for phase, _ in _max_phases(p)}


def _batch_frame(events: int) -> bytes:
    """A real msgpack batch frame of ``events`` comments like the commenters' ones."""
    text = ("t=0000000000000000 c=00 k=000000001 great deal on the red jacket, buy two")[:64]
    now_ms = int(time.time() * 1000)
    parts = [
        MSGPACK.encode_event(
            Comment(
                id=f"abcdef69a1b2c3d.{i}",
                user_id="c00",
                name="commenter 0",
                text=text,
                ts=now_ms,
                offset=i,
            )
        )
        for i in range(1, events + 1)
    ]
    return data_frame(MSGPACK.encode_batch(ROOM, parts), binary=True)


async def _blast(pool: ClientPool, server: ServerProc, frame: bytes, p: Params) -> dict[str, Any]:
    seconds = p.base_warmup + p.base_seconds + 0.3
    await server.command(
        {
            "cmd": "blast",
            "frame": frame.hex(),
            "seconds": seconds,
            "limit": p.write_buffer_limit,
        }
    )
    await asyncio.sleep(p.base_warmup)
    marks = await _measure(pool, server, p.base_seconds)
    reply = await server.reply(timeout=seconds + 30)
    await _settle(pool)
    result = {"frame_bytes": len(frame), **_rates(marks[0], marks[-1]), **_window_stats(marks)}
    result["server"] = reply
    result["server_writes_per_s"] = round(reply["writes"] / reply["seconds"])
    return result


async def _run_baseline(
    n: int, p: Params, cpu: set[int] | None, events: dict[str, int], *, full: bool = True
) -> dict[str, Any]:
    """The raw server and N viewers: idle memory, blast each phase's batch (and 1 event).

    ``events`` maps liveroom's max-rate phases to events per frame; the raw result for
    "max" is stored as "batch", the one for "flood" as "flood".
    """
    argv = [sys.executable, "-m", "bench.fanout_baseline", "--host", HOST, "--lifetime", "600"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO_ROOT), env.get("PYTHONPATH")) if x)
    server = await ServerProc.start("raw baseline", argv, env, cpu)
    pool: ClientPool | None = None
    out: dict[str, Any] = {}
    try:
        port = await server.port()
        await asyncio.sleep(0.3)
        mem_before = server.memory_kb()
        pool = ClientPool(HOST, port, join=False)
        # As many sampled readers as liveroom's, decoding the same share of batches: the
        # client process does the same reading work on both sides of the comparison.
        res = await pool.open_viewers(n, None, sampled=p.sampled)
        _check_open("raw viewers", res.opened, res.failed, res.first_error)
        pool.sink.decode_every = p.max_decode_every
        gc.collect()
        gc.freeze()
        await asyncio.sleep(p.settle)
        mem_idle = server.memory_kb()
        out["memory_kb"] = {"before_viewers": mem_before, "idle": mem_idle}
        out.update(_per_conn(mem_before, mem_idle, n))
        out["batch_events"] = events["max"]
        frames = [("batch" if k == "max" else k, _batch_frame(v)) for k, v in events.items()]
        if full:
            frames.append(("single", _batch_frame(1)))
        for name, frame in frames:
            r = await _blast(pool, server, frame, p)
            out[name] = r
            log(
                f"  raw {name} ({len(frame)} B): {r['frames_per_s']:,} frames/s, "
                f"{r['events_per_s']:,} events/s, {_cpu_text(r)}, "
                f"skipped {r['server']['skipped']}"
            )
        out["memory_kb"]["after_blast"] = server.memory_kb()
        return out
    finally:
        if pool is not None:
            pool.abort_all()
        gc.unfreeze()
        with contextlib.suppress(Exception):
            await server.command({"cmd": "quit"})
        await server.stop()


def _ratio(x: float, y: float) -> float | None:
    return round(x / y, 3) if y else None


def _rounds(rounds: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Max-rate liveroom vs raw batch over all rounds: the ratio of each round, their median.

    Each round pairs a liveroom run with a raw run right after it, writing frames of as
    many events as that liveroom run's batches; the median of the rounds' ratios is what
    the target is judged on (robust to one round hit by other work on the machine).
    """
    lr = [r["frames_per_s_median"] for r, _ in rounds]
    raw = [b["frames_per_s_median"] for _, b in rounds]
    per_round = [_ratio(x, y) for x, y in zip(lr, raw, strict=True)]
    return {
        "liveroom_frames_per_s_median": lr,
        "raw_frames_per_s_median": raw,
        "events_per_frame": [r["events_per_frame"] for r, _ in rounds],
        "ratio_per_round": per_round,
        "ratio": statistics.median(x for x in per_round if x is not None) if lr else None,
    }


def _ratios(lr: dict[str, Any], raw: dict[str, Any]) -> dict[str, float | None]:
    ratio = _ratio

    mx = lr["max"]
    rb = raw["batch"]
    return {
        "frames": ratio(mx["frames_per_s"], rb["frames_per_s"]),
        # median of 1-s windows on both sides: what the target is judged on
        "frames_median": ratio(mx["frames_per_s_median"], rb["frames_per_s_median"]),
        # the same, per CPU-second of the server process (discounts time it sat idle)
        "frames_per_server_cpu": ratio(
            mx["frames_per_s"] / max(mx["server_cpu_pct"], 1.0),
            rb["frames_per_s"] / max(rb["server_cpu_pct"], 1.0),
        ),
        "events_same_frame": ratio(mx["events_per_s"], raw["batch"]["events_per_s"]),
        "events_vs_one_event_frames": ratio(mx["events_per_s"], raw["single"]["events_per_s"]),
    }


# --------------------------------------------------------------------------- report


def _machine() -> dict[str, Any]:
    return describe(("liveroom", "websockets", "uvloop", "msgpack", "orjson"))


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.2f}{unit}"
    if isinstance(x, int | float):
        return f"{int(x):,}{unit}"
    return f"{x}{unit}"


def _targets(runs: list[dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    done = [r for r in runs if "max_rounds" in r]
    out: list[dict[str, Any]] = []
    ratios = {r["n"]: r["max_rounds"]["ratio"] for r in done}
    out.append(
        {
            "target": f"liveroom frames/s >= {TARGET_FRAMES_RATIO}x raw loop (max rate: "
            "one comment in flight per commenter; medians of 1-s windows, median of the "
            "rounds' ratios)",
            "measured": ", ".join(f"N={n}: {v}x" for n, v in ratios.items()),
            "pass": bool(ratios)
            and all(v is not None and v >= TARGET_FRAMES_RATIO for v in ratios.values()),
        }
    )
    kb = {r["n"]: r["liveroom"]["idle_kb_per_conn"] for r in runs if "liveroom" in r}
    out.append(
        {
            "target": f"<= {TARGET_KB_PER_CONN:g} KB per idle connection (RssAnon)",
            "measured": ", ".join(f"N={n}: {v} KB" for n, v in kb.items()),
            "pass": bool(kb) and all(v <= TARGET_KB_PER_CONN for v in kb.values()),
        }
    )
    key = f"rate{TARGET_P99_RATE}"
    p99 = {
        r["n"]: r["liveroom"][key]["latency_ms"]["p99"]
        for r in runs
        if "liveroom" in r and key in r["liveroom"]
    }
    if TARGET_P99_N in p99:
        run = next(r for r in runs if r["n"] == TARGET_P99_N)
        values = [v for v in (p99[TARGET_P99_N], *run.get("p99_rounds", [])) if v is not None]
        value = statistics.median(values) if values else None
        verdict: bool | None = value is not None and value < TARGET_P99_MS
        each = " / ".join(f"{v}" for v in values)
        measured = f"{value} ms (median of rounds: {each})" if len(values) > 1 else f"{value} ms"
    else:
        verdict = None
        measured = (
            "not measured at N=5000"
            + (" (--quick)" if quick else "")
            + ("; " + ", ".join(f"N={n}: {v} ms" for n, v in p99.items()) if p99 else "")
        )
    out.append(
        {
            "target": f"p99 < {TARGET_P99_MS:g} ms at {TARGET_P99_N} viewers and "
            f"{TARGET_P99_RATE} comments/s (median over rounds)",
            "measured": measured,
            "pass": verdict,
        }
    )
    return out


def _report_tables(report: dict[str, Any]) -> list[str]:
    runs: list[dict[str, Any]] = report["runs"]
    lines: list[str] = ["### Memory (server RSS, idle viewers joined to one room)", ""]
    rows = []
    for r in runs:
        lr, raw = r.get("liveroom"), r.get("baseline")
        if lr is None:
            continue
        rows.append(
            [
                _fmt(r["n"]),
                _fmt(lr["memory_kb"]["before_viewers"]["VmRSS"] / 1024),
                _fmt(lr["memory_kb"]["idle"]["VmRSS"] / 1024),
                _fmt(lr["idle_kb_per_conn"]),
                _fmt(lr["idle_kb_per_conn_marginal"]),
                _fmt(lr["idle_kb_per_conn_vmrss"]),
                _fmt(raw["idle_kb_per_conn"]) if raw else "-",
                _fmt(raw["idle_kb_per_conn_vmrss"]) if raw else "-",
                _fmt(lr["connections_per_s"]),
            ]
        )
    lines += table(
        [
            "N",
            "VmRSS before (MB)",
            "VmRSS idle (MB)",
            "KB/conn (RssAnon)",
            "2nd half KB/conn",
            "KB/conn (VmRSS)",
            "raw KB/conn (RssAnon)",
            "raw KB/conn (VmRSS)",
            "joins/s",
        ],
        rows,
    )
    lines += ["", "### Fixed comment rate (events delivered to the N viewers)", ""]
    rows = []
    for r in runs:
        lr = r.get("liveroom")
        if lr is None:
            continue
        for rate in report["params"]["rates"]:
            s = lr.get(f"rate{rate}")
            if s is None:
                continue
            lat = s["latency_ms"]
            rows.append(
                [
                    _fmt(r["n"]),
                    _fmt(rate),
                    _fmt(s["events_per_s"]),
                    _fmt(s["expected_events_per_s"]),
                    _fmt(s["frames_per_s"]),
                    _fmt(lat["p50"]),
                    _fmt(lat["p99"]),
                    _fmt(lat["max"]),
                    _fmt(s["fanout_latency_ms"]["p99"]),
                    f"{s['lost_events']}/{s['sampled_offset_gaps']}",
                    f"{s['server_cpu_pct']}/{s['client_cpu_pct']}/{s['other_cpu_pct']}",
                ]
            )
    lines += table(
        [
            "N",
            "comments/s",
            "events/s",
            "expected",
            "frames/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "fan-out p99 ms",
            "lost/gaps",
            "CPU% srv/cli/other",
        ],
        rows,
    )
    lines += ["", "### Max rate: liveroom vs raw pre-encoded transport.write loop", ""]
    rows = []
    for r in runs:
        lr, raw, ratio = r.get("liveroom"), r.get("baseline"), r.get("ratios")
        if lr is None or raw is None or ratio is None:
            continue
        mx = lr["max"]
        rows.append(
            [
                _fmt(r["n"]),
                f"{_fmt(mx['frames_per_s'])} ({_fmt(mx['frames_per_s_median'])})",
                _fmt(mx["events_per_s"]),
                _fmt(round(mx["events_per_s"] / r["n"])),
                _fmt(mx["events_per_frame"]),
                _fmt(mx["bytes_per_frame"]),
                _fmt(mx["latency_ms"]["p99"]),
                f"{mx['lost_events']}",
                f"{mx['server_cpu_pct']}/{mx['client_cpu_pct']}/{mx['other_cpu_pct']}",
                f"{_fmt(raw['batch']['frames_per_s'])} "
                f"({_fmt(raw['batch']['frames_per_s_median'])})",
                f"{raw['batch']['server_cpu_pct']}/{raw['batch']['client_cpu_pct']}/"
                f"{raw['batch']['other_cpu_pct']}",
                _fmt(raw["single"]["frames_per_s"]),
                _fmt(ratio["frames"]),
                _fmt(ratio["frames_median"]),
                " / ".join(_fmt(x) for x in r["max_rounds"]["ratio_per_round"])
                if "max_rounds" in r
                else "-",
                _fmt(r["max_rounds"]["ratio"]) if "max_rounds" in r else "-",
                _fmt(ratio["frames_per_server_cpu"]),
                _fmt(ratio["events_same_frame"]),
                _fmt(ratio["events_vs_one_event_frames"]),
            ]
        )
    lines += table(
        [
            "N",
            "LR frames/s (median)",
            "LR events/s",
            "comments/s in",
            "ev/frame",
            "B/frame",
            "p99 ms",
            "lost",
            "CPU% srv/cli/other",
            "raw frames/s (median)",
            "raw CPU% srv/cli/other",
            "raw 1-event frames/s",
            "frames ratio (mean)",
            "frames ratio (median 1-s)",
            "... each round",
            "... median of rounds",
            "per srv CPU-s",
            "events ratio",
            "events vs 1-event raw",
        ],
        rows,
    )
    lines += _flood_table(runs, report["params"])
    lines += ["", "### Targets", ""]
    lines += targets_table(report["targets"])
    return lines


def _flood_table(runs: list[dict[str, Any]], p: dict[str, Any]) -> list[str]:
    """The intake flood against the raw loop: reported, not judged (see the docstring)."""
    rows = []
    for r in runs:
        fl, raw = r.get("liveroom", {}).get("flood"), r.get("baseline")
        rounds = r.get("flood_rounds")
        if fl is None or raw is None or "flood" not in raw or rounds is None:
            continue
        rows.append(
            [
                _fmt(r["n"]),
                _fmt(fl["frames_per_s_median"]),
                _fmt(fl["events_per_s"]),
                _fmt(round(fl["events_per_s"] / r["n"])),
                _fmt(fl["events_per_frame"]),
                _fmt(fl["latency_ms"]["p99"]),
                f"{fl['lost_events']}",
                f"{fl['server_cpu_pct']}/{fl['client_cpu_pct']}/{fl['other_cpu_pct']}",
                _fmt(raw["flood"]["frames_per_s_median"]),
                " / ".join(_fmt(x) for x in rounds["ratio_per_round"]),
                _fmt(rounds["ratio"]),
            ]
        )
    if not rows:
        return []
    lines = [
        "",
        f"### Intake flood ({p['flood_window']} comments in flight per commenter): "
        "reported, not judged",
        "",
    ]
    return lines + table(
        [
            "N",
            "LR frames/s (median 1-s)",
            "LR events/s",
            "comments/s in",
            "ev/frame",
            "p99 ms",
            "lost",
            "CPU% srv/cli/other",
            "raw frames/s, same frame (median 1-s)",
            "frames ratio each round",
            "... median of rounds",
        ],
        rows,
    )


def _notes(report: dict[str, Any]) -> list[str]:
    """Phases whose figures need a caveat: client core saturated, machine busy."""
    notes: list[str] = []
    for r in report["runs"]:
        lr, raw = r.get("liveroom"), r.get("baseline")
        phases: list[tuple[str, dict[str, Any]]] = []
        if lr:
            keys = (*(f"rate{x}" for x in report["params"]["rates"]), "max", "flood")
            phases += [(k, lr[k]) for k in keys if k in lr]
        if raw:
            phases += [(f"raw {k}", raw[k]) for k in ("batch", "flood", "single") if k in raw]
        busy = [name for name, s in phases if s["client_cpu_pct"] >= 90]
        noisy = [
            f"{name} ({s['other_cpu_pct']}%)" for name, s in phases if s["other_cpu_pct"] >= 15
        ]
        if busy:
            notes.append(
                f"N={r['n']}: client core >= 90% busy in {', '.join(busy)}: delivered rates "
                "there are lower bounds (the readers may lag), latencies upper bounds"
            )
        if noisy:
            notes.append(f"N={r['n']}: other processes busy during {', '.join(noisy)}")
    return notes


def _markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    p = report["params"]
    lines = [
        "# Fan-out benchmark: liveroom vs raw transport.write loop",
        "",
        f"Run `{report['command']}` on {m['date']}; took {report['elapsed_s']} s.",
        "",
        *_report_tables(report),
        "",
        "Columns: *events/s* counts events delivered to the N viewers (a batch of k events "
        "to N viewers is k*N); *frames/s* counts batch frames delivered to the N viewers; "
        "*lost* counts events missing after the drain over all viewers (by count), *gaps* "
        "offset gaps seen by the sampled readers; latency is receive time minus the "
        "commenter's send time, on sampled readers, so it includes client-side queueing; "
        "*2nd half KB/conn*: RssAnon growth while the second N/2 viewers joined (marginal "
        "cost, free of one-off heap growth); the memory target is judged on the whole-N "
        "figure. *fan-out* latency is receive time minus the server's acceptance time (the "
        "event's `ts`, 1 ms resolution). CPU% is per process (100 = one core); *other* is "
        "the rest of the machine (noise). "
        "Max-rate frames/s are the mean over the window (median of its 1-s windows in "
        "brackets); *frames ratio* = liveroom frames/s / raw frames/s with a raw frame of the "
        "same number of events as that round's liveroom batches, the raw client's sampled "
        "readers decoding the same share of batches; the target is judged on the median over "
        "rounds of each round's ratio of 1-s-window medians; *per srv CPU-s* "
        "divides each side by its server's CPU use; *events vs 1-event raw* = liveroom "
        "events/s / raw events/s when the raw loop writes one event per frame (what "
        "writing each event separately could deliver); *comments/s in* = the comments the "
        "server took in per second (events/s / N). The raw loop takes nothing in, so the "
        "frames ratio is at most 1 minus the share of the server's core that taking "
        "comments in costs (about 11 us per comment in all; `python -m bench.intake` "
        "measures its Python part). At max rate one comment in flight per commenter keeps "
        "every frame full while intake stays small: that ratio measures fan-out and is "
        "judged. The intake flood pipelines several per commenter, so the server takes in "
        "as many as it can read between slices: its ratio measures intake, and is reported.",
        "",
        "## Machine",
        "",
        f"- platform: {m['platform']}",
        f"- CPU: {m['cpu_model']} ({m['cpu_mhz']} MHz), {m['cpus']} cores; "
        f"server pinned to CPU {report['pinning']['server']}, clients to CPU "
        f"{report['pinning']['clients']}",
        f"- memory: {m['memory']}; open files limit {m['nofile_limit']}",
        f"- Python: {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}",
        f"- server code (engine/ + protocol/ sources) sha256 {m['server_code_sha256']}",
        "",
        "## Parameters",
        "",
        f"- viewers N: {', '.join(str(n) for n in p['sizes'])}; one room; "
        f"{p['commenters']} commenters (also in the room, not counted in N); "
        f"{p['sampled']} sampled viewers decode every payload (one batch in "
        f"{p['max_decode_every']} at max rate and in the raw runs)",
        f"- fixed rates {p['rates']} comments/s for {p['rate_seconds']} s each; "
        f"comments of 64 characters",
        f"- max rate: {p['commenters']} commenters x {p['window']} comment(s) in flight "
        f"(a new one per ack), {p['max_warmup']} s warm-up + {p['max_seconds']} s measured; "
        f"intake flood: the same with {p['flood_window']} in flight",
        f"- {p['rounds']} round(s) per N of max-rate (and flood) liveroom vs raw batches, "
        "each in fresh "
        "processes (the first round is the one detailed in the tables); every round also "
        f"repeats the {TARGET_P99_RATE} comments/s phase, whose p99 target is judged on the "
        "median over rounds",
        f"- raw loop: {p['base_warmup']} s warm-up + {p['base_seconds']} s measured per "
        f"frame size; peers with more than {p['write_buffer_limit']} unsent bytes skipped",
        "- liveroom server: `liveroom serve`, defaults except LIVEROOM_ROOMS_COMMENT_RATE="
        "100000, LIVEROOM_ROOMS_COMMENT_BURST=100000, LIVEROOM_SERVER_MAX_CONNECTIONS=N+1000, "
        "LIVEROOM_LOG_LEVEL=warning, LIVEROOM_SERVICE_PORT=0 if the node has that API "
        "(uvloop on, min_flush_interval_ms 0, heartbeat 20 s)",
        "- tuning knobs passed through from the environment: "
        + (", ".join(f"{k}={os.environ[k]}" for k in _KNOBS if k in os.environ) or "none"),
    ]
    if report.get("aborted"):
        lines += ["", "## Run aborted", "", str(report["aborted"])]
    notes = _notes(report)
    if notes:
        lines += ["", "## Caveats", "", *(f"- {n}" for n in notes)]
    if report.get("workaround"):
        lines += ["", "## Workaround applied", "", report["workaround"]]
    skipped = [r for r in report["runs"] if "skipped" in r or "error" in r]
    if skipped:
        lines += ["", "## Skipped or failed", ""]
        lines += [f"- N={r['n']}: {r.get('skipped') or r.get('error')}" for r in skipped]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


async def _amain(p: Params, command: str, quick: bool) -> dict[str, Any]:
    t_start = time.monotonic()
    nofile = raise_nofile()
    machine = _machine()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu: set[int] | None = None
    if p.pin and len(cpus) >= 2:
        server_cpu = {cpus[0]}
        os.sched_setaffinity(0, {cpus[1]})
    report: dict[str, Any] = {
        "command": command,
        "meta": machine,
        "params": dataclasses.asdict(p),
        "pinning": {
            "server": sorted(server_cpu) if server_cpu else "none",
            "clients": sorted(os.sched_getaffinity(0)) if server_cpu else "none",
        },
        "runs": [],
    }
    runs: list[dict[str, Any]] = report["runs"]
    try:
        async with asyncio.timeout(p.budget):
            argv = _liveroom_argv(optimize=False)
            ok, tail = await _probe_liveroom(argv, server_cpu)
            if not ok:
                log(f"liveroom serve failed a handshake: {tail[-600:]}")
                argv = _liveroom_argv(optimize=True)
                ok, tail2 = await _probe_liveroom(argv, server_cpu)
                if not ok:
                    raise RuntimeError(f"liveroom server unusable: {tail2[-600:]}")
                report["workaround"] = (
                    "`liveroom serve` (uvloop) failed every handshake: "
                    + tail[tail.rfind('File "') :][-400:]
                    + " -- so the server ran as `python -O -c 'from engine.cli import main; "
                    "main()' serve` (same CLI and config, asserts stripped)"
                )
                log("using python -O for the liveroom server (assert bug workaround)")
            report["liveroom_argv"] = argv
            for n in p.sizes:
                run: dict[str, Any] = {"n": n}
                runs.append(run)
                if n + p.commenters + 100 > nofile:
                    run["skipped"] = f"needs about {n + p.commenters + 100} fds, limit {nofile}"
                    log(f"N={n}: skipped ({run['skipped']})")
                    continue
                try:
                    log(f"N={n}: liveroom")
                    run["liveroom"] = await _run_liveroom(n, p, server_cpu, argv)
                    events = _raw_events(run["liveroom"], p)
                    log(f"N={n}: raw baseline (events per frame {events})")
                    run["baseline"] = await _run_baseline(n, p, server_cpu, events)
                    run["ratios"] = _ratios(run["liveroom"], run["baseline"])
                    log(f"N={n}: ratios {run['ratios']}")
                    pairs = {
                        phase: [(run["liveroom"][phase], run["baseline"][_RAW_KEY[phase]])]
                        for phase, _ in _max_phases(p)
                    }
                    for i in range(1, p.rounds):
                        log(f"N={n}: round {i + 1}: liveroom max rates, raw batches")
                        lr = await _run_liveroom(n, p, server_cpu, argv, full=False)
                        # each raw frame carries as many events as this round's batches
                        raw = await _run_baseline(n, p, server_cpu, _raw_events(lr, p), full=False)
                        for phase, pair in pairs.items():
                            pair.append((lr[phase], raw[_RAW_KEY[phase]]))
                        rate_key = f"rate{TARGET_P99_RATE}"
                        if rate_key in lr:
                            run.setdefault("p99_rounds", []).append(
                                lr[rate_key]["latency_ms"]["p99"]
                            )
                    for phase, pair in pairs.items():
                        run[f"{phase}_rounds"] = _rounds(pair)
                        each = run[f"{phase}_rounds"]["ratio_per_round"]
                        log(f"N={n}: {phase} frames ratio by round {each}")
                except (OSError, RuntimeError, KeyError, TimeoutError) as exc:
                    run["error"] = f"{type(exc).__name__}: {exc}"
                    log(f"N={n}: failed: {run['error']}")
    except TimeoutError:
        report["aborted"] = f"time budget of {p.budget:g} s exhausted"
        log(report["aborted"])
    except (OSError, RuntimeError) as exc:
        report["aborted"] = f"{type(exc).__name__}: {exc}"
        log(report["aborted"])
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = _targets(runs, quick)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--quick", action="store_true", help="N=1000 only, short phases")
    parser.add_argument("--sizes", help="comma-separated viewer counts (overrides the default)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/clients to cores")
    parser.add_argument("--window", type=int, help="max-rate comments in flight per commenter")
    parser.add_argument(
        "--flood-window", type=int, help="intake-flood comments in flight per commenter (0: skip)"
    )
    parser.add_argument("--commenters", type=int, help="number of commenters")
    parser.add_argument("--rounds", type=int, help="max-rate liveroom/raw rounds per N")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="directory for fanout.json / fanout.md"
    )
    args = parser.parse_args(argv)
    p = QUICK if args.quick else Params()
    changes: dict[str, Any] = {}
    if args.sizes:
        changes["sizes"] = tuple(int(x) for x in args.sizes.split(","))
    if args.no_pin:
        changes["pin"] = False
    if args.window:
        changes["window"] = args.window
    if args.flood_window is not None:
        changes["flood_window"] = args.flood_window
    if args.commenters:
        changes["commenters"] = args.commenters
    if args.rounds:
        changes["rounds"] = args.rounds
    p = dataclasses.replace(p, **changes)
    command = "python -m bench.fanout" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    report = uvloop.run(_amain(p, command, args.quick))
    text = "\n".join(_report_tables(report))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fanout.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "fanout.md").write_text(_markdown(report))
    print(f"\nwrote {args.out / 'fanout.json'} and {args.out / 'fanout.md'}")


if __name__ == "__main__":
    main()
