"""Flash-sale purchase benchmark: the stock stores alone, then websocket Buy -> BuyResult.

Run: ``.venv/bin/python -m bench.purchase [--quick]`` (full: about 4-5 minutes; quick:
about a minute, one repeat). It starts its own ``redis-server`` (no persistence) on a free
loopback port and stops it at the end.

A. Store only (no websockets), memory and Redis stores, in this process (uvloop):

   1. single ``purchase()`` calls, ``single_concurrency`` callers in flight;
   2. ``purchase_many`` batches of 10 / 50 / 100 (one EVALSHA each for Redis),
      ``batch_concurrency`` batches in flight (the server's batcher runs 4 workers);
   3. baselines on a plain redis-py client: EVALSHA of a trivial script (``return 1``) and
      of ``purchase.lua`` one purchase per call (same concurrency as 1.), a pipeline of
      100 one-purchase EVALSHAs, and one EVALSHA carrying 100 purchases.

   Every purchase succeeds (stock and per-user limit far above what is bought, users
   cycle over ``users`` ids, request ids unique): the worst case, every purchase writes.
   Each case runs on a fresh sale (Redis: FLUSHALL first), ``a_warmup`` + ``a_seconds``
   or ``a_limit`` purchases, whichever comes first; the sale's ``sold`` count is checked
   against the purchases made. Cases are interleaved round by round (``repeats`` rounds);
   figures are medians over rounds, ratios medians of per-round ratios.

B. Full path: a liveroom server in its own process (``bench/purchase_server.py``: what
   ``liveroom serve`` runs, configured by ``LIVEROOM_*`` variables, plus a stdin control
   channel to open sales through ``SaleDesk.open_sale``), ``connections`` websocket
   buyers in this process (``bench/purchase_clients.py``), each keeping one Buy in flight
   (a new one with a fresh rid per answer). Configurations ``store/batching/layout``:
   memory / redis store x batching ``on`` (``batch_window_ms`` 2, ``batch_max`` 100) /
   ``off`` (``batch_max`` 1) / ``natural`` (window 0, max 100) / ``off+flush10`` (max 1,
   rooms' ``min_flush_interval_ms`` 10); layouts ``one_room`` (every buyer in the sale's
   room: each purchase is also fanned out to every buyer as a "someone bought" event, the
   flash-sale hot spot) and ``spread`` (each buyer alone in its own room with its own sale:
   no fan-out beyond the buyer, batches span sales). Per run (fresh server): a max phase
   (every buyer, ``b_seconds`` after ``b_warmup``) then a light phase (``light_buyers`` in
   flight): answers/s and client-side send -> answer latency; CPU of server, redis, clients
   and the rest of the machine; the server's run-queue wait; the desk's store calls (mean
   batch, mean store round trip). With ``profile``, one more run per
   ``profile_configs`` entry under ``py-spy record`` shows where server time goes.

Pinning (2+ CPUs): in A this process runs on the first CPU and redis-server on the second;
in B the liveroom server has the first CPU to itself, clients and redis share the second.

Results: a table on stdout, ``bench/results/purchase.json`` (every figure) and
``bench/results/purchase.md`` (tables, ratios, targets, machine, parameters). Every load loop
is bounded in count and time, the whole run has a time budget, subprocesses are stopped in
``finally`` blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop

from bench.machine import describe
from bench.procs import machine_busy_cpu, proc_cpu, raise_nofile, self_cpu
from bench.purchase_clients import BuyerPool
from bench.redis_server import RedisServer
from bench.report import log, percentile, table, targets_table
from engine.auth import Claims, Role, mint_token
from engine.stock import (
    MAX_UNITS,
    MemoryStockStore,
    PurchaseRequest,
    RedisStockStore,
    SaleSpec,
    StockStore,
    connect,
)
from engine.stock.redis_store import load_scripts

__all__ = ["Params", "main"]

HOST = "127.0.0.1"
SECRET = "purchase-bench-secret"
REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SALE = "bench"
TARGET_STORE_BATCHED = 50_000  # purchases/s, Redis store, purchase_many, per Redis server
TARGET_BATCH = 100  # judged at the server's default stock.batch_max


@dataclass(frozen=True, slots=True)
class Params:
    repeats: int = 3
    # A: store only
    a_warmup: float = 0.25
    a_seconds: float = 0.8
    a_limit: int = 200_000  # purchases per case per round, at most
    single_concurrency: int = 64
    batch_sizes: tuple[int, ...] = (10, 50, 100)
    batch_concurrency: int = 4
    users: int = 10_000
    # B: full path
    connections: int = 256
    b_warmup: float = 0.7
    b_seconds: float = 2.5
    b_limit: int = 1_000_000  # buys per run, at most
    configs: tuple[str, ...] = (  # store/batching/layout, see _Config
        "memory/on/one_room",
        "memory/off/one_room",
        "redis/on/one_room",
        "redis/off/one_room",
        "redis/natural/one_room",
        "redis/off+flush10/one_room",
        "memory/on/spread",
        "redis/on/spread",
        "redis/off/spread",
    )
    light_buyers: int = 8  # light phase: this many buyers in flight, after the max phase
    light_seconds: float = 1.0
    profile: bool = True
    profile_seconds: float = 3.0
    profile_configs: tuple[str, ...] = (
        "redis/on/one_room",
        "redis/off/one_room",
        "redis/on/spread",
    )
    pin: bool = True
    budget: float = 330.0  # seconds for the whole run


QUICK = Params(
    repeats=1,
    a_warmup=0.15,
    a_seconds=0.5,
    a_limit=100_000,
    b_warmup=0.5,
    b_seconds=1.5,
    configs=(
        "memory/on/one_room",
        "memory/off/one_room",
        "redis/on/one_room",
        "redis/off/one_room",
    ),
    profile=False,
    budget=150.0,
)


# --------------------------------------------------------------------------- helpers


def _latency_ms(samples: list[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    values = sorted(samples)
    return {
        "n": len(values),
        "p50": round(percentile(values, 50) * 1000, 3),
        "p90": round(percentile(values, 90) * 1000, 3),
        "p99": round(percentile(values, 99) * 1000, 3),
        "max": round(values[-1] * 1000, 3),
    }


def _run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread waited for a CPU while runnable (schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as fp:
            return int(fp.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _pin(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


def _median(values: Sequence[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return statistics.median(real) if real else None


def _ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 3) if x is not None and y else None


# --------------------------------------------------------------------------- A: store only


@dataclass(slots=True)
class _LoadState:
    next: int = 0
    counted: int = 0
    calls: int = 0
    failed: int = 0
    last_done: float = 0.0


async def _load(
    call: Callable[[int], Awaitable[int]],
    *,
    step: int,
    concurrency: int,
    warmup: float,
    seconds: float,
    limit: int,
    redis_pid: int | None,
) -> dict[str, Any]:
    """``concurrency`` callers run ``await call(i)`` (``step`` purchases from index ``i``)
    until ``warmup + seconds`` passed or ``limit`` purchases were started.

    Purchases and call latencies count for calls that ended inside the measured window.
    ``call`` returns how many of its purchases did not succeed.
    """
    state = _LoadState()
    lat: list[float] = []
    t0 = time.perf_counter()
    t_warm = t0 + warmup
    t_end = t_warm + seconds
    cpu0: list[float] = []  # client cpu, redis cpu, wall, at the start of the window

    def mark() -> list[float]:
        return [
            self_cpu(),
            (proc_cpu(redis_pid) or 0.0) if redis_pid else 0.0,
            time.perf_counter(),
            machine_busy_cpu(),
        ]

    async def worker() -> None:
        perf = time.perf_counter
        while True:
            i = state.next
            start = perf()
            if i + step > limit or start >= t_end:
                return
            if not cpu0 and start >= t_warm:
                cpu0.extend(mark())
            state.next = i + step
            failed = await call(i)
            done = perf()
            state.failed += failed
            if t_warm <= start and done <= t_end:
                lat.append(done - start)
                state.counted += step
                state.calls += 1
                state.last_done = done

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1 = mark()
    started = state.next
    if not cpu0:
        return {"purchases": 0, "error": "no call started after the warm-up", "started": started}
    window = min(t_end, state.last_done) - t_warm
    wall = cpu1[2] - cpu0[2]
    return {
        "purchases_per_s": round(state.counted / window) if window > 0 else None,
        "purchases": state.counted,
        "calls": state.calls,
        "started": started,
        "window_s": round(window, 3),
        "not_ok": state.failed,
        "latency_ms_per_call": _latency_ms(lat),
        "cpu_client_pct": round(100 * (cpu1[0] - cpu0[0]) / wall, 1) if wall > 0 else None,
        "cpu_redis_pct": round(100 * (cpu1[1] - cpu0[1]) / wall, 1)
        if wall > 0 and redis_pid
        else None,
        "cpu_other_pct": round(
            max(0.0, 100 * ((cpu1[3] - cpu0[3]) - (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])))
            / wall,
            1,
        )
        if wall > 0
        else None,
    }


def _spec() -> SaleSpec:
    now = time.time()
    return SaleSpec(
        sale_id=SALE,
        room="bench-room",
        product_id="p1",
        stock=MAX_UNITS,
        price=9900,
        per_user_limit=MAX_UNITS,
        starts_at=now - 1.0,
        ends_at=now + 3600.0,
    )


def _requests(p: Params) -> list[PurchaseRequest]:
    users = [f"user{u}" for u in range(p.users)]
    return [
        PurchaseRequest(SALE, users[i % p.users], 1, f"rid-{i}") for i in range(p.a_limit + 128)
    ]


@dataclass(frozen=True, slots=True)
class _Case:
    name: str
    kind: str  # memory | redis | raw
    what: str
    step: int
    concurrency: int


def _a_cases(p: Params) -> list[_Case]:
    cases: list[_Case] = []
    for kind in ("memory", "redis"):
        cases.append(_Case(f"{kind}/single", kind, "purchase()", 1, p.single_concurrency))
        for b in p.batch_sizes:
            cases.append(
                _Case(f"{kind}/batch{b}", kind, f"purchase_many({b})", b, p.batch_concurrency)
            )
    cases += [
        _Case("raw/trivial", "raw", "EVALSHA 'return 1'", 1, p.single_concurrency),
        _Case("raw/single", "raw", "EVALSHA purchase.lua x1", 1, p.single_concurrency),
        _Case("raw/pipeline100", "raw", "pipeline of 100 x EVALSHA x1", 100, p.batch_concurrency),
        _Case("raw/lua100", "raw", "EVALSHA purchase.lua x100", 100, p.batch_concurrency),
    ]
    return cases


class _StoreBench:
    """State shared by the A cases: the request list, the redis stores and clients."""

    def __init__(self, p: Params, rds: RedisServer) -> None:
        self.p = p
        self.rds = rds
        self.reqs = _requests(p)
        self.redis_store: RedisStockStore | None = None
        self.raw: aioredis.Redis | None = None
        scripts = load_scripts()
        self.purchase_sha = scripts["purchase"].sha
        self.trivial_sha = ""
        self.keys: list[str] = []

    async def setup(self) -> None:
        self.redis_store = await connect(self.rds.url, timeout=5.0, max_connections=64)
        pool = aioredis.BlockingConnectionPool(
            host=HOST, port=self.rds.port, max_connections=64, timeout=5.0, socket_timeout=5.0
        )
        self.raw = aioredis.Redis.from_pool(pool)
        self.trivial_sha = str(await self.raw.script_load("return 1"))
        self.keys = list(self.redis_store.keys(SALE)[:5])

    async def close(self) -> None:
        if self.redis_store is not None:
            await self.redis_store.close()
        if self.raw is not None:
            await self.raw.aclose()

    def _raw_args(self, reqs: Sequence[PurchaseRequest]) -> list[str | int]:
        now = time.time()
        args: list[str | int] = [SALE, repr(now), int(now * 1000), len(reqs)]
        for r in reqs:
            args += (r.user_id, r.quantity, r.request_id)
        return args

    async def run(self, case: _Case) -> dict[str, Any]:
        p, reqs = self.p, self.reqs
        store: StockStore
        if case.kind == "memory":
            store = MemoryStockStore()
        else:
            assert self.redis_store is not None
            store = self.redis_store
            await asyncio.to_thread(self.rds.flush)
        await store.open_sale(_spec())
        call: Callable[[int], Awaitable[int]]
        step = case.step

        if case.name.endswith("/single"):

            async def call(i: int) -> int:
                return 0 if (await store.purchase(reqs[i])).ok else 1

        elif case.kind in ("memory", "redis"):

            async def call(i: int) -> int:
                results = await store.purchase_many(reqs[i : i + step])
                return sum(1 for r in results if not r.ok)

        else:
            raw = self.raw
            assert raw is not None
            keys, sha = self.keys, self.purchase_sha
            if case.name == "raw/trivial":
                trivial = self.trivial_sha

                async def call(i: int) -> int:
                    return 0 if await raw.evalsha(trivial, 0) == 1 else 1

            elif case.name == "raw/single":

                async def call(i: int) -> int:
                    reply = await raw.evalsha(sha, 5, *keys, *self._raw_args(reqs[i : i + 1]))
                    return 0 if reply[0].startswith(b"ok|") else 1

            elif case.name == "raw/pipeline100":

                async def call(i: int) -> int:
                    pipe = raw.pipeline(transaction=False)
                    for r in reqs[i : i + step]:
                        pipe.evalsha(sha, 5, *keys, *self._raw_args((r,)))
                    replies = await pipe.execute()
                    return sum(1 for x in replies if not x[0].startswith(b"ok|"))

            else:

                async def call(i: int) -> int:
                    reply = await raw.evalsha(sha, 5, *keys, *self._raw_args(reqs[i : i + step]))
                    return sum(1 for x in reply if not x.startswith(b"ok|"))

        result = await _load(
            call,
            step=step,
            concurrency=case.concurrency,
            warmup=p.a_warmup,
            seconds=p.a_seconds,
            limit=p.a_limit,
            redis_pid=None if case.kind == "memory" else self.rds.pid,
        )
        # every purchase made (warm-up included) must show in the sale's sold count
        if case.name != "raw/trivial":
            checker: StockStore = store if case.kind != "raw" else self.redis_store  # type: ignore[assignment]
            sold = (await checker.state(SALE)).sold
            result["sold_check"] = "ok" if sold == result["started"] else f"sold {sold}"
        return result


async def _part_a(p: Params, rds: RedisServer, deadline: float) -> dict[str, Any]:
    bench = _StoreBench(p, rds)
    cases = _a_cases(p)
    rounds: list[dict[str, Any]] = []
    try:
        await bench.setup()
        for r in range(p.repeats):
            if time.monotonic() > deadline:
                log("A: time budget for part A used up; fewer rounds")
                break
            one: dict[str, Any] = {}
            for case in cases:
                one[case.name] = await bench.run(case)
                log(
                    f"A round {r + 1}: {case.name:<16} "
                    f"{one[case.name].get('purchases_per_s') or 0:>9,} purchases/s  "
                    f"p99/call {one[case.name].get('latency_ms_per_call', {}).get('p99')} ms"
                )
            rounds.append(one)
        redis_memory = await asyncio.to_thread(rds.used_memory)
    finally:
        await bench.close()
        await asyncio.to_thread(rds.flush)
    summary: dict[str, Any] = {}
    for case in cases:
        runs = [one[case.name] for one in rounds if case.name in one]
        rates = [x.get("purchases_per_s") for x in runs]
        lat = [x.get("latency_ms_per_call", {}) for x in runs]
        summary[case.name] = {
            "kind": case.kind,
            "what": case.what,
            "purchases_per_call": case.step,
            "calls_in_flight": case.concurrency,
            "purchases_per_s_median": _median(rates),
            "purchases_per_s_best": max((x for x in rates if x is not None), default=None),
            "purchases_per_s_rounds": rates,
            "p50_ms_per_call": _median([x.get("p50") for x in lat]),
            "p99_ms_per_call": _median([x.get("p99") for x in lat]),
            "cpu_client_pct": _median([x.get("cpu_client_pct") for x in runs]),
            "cpu_redis_pct": _median([x.get("cpu_redis_pct") for x in runs]),
            "cpu_other_pct": _median([x.get("cpu_other_pct") for x in runs]),
            "not_ok": sum(int(x.get("not_ok", 0)) for x in runs),
            "sold_check": sorted({str(x.get("sold_check", "-")) for x in runs}),
        }

    def per_round(a: str, b: str) -> float | None:
        values = [
            _ratio(one[a].get("purchases_per_s"), one[b].get("purchases_per_s"))
            for one in rounds
            if a in one and b in one
        ]
        return _median(values)

    ratios: dict[str, float | None] = {}
    for kind in ("memory", "redis"):
        for b in p.batch_sizes:
            ratios[f"{kind}: batch{b} / single"] = per_round(f"{kind}/batch{b}", f"{kind}/single")
    ratios["redis / memory: single"] = per_round("redis/single", "memory/single")
    for b in p.batch_sizes:
        ratios[f"redis / memory: batch{b}"] = per_round(f"redis/batch{b}", f"memory/batch{b}")
    ratios["redis store single / raw EVALSHA x1"] = per_round("redis/single", "raw/single")
    ratios["redis store batch100 / raw EVALSHA x100"] = per_round("redis/batch100", "raw/lua100")
    ratios["raw EVALSHA x100 / raw pipeline100"] = per_round("raw/lua100", "raw/pipeline100")
    ratios["raw EVALSHA x1 / raw trivial"] = per_round("raw/single", "raw/trivial")
    return {
        "cases": summary,
        "rounds": rounds,
        "ratios": ratios,
        "redis_used_memory_end": redis_memory,
    }


# --------------------------------------------------------------------------- B: full path


class ServerProc:
    """The liveroom server subprocess (``bench.purchase_server``) and its control channel."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.tail: deque[str] = deque(maxlen=30)
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, env: dict[str, str], cpus: set[int] | None) -> ServerProc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.purchase_server",
            env=env,
            cwd=str(REPO_ROOT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _pin(proc.pid, cpus)
        self = cls(proc)
        assert proc.stdout is not None and proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self.lines.put_nowait)),
            asyncio.create_task(self._read(proc.stderr, self.tail.append)),
        ]
        return self

    async def _read(self, stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            sink(raw.decode(errors="replace").rstrip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(self.lines.get(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"server did not answer within {timeout} s: {' | '.join(self.tail)[-600:]}"
            ) from None
        result: dict[str, Any] = json.loads(line)
        return result

    async def command(self, obj: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write((json.dumps(obj) + "\n").encode())
        await stdin.drain()
        answer = await self.reply(timeout)
        if "error" in answer:
            raise RuntimeError(f"server: {answer['error']}")
        return answer

    async def stop(self) -> None:
        """Close stdin (graceful exit), then SIGTERM, then SIGKILL; reap the readers."""
        proc = self.proc
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 6.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.wait_for(proc.wait(), 5.0)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class _Config:
    """``<store>/<batching>/<layout>``; batching is ``on`` (window 2 ms, max 100), ``off``
    (max 1), ``natural`` (window 0, max 100), optionally ``+flushN`` (rooms'
    ``min_flush_interval_ms`` N instead of 0)."""

    store: str  # memory | redis
    batching: str
    layout: str  # one_room | spread

    @classmethod
    def parse(cls, name: str) -> _Config:
        store, batching, layout = name.split("/")
        return cls(store, batching, layout)

    @property
    def name(self) -> str:
        return f"{self.store}/{self.batching}/{self.layout}"

    @property
    def mode(self) -> str:
        return self.batching.split("+", 1)[0]

    @property
    def window_ms(self) -> float:
        return 2.0 if self.mode == "on" else 0.0

    @property
    def batch_max(self) -> int:
        return 1 if self.mode == "off" else 100

    @property
    def flush_ms(self) -> float:
        _, _, extra = self.batching.partition("+flush")
        return float(extra) if extra else 0.0


def _b_configs(p: Params) -> list[_Config]:
    return [_Config.parse(name) for name in p.configs]


def _server_env(cfg: _Config, p: Params, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEROOM_")}
    env.update(
        {
            "LIVEROOM_SERVER_HOST": HOST,
            "LIVEROOM_SERVER_PORT": "0",
            "LIVEROOM_SERVER_MAX_CONNECTIONS": str(p.connections + 100),
            "LIVEROOM_SERVICE_ENABLED": "false",
            "LIVEROOM_AUTH_SECRET": SECRET,
            "LIVEROOM_LOG_LEVEL": "warning",
            "LIVEROOM_STOCK_BACKEND": cfg.store,
            "LIVEROOM_STOCK_REDIS_URL": redis_url,
            "LIVEROOM_STOCK_BATCH_WINDOW_MS": str(cfg.window_ms),
            "LIVEROOM_STOCK_BATCH_MAX": str(cfg.batch_max),
            "LIVEROOM_ROOMS_MIN_FLUSH_INTERVAL_MS": str(cfg.flush_ms),
            # Each buyer presses as fast as its answers come back: lift the per-connection
            # Buy budget (5/s by default), which would otherwise answer rate_limited.
            "LIVEROOM_ROOMS_BUY_RATE": "1000000",
            "LIVEROOM_ROOMS_BUY_BURST": "1000000",
            "PYTHONPATH": os.pathsep.join(
                x for x in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if x
            ),
        }
    )
    return env


def _tokens(n: int) -> list[str]:
    expires = time.time() + 3600
    return [
        mint_token(SECRET, Claims(f"buyer{i}", f"买家{i}", ("*",), Role.VIEWER, expires))
        for i in range(n)
    ]


@dataclass(frozen=True, slots=True)
class _Mark:
    wall: float
    answered: int
    sent: int
    frames_in: int
    bytes_in: int
    skipped: int
    cpu_server: float
    wait_server: float
    cpu_redis: float
    cpu_client: float
    busy: float

    @classmethod
    def take(cls, pool: BuyerPool, server: ServerProc, redis_pid: int) -> _Mark:
        s = pool.sink
        return cls(
            wall=time.perf_counter(),
            answered=s.answered,
            sent=s.sent,
            frames_in=s.frames_in,
            bytes_in=s.bytes_in,
            skipped=s.skipped_frames,
            cpu_server=proc_cpu(server.pid) or 0.0,
            wait_server=_run_queue_wait(server.pid),
            cpu_redis=proc_cpu(redis_pid) or 0.0,
            cpu_client=self_cpu(),
            busy=machine_busy_cpu(),
        )


def _desk_delta(a: dict[str, Any], b: dict[str, Any], answered: int) -> dict[str, Any]:
    calls = b["store_calls"] - a["store_calls"]
    seconds = b["store_seconds_total"] - a["store_seconds_total"]
    answers = sum(b["purchases"].values()) - sum(a["purchases"].values())
    return {
        "store_calls": calls,
        "store_calls_per_s": None,
        "mean_batch": round(answers / calls, 1) if calls else None,
        "mean_store_call_ms": round(1000 * seconds / calls, 3) if calls else None,
        "desk_answers": answers,
        "client_answers": answered,
        "pending_end": b["pending"],
    }


async def _measure(
    pool: BuyerPool,
    server: ServerProc,
    rds: RedisServer,
    cfg: _Config,
    *,
    active: int | None,
    limit: int,
    warmup: float,
    seconds: float,
    profile: Path | None = None,
    profile_seconds: float = 0.0,
) -> dict[str, Any]:
    """One closed-loop phase: ``active`` buyers (None: all) with one buy in flight each."""
    spy: asyncio.subprocess.Process | None = None
    pool.start(limit, active)
    try:
        await asyncio.sleep(warmup)
        if profile is not None:
            spy = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                *("--pid", str(server.pid), "--duration", str(round(profile_seconds))),
                *("--rate", "400", "--nonblocking", "--format", "raw", "--output", str(profile)),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(0.3)
            seconds = max(1.0, profile_seconds - 0.5)
        pool.sink.latencies.clear()
        pool.sink.recording = True
        m0 = _Mark.take(pool, server, rds.pid)
        d0 = (await server.command({"op": "stats"}))["desk"]
        await asyncio.sleep(seconds)
        m1 = _Mark.take(pool, server, rds.pid)
        pool.sink.recording = False
        d1 = (await server.command({"op": "stats"}))["desk"]
        lat = list(pool.sink.latencies)
        pool.stop()
        left = await pool.drain(5.0)
        spy_err = ""
        if spy is not None:
            try:
                _out, err = await asyncio.wait_for(spy.communicate(), profile_seconds + 10)
                spy_err = err.decode(errors="replace")[-300:] if spy.returncode else ""
            except TimeoutError:
                spy_err = "py-spy timed out"
    finally:
        pool.stop()
        if spy is not None and spy.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                spy.kill()
            await spy.wait()
    wall = m1.wall - m0.wall
    answered = m1.answered - m0.answered
    desk = _desk_delta(d0, d1, answered)
    desk["store_calls_per_s"] = round(desk["store_calls"] / wall) if wall > 0 else None
    result: dict[str, Any] = {
        "buyers_active": active if active is not None else len(pool.buyers),
        "answered_per_s": round(answered / wall) if wall > 0 else None,
        "answered": answered,
        "window_s": round(wall, 3),
        "latency_ms": _latency_ms(lat),
        "unanswered_after_drain": left,
        "cpu_pct": {
            "server": round(100 * (m1.cpu_server - m0.cpu_server) / wall, 1),
            "redis": round(100 * (m1.cpu_redis - m0.cpu_redis) / wall, 1)
            if cfg.store == "redis"
            else 0.0,
            "client": round(100 * (m1.cpu_client - m0.cpu_client) / wall, 1),
            "machine": round(100 * (m1.busy - m0.busy) / wall, 1),
            "server_waiting_for_cpu": round(100 * (m1.wait_server - m0.wait_server) / wall, 1),
        },
        "client_in": {
            "frames_per_s": round((m1.frames_in - m0.frames_in) / wall),
            "fanout_batches_per_s": round((m1.skipped - m0.skipped) / wall),
            "mb_per_s": round((m1.bytes_in - m0.bytes_in) / wall / 1e6, 2),
        },
        "desk": desk,
    }
    if spy_err:
        result["profile_error"] = spy_err
    return result


async def _run_b(
    cfg: _Config,
    p: Params,
    rds: RedisServer,
    tokens: list[str],
    server_cpus: set[int] | None,
    *,
    profile: Path | None = None,
) -> dict[str, Any]:
    """One server process: the max phase (every buyer), then the light phase."""
    if cfg.store == "redis":
        await asyncio.to_thread(rds.flush)
    n = p.connections
    if cfg.layout == "one_room":
        rooms, sales = ["live1"] * n, ["flash1"] * n
    else:
        rooms = [f"live{i}" for i in range(n)]
        sales = [f"flash{i}" for i in range(n)]
    server = await ServerProc.start(_server_env(cfg, p, rds.url), server_cpus)
    pool: BuyerPool | None = None
    try:
        hello = await server.reply(20.0)
        port = int(hello["port"])
        pool = BuyerPool(HOST, port)
        opened = await pool.open(tokens, rooms, sales)
        if opened.failed:
            raise RuntimeError(f"{opened.failed} buyers failed to join: {opened.first_error}")
        await server.command(
            {
                "op": "open",
                "sales": [
                    {"sale_id": s, "room": r, "stock": MAX_UNITS, "limit": MAX_UNITS}
                    for s, r in dict(zip(sales, rooms, strict=True)).items()
                ],
            }
        )
        await asyncio.sleep(0.2)  # let the sale-opened batches arrive
        result: dict[str, Any] = {"config": cfg.name, "open_s": round(opened.seconds, 2)}
        result["max"] = await _measure(
            pool,
            server,
            rds,
            cfg,
            active=None,
            limit=p.b_limit,
            warmup=p.b_warmup,
            seconds=p.b_seconds,
            profile=profile,
            profile_seconds=p.profile_seconds,
        )
        if profile is None and p.light_buyers:
            result["light"] = await _measure(
                pool,
                server,
                rds,
                cfg,
                active=p.light_buyers,
                limit=p.b_limit,
                warmup=0.3,
                seconds=p.light_seconds,
            )
        sink = pool.sink
        result["statuses"] = dict(sink.statuses)
        result["ok_share"] = round(
            sink.statuses.get("ok", 0) / max(1, sum(sink.statuses.values())), 4
        )
        result["errors"] = dict(sink.errors)
        result["closes"] = dict(sink.closes)
        return result
    finally:
        if pool is not None:
            pool.abort_all()
        await server.stop()


_ROOT_FRAMES = (
    "_run_module_as_main (<frozen runpy>)",
    "_run_code (<frozen runpy>)",
    "<module> (purchase_server.py)",
    "main (purchase_server.py)",
    "run (__init__.py)",
    "Runner.run (runners.py)",
)
"""Frames every stack of the server starts with; ``Runner.run`` *self* time is uvloop's C
code (polling, socket I/O, callbacks) below the last Python frame."""


def _summarise_profile(path: Path, top: int = 18) -> dict[str, Any]:
    """Inclusive and self shares of functions in py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with open(path) as fp:
        for line in fp:
            stack, _, count_text = line.rstrip().rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = []
            for frame in stack.split(";"):
                name, _, where = frame.partition(" (")
                module = where.split(":", 1)[0].rsplit("/", 1)[-1]
                frames.append(f"{name} ({module})")
            for frame in set(frames):
                inclusive[frame] += count
            if frames:
                own[frames[-1]] += count
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * c / total, 1)) for name, c in counter.most_common(top)]

    for root in _ROOT_FRAMES:
        inclusive.pop(root, None)
    wanted = {key for _, key in _PROFILE_KEYS}
    return {
        "samples": total,
        "inclusive_pct": share(inclusive),
        "self_pct": share(own),
        "inclusive_pct_all": [
            (name, round(100 * c / total, 1)) for name, c in inclusive.items() if name in wanted
        ],
    }


def _other_cpu(cpu: dict[str, float]) -> float:
    """CPU% of everything but server, redis and clients (0 when within tick rounding)."""
    rest = cpu["machine"] - cpu["server"] - cpu["redis"] - cpu["client"]
    return round(max(0.0, rest), 1)


def _b_summary(cfg: _Config, runs: list[dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    mx = [x["max"] for x in runs]
    light = [x["light"] for x in runs if "light" in x]
    return {
        "store": cfg.store,
        "batching": cfg.batching,
        "batch_window_ms": cfg.window_ms,
        "batch_max": cfg.batch_max,
        "min_flush_interval_ms": cfg.flush_ms,
        "layout": cfg.layout,
        "runs": len(runs),
        "errors": errors,
        "answered_per_s_median": _median([x["answered_per_s"] for x in mx]),
        "answered_per_s_best": max((x["answered_per_s"] or 0 for x in mx), default=None),
        "answered_per_s_rounds": [x["answered_per_s"] for x in mx],
        "p50_ms": _median([x["latency_ms"]["p50"] for x in mx]),
        "p99_ms": _median([x["latency_ms"]["p99"] for x in mx]),
        "ok_share_min": min((x["ok_share"] for x in runs), default=None),
        "cpu_server_pct": _median([x["cpu_pct"]["server"] for x in mx]),
        "cpu_redis_pct": _median([x["cpu_pct"]["redis"] for x in mx]),
        "cpu_client_pct": _median([x["cpu_pct"]["client"] for x in mx]),
        "cpu_machine_pct": _median([x["cpu_pct"]["machine"] for x in mx]),
        "cpu_other_pct": _median([_other_cpu(x["cpu_pct"]) for x in mx]),
        "server_waiting_for_cpu_pct": _median([x["cpu_pct"]["server_waiting_for_cpu"] for x in mx]),
        "mean_batch": _median([x["desk"]["mean_batch"] for x in mx]),
        "mean_store_call_ms": _median([x["desk"]["mean_store_call_ms"] for x in mx]),
        "store_calls_per_s": _median([x["desk"]["store_calls_per_s"] for x in mx]),
        "fanout_batches_per_s": _median([x["client_in"]["fanout_batches_per_s"] for x in mx]),
        "client_in_mb_per_s": _median([x["client_in"]["mb_per_s"] for x in mx]),
        "light_answered_per_s": _median([x["answered_per_s"] for x in light]),
        "light_p50_ms": _median([x["latency_ms"]["p50"] for x in light]),
        "light_p99_ms": _median([x["latency_ms"]["p99"] for x in light]),
        "light_mean_batch": _median([x["desk"]["mean_batch"] for x in light]),
    }


async def _part_b(
    p: Params, rds: RedisServer, server_cpus: set[int] | None, deadline: float
) -> dict[str, Any]:
    configs = _b_configs(p)
    tokens = _tokens(p.connections)
    rounds: list[dict[str, Any]] = []
    profile_reserve = (p.profile_seconds + 4.0) * len(p.profile_configs) if p.profile else 0.0
    for r in range(p.repeats):
        one: dict[str, Any] = {}
        for cfg in configs:
            if time.monotonic() > deadline - profile_reserve:
                log(f"B: time budget used up; skipping {cfg.name} in round {r + 1}")
                continue
            try:
                res = await _run_b(cfg, p, rds, tokens, server_cpus)
            except (OSError, RuntimeError, TimeoutError, KeyError) as exc:
                res = {"config": cfg.name, "error": f"{type(exc).__name__}: {exc}"}
            one[cfg.name] = res
            mx = res.get("max", {})
            lt = res.get("light", {})
            log(
                f"B round {r + 1}: {cfg.name:<24} {mx.get('answered_per_s') or 0:>8,} answers/s"
                f"  p50/p99 {mx.get('latency_ms', {}).get('p50')}/"
                f"{mx.get('latency_ms', {}).get('p99')} ms  cpu {mx.get('cpu_pct')}"
                f"  batch {mx.get('desk', {}).get('mean_batch')}"
                f" | light p50/p99 {lt.get('latency_ms', {}).get('p50')}/"
                f"{lt.get('latency_ms', {}).get('p99')} ms"
                + (f"  ERROR {res['error']}" if "error" in res else "")
            )
        rounds.append(one)

    summary: dict[str, Any] = {}
    for cfg in configs:
        runs = [one[cfg.name] for one in rounds if cfg.name in one and "error" not in one[cfg.name]]
        errors = [one[cfg.name]["error"] for one in rounds if "error" in one.get(cfg.name, {})]
        summary[cfg.name] = _b_summary(cfg, runs, errors)

    def per_round(a: str, b: str) -> float | None:
        return _median(
            [
                _ratio(
                    one[a].get("max", {}).get("answered_per_s"),
                    one[b].get("max", {}).get("answered_per_s"),
                )
                for one in rounds
                if a in one and b in one
            ]
        )

    names = {cfg.name for cfg in configs}
    pairs = [
        (f"{layout}: {store} batched / unbatched", f"{store}/on/{layout}", f"{store}/off/{layout}")
        for layout in ("one_room", "spread")
        for store in ("memory", "redis")
    ]
    pairs += [
        (f"{layout}: redis / memory, batching {b}", f"redis/{b}/{layout}", f"memory/{b}/{layout}")
        for layout in ("one_room", "spread")
        for b in ("on", "off")
    ]
    pairs += [
        (
            f"{layout}: redis natural (0 ms) / window 2 ms",
            f"redis/natural/{layout}",
            f"redis/on/{layout}",
        )
        for layout in ("one_room", "spread")
    ]
    pairs += [
        (
            "one_room: redis unbatched, flush 10 ms / flush 0",
            "redis/off+flush10/one_room",
            "redis/off/one_room",
        ),
        (
            "one_room: redis unbatched flush 10 ms / batched",
            "redis/off+flush10/one_room",
            "redis/on/one_room",
        ),
    ]
    pairs += [
        (f"{store} batched: one_room / spread", f"{store}/on/one_room", f"{store}/on/spread")
        for store in ("memory", "redis")
    ]
    ratios = {label: per_round(a, b) for label, a, b in pairs if a in names and b in names}

    out: dict[str, Any] = {"configs": summary, "rounds": rounds, "ratios": ratios}
    spy = Path(sys.executable).with_name("py-spy")
    if p.profile and spy.exists():
        out["profiles"] = await _profiles(p, rds, tokens, server_cpus, deadline)
    return out


async def _profiles(
    p: Params,
    rds: RedisServer,
    tokens: list[str],
    server_cpus: set[int] | None,
    deadline: float,
) -> dict[str, Any]:
    """One extra run per profiled configuration, the server sampled by ``py-spy record``."""
    profiles: dict[str, Any] = {}
    for name in p.profile_configs:
        cfg = _Config.parse(name)
        if time.monotonic() > deadline:
            continue
        log(f"B: profiling the server under py-spy ({cfg.name}, {p.profile_seconds:g} s)")
        with tempfile.TemporaryDirectory(prefix="purchase-bench-") as tmp:
            path = Path(tmp) / "profile.txt"
            try:
                res = await _run_b(cfg, p, rds, tokens, server_cpus, profile=path)
                prof: dict[str, Any] = _summarise_profile(path) if path.exists() else {"samples": 0}
                mx = res.get("max", {})
                prof["run"] = {
                    "answered_per_s": mx.get("answered_per_s"),
                    "cpu_pct": mx.get("cpu_pct"),
                    "mean_batch": mx.get("desk", {}).get("mean_batch"),
                    "profile_error": mx.get("profile_error"),
                }
                profiles[cfg.name] = prof
            except (OSError, RuntimeError, TimeoutError, KeyError) as exc:
                profiles[cfg.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return profiles


# --------------------------------------------------------------------------- report


def _machine(rds: RedisServer) -> dict[str, Any]:
    meta = describe(("liveroom", "redis", "hiredis", "websockets", "uvloop", "msgpack", "orjson"))
    meta["redis_server"] = rds.version()
    meta["redis_server_options"] = "--save '' --appendonly no (no persistence), loopback TCP"
    return meta


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, int | float):
        return f"{x:,.{digits}f}"
    return str(x)


def _targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    cases = report.get("store_only", {}).get("cases", {})
    rate = cases.get(f"redis/batch{TARGET_BATCH}", {}).get("purchases_per_s_median")
    others = {
        name: c.get("purchases_per_s_median")
        for name, c in cases.items()
        if name.startswith("redis/batch")
    }
    targets = [
        {
            "target": f">= {TARGET_STORE_BATCHED:,} purchases/s per Redis server, store only, "
            f"batched (purchase_many of {TARGET_BATCH}, the default stock.batch_max)",
            "measured": f"{_fmt(rate)} /s (other batch sizes: "
            + ", ".join(f"{k.split('/')[1]} {_fmt(v)}" for k, v in others.items())
            + ")",
            "pass": None if rate is None else rate >= TARGET_STORE_BATCHED,
        }
    ]
    full = report.get("full_path", {}).get("configs", {})
    best = max(
        (c for c in full.values() if c.get("store") == "redis" and c.get("answered_per_s_median")),
        key=lambda c: c["answered_per_s_median"],
        default=None,
    )
    if best is not None:
        targets.append(
            {
                "target": "full path recorded (no target): best Redis configuration",
                "measured": f"{_fmt(best['answered_per_s_median'])} answers/s "
                f"({best['batching']}, {best['layout']}), p99 {_fmt(best['p99_ms'], 2)} ms",
                "pass": None,
            }
        )
    return targets


def _profile_table(name: str, prof: dict[str, Any], top: int = 14) -> list[str]:
    if not prof.get("samples"):
        return ["", f"Server profile {name}: not available ({prof.get('error') or prof})"]
    run = prof.get("run", {})
    cpu = (run.get("cpu_pct") or {}).get("server")
    out = [
        "",
        f"### Server profile: {name} (py-spy; {_fmt(run.get('answered_per_s'))} answers/s, "
        f"server CPU {_fmt(cpu)}%, mean batch {_fmt(run.get('mean_batch'), 1)}; "
        f"{prof['samples']} samples; % of busy samples)",
        "",
    ]
    inc = prof["inclusive_pct"][:top]
    own = prof["self_pct"][:top]
    rows = []
    for i in range(max(len(inc), len(own))):
        rows.append(
            [
                inc[i][0] if i < len(inc) else "",
                _fmt(inc[i][1], 1) if i < len(inc) else "",
                own[i][0] if i < len(own) else "",
                _fmt(own[i][1], 1) if i < len(own) else "",
            ]
        )
    return out + table(["inclusive", "%", "self", "%"], rows)


def _report_tables(report: dict[str, Any]) -> list[str]:
    out: list[str] = []
    a = report.get("store_only")
    if a:
        out += ["", "### A. Store only (median over rounds)", ""]
        rows = []
        for name, c in a["cases"].items():
            rows.append(
                [
                    name,
                    c["what"],
                    str(c["calls_in_flight"]),
                    _fmt(c["purchases_per_s_median"]),
                    _fmt(c["purchases_per_s_best"]),
                    " / ".join(_fmt(x) for x in c["purchases_per_s_rounds"]),
                    _fmt(c["p50_ms_per_call"], 3),
                    _fmt(c["p99_ms_per_call"], 3),
                    f"{_fmt(c['cpu_client_pct'])} / {_fmt(c['cpu_redis_pct'])} / "
                    f"{_fmt(c['cpu_other_pct'])}",
                    f"{c['not_ok']} / {','.join(c['sold_check'])}",
                ]
            )
        out += table(
            [
                "case",
                "call",
                "in flight",
                "purchases/s",
                "best round",
                "rounds",
                "p50 ms/call",
                "p99 ms/call",
                "CPU% client/redis/other",
                "not ok / sold check",
            ],
            rows,
        )
        out += ["", "Ratios (median of per-round ratios):", ""]
        out += table(["ratio", "value"], [[k, _fmt(v, 2)] for k, v in a["ratios"].items()])
    b = report.get("full_path")
    if b:
        out += ["", "### B. Full path: websocket Buy -> BuyResult (median over rounds)", ""]
        rows = []
        for name, c in b["configs"].items():
            rows.append(
                [
                    name,
                    f"{_fmt(c['batch_window_ms'])} ms / {c['batch_max']}"
                    + (
                        f", flush {_fmt(c['min_flush_interval_ms'])} ms"
                        if c["min_flush_interval_ms"]
                        else ""
                    ),
                    _fmt(c["answered_per_s_median"]),
                    _fmt(c["answered_per_s_best"]),
                    " / ".join(_fmt(x) for x in c["answered_per_s_rounds"]),
                    _fmt(c["p50_ms"], 2),
                    _fmt(c["p99_ms"], 2),
                    _fmt(c["ok_share_min"], 4),
                    _fmt(c["mean_batch"], 1),
                    _fmt(c["mean_store_call_ms"], 2),
                    f"{_fmt(c['cpu_server_pct'])} / {_fmt(c['cpu_redis_pct'])} / "
                    f"{_fmt(c['cpu_client_pct'])} / {_fmt(c['cpu_other_pct'])}",
                    _fmt(c["server_waiting_for_cpu_pct"]),
                    _fmt(c["fanout_batches_per_s"]),
                    _fmt(c["client_in_mb_per_s"], 1),
                    f"{_fmt(c['light_p50_ms'], 2)} / {_fmt(c['light_p99_ms'], 2)}",
                ]
                + ([f"ERR x{len(c['errors'])}"] if c["errors"] else [])
            )
        out += table(
            [
                "store/batching/layout",
                "window / max",
                "answers/s",
                "best round",
                "rounds",
                "p50 ms",
                "p99 ms",
                "ok share",
                "mean batch",
                "store call ms",
                "CPU% srv/redis/cli/other",
                "srv wait CPU %",
                "fan-out frames/s",
                "client MB/s in",
                "light p50 / p99 ms",
            ],
            rows,
        )
        out += ["", "Ratios (median of per-round ratios):", ""]
        out += table(["ratio", "value"], [[k, _fmt(v, 2)] for k, v in b["ratios"].items()])
        for name, prof in b.get("profiles", {}).items():
            out += _profile_table(name, prof)
    out += ["", "### Targets", ""]
    out += targets_table(report.get("targets", []))
    return out


def _markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    p = report["params"]
    lines = [
        "# Purchase benchmark: stock stores alone and websocket Buy -> BuyResult",
        "",
        f"Run `{report['command']}` on {m['date']}; took {report.get('elapsed_s')} s."
        + (f" **Aborted: {report['aborted']}**" if report.get("aborted") else ""),
    ]
    lines += _report_tables(report)
    lines += [
        "",
        "Columns: A *purchases/s* counts purchases whose call ended inside the measured "
        "window (all succeeded: *not ok* 0; *sold check* compares the sale's sold count with "
        "the purchases made); latency is per call (a batch's purchases all wait for the whole "
        "call); *best round* is the highest round (other jobs only ever slow a round "
        "down, so it is the least disturbed estimate; the median is the headline figure); "
        "the memory store never awaits, so its callers run one after another. "
        "B *answers/s* counts BuyResult answers received by the buyers; latency is "
        "client-side send -> answer parsed; *mean batch* and *store call ms* come from the "
        "server's sale desk (purchases per store call, mean store round trip); CPU% is per "
        "process (100 = one core), *other* is the rest of the machine (other jobs: noise), "
        "*srv wait CPU %* the share of time the server was runnable but waiting for a CPU "
        '(/proc/PID/schedstat); *fan-out frames/s* are room batch frames ("someone bought" '
        "events) the buyers received and skipped undecoded; *light* is a second phase on the "
        "same server with only a few buyers in flight (latency without queueing).",
        "",
        "## Machine",
        "",
        f"- platform: {m['platform']}",
        f"- CPU: {m['cpu_model']} ({m['cpu_mhz']} MHz), {m['cpus']} cores, usable "
        f"{m['cpus_usable']}; pinning: {report.get('pinning')}",
        f"- memory: {m['memory']}",
        f"- Python: {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- redis-server: {m['redis_server']}; {m['redis_server_options']}",
        f"- load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}",
        f"- engine/ + protocol/ code sha256 {m['server_code_sha256']}",
        "",
        "## Parameters",
        "",
        f"- rounds: {p['repeats']} (cases interleaved within each round)",
        f"- A: {p['a_warmup']} s warm-up + {p['a_seconds']} s measured or {p['a_limit']:,} "
        f"purchases per case; single calls {p['single_concurrency']} in flight, batches "
        f"{p['batch_concurrency']} in flight; batch sizes {p['batch_sizes']}; "
        f"{p['users']:,} users cycling; stock and per-user limit {MAX_UNITS:,}; qty 1; "
        "redis store via engine.stock.connect (pool of 64)",
        f"- B: {p['connections']} websocket buyers (msgpack), one Buy in flight each; "
        f"{p['b_warmup']} s warm-up + {p['b_seconds']} s measured, at most {p['b_limit']:,} "
        f"buys per run; then a light phase: {p['light_buyers']} buyers in flight for "
        f"{p['light_seconds']} s; configurations {', '.join(p['configs'])}; "
        "server = bench/purchase_server.py "
        "(LiveroomServer + gc.freeze on uvloop, LIVEROOM_* env: service off, log warning, "
        "batch window/max per row, Buy budget lifted (rooms.buy_rate / buy_burst 1e6), "
        "other settings default)",
    ]
    notes = report.get("notes") or []
    if notes:
        lines += ["", "## Observations (computed from this run)", ""]
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _notes(report: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    a = report.get("store_only", {}).get("cases", {})

    def rate(name: str) -> Any:
        return a.get(name, {}).get("purchases_per_s_median")

    if a:
        b100 = a.get("redis/batch100", {})
        notes.append(
            f"Store only, Redis: single purchase() {_fmt(rate('redis/single'))}/s vs "
            f"purchase_many(100) {_fmt(rate('redis/batch100'))}/s; raw EVALSHA x1 "
            f"{_fmt(rate('raw/single'))}/s, raw EVALSHA x100 {_fmt(rate('raw/lua100'))}/s, "
            f"raw pipeline of 100 {_fmt(rate('raw/pipeline100'))}/s. At batch 100 Redis used "
            f"{_fmt(b100.get('cpu_redis_pct'))}% of a core and this (client) process "
            f"{_fmt(b100.get('cpu_client_pct'))}%."
        )
    full = report.get("full_path", {})
    b = full.get("configs", {})
    best = max(
        (c for c in b.values() if c.get("store") == "redis" and c.get("answered_per_s_median")),
        key=lambda c: c["answered_per_s_median"],
        default=None,
    )
    if best is not None and rate("redis/batch100"):
        notes.append(
            f"Full path, best Redis configuration ({best['batching']}, {best['layout']}): "
            f"{_fmt(best['answered_per_s_median'])} answers/s = "
            f"{_fmt(100 * best['answered_per_s_median'] / rate('redis/batch100'))}% of the "
            "store-only purchase_many(100) figure: the liveroom process, not Redis, is the "
            f"limit (Redis CPU {_fmt(best['cpu_redis_pct'])}%)."
        )
    for name, prof in full.get("profiles", {}).items():
        inc = dict(prof.get("inclusive_pct_all", prof.get("inclusive_pct", [])))
        if not inc:
            continue
        parts = [
            f"{label} {_fmt(inc.get(key, 0.0), 1)}%" for label, key in _PROFILE_KEYS if key in inc
        ]
        notes.append(f"Profile {name} (% of busy server samples): " + "; ".join(parts) + ".")
    disturbed: dict[int, list[float]] = {}
    for index, one in enumerate(full.get("rounds", []), 1):
        for res in one.values():
            if "max" in res:
                disturbed.setdefault(index, []).append(_other_cpu(res["max"]["cpu_pct"]))
    if disturbed:
        per_round = ", ".join(
            f"round {i}: median {_fmt(_median(v))}% / max {_fmt(max(v))}%"
            for i, v in disturbed.items()
        )
        notes.append(
            f"Noise in B (CPU% used by the rest of the machine, per run): {per_round}. Other "
            "jobs slow the runs they overlap (see *srv wait CPU %*); medians and per-round "
            "ratios damp that, *best round* is the least disturbed figure."
        )
    for name, c in b.items():
        if c.get("answered_per_s_median") and c.get("cpu_server_pct") is not None:
            if c["cpu_server_pct"] >= 90:
                notes.append(
                    f"{name}: server CPU {_fmt(c['cpu_server_pct'])}% (its core is saturated)"
                )
            shared = (c.get("cpu_client_pct") or 0) + (c.get("cpu_redis_pct") or 0)
            if shared >= 90:
                notes.append(
                    f"{name}: clients + redis used {_fmt(shared)}% of their shared core: "
                    "the load generator may limit this figure"
                )
    return notes


_PROFILE_KEYS = (
    ("room fan-out (Room.flush)", "Room.flush (room.py)"),
    ("socket writes (Connection._write)", "Connection._write (gateway.py)"),
    ("batcher workers (PurchaseBatcher._work)", "PurchaseBatcher._work (sales.py)"),
    ("store call (purchase_many)", "RedisStockStore.purchase_many (redis_store.py)"),
    ("answer callbacks (SaleDesk.buy.done)", "SaleDesk.buy.<locals>.done (sales.py)"),
    ("incoming frames (Connection.data_received)", "Connection.data_received (gateway.py)"),
    ("dataclasses.replace", "replace (dataclasses.py)"),
)


async def _amain(p: Params, command: str) -> dict[str, Any]:
    t_start = time.monotonic()
    deadline = t_start + p.budget
    raise_nofile()
    cpus = sorted(os.sched_getaffinity(0))
    pinned = p.pin and len(cpus) >= 2
    first, second = ({cpus[0]}, {cpus[1]}) if pinned else (None, None)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    rds = RedisServer(binary, HOST)
    report: dict[str, Any] = {
        "command": command,
        "params": dataclasses.asdict(p),
        "pinning": {
            "A": f"bench CPU {sorted(first)}, redis CPU {sorted(second)}"
            if first and second
            else "none",
            "B": f"liveroom server CPU {sorted(first)}, clients + redis CPU {sorted(second)}"
            if first and second
            else "none",
        },
    }
    try:
        rds.start()
        if second:
            rds.pin(second)
        report["meta"] = _machine(rds)
        async with asyncio.timeout(p.budget + 60):
            _pin(0, first)
            log(f"A: store only ({p.repeats} rounds)")
            report["store_only"] = await _part_a(p, rds, t_start + p.budget * 0.35)
            _pin(0, second)
            log(f"B: full path ({p.repeats} rounds, {p.connections} buyers)")
            report["full_path"] = await _part_b(p, rds, first, deadline)
    except TimeoutError:
        report["aborted"] = "time budget exhausted"
        log(report["aborted"])
    except (OSError, RuntimeError) as exc:
        report["aborted"] = f"{type(exc).__name__}: {exc}"
        log(report["aborted"])
    finally:
        _pin(0, set(cpus))
        rds.stop()
    report.setdefault("meta", {}).update(loadavg_end=[round(x, 2) for x in os.getloadavg()])
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report["targets"] = _targets(report)
    report["notes"] = _notes(report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.purchase", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    parser.add_argument("--quick", action="store_true", help="one round, short phases")
    parser.add_argument("--repeats", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--connections", type=int, help="websocket buyers in part B")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy run")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="directory for purchase.json / .md"
    )
    args = parser.parse_args(argv)
    p = QUICK if args.quick else Params()
    changes: dict[str, Any] = {}
    if args.repeats:
        changes["repeats"] = args.repeats
    if args.connections:
        changes["connections"] = args.connections
    if args.no_pin:
        changes["pin"] = False
    if args.no_profile:
        changes["profile"] = False
    p = dataclasses.replace(p, **changes)
    command = "python -m bench.purchase" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    report = uvloop.run(_amain(p, command))
    print("\n".join(_report_tables(report)))
    for note in report["notes"]:
        print(f"- {note}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "purchase.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "purchase.md").write_text(_markdown(report))
    print(f"\nwrote {args.out / 'purchase.json'} and {args.out / 'purchase.md'}")


if __name__ == "__main__":
    main()
