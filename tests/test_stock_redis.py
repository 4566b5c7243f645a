"""Redis-only behaviour of the stock store: scripts, key layout, and a Redis that dies."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from engine.stock import (
    PurchaseRequest,
    PurchaseResult,
    PurchaseStatus,
    RedisStockStore,
    SaleSpec,
    StoreUnavailable,
    check_invariants,
    connect,
)
from engine.stock.redis_store import SCRIPT_NAMES, load_scripts
from tests.redis_fixture import T0, FakeClock, RedisServer

__all__: list[str] = []

OK = PurchaseStatus.OK
BOUND = 3.0  # seconds within which a dead or frozen Redis must surface as StoreUnavailable


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def store(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisStockStore]:
    s = await connect(redis_url, timeout=5.0, clock=clock)
    yield s
    await s.close()


def spec(sale_id: str = "s1", stock: int = 10, limit: int = 2) -> SaleSpec:
    return SaleSpec(sale_id, "room-1", "p-1", stock, 1999, limit, T0, T0 + 600)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- scripts --------------------------------------------------------------------------


def test_scripts_are_lua_files_naming_their_keys_and_args_first() -> None:
    scripts = load_scripts()
    assert set(scripts) == set(SCRIPT_NAMES)
    for script in scripts.values():
        code = [line for line in script.source.splitlines() if not line.startswith("--")]
        assert code[0].startswith("local ") and "KEYS[1]" in code[0], script.name
        assert len(script.sha) == 40


async def test_scripts_are_reloaded_after_script_flush(store: RedisStockStore) -> None:
    await store.open_sale(spec())
    await store.open_sale(spec("s2"))
    await store.client.script_flush()
    first = await store.purchase(PurchaseRequest("s1", "u1", 1, "r1"))
    assert first.status is OK
    await store.client.script_flush()
    # a batch over two sales goes out as one pipeline of EVALSHAs: each one reloads
    results = await store.purchase_many(
        [PurchaseRequest("s1", "u2", 1, "r2"), PurchaseRequest("s2", "u2", 1, "r3")]
    )
    assert [r.order_id for r in results] == ["s1-2", "s2-1"]
    for call in (
        lambda: store.cancel_order("s1", "s1-1"),
        lambda: store.restock("s1", 1),
        lambda: store.close_sale("s2"),
        lambda: store.open_sale(spec("s3")),
    ):
        await store.client.script_flush()
        await call()
    assert await store.purchase(PurchaseRequest("s1", "u1", 1, "r1")) == first
    await check_invariants(store, "s1")


async def test_store_works_without_load(redis_url: str, clock: FakeClock) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    s = RedisStockStore(client, clock)
    try:
        await s.open_sale(spec())  # NOSCRIPT, load, run
        assert (await s.purchase(PurchaseRequest("s1", "u1", 1, "r1"))).status is OK
    finally:
        await s.close()


# --- key layout -----------------------------------------------------------------------


async def test_every_key_of_a_sale_shares_one_hash_tag(store: RedisStockStore) -> None:
    for sale_id in ("s1", "sale:2.x"):
        await store.open_sale(spec(sale_id))
        result = await store.purchase(PurchaseRequest(sale_id, "u1", 1, "r1"))
        await store.purchase(PurchaseRequest(sale_id, "u2", 1, "r2"))
        assert result.order_id is not None
        await store.cancel_order(sale_id, result.order_id)
    keys = sorted([text(k) async for k in store.client.scan_iter("*")])
    assert len(keys) == 13  # six per sale and the sales index
    assert store.index_key in keys
    for sale_id in ("s1", "sale:2.x"):
        mine = [k for k in keys if k.startswith(f"lr:{{sale:{sale_id}}}:")]
        assert sorted(mine) == sorted(store.keys(sale_id))
        assert len({key_slot(k.encode()) for k in mine}) == 1


async def test_key_prefixes_keep_stores_apart(redis_url: str, clock: FakeClock) -> None:
    a = await connect(redis_url, key_prefix="a", clock=clock)
    b = await connect(redis_url, key_prefix="b", clock=clock)
    try:
        await a.open_sale(spec(stock=1))
        await b.open_sale(spec(stock=5))
        assert (await a.state("s1")).remaining == 1
        assert (await b.state("s1")).remaining == 5
    finally:
        await a.close()
        await b.close()


async def test_stream_records_orders_and_cancellations(store: RedisStockStore) -> None:
    await store.open_sale(spec(limit=3))
    bought = [await store.purchase(PurchaseRequest("s1", "u|1", 2, "r1"))]
    bought.append(await store.purchase(PurchaseRequest("s1", "u2", 1, "r2")))
    assert bought[0].order_id == "s1-1"
    assert await store.cancel_order("s1", "s1-1")
    _meta, users, rids, orders, ordermap, cancelled = store.keys("s1")
    entries = await store.client.xrange(orders)
    fields = [{text(k): text(v) for k, v in (raw or {}).items()} for _, raw in entries or []]
    assert [(f["kind"], f["order_id"], f["user_id"], f["quantity"]) for f in fields] == [
        ("order", "s1-1", "u|1", "2"),
        ("order", "s1-2", "u2", "1"),
        ("cancel", "s1-1", "u|1", "2"),
    ]
    assert fields[0]["price"] == "1999" and fields[0]["request_id"] == "r1"
    assert fields[0]["ts_ms"] == str(int(T0 * 1000))
    assert {text(m) for m in await store.client.smembers(cancelled)} == {"s1-1"}
    held = {text(k): int(v) for k, v in (await store.client.hgetall(users)).items()}
    report = await check_invariants(store, "s1")
    assert held == report.units_by_user == {"u2": 1}
    assert await store.client.hlen(rids) == 2
    assert await store.client.hlen(ordermap) == 2
    # the remembered answer of a user id containing the separator still replays
    assert await store.purchase(PurchaseRequest("s1", "u|1", 2, "r1")) == bought[0]


# --- a Redis that dies or freezes -----------------------------------------------------


async def _raises_unavailable_quickly(call: Any) -> float:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await call
    elapsed = time.monotonic() - started
    assert elapsed < BOUND
    return elapsed


async def test_connect_to_nothing_raises_store_unavailable_quickly() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await _raises_unavailable_quickly(connect(f"redis://127.0.0.1:{port}/0", timeout=1.0))


async def test_dead_redis_raises_store_unavailable_quickly(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    s = await connect(own_redis.url, timeout=1.0, clock=clock)
    try:
        await s.open_sale(spec())
        assert (await s.purchase(PurchaseRequest("s1", "u1", 1, "r1"))).status is OK
        own_redis.kill()
        for call in (
            s.purchase(PurchaseRequest("s1", "u2", 1, "r2")),
            s.purchase_many([PurchaseRequest("s1", "u3", 1, "r3")]),
            s.purchase_many(
                [PurchaseRequest("s1", "u3", 1, "r3"), PurchaseRequest("s2", "u3", 1, "r4")]
            ),
            s.state("s1"),
            s.restock("s1", 1),
            s.cancel_order("s1", "s1-1"),
            s.close_sale("s1"),
            s.orders("s1"),
            s.open_sale(spec("s2")),
            s.load(),
        ):
            await _raises_unavailable_quickly(call)
        # many buyers at once: every one of them gets its exception in bounded time
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(s.purchase(PurchaseRequest("s1", f"u{i}", 1, f"x{i}")) for i in range(200)),
            return_exceptions=True,
        )
        assert all(isinstance(o, StoreUnavailable) for o in outcomes)
        assert time.monotonic() - started < BOUND
    finally:
        await s.close()


async def test_frozen_redis_raises_store_unavailable_within_the_timeout(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    s = await connect(own_redis.url, timeout=0.5, clock=clock)
    # a client without socket timeouts is still bounded by the store's own deadline
    raw = RedisStockStore(
        aioredis.Redis.from_url(own_redis.url, socket_timeout=None), clock, op_timeout=0.5
    )
    try:
        await s.open_sale(spec())
        own_redis.pause()
        elapsed = await _raises_unavailable_quickly(
            s.purchase(PurchaseRequest("s1", "u1", 1, "r1"))
        )
        assert elapsed >= 0.4
        await _raises_unavailable_quickly(raw.purchase(PurchaseRequest("s1", "u1", 1, "r1")))
        own_redis.resume()
        # the purchase may or may not have run while Redis was frozen; the retry tells
        first = await s.purchase(PurchaseRequest("s1", "u1", 1, "r1"))
        assert first.status is OK
        assert await raw.purchase(PurchaseRequest("s1", "u1", 1, "r1")) == first
        assert (await s.state("s1")).sold == 1
    finally:
        if own_redis.paused:
            own_redis.resume()
        await s.close()
        await raw.close()


async def test_redis_killed_mid_sale_nothing_oversold_and_retries_see_first_answers(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    units = 150
    s = await connect(own_redis.url, timeout=1.0, clock=clock)
    try:
        await s.open_sale(spec(stock=units, limit=1))
        requests = [PurchaseRequest("s1", f"u{i}", 1, f"k{i}") for i in range(600)]
        answers: dict[str, PurchaseResult] = {}
        unknown: list[PurchaseRequest] = []
        slowest = 0.0
        hundred_answered = asyncio.Event()

        async def buyer(mine: list[PurchaseRequest]) -> None:
            nonlocal slowest
            for request in mine:
                started = time.monotonic()
                try:
                    answers[request.request_id] = await s.purchase(request)
                except StoreUnavailable:
                    unknown.append(request)
                slowest = max(slowest, time.monotonic() - started)
                if len(answers) >= 100:
                    hundred_answered.set()

        async def killer() -> None:
            await hundred_answered.wait()
            own_redis.kill()

        async with asyncio.timeout(30):
            await asyncio.gather(killer(), *(buyer(requests[i::20]) for i in range(20)))
        assert unknown, "the kill came too late to interrupt the sale"
        assert slowest < BOUND

        own_redis.restart()  # same port and directory: the AOF replays
        sold_before = sum(r.status is OK for r in answers.values())
        state = await s.state("s1")
        assert sold_before <= state.sold <= units  # acknowledged orders survived

        # every retry gets the first answer; the unknown ones get a definite one now
        for request in requests:
            again = await s.purchase(request)
            if request.request_id in answers:
                assert again == answers[request.request_id]
            else:
                answers[request.request_id] = again
        report = await check_invariants(s, "s1")
        ok = {rid for rid, r in answers.items() if r.status is OK}
        assert report.state.sold == len(ok) == units
        assert {o.request_id for o in report.orders} == ok
    finally:
        await s.close()
