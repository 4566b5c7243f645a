"""Scale-out benchmark: a room shared through Redis, on one node and on two.

Run: ``.venv/bin/python -m bench.scaleout [--quick]`` (full: about 6 minutes; quick: 1k
viewers, short phases, one round each, under a minute). ``--phases`` runs some phases only.

The benchmark starts its own ``redis-server`` (loopback, a free port, no persistence:
``save ""``, ``appendonly no``; it measures the broker's cost, not durability) and, per
run, fresh ``liveroom serve`` processes, one per node, each on its own port. A node with
the Redis broker runs with ``LIVEROOM_BROKER_BACKEND=redis`` and ``LIVEROOM_STOCK_BACKEND=
redis`` (as a deployment of several nodes must; no sale runs, so the stock store stays
idle), both on that Redis, under a key prefix of its own per run (Redis is flushed between
runs), and ``LIVEROOM_SERVER_NODE_ID`` node-a / node-b. The clients (viewers, commenters,
sampled viewers that decode offsets and latency: ``bench/fanout_clients.py``) run in this
process, a single thread. Every room is the one room ``bench``; commenters (8, also in the
room, not counted as viewers) are always on node A.

Sizes: N = 5,000 viewers (quick 1,000), M = 5,000 per node (quick 500); 3 rounds of
phases 1-3 (quick 1), fresh processes every run; max-rate phases 1 s warm-up + 8 s (quick
3 s), paced phases 10 s (quick 3 s).

1. **broker** (one node, N viewers, max rate: each commenter keeps one comment in flight and
   sends the next on its ack): the Redis broker against the memory broker (the default),
   in alternating order. The server has core 0 to itself; the
   clients and Redis share core 1 (as in ``bench.fanout``). Judged: Redis / memory frames/s
   (median over rounds of each round's ratio of 1-s-window medians) >= 0.9.
2. **nodes** (N viewers in all, max rate): one node with the memory broker, one node with
   the Redis broker, and two nodes with the Redis broker holding N/2 viewers each, the
   commenters on node A (node B gets every comment through Redis). Servers pinned one per
   core (node A core 0, node B core 1; a single node core 0); the clients and Redis float
   over both cores. On this 2-core box the servers, the clients and Redis compete for two
   cores, so the two-node figure is what this box gives, not a scaling factor. Reported.
3. **cross** (two nodes, M viewers each, cores as in 2): comments paced at 200/s for
   10 s from node A: latency (receive time - the commenter's send time) of sampled viewers
   on node B (cross-node) and node A (local), events lost, offset gaps. Judged: cross-node
   p99 < 50 ms at 2 x 5000 viewers (median over rounds).
4. **cost** (two nodes subscribed, 100 viewers each, cores as in 2): first a baseline
   in the same run, before the nodes start: ``publish.lua`` run one at a time from a
   plain client with two subscribers that do not read (Redis's CPU per run with nothing
   else on the box); then Redis CPU while idle
   (nodes report viewers every 250 ms) and at paced 200 / 1000 / 3000 comments/s: Redis
   CPU% per 1,000 comments/s published, script runs/s (EVALSHA; a node sends one
   ``publish.lua`` run per batch of a room's comments gathered while its previous publish
   was in flight, and each run does one PUBLISH), PUBLISH/s, bytes out/s
   (``total_net_output_bytes``), and each setup's CPU per publish run over the
   baseline's. Phase 3's rate is reported beside it.

Results: tables on stdout, ``bench/results/scaleout.json`` (every figure) and
``bench/results/scaleout.md`` (tables, targets, machine, parameters, cores, Redis
config); ``--quick`` writes ``scaleout-quick.{json,md}`` instead. Every phase is bounded
in time and count, the run has a time budget, and every process is stopped in ``finally``.
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
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from bench.fanout import (
    HOST,
    REPO_ROOT,
    RESULTS_DIR,
    ServerProc,
    _check_open,
    _fmt,
    _latency_ms,
    _liveroom_argv,
    _liveroom_env,
    _probe_liveroom,
    _token,
)
from bench.fanout_clients import ClientPool, Counters
from bench.machine import describe
from bench.procs import machine_busy_cpu, proc_cpu, raise_nofile, self_cpu
from bench.redis_server import RedisServer, RedisStats, run_delay
from bench.report import log, table, targets_table
from engine.config import env_var_name
from protocol import MSGPACK, Comment

__all__ = ["Params", "main"]

# Targets from the issue.
TARGET_BROKER_RATIO = 0.9  # Redis broker frames/s over memory broker frames/s, one node
TARGET_BROKER_N = 5000
TARGET_CROSS_P99_MS = 50.0
TARGET_CROSS_N = 5000  # viewers per node
TARGET_CROSS_RATE = 200

PHASES = ("broker", "nodes", "cross", "cost")


@dataclass(frozen=True, slots=True)
class Params:
    phases: tuple[str, ...] = PHASES
    viewers: int = 5000  # phases 1 and 2: viewers in the room, over every node
    commenters: int = 8
    window: int = 1  # max rate: comments in flight per commenter
    sampled: int = 50  # sampled viewers per run (two nodes: half on each); phase 3: per node
    max_decode_every: int = 32  # at max rate sampled viewers decode one batch in this many
    max_warmup: float = 1.0
    max_seconds: float = 8.0
    flood_limit: int = 5_000_000  # comments per max-rate phase, at most
    broker_rounds: int = 3  # phase 1: memory / Redis pairs
    nodes_rounds: int = 3  # phase 2: runs of each case
    cross_viewers: int = 5000  # phase 3: viewers per node
    cross_rate: int = TARGET_CROSS_RATE
    cross_seconds: float = 10.0
    cross_rounds: int = 3
    cost_viewers: int = 100  # phase 4: viewers per node
    cost_rates: tuple[int, ...] = (200, 1000, 3000)
    cost_seconds: float = 8.0
    cost_rounds: int = 1
    cost_baseline_runs: int = 3000  # publish.lua runs from a plain client, nothing else running
    idle_seconds: float = 3.0  # Redis with the nodes connected and no comment
    settle: float = 1.5  # seconds after the viewers joined, before measuring
    drain_timeout: float = 8.0
    pin: bool = True
    budget: float = 1080.0  # seconds for the whole run


QUICK = Params(
    viewers=1000,
    max_seconds=3.0,
    broker_rounds=1,
    nodes_rounds=1,
    cross_viewers=500,
    cross_seconds=3.0,
    cross_rounds=1,
    cost_rates=(200, 1000),
    cost_seconds=2.0,
    cost_baseline_runs=1000,
    idle_seconds=1.0,
    settle=1.0,
    drain_timeout=5.0,
    budget=180.0,
)


# --------------------------------------------------------------------------- nodes


@dataclass(slots=True)
class Node:
    """One ``liveroom serve`` process and this process's connections to it."""

    name: str  # "A" (the commenters' node) or "B"
    server: ServerProc
    pool: ClientPool


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the processes run: a CPU set per server; the clients' and Redis's CPU sets."""

    name: str
    servers: tuple[set[int] | None, ...]  # node A, node B
    clients: set[int]
    redis: set[int]
    text: str  # for the report


def _layouts(pin: bool) -> dict[str, Layout]:
    """``alone``: the server alone on core 0, clients and Redis on core 1 (phase 1).
    ``spread``: a server per core, clients and Redis floating over both (phases 2-4)."""
    cpus = sorted(os.sched_getaffinity(0))
    every = set(cpus)
    if not pin or len(cpus) < 2:
        free = Layout("none", (None, None), every, every, "nothing pinned")
        return {"alone": free, "spread": free}
    c0, c1 = {cpus[0]}, {cpus[1]}
    floating = f"CPUs {cpus[0]}-{cpus[-1]} (floating)"
    return {
        "alone": Layout(
            "alone",
            (c0, c1),
            c1,
            c1,
            f"server on CPU {cpus[0]} alone; clients (this process) and redis-server "
            f"pinned together on CPU {cpus[1]}",
        ),
        "spread": Layout(
            "spread",
            (c0, c1),
            every,
            every,
            f"node A on CPU {cpus[0]}, node B on CPU {cpus[1]} (a single node: CPU "
            f"{cpus[0]}); clients (this process) and redis-server on {floating}",
        ),
    }


def _ksoftirqd_pids() -> list[int]:
    """The kernel's softirq threads: loopback traffic they handle is charged to nobody else."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fp:
                    comm = fp.read()
            except OSError:
                continue
            if comm.startswith("ksoftirqd/"):
                pids.append(int(entry))
    return pids


def _per_cpu() -> list[tuple[float, float]]:
    """Per CPU: busy seconds and seconds in irq + softirq (/proc/stat, any context)."""
    out = []
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as fp:
        for line in fp:
            if not line.startswith("cpu"):
                break
            if line.startswith("cpu "):
                continue
            f = [int(x) for x in line.split()[1:]]
            # user nice system idle iowait irq softirq steal ...
            out.append(((f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / tick, (f[5] + f[6]) / tick))
    return out


def _processes() -> dict[int, tuple[str, float]]:
    """Every process now: pid -> (name, CPU seconds); for naming what else used the CPU."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fp:
                raw = fp.read()
        except OSError:
            continue
        head, _, rest = raw.rpartition(")")
        fields = rest.split()
        out[int(entry)] = (head.split("(", 1)[-1], (int(fields[11]) + int(fields[12])) / tick)
    return out


@dataclass(slots=True)
class _Snap:
    """Counters, CPU times and Redis's figures at one moment of a phase."""

    at: float
    counters: list[Counters]  # per node, its viewers
    offset: int  # highest offset acknowledged to a commenter
    servers: list[float]  # CPU seconds per server
    waits: list[float]  # seconds each server waited for a core
    client: float
    client_wait: float
    machine: float
    per_cpu: list[tuple[float, float]]
    ksoftirqd: float
    redis: RedisStats
    procs: dict[int, tuple[str, float]]
    ours: set[int]  # the benchmark's processes (not "other")

    @classmethod
    def take(cls, nodes: Sequence[Node], redis: RedisServer, kthreads: Sequence[int]) -> _Snap:
        return cls(
            at=time.monotonic(),
            counters=[n.pool.counters() for n in nodes],
            offset=nodes[0].pool.max_offset(),
            servers=[n.server.cpu_seconds() for n in nodes],
            waits=[run_delay(n.server.pid) for n in nodes],
            client=self_cpu(),
            client_wait=run_delay(os.getpid()),
            machine=machine_busy_cpu(),
            per_cpu=_per_cpu(),
            ksoftirqd=sum(proc_cpu(pid) or 0.0 for pid in kthreads),
            redis=redis.stats(),
            procs=_processes(),
            ours={os.getpid(), redis.pid, *kthreads, *(n.server.pid for n in nodes)},
        )


def _pct(x: float, seconds: float) -> float:
    return round(x / seconds * 100, 1)


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 2) if whole > 0 else None


def _redis_rates(a: RedisStats, b: RedisStats, seconds: float) -> dict[str, Any]:
    def calls(cmd: str) -> int:
        return b.calls.get(cmd, 0) - a.calls.get(cmd, 0)

    scripts = calls("evalsha")
    publishes = calls("publish")
    usec = b.usec.get("evalsha", 0) - a.usec.get("evalsha", 0)
    return {
        "cpu_pct": _pct(b.cpu - a.cpu, seconds),
        # of the main thread's CPU, the share in the kernel (socket reads and writes)
        "sys_share": _share(b.sys - a.sys, (b.user + b.sys) - (a.user + a.sys)),
        "wait_pct": _pct(b.wait - a.wait, seconds),
        "scripts_per_s": round(scripts / seconds, 1),  # EVALSHA: publish + viewers + snapshot
        "publishes_per_s": round(publishes / seconds, 1),  # PUBLISH (one per publish.lua run)
        "other_scripts_per_s": round((scripts - publishes) / seconds, 1),
        "usec_per_script": round(usec / scripts, 1) if scripts else None,
        "script_busy_pct": _pct(usec / 1e6, seconds),  # time inside scripts (of one core)
        "commands_per_s": round((sum(b.calls.values()) - sum(a.calls.values())) / seconds),
        "out_mbytes_per_s": round((b.net_out - a.net_out) / seconds / 1e6, 3),
        "in_mbytes_per_s": round((b.net_in - a.net_in) / seconds / 1e6, 3),
    }


def _rates(a: _Snap, b: _Snap, nodes: Sequence[Node]) -> dict[str, Any]:
    """A phase's rates between two snaps: per node, in all, CPU of every process."""
    seconds = b.at - a.at
    per_node = []
    frames = events = 0
    for i, node in enumerate(nodes):
        f = b.counters[i].frames - a.counters[i].frames
        e = b.counters[i].events - a.counters[i].events
        nbytes = b.counters[i].nbytes - a.counters[i].nbytes
        frames += f
        events += e
        per_node.append(
            {
                "node": node.name,
                "viewers": len(node.pool.viewers),
                "frames_per_s": round(f / seconds),
                "events_per_s": round(e / seconds),
                "events_per_frame": round(e / f, 2) if f else 0.0,
                "mbytes_per_s": round(nbytes / seconds / 1e6, 1),
                "cpu_pct": _pct(b.servers[i] - a.servers[i], seconds),
                "wait_pct": _pct(b.waits[i] - a.waits[i], seconds),
            }
        )
    comments = b.offset - a.offset
    redis = _redis_rates(a.redis, b.redis, seconds)
    servers = sum(y - x for x, y in zip(a.servers, b.servers, strict=True))
    client = b.client - a.client
    redis_cpu = b.redis.cpu - a.redis.cpu
    ksoftirqd = b.ksoftirqd - a.ksoftirqd
    cpus = list(zip(a.per_cpu, b.per_cpu, strict=True))
    other = (b.machine - a.machine) - servers - client - redis_cpu - ksoftirqd
    return {
        "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds),
        "events_per_s": round(events / seconds),
        "events_per_frame": round(events / frames, 2) if frames else 0.0,
        "comments_per_s": round(comments / seconds),  # published (acknowledged offsets)
        "nodes": per_node,
        "servers_cpu_pct": _pct(servers, seconds),
        "client_cpu_pct": _pct(client, seconds),
        "client_wait_pct": _pct(b.client_wait - a.client_wait, seconds),
        # the kernel's softirq threads: network work for the processes above, done late
        "ksoftirqd_cpu_pct": _pct(ksoftirqd, seconds),
        "other_cpu_pct": max(0.0, _pct(other, seconds)),  # the rest of the machine
        "other_processes": _others(a, b, seconds),
        "cpu_busy_pct": [_pct(y[0] - x[0], seconds) for x, y in cpus],
        # irq + softirq time on each CPU, whoever it was charged to (tick-sampled)
        "cpu_softirq_pct": [_pct(y[1] - x[1], seconds) for x, y in cpus],
        "redis": redis,
        "redis_cpu_per_1k_comments_s": round(redis["cpu_pct"] / comments * seconds * 1000, 2)
        if comments
        else None,
        "comments_per_script": round(comments / seconds / redis["publishes_per_s"], 2)
        if redis["publishes_per_s"]
        else None,
    }


def _others(a: _Snap, b: _Snap, seconds: float) -> list[str]:
    """The processes outside the benchmark that used >= 2% of a core between two snaps
    (those that started and ended in between are not seen)."""
    used = []
    for pid, (name, cpu) in b.procs.items():
        if pid in b.ours:
            continue
        before = a.procs.get(pid)
        pct = _pct(cpu - (before[1] if before else 0.0), seconds)
        if pct >= 2.0:
            used.append((pct, f"{name} ({pid}) {pct}%"))
    return [text for _, text in sorted(used, reverse=True)[:4]]


def _window_stats(snaps: Sequence[_Snap]) -> dict[str, Any]:
    """Median, best and worst of the 1-s rates, in all and per node."""
    pairs = list(itertools.pairwise(snaps))
    if not pairs:
        return {}

    def frames(a: _Snap, b: _Snap, i: int | None) -> float:
        idx = range(len(a.counters)) if i is None else (i,)
        return sum(b.counters[j].frames - a.counters[j].frames for j in idx) / (b.at - a.at)

    total = [frames(a, b, None) for a, b in pairs]
    return {
        "frames_per_s_median": round(statistics.median(total)),
        "frames_per_s_best": round(max(total)),
        "frames_per_s_worst": round(min(total)),
        "node_frames_per_s_median": [
            round(statistics.median(frames(a, b, i) for a, b in pairs))
            for i in range(len(snaps[0].counters))
        ],
        "windows": len(total),
    }


def _reset_sampled(pool: ClientPool, decode_every: int) -> None:
    pool.sink.latencies_us = []
    pool.sink.fanout_us = []
    pool.sink.decode_every = decode_every
    for conn in pool.sampled:
        conn.gaps = conn.dups = 0


async def _drain(
    nodes: Sequence[Node], start_off: int, before: Sequence[Counters], timeout: float
) -> float:
    """Wait until every comment was answered and every viewer of every node counted them.

    Returns the seconds waited (``timeout`` when it gave up).
    """
    origin = nodes[0].pool
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if origin.outstanding() == 0:
            final = origin.max_offset()
            expected = final - start_off
            done = True
            for node, b in zip(nodes, before, strict=True):
                pool = node.pool
                total = pool.counters().events - b.events
                sampled_done = pool.sink.decode_every > 1 or all(
                    c.closed or c.last_off >= final for c in pool.sampled
                )
                if not sampled_done or total < expected * pool.open_viewer_count():
                    done = False
                    break
            if done:
                return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return timeout


def _loss(pool: ClientPool, expected: int, final: int, before: Counters) -> dict[str, int]:
    """Events missing per viewer (all viewers, by count) and offset gaps (sampled)."""
    after = pool.counters()
    lost = extra = 0
    for conn, x, y in zip(pool.viewers, before.per_conn_events, after.per_conn_events, strict=True):
        if conn.closed:
            continue
        lost += max(0, expected - (y - x))
        extra += max(0, (y - x) - expected)
    out = {
        "lost_events": lost,
        "extra_events": extra,  # viewer-count events; non-zero hides no loss of comments
        "sampled_offset_gaps": sum(c.gaps for c in pool.sampled),
        "sampled_offset_dups": sum(c.dups for c in pool.sampled),
        "closed_viewers": sum(1 for c in pool.viewers if c.closed),
    }
    if pool.sink.decode_every == 1:
        out["sampled_missing_tail"] = sum(max(0, final - c.last_off) for c in pool.sampled)
    return out


def _node_outcomes(
    nodes: Sequence[Node], start_off: int, before: Sequence[Counters]
) -> dict[str, Any]:
    """Latency, fan-out latency and loss of each node's viewers after a phase."""
    final = nodes[0].pool.max_offset()
    out: dict[str, Any] = {"comments_published": final - start_off}
    for node, b in zip(nodes, before, strict=True):
        sink = node.pool.sink
        out[node.name] = {
            "latency_ms": _latency_ms(sink.latencies_us),
            "fanout_latency_ms": _latency_ms(sink.fanout_us),
            **_loss(node.pool, final - start_off, final, b),
            "errors": dict(sink.error_codes),
            "server_closes": dict(sink.closes),
        }
    both = [x for n in nodes for x in n.pool.sink.latencies_us]
    out["latency_ms"] = _latency_ms(both)
    out["lost_events"] = sum(out[n.name]["lost_events"] for n in nodes)
    return out


# --------------------------------------------------------------------------- the bench


class Bench:
    """The run's state: parameters, the server command, Redis, CPU layouts, run counter."""

    def __init__(self, p: Params, argv: list[str], redis: RedisServer) -> None:
        self.p = p
        self.argv = argv
        self.redis = redis
        self.layouts = _layouts(p.pin)
        self.kthreads = _ksoftirqd_pids()
        self.seq = 0

    def use(self, layout: Layout) -> None:
        """Put this process and Redis where ``layout`` says (servers: at their start)."""
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, layout.clients)
        self.redis.pin(layout.redis)

    def env(self, viewers: int, broker: str, node: str, prefix: str) -> dict[str, str]:
        extra = {env_var_name("server.node_id"): node}
        if broker == "redis":
            url = self.redis.url
            extra |= {
                env_var_name("broker.backend"): "redis",
                env_var_name("broker.redis_url"): url,
                env_var_name("broker.key_prefix"): prefix,
                env_var_name("stock.backend"): "redis",
                env_var_name("stock.redis_url"): url,
                env_var_name("stock.key_prefix"): prefix,
            }
        return _liveroom_env(viewers + self.p.commenters, extra)

    @contextlib.asynccontextmanager
    async def nodes(
        self,
        broker: str,
        viewers: Sequence[int],
        sampled: Sequence[int],
        layout: Layout,
        record: dict[str, Any],
    ) -> AsyncIterator[list[Node]]:
        """Fresh servers (one per entry of ``viewers``), commenters on the first, viewers
        joined on each; everything stopped on exit, exit codes and log tails in ``record``."""
        p = self.p
        self.seq += 1
        self.redis.flush()
        prefix = f"sb{self.seq}"
        servers: list[ServerProc] = []
        nodes: list[Node] = []
        try:
            for i, n in enumerate(viewers):
                name = "AB"[i]
                env = self.env(n, broker, f"node-{name.lower()}", prefix)
                servers.append(
                    await ServerProc.start(f"liveroom {name}", self.argv, env, layout.servers[i])
                )
            for i, server in enumerate(servers):
                nodes.append(
                    Node("AB"[i], server, ClientPool(HOST, await server.port(), join=True))
                )
            await asyncio.sleep(0.5)
            tokens = [_token(f"c{i:02d}", f"commenter {i}") for i in range(p.commenters)]
            res = await nodes[0].pool.open_commenters(tokens)
            _check_open("commenters", res.opened, res.failed, res.first_error)
            token = _token("viewer", "viewer")
            joined = []
            for node, n, s in zip(nodes, viewers, sampled, strict=True):
                res = await node.pool.open_viewers(n, token, sampled=s)
                _check_open(f"viewers of {node.name}", res.opened, res.failed, res.first_error)
                joined.append(f"{node.name}: {res.opened} in {res.seconds:.1f} s")
            log(f"  {broker} broker, {len(nodes)} node(s): viewers joined ({'; '.join(joined)})")
            gc.collect()
            gc.freeze()
            await asyncio.sleep(p.settle)
            record["idle_vmrss_mb"] = [
                round(n.server.memory_kb()["VmRSS"] / 1024, 1) for n in nodes
            ]
            yield nodes
        finally:
            for node in nodes:
                node.pool.abort_all()
            gc.unfreeze()
            for server in servers:
                await server.stop()
                if server.proc.returncode not in (0, -15, None):
                    record.setdefault("server_exit", {})[server.name] = server.proc.returncode
                tail = [line for line in server.tail if "effective config" not in line][-5:]
                if tail:
                    record.setdefault("server_log_tail", {})[server.name] = tail

    async def measure(self, nodes: Sequence[Node], seconds: float) -> list[_Snap]:
        """Snaps every second over ``seconds`` (first and last included)."""
        snaps = [_Snap.take(nodes, self.redis, self.kthreads)]
        end = snaps[0].at + seconds
        while (left := end - time.monotonic()) > 0.05:
            await asyncio.sleep(min(1.0, left))
            snaps.append(_Snap.take(nodes, self.redis, self.kthreads))
        return snaps

    async def max_rate(self, nodes: Sequence[Node]) -> dict[str, Any]:
        """Commenters (node A) keep ``window`` comments each in flight: a new one per ack."""
        p = self.p
        origin = nodes[0].pool
        start_off = origin.max_offset()
        sent0 = origin.comments_sent()
        before = [n.pool.counters() for n in nodes]
        for node in nodes:
            node.pool.sink.decode_every = p.max_decode_every
        origin.start_flood(
            seconds=p.max_warmup + p.max_seconds + 0.2, limit=p.flood_limit, window=p.window
        )
        try:
            await asyncio.sleep(p.max_warmup)
            for node in nodes:
                _reset_sampled(node.pool, p.max_decode_every)
            snaps = await self.measure(nodes, p.max_seconds)
        finally:
            origin.stop_flood()
        drain_s = await _drain(nodes, start_off, before, p.drain_timeout)
        result = {
            "commenters": len(origin.commenters),
            "window": p.window,
            "comments_sent": origin.comments_sent() - sent0,
            **_rates(snaps[0], snaps[-1], nodes),
            **_window_stats(snaps),
            **_node_outcomes(nodes, start_off, before),
            "sampled_decode_every": p.max_decode_every,
            "drain_s": round(drain_s, 3),
        }
        for node in nodes:
            node.pool.sink.decode_every = 1
        return result

    async def fixed_rate(self, nodes: Sequence[Node], rate: int, seconds: float) -> dict[str, Any]:
        """Comments paced at ``rate`` per second from node A's commenters, round-robin."""
        for node in nodes:
            _reset_sampled(node.pool, 1)
        origin = nodes[0].pool
        commenters = origin.commenters
        start_off = origin.max_offset()
        before = [n.pool.counters() for n in nodes]
        total = int(rate * seconds)
        a = _Snap.take(nodes, self.redis, self.kthreads)
        give_up = a.at + seconds * 1.5 + 2  # a client too busy to keep the pace stops here
        sent = 0
        for k in range(total):
            delay = a.at + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif time.monotonic() > give_up:
                break
            commenters[k % len(commenters)].send_comment()
            sent += 1
        b = _Snap.take(nodes, self.redis, self.kthreads)
        drain_s = await _drain(nodes, start_off, before, self.p.drain_timeout)
        return {
            "target_rate": rate,
            "comments_sent": sent,
            **_rates(a, b, nodes),
            **_node_outcomes(nodes, start_off, before),
            "drain_s": round(drain_s, 3),
        }

    async def idle(self, nodes: Sequence[Node]) -> dict[str, Any]:
        """Redis and the servers with the viewers joined and no comment."""
        snaps = await self.measure(nodes, self.p.idle_seconds)
        return _rates(snaps[0], snaps[-1], nodes)

    # --- phases ---------------------------------------------------------------------

    async def phase_broker(self) -> dict[str, Any]:
        """1. One node: Redis broker against memory broker, alternating, max rate."""
        p = self.p
        layout = self.layouts["alone"]
        self.use(layout)
        out: dict[str, Any] = {"layout": layout.text, "viewers": p.viewers, "runs": []}
        for i in range(p.broker_rounds):
            order = ("redis", "memory") if i % 2 == 0 else ("memory", "redis")
            for broker in order:
                run: dict[str, Any] = {"round": i + 1, "broker": broker}
                out["runs"].append(run)
                log(f"broker: round {i + 1}, {broker} broker, {p.viewers} viewers")
                try:
                    async with self.nodes(broker, [p.viewers], [p.sampled], layout, run) as nodes:
                        run["max"] = r = await self.max_rate(nodes)
                    log(f"  {_max_text(r)}")
                except (OSError, RuntimeError, KeyError, TimeoutError) as exc:
                    run["error"] = f"{type(exc).__name__}: {exc}"
                    log(f"  failed: {run['error']}")
        out["summary"] = _broker_summary(out["runs"])
        return out

    async def phase_nodes(self) -> dict[str, Any]:
        """2. N viewers on one node (memory, Redis) and on two nodes (Redis), max rate."""
        p = self.p
        layout = self.layouts["spread"]
        self.use(layout)
        half = p.viewers // 2
        cases: list[tuple[str, str, list[int], list[int]]] = [
            ("1 node, memory", "memory", [p.viewers], [p.sampled]),
            ("1 node, redis", "redis", [p.viewers], [p.sampled]),
            (
                "2 nodes, redis",
                "redis",
                [half, p.viewers - half],
                [p.sampled // 2, p.sampled - p.sampled // 2],
            ),
        ]
        out: dict[str, Any] = {"layout": layout.text, "viewers": p.viewers, "runs": []}
        for i in range(p.nodes_rounds):
            for case, broker, viewers, sampled in cases[i % 3 :] + cases[: i % 3]:
                run: dict[str, Any] = {"round": i + 1, "case": case, "viewers": viewers}
                out["runs"].append(run)
                log(f"nodes: round {i + 1}, {case}, viewers {viewers}")
                try:
                    async with self.nodes(broker, viewers, sampled, layout, run) as nodes:
                        run["max"] = r = await self.max_rate(nodes)
                    log(f"  {_max_text(r)}")
                except (OSError, RuntimeError, KeyError, TimeoutError) as exc:
                    run["error"] = f"{type(exc).__name__}: {exc}"
                    log(f"  failed: {run['error']}")
        out["summary"] = _nodes_summary(out["runs"], [c[0] for c in cases])
        return out

    async def phase_cross(self) -> dict[str, Any]:
        """3. Two nodes, M viewers each, paced comments on A: local and cross-node latency."""
        p = self.p
        layout = self.layouts["spread"]
        self.use(layout)
        m = p.cross_viewers
        out: dict[str, Any] = {"layout": layout.text, "viewers_per_node": m, "runs": []}
        for i in range(p.cross_rounds):
            run: dict[str, Any] = {"round": i + 1}
            out["runs"].append(run)
            log(f"cross: round {i + 1}, 2 x {m} viewers, {p.cross_rate} comments/s")
            try:
                async with self.nodes("redis", [m, m], [p.sampled, p.sampled], layout, run) as ns:
                    run["idle"] = await self.idle(ns)
                    run["paced"] = r = await self.fixed_rate(ns, p.cross_rate, p.cross_seconds)
                log(f"  {_paced_text(r)}")
            except (OSError, RuntimeError, KeyError, TimeoutError) as exc:
                run["error"] = f"{type(exc).__name__}: {exc}"
                log(f"  failed: {run['error']}")
        out["summary"] = _cross_summary(out["runs"])
        return out

    async def phase_cost(self) -> dict[str, Any]:
        """4. Redis's cost per comment: two light nodes, idle and paced rates."""
        p = self.p
        layout = self.layouts["spread"]
        self.use(layout)
        m = p.cost_viewers
        sampled = min(p.sampled, m)
        out: dict[str, Any] = {"layout": layout.text, "viewers_per_node": m, "runs": []}
        script = (REPO_ROOT / "engine" / "broker" / "lua" / "publish.lua").read_text()
        out["baseline"] = r = self.redis.publish_baseline(
            script, p.cost_baseline_runs, _comment_payload()
        )
        log(
            f"cost: baseline, publish.lua from one plain client, 2 idle subscribers: "
            f"{r['cpu_us_per_run']} us Redis CPU per run ({r['usec_in_evalsha']} us in "
            f"EVALSHA, sys share {r['sys_share']}), {r['runs_per_s']:,} runs/s"
        )
        self.redis.flush()
        for i in range(p.cost_rounds):
            run: dict[str, Any] = {"round": i + 1, "rates": {}}
            out["runs"].append(run)
            log(f"cost: round {i + 1}, 2 x {m} viewers, rates {p.cost_rates}")
            try:
                async with self.nodes("redis", [m, m], [sampled, sampled], layout, run) as ns:
                    run["idle"] = r = await self.idle(ns)
                    log(f"  idle: {_redis_text(r)}")
                    for rate in p.cost_rates:
                        r = await self.fixed_rate(ns, rate, p.cost_seconds)
                        run["rates"][str(rate)] = r
                        log(f"  {_paced_text(r)}")
            except (OSError, RuntimeError, KeyError, TimeoutError) as exc:
                run["error"] = f"{type(exc).__name__}: {exc}"
                log(f"  failed: {run['error']}")
        out["summary"] = _cost_summary(out["runs"], p.cost_rates)
        return out


def _comment_payload() -> bytes:
    """A broker payload like the relay's for one benchmark comment (offset 0 until stamped)."""
    text = "t=0000000000000000 c=00 k=000000001 great deal on the red jacket, buy two"[:64]
    comment = Comment(
        id="abcdef69a1b2c3d.1",
        user_id="c00",
        name="commenter 0",
        text=text,
        ts=int(time.time() * 1000),
        offset=0,
    )
    return MSGPACK.encode_event(comment)


# --------------------------------------------------------------------------- summaries


def _median(values: Sequence[float | int | None]) -> float | None:
    real = [v for v in values if v is not None]
    return round(statistics.median(real), 3) if real else None


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x is not None and y else None


def _max_figures(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of a max-rate phase's figures (frames: of the 1-s medians)."""
    rs = [r["max"] for r in runs if "max" in r]
    if not rs:
        return {"runs": 0}

    def med(get: Callable[[dict[str, Any]], Any]) -> float | None:
        return _median([get(r) for r in rs])

    nodes = len(rs[0]["nodes"])
    return {
        "runs": len(rs),
        "frames_per_s": med(lambda r: r["frames_per_s_median"]),
        "frames_per_s_each": [r["frames_per_s_median"] for r in rs],
        "node_frames_per_s": [
            _median([r["node_frames_per_s_median"][i] for r in rs]) for i in range(nodes)
        ],
        "node_cpu_pct": [_median([r["nodes"][i]["cpu_pct"] for r in rs]) for i in range(nodes)],
        "node_wait_pct": [_median([r["nodes"][i]["wait_pct"] for r in rs]) for i in range(nodes)],
        "events_per_s": med(lambda r: r["events_per_s"]),
        "events_per_frame": med(lambda r: r["events_per_frame"]),
        "comments_per_s": med(lambda r: r["comments_per_s"]),
        "p99_ms": med(lambda r: r["latency_ms"]["p99"]),
        "servers_cpu_pct": med(lambda r: r["servers_cpu_pct"]),
        "client_cpu_pct": med(lambda r: r["client_cpu_pct"]),
        "redis_cpu_pct": med(lambda r: r["redis"]["cpu_pct"]),
        "ksoftirqd_cpu_pct": med(lambda r: r["ksoftirqd_cpu_pct"]),
        "other_cpu_pct": med(lambda r: r["other_cpu_pct"]),
        "cpu_busy_pct": _per_cpu_median(rs, "cpu_busy_pct"),
        "cpu_softirq_pct": _per_cpu_median(rs, "cpu_softirq_pct"),
        "scripts_per_s": med(lambda r: r["redis"]["scripts_per_s"]),
        "publishes_per_s": med(lambda r: r["redis"]["publishes_per_s"]),
        "comments_per_script": med(lambda r: r["comments_per_script"]),
        "lost_events": sum(r["lost_events"] for r in rs),
    }


def _per_cpu_median(rs: Sequence[dict[str, Any]], key: str) -> list[float | None]:
    """Per CPU, the median over runs of a per-CPU figure."""
    cpus = len(rs[0][key]) if rs else 0
    return [_median([r[key][i] for r in rs]) for i in range(cpus)]


def _broker_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {b: _max_figures([r for r in runs if r["broker"] == b]) for b in ("memory", "redis")}
    per_round: list[float | None] = []
    events_round: list[float | None] = []
    for i in sorted({r["round"] for r in runs}):
        pair = {r["broker"]: r["max"] for r in runs if r["round"] == i and "max" in r}
        if "memory" in pair and "redis" in pair:
            per_round.append(
                _ratio(pair["redis"]["frames_per_s_median"], pair["memory"]["frames_per_s_median"])
            )
            events_round.append(
                _ratio(pair["redis"]["events_per_s"], pair["memory"]["events_per_s"])
            )
    return {
        **by,
        "ratio_per_round": per_round,
        "ratio": _median(per_round),  # judged
        "events_ratio_per_round": events_round,
        "ratio_of_medians": _ratio(
            by["redis"].get("frames_per_s"), by["memory"].get("frames_per_s")
        ),
        "server_cpu_per_frame_ratio": _ratio(
            _cpu_per_frame(by["redis"]), _cpu_per_frame(by["memory"])
        ),
    }


def _cpu_per_frame(fig: dict[str, Any]) -> float | None:
    """Server CPU-µs per frame delivered (median figures)."""
    frames, cpu = fig.get("frames_per_s"), fig.get("servers_cpu_pct")
    return round(cpu / 100 / frames * 1e6, 3) if frames and cpu else None


def _nodes_summary(runs: list[dict[str, Any]], cases: list[str]) -> dict[str, Any]:
    by = {c: _max_figures([r for r in runs if r["case"] == c]) for c in cases}
    two = by[cases[2]].get("frames_per_s")
    return {
        "cases": by,
        "two_over_one_redis": _ratio(two, by[cases[1]].get("frames_per_s")),
        "two_over_one_memory": _ratio(two, by[cases[0]].get("frames_per_s")),
    }


def _cross_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rs = [r["paced"] for r in runs if "paced" in r]
    out: dict[str, Any] = {"runs": len(rs)}
    for node, label in (("B", "cross"), ("A", "local")):
        lat = [r[node]["latency_ms"] for r in rs]
        fan = [r[node]["fanout_latency_ms"] for r in rs]
        out[label] = {
            "p50_ms": _median([x["p50"] for x in lat]),
            "p99_ms": _median([x["p99"] for x in lat]),
            "p99_ms_each": [x["p99"] for x in lat],
            "max_ms": max((x["max"] for x in lat if x["max"] is not None), default=None),
            "fanout_p99_ms": _median([x["p99"] for x in fan]),
            "samples": sum(x["n"] for x in lat),
            "lost_events": sum(r[node]["lost_events"] for r in rs),
            "offset_gaps": sum(r[node]["sampled_offset_gaps"] for r in rs),
            "offset_dups": sum(r[node]["sampled_offset_dups"] for r in rs),
            "missing_tail": sum(r[node].get("sampled_missing_tail", 0) for r in rs),
            "closed_viewers": sum(r[node]["closed_viewers"] for r in rs),
        }
    out["comments_sent"] = [r["comments_sent"] for r in rs]
    out["comments_per_s"] = _median([r["comments_per_s"] for r in rs])
    out["node_cpu_pct"] = [
        _median([r["nodes"][i]["cpu_pct"] for r in rs]) for i in range(2 if rs else 0)
    ]
    out["client_cpu_pct"] = _median([r["client_cpu_pct"] for r in rs])
    out["redis_cpu_pct"] = _median([r["redis"]["cpu_pct"] for r in rs])
    out["ksoftirqd_cpu_pct"] = _median([r["ksoftirqd_cpu_pct"] for r in rs])
    out["other_cpu_pct"] = _median([r["other_cpu_pct"] for r in rs])
    out["cpu_busy_pct"] = _per_cpu_median(rs, "cpu_busy_pct")
    out["redis"] = _redis_cost(rs, [r["idle"] for r in runs if "idle" in r])
    return out


def _redis_cost(paced: Sequence[dict[str, Any]], idle: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of Redis's figures in a paced phase, and net of the idle CPU."""
    if not paced:
        return {}

    def med(get: Callable[[dict[str, Any]], Any]) -> float | None:
        return _median([get(r) for r in paced])

    idle_cpu = _median([r["redis"]["cpu_pct"] for r in idle])
    cpu = med(lambda r: r["redis"]["cpu_pct"])
    comments = med(lambda r: r["comments_per_s"])
    net = round(cpu - idle_cpu, 2) if cpu is not None and idle_cpu is not None else None
    return {
        "target_rate": paced[0].get("target_rate"),
        "comments_per_s": comments,
        "cpu_pct": cpu,
        "idle_cpu_pct": idle_cpu,
        "net_cpu_pct": net,
        "cpu_per_1k_comments_s": med(lambda r: r["redis_cpu_per_1k_comments_s"]),
        "net_cpu_per_1k_comments_s": round(net / comments * 1000, 2)
        if net is not None and comments
        else None,
        "scripts_per_s": med(lambda r: r["redis"]["scripts_per_s"]),
        "publishes_per_s": med(lambda r: r["redis"]["publishes_per_s"]),
        "other_scripts_per_s": med(lambda r: r["redis"]["other_scripts_per_s"]),
        "comments_per_script": med(lambda r: r["comments_per_script"]),
        "usec_per_script": med(lambda r: r["redis"]["usec_per_script"]),
        "script_busy_pct": med(lambda r: r["redis"]["script_busy_pct"]),
        # Redis CPU-µs per publish run, net of idle
        "net_cpu_us_per_run": round(net / 100 / pubs * 1e6, 1)
        if net is not None and (pubs := med(lambda r: r["redis"]["publishes_per_s"]))
        else None,
        "sys_share": med(lambda r: r["redis"]["sys_share"]),
        "wait_pct": med(lambda r: r["redis"]["wait_pct"]),
        "out_mbytes_per_s": med(lambda r: r["redis"]["out_mbytes_per_s"]),
        "in_mbytes_per_s": med(lambda r: r["redis"]["in_mbytes_per_s"]),
        "local_p99_ms": med(lambda r: r["A"]["latency_ms"]["p99"]),
        "cross_p99_ms": med(lambda r: r["B"]["latency_ms"]["p99"]),
        "lost_events": sum(r["lost_events"] for r in paced),
        "client_cpu_pct": med(lambda r: r["client_cpu_pct"]),
        "servers_cpu_pct": med(lambda r: r["servers_cpu_pct"]),
    }


def _cost_summary(runs: list[dict[str, Any]], rates: Sequence[int]) -> dict[str, Any]:
    idle = [r["idle"] for r in runs if "idle" in r]
    out: dict[str, Any] = {
        "idle": {
            "cpu_pct": _median([r["redis"]["cpu_pct"] for r in idle]),
            "scripts_per_s": _median([r["redis"]["scripts_per_s"] for r in idle]),
            "out_mbytes_per_s": _median([r["redis"]["out_mbytes_per_s"] for r in idle]),
        }
    }
    for rate in rates:
        paced = [r["rates"][str(rate)] for r in runs if str(rate) in r.get("rates", {})]
        out[str(rate)] = _redis_cost(paced, idle)
    return out


# --------------------------------------------------------------------------- log lines


def _max_text(r: dict[str, Any]) -> str:
    nodes = ", ".join(
        f"{n['node']} {n['frames_per_s']:,} f/s cpu {n['cpu_pct']}%" for n in r["nodes"]
    )
    return (
        f"max: {r['frames_per_s']:,} frames/s (1-s median {r['frames_per_s_median']:,}), "
        f"{r['events_per_s']:,} events/s, {r['events_per_frame']} ev/frame, "
        f"{r['comments_per_s']:,} comments/s in, p99 {r['latency_ms']['p99']} ms, lost "
        f"{r['lost_events']}; {nodes}; client {r['client_cpu_pct']}% {_redis_text(r)} "
        f"ksoftirqd {r['ksoftirqd_cpu_pct']}% other {r['other_cpu_pct']}%; CPUs busy "
        f"{'/'.join(str(x) for x in r['cpu_busy_pct'])}%"
    )


def _paced_text(r: dict[str, Any]) -> str:
    lat = " ".join(
        f"{n}: p50 {r[n]['latency_ms']['p50']} p99 {r[n]['latency_ms']['p99']} "
        f"max {r[n]['latency_ms']['max']} ms lost {r[n]['lost_events']} "
        f"gaps {r[n]['sampled_offset_gaps']};"
        for n in ("A", "B")
        if n in r
    )
    cpu = "/".join(str(n["cpu_pct"]) for n in r["nodes"])
    return (
        f"{r['target_rate']}/s: {r['comments_per_s']:,} comments/s, {lat} "
        f"cpu A/B {cpu}% client {r['client_cpu_pct']}% {_redis_text(r)}"
    )


def _redis_text(r: dict[str, Any]) -> str:
    x = r["redis"]
    return (
        f"redis {x['cpu_pct']}% ({x['scripts_per_s']} scripts/s, {x['publishes_per_s']} "
        f"PUBLISH/s, {x['out_mbytes_per_s']} MB/s out)"
    )


# --------------------------------------------------------------------------- report


def _targets(report: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    p = report["params"]
    phases = report["phases"]
    out: list[dict[str, Any]] = []
    broker = phases.get("broker", {}).get("summary")
    ratio = broker["ratio"] if broker else None
    judged = p["viewers"] == TARGET_BROKER_N and not quick
    each = " / ".join(_fmt(x) for x in broker["ratio_per_round"]) if broker else ""
    out.append(
        {
            "target": f"one node, {TARGET_BROKER_N:,} viewers, max rate: Redis broker frames/s "
            f">= {TARGET_BROKER_RATIO}x memory broker (1-s-window medians, median of the "
            "rounds' ratios)",
            "measured": (
                f"{_fmt(ratio)}x (rounds: {each})"
                + ("" if judged else f"; at {p['viewers']:,} viewers, quick: not judged")
            )
            if ratio is not None
            else "not measured",
            "pass": (ratio >= TARGET_BROKER_RATIO) if judged and ratio is not None else None,
        }
    )
    cross = phases.get("cross", {}).get("summary")
    p99 = cross["cross"]["p99_ms"] if cross and cross.get("runs") else None
    judged = (
        p["cross_viewers"] == TARGET_CROSS_N and p["cross_rate"] == TARGET_CROSS_RATE and not quick
    )
    each = " / ".join(_fmt(x) for x in cross["cross"]["p99_ms_each"]) if p99 is not None else ""
    out.append(
        {
            "target": f"cross-node p99 < {TARGET_CROSS_P99_MS:g} ms, 2 x {TARGET_CROSS_N:,} "
            f"viewers, {TARGET_CROSS_RATE} comments/s (median over rounds)",
            "measured": (
                f"{_fmt(p99)} ms (rounds: {each})"
                + ("" if judged else f"; 2 x {p['cross_viewers']:,} viewers, quick: not judged")
            )
            if p99 is not None
            else "not measured",
            "pass": (p99 < TARGET_CROSS_P99_MS) if judged and p99 is not None else None,
        }
    )
    return out


def _broker_table(ph: dict[str, Any]) -> list[str]:
    s = ph["summary"]
    rows = []
    for b in ("memory", "redis"):
        f = s[b]
        if not f.get("runs"):
            continue
        rows.append(
            [
                b,
                _fmt(f["frames_per_s"]),
                " / ".join(_fmt(x) for x in f["frames_per_s_each"]),
                _fmt(f["events_per_s"]),
                _fmt(f["events_per_frame"]),
                _fmt(f["comments_per_s"]),
                _fmt(f["p99_ms"]),
                f"{_fmt(f['servers_cpu_pct'])}/{_fmt(f['client_cpu_pct'])}/"
                f"{_fmt(f['redis_cpu_pct'])}/{_fmt(f['ksoftirqd_cpu_pct'])}/"
                f"{_fmt(f['other_cpu_pct'])}",
                " / ".join(_fmt(x) for x in f["cpu_busy_pct"]),
                _fmt(f["node_wait_pct"][0]),
                _fmt(_cpu_per_frame(f)),
                _fmt(f["publishes_per_s"]),
                _fmt(f["comments_per_script"]),
                _fmt(f["lost_events"]),
            ]
        )
    lines = [
        f"### 1. One node, {ph['viewers']:,} viewers, max rate: Redis broker vs memory broker",
        "",
        f"Cores: {ph['layout']}.",
        "",
    ]
    lines += table(
        [
            "broker",
            "frames/s (median of rounds)",
            "each round",
            "events/s",
            "ev/frame",
            "comments/s in",
            "p99 ms",
            "CPU% srv/cli/redis/ksoftirqd/other",
            "busy% per CPU",
            "srv wait %",
            "srv CPU-us/frame",
            "script runs/s",
            "comments/run",
            "lost",
        ],
        rows,
    )
    lines += [
        "",
        f"Redis / memory frames/s: each round {' / '.join(_fmt(x) for x in s['ratio_per_round'])}"
        f"; median {_fmt(s['ratio'])} (judged); ratio of medians {_fmt(s['ratio_of_medians'])}; "
        f"events/s each round {' / '.join(_fmt(x) for x in s['events_ratio_per_round'])}; "
        f"server CPU per frame, Redis / memory: {_fmt(s['server_cpu_per_frame_ratio'])}.",
    ]
    return lines


def _nodes_table(ph: dict[str, Any]) -> list[str]:
    s = ph["summary"]
    rows = []
    for case, f in s["cases"].items():
        if not f.get("runs"):
            continue
        node_f = " / ".join(_fmt(x) for x in f["node_frames_per_s"])
        node_c = " / ".join(_fmt(x) for x in f["node_cpu_pct"])
        node_w = " / ".join(_fmt(x) for x in f["node_wait_pct"])
        rows.append(
            [
                case,
                _fmt(f["frames_per_s"]),
                " / ".join(_fmt(x) for x in f["frames_per_s_each"]),
                node_f,
                node_c,
                node_w,
                _fmt(f["client_cpu_pct"]),
                _fmt(f["redis_cpu_pct"]),
                f"{_fmt(f['ksoftirqd_cpu_pct'])}/{_fmt(f['other_cpu_pct'])}",
                " / ".join(_fmt(x) for x in f["cpu_busy_pct"]),
                _fmt(f["events_per_s"]),
                _fmt(f["events_per_frame"]),
                _fmt(f["comments_per_s"]),
                _fmt(f["publishes_per_s"]),
                _fmt(f["frames_per_s"] / ph["viewers"]) if f["frames_per_s"] else "-",
                _fmt(f["p99_ms"]),
                _fmt(f["lost_events"]),
            ]
        )
    lines = [
        f"### 2. Two nodes against one: {ph['viewers']:,} viewers in all, max rate",
        "",
        f"Cores: {ph['layout']}. Two nodes: viewers half and half, commenters on node A only "
        "(node B gets every comment through Redis). This box has 2 cores for two servers, "
        "the clients and Redis: the two-node figure is what this box gives, not a scaling "
        "factor. With the Redis broker a node writes a room's frame when a publication "
        "arrives, and a room has one publish run (one PUBLISH) in flight at a time: *frames/s "
        "per viewer* stays at or below *publish runs/s*, so a node that is not CPU-bound is "
        "bound by that cadence.",
        "",
    ]
    lines += table(
        [
            "case",
            "frames/s in all (median of rounds)",
            "each round",
            "frames/s per node A / B",
            "CPU% per node A / B",
            "wait% per node",
            "client CPU%",
            "Redis CPU%",
            "ksoftirqd/other CPU%",
            "busy% per CPU",
            "events/s",
            "ev/frame",
            "comments/s in",
            "publish runs/s",
            "frames/s per viewer",
            "p99 ms",
            "lost",
        ],
        rows,
    )
    lines += [
        "",
        f"Two nodes / one node: {_fmt(s['two_over_one_redis'])} against the Redis-broker node, "
        f"{_fmt(s['two_over_one_memory'])} against the memory-broker node (reported, not judged).",
    ]
    return lines


def _cross_table(ph: dict[str, Any], rate: int) -> list[str]:
    s = ph["summary"]
    if not s.get("runs"):
        return []
    rows = []
    for label, name in (("cross", "node B (cross-node)"), ("local", "node A (local)")):
        x = s[label]
        rows.append(
            [
                name,
                _fmt(x["p50_ms"]),
                _fmt(x["p99_ms"]),
                " / ".join(_fmt(v) for v in x["p99_ms_each"]),
                _fmt(x["max_ms"]),
                _fmt(x["fanout_p99_ms"]),
                _fmt(x["samples"]),
                f"{x['lost_events']}/{x['offset_gaps']}/{x['offset_dups']}/{x['missing_tail']}",
                _fmt(x["closed_viewers"]),
            ]
        )
    lines = [
        f"### 3. Cross-node delivery: 2 x {ph['viewers_per_node']:,} viewers, {rate} comments/s "
        "from node A",
        "",
        f"Cores: {ph['layout']}. Comments per round: "
        f"{', '.join(str(x) for x in s['comments_sent'])} (published {_fmt(s['comments_per_s'])}"
        f"/s); CPU% node A / B {' / '.join(_fmt(x) for x in s['node_cpu_pct'])}, client "
        f"{_fmt(s['client_cpu_pct'])}, Redis {_fmt(s['redis_cpu_pct'])}, ksoftirqd "
        f"{_fmt(s['ksoftirqd_cpu_pct'])}, other {_fmt(s['other_cpu_pct'])}; busy per CPU "
        f"{' / '.join(_fmt(x) for x in s['cpu_busy_pct'])}.",
        "",
    ]
    lines += table(
        [
            "sampled viewers on",
            "p50 ms",
            "p99 ms (median of rounds)",
            "p99 each round",
            "max ms",
            "fan-out p99 ms",
            "samples",
            "lost/gaps/dups/missing tail",
            "viewers cut off",
        ],
        rows,
    )
    return lines


def _cost_rows(label: str, c: dict[str, Any], base: float | None) -> list[str]:
    return [
        label,
        _fmt(c["comments_per_s"]),
        _fmt(c["cpu_pct"]),
        _fmt(c["net_cpu_pct"]),
        _fmt(c["cpu_per_1k_comments_s"]),
        _fmt(c["net_cpu_per_1k_comments_s"]),
        _fmt(c["publishes_per_s"]),
        _fmt(c["comments_per_script"]),
        _fmt(c["other_scripts_per_s"]),
        _fmt(c["net_cpu_us_per_run"]),
        _fmt(_ratio(c["net_cpu_us_per_run"], base)),
        _fmt(c["usec_per_script"]),
        _fmt(c["sys_share"]),
        _fmt(c["wait_pct"]),
        _fmt(c["out_mbytes_per_s"]),
        _fmt(c["in_mbytes_per_s"]),
        f"{_fmt(c['local_p99_ms'])} / {_fmt(c['cross_p99_ms'])}",
        f"{_fmt(c['servers_cpu_pct'])}/{_fmt(c['client_cpu_pct'])}",
        _fmt(c["lost_events"]),
    ]


def _cost_table(report: dict[str, Any]) -> list[str]:
    ph = report["phases"].get("cost")
    cross = report["phases"].get("cross")
    base = (ph or {}).get("baseline", {}).get("cpu_us_per_run")
    rows = []
    if ph and "summary" in ph:
        s = ph["summary"]
        for rate in report["params"]["cost_rates"]:
            c = s.get(str(rate))
            if c:
                label = f"2 x {ph['viewers_per_node']:,} viewers, {rate}/s"
                rows.append(_cost_rows(label, c, base))
    if cross and cross.get("summary", {}).get("redis"):
        c = cross["summary"]["redis"]
        label = f"2 x {cross['viewers_per_node']:,} viewers, {c['target_rate']}/s (phase 3)"
        rows.append(_cost_rows(label, c, base))
    if not rows:
        return []
    idle = ph["summary"]["idle"] if ph and "summary" in ph else None
    lines = [
        "### 4. Redis's cost per comment (two nodes subscribed)",
        "",
        f"Cores: {(ph or cross or {}).get('layout', '?')}."
        + (
            f" Idle (nodes connected, viewers joined, no comment): Redis CPU "
            f"{_fmt(idle['cpu_pct'])}%, {_fmt(idle['scripts_per_s'])} script runs/s (viewer "
            f"reports), {_fmt(idle['out_mbytes_per_s'])} MB/s out."
            if idle
            else ""
        )
        + " *net* = minus the idle CPU of the same setup.",
        "",
    ]
    base = ph.get("baseline") if ph else None
    if base:
        lines += [
            f"Baseline, same run, before the nodes started: {base['runs']:,} `publish.lua` "
            f"runs (one {base['payload_bytes']}-byte comment each) from one plain client, one "
            f"at a time, {base['subscribers']} subscribers that do not read: "
            f"{_fmt(base['cpu_us_per_run'])} us of Redis CPU per run, "
            f"{_fmt(base['usec_in_evalsha'])} us in EVALSHA, sys share "
            f"{_fmt(base['sys_share'])}, {_fmt(base['runs_per_s'])} runs/s (client-bound), "
            f"{_fmt(base['out_bytes_per_run'])} bytes out per run.",
            "",
        ]
    lines += table(
        [
            "setup, target rate",
            "comments/s published",
            "Redis CPU%",
            "net CPU%",
            "CPU% per 1k comments/s",
            "net, per 1k comments/s",
            "publish runs/s (= PUBLISH/s)",
            "comments per run",
            "other scripts/s",
            "net Redis CPU-us per publish run",
            "... / baseline",
            "us in EVALSHA per call (wall)",
            "Redis sys share",
            "Redis wait%",
            "out MB/s",
            "in MB/s",
            "p99 ms local / cross",
            "CPU% servers/client",
            "lost",
        ],
        rows,
    )
    return lines


def _report_tables(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    phases = report["phases"]
    if "summary" in phases.get("broker", {}):
        lines += [*_broker_table(phases["broker"]), ""]
    if "summary" in phases.get("nodes", {}):
        lines += [*_nodes_table(phases["nodes"]), ""]
    if "summary" in phases.get("cross", {}):
        lines += [*_cross_table(phases["cross"], report["params"]["cross_rate"]), ""]
    lines += _cost_table(report)
    lines += ["", "### Targets", "", *targets_table(report["targets"])]
    return lines


def _notes(report: dict[str, Any]) -> list[str]:
    """Runs whose figures need a caveat: client saturated, machine busy, failures."""
    notes: list[str] = []
    for name, ph in report["phases"].items():
        if "error" in ph:
            notes.append(f"{name}: failed: {ph['error']}")
            continue
        for run in ph.get("runs", []):
            tag = f"{name} round {run['round']}" + (
                f" ({run.get('case') or run.get('broker')})"
                if "case" in run or "broker" in run
                else ""
            )
            if "error" in run:
                notes.append(f"{tag}: failed: {run['error']}")
            phases = [("max", run.get("max")), ("paced", run.get("paced"))]
            phases += [(f"{k}/s", v) for k, v in run.get("rates", {}).items()]
            for what, r in phases:
                if not r:
                    continue
                if r["client_cpu_pct"] >= 90:
                    notes.append(
                        f"{tag}, {what}: the client process was >= 90% busy "
                        f"({r['client_cpu_pct']}%): delivered rates are lower bounds, "
                        "latencies upper bounds"
                    )
                if r["other_cpu_pct"] >= 15:
                    who = ", ".join(r["other_processes"]) or "not seen: short-lived processes"
                    notes.append(
                        f"{tag}, {what}: the rest of the machine was busy "
                        f"({r['other_cpu_pct']}% of a core; {who})"
                    )
                if r.get("lost_events"):
                    notes.append(f"{tag}, {what}: {r['lost_events']} events lost")
            if "server_exit" in run:
                notes.append(f"{tag}: server exit codes {run['server_exit']}")
    return notes


def _markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    p = report["params"]
    rd = report.get("redis", {})
    lines = [
        "# Scale-out benchmark: a room shared through Redis, one node and two",
        "",
        f"Run `{report['command']}` on {m['date']}; took {report['elapsed_s']} s."
        + (" **Quick run**: small sizes, one round, short phases." if report["quick"] else ""),
        "",
        *_report_tables(report),
        "",
        "Columns: *frames/s* counts batch frames delivered to the viewers of every node "
        "(the median of 1-s windows; *median of rounds* over fresh-process runs); *events/s* "
        "counts events delivered (a batch of k events to N viewers is k*N); *comments/s in* "
        "= offsets acknowledged to the commenters per second; *p99* is receive time minus "
        "the commenter's send time on sampled viewers (both in this process, so it includes "
        "client-side queueing); *fan-out p99* is receive time minus the accepting node's "
        "`ts` (1 ms resolution). CPU% is per process (100 = one core): *srv* the liveroom "
        "server(s), *cli* this process (every client, one thread), *redis* redis-server, "
        "*ksoftirqd* the kernel's softirq threads (network work the kernel deferred), "
        "*other* the rest of the machine (other processes, softirq on an idle core); *busy% "
        "per CPU* is each core's busy time (/proc/stat); *wait%* is the time a process was "
        "runnable but waiting for a core (/proc/PID/schedstat). Redis "
        "figures come from INFO commandstats (commands a script runs count too) and INFO "
        "stats; *script runs* are EVALSHA calls (publish.lua, and the viewers.lua report "
        "each node makes every 250 ms: *other scripts/s*); each publish.lua run does one "
        "PUBLISH, so *publish runs/s* = PUBLISH/s; *us in EVALSHA per call* is the time "
        "Redis spent inside EVALSHA per call (INFO commandstats: wall time, so it includes "
        "time preempted when Redis waits for a core: see *Redis wait%*); *net Redis CPU-us "
        "per publish run* is Redis's CPU above idle divided by publish runs; *Redis sys "
        "share* is the share of its main thread's CPU spent in the kernel (socket reads "
        "and writes: on loopback a write also runs the receiver's TCP path). *lost* counts "
        "events missing after the drain over all viewers (by count), *gaps/dups* offset "
        "gaps and repeats seen by sampled viewers.",
        "",
        "## Machine",
        "",
        f"- platform: {m['platform']}",
        f"- CPU: {m['cpu_model']} ({m['cpu_mhz']} MHz), {m['cpus']} cores",
        f"- memory: {m['memory']}; open files limit {m['nofile_limit']}",
        f"- Python: {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}",
        f"- server code (engine/ + protocol/ sources) sha256 {m['server_code_sha256']}",
        "",
        "## What shared the cores",
        "",
        *(f"- {k}: {v}" for k, v in report["layouts"].items()),
        "- the kernel's loopback network work (softirq) runs on the core of the process "
        "that sends or receives, charged to that process (tick accounting), or in ksoftirqd "
        "(its own column)",
        "- nothing else of the benchmark ran; *other CPU%* in the tables shows the rest",
        "",
        "## Redis",
        "",
        f"- redis-server {rd.get('version', '?')}, started by the benchmark: "
        + " ".join(
            f"--{k} {v!r}" if v == "" else f"--{k} {v}" for k, v in rd.get("options", {}).items()
        )
        + "; persistence off (a benchmark of the broker, not of durability), everything "
        "else default; flushed before each run, a key prefix per run",
        f"- used memory at the end: {rd.get('used_memory', '?')}",
        "",
        "## Parameters",
        "",
        f"- phases run: {', '.join(p['phases'])}",
        f"- phases 1, 2: {p['viewers']:,} viewers in the room (two nodes: half each), "
        f"{p['commenters']} commenters on node A (also in the room, not counted), "
        f"{p['sampled']} sampled viewers (decoding one batch in {p['max_decode_every']}); "
        f"max rate: {p['window']} comment(s) in flight per commenter, a new one per ack, "
        f"{p['max_warmup']} s warm-up + {p['max_seconds']} s measured; "
        f"{p['broker_rounds']} round(s) of memory / Redis (order alternating) and "
        f"{p['nodes_rounds']} round(s) of each phase-2 case (order rotating), fresh "
        "processes each run",
        f"- phase 3: 2 x {p['cross_viewers']:,} viewers, {p['sampled']} sampled per node "
        f"decoding every batch, {p['cross_rate']} comments/s for {p['cross_seconds']} s "
        f"after {p['idle_seconds']} s idle; {p['cross_rounds']} round(s)",
        f"- phase 4: 2 x {p['cost_viewers']:,} viewers, {p['idle_seconds']} s idle, then "
        f"{', '.join(str(r) for r in p['cost_rates'])} comments/s for {p['cost_seconds']} s "
        f"each; {p['cost_rounds']} round(s)",
        "- comments of 64 characters; drain after each phase up to "
        f"{p['drain_timeout']} s; whole-run budget {p['budget']:g} s",
        "- liveroom server: `liveroom serve`, one process per node, defaults except "
        "LIVEROOM_ROOMS_COMMENT_RATE=100000, LIVEROOM_ROOMS_COMMENT_BURST=100000, "
        "LIVEROOM_SERVER_MAX_CONNECTIONS=viewers+commenters+1000, LIVEROOM_LOG_LEVEL=warning, "
        "LIVEROOM_SERVICE_PORT=0, LIVEROOM_SERVER_NODE_ID=node-a/node-b; Redis broker runs "
        "add LIVEROOM_BROKER_BACKEND=redis, LIVEROOM_STOCK_BACKEND=redis, their REDIS_URL "
        "and KEY_PREFIX",
        f"- server command: `{' '.join(report.get('liveroom_argv', []))}`",
    ]
    if report.get("aborted"):
        lines += ["", "## Run aborted", "", str(report["aborted"])]
    notes = _notes(report)
    if notes:
        lines += ["", "## Caveats", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


async def _amain(p: Params, command: str, quick: bool) -> dict[str, Any]:
    t_start = time.monotonic()
    raise_nofile()
    report: dict[str, Any] = {
        "command": command,
        "quick": quick,
        "meta": describe(("liveroom", "uvloop", "msgpack", "redis")),
        "params": dataclasses.asdict(p),
        "phases": {},
    }
    need = max(p.viewers, 2 * p.cross_viewers) + p.commenters + 200
    if need > report["meta"]["nofile_limit"]:
        raise RuntimeError(f"needs about {need} open files, limit {report['meta']['nofile_limit']}")
    redis = RedisServer(host=HOST)
    original = os.sched_getaffinity(0)
    try:
        async with asyncio.timeout(p.budget):
            redis.start()
            report["redis"] = {"version": redis.version(), "options": redis.options()}
            argv = _liveroom_argv(optimize=False)
            ok, tail = await _probe_liveroom(argv, None)
            if not ok:
                raise RuntimeError(f"liveroom serve failed a handshake: {tail[-600:]}")
            report["liveroom_argv"] = argv
            bench = Bench(p, argv, redis)
            report["layouts"] = {
                "phase 1 (broker)": bench.layouts["alone"].text,
                "phases 2-4": bench.layouts["spread"].text,
            }
            steps = {
                "broker": bench.phase_broker,
                "nodes": bench.phase_nodes,
                "cross": bench.phase_cross,
                "cost": bench.phase_cost,
            }
            for name in p.phases:
                try:
                    report["phases"][name] = await steps[name]()
                except (OSError, RuntimeError, KeyError, TimeoutError) as exc:
                    report["phases"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                    log(f"{name}: failed: {exc}")
            report["redis"]["used_memory"] = redis.used_memory()
    except TimeoutError:
        report["aborted"] = f"time budget of {p.budget:g} s exhausted"
        log(report["aborted"])
    except (OSError, RuntimeError) as exc:
        report["aborted"] = f"{type(exc).__name__}: {exc}"
        log(report["aborted"])
    finally:
        redis.stop()
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, original)
    report.setdefault("layouts", {})
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = _targets(report, quick)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaleout", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--quick", action="store_true", help="1k viewers, short phases, 1 round")
    parser.add_argument("--phases", help=f"comma-separated, of {','.join(PHASES)}")
    parser.add_argument("--viewers", type=int, help="phases 1-2: viewers in all")
    parser.add_argument("--cross-viewers", type=int, help="phase 3: viewers per node")
    parser.add_argument("--rounds", type=int, help="rounds of phases 1-3")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="directory for scaleout.json / .md"
    )
    args = parser.parse_args(argv)
    p = QUICK if args.quick else Params()
    changes: dict[str, Any] = {}
    if args.phases:
        phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
        unknown = [x for x in phases if x not in PHASES]
        if unknown:
            parser.error(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
        changes["phases"] = phases
    if args.viewers:
        changes["viewers"] = args.viewers
    if args.cross_viewers:
        changes["cross_viewers"] = args.cross_viewers
    if args.rounds:
        changes |= {"broker_rounds": args.rounds, "nodes_rounds": args.rounds}
        changes["cross_rounds"] = args.rounds
    if args.no_pin:
        changes["pin"] = False
    p = dataclasses.replace(p, **changes)
    command = "python -m bench.scaleout" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    report = uvloop.run(_amain(p, command, args.quick))
    print("\n".join(_report_tables(report)))
    stem = "scaleout-quick" if args.quick else "scaleout"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(_markdown(report))
    print(f"\nwrote {args.out / f'{stem}.json'} and {args.out / f'{stem}.md'}")


if __name__ == "__main__":
    main()
