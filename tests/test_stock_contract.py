"""The stock store contract: every test runs against the memory and the Redis store alike."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from engine.stock import (
    MAX_BATCH,
    InvalidRequest,
    MemoryStockStore,
    PurchaseRequest,
    PurchaseResult,
    PurchaseStatus,
    SaleExists,
    SaleNotFound,
    SaleSpec,
    SaleStatus,
    StockStore,
    StoreUnavailable,
    check_invariants,
    connect,
)
from engine.stock.redis_store import SCRIPT_BATCH
from tests.redis_fixture import T0, FakeClock

__all__: list[str] = []

OK = PurchaseStatus.OK
SOLD_OUT = PurchaseStatus.SOLD_OUT
LIMIT = PurchaseStatus.LIMIT_REACHED
NOT_OPEN = PurchaseStatus.NOT_OPEN
NOT_FOUND = PurchaseStatus.NOT_FOUND
ERROR = PurchaseStatus.ERROR


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[StockStore]:
    s: StockStore
    if request.param == "memory":
        s = MemoryStockStore(clock=clock)
    elif request.param == "redis":
        s = await connect(request.getfixturevalue("redis_url"), timeout=5.0, clock=clock)
    else:  # a 3-primary Redis Cluster started on loopback by the tests
        url = request.getfixturevalue("redis_cluster_url")
        s = await connect(url, timeout=5.0, clock=clock, cluster=True)
    yield s
    await s.close()


def spec(sale_id: str = "s1", **changes: Any) -> SaleSpec:
    values: dict[str, Any] = {
        "sale_id": sale_id,
        "room": "room-1",
        "product_id": "p-9",
        "stock": 10,
        "price": 9900,
        "per_user_limit": 2,
        "starts_at": T0,
        "ends_at": T0 + 600,
    }
    values.update(changes)
    return SaleSpec(**values)


_rids = itertools.count(1)


def buy(
    user: str = "u1", quantity: int = 1, rid: str | None = None, sale: str = "s1"
) -> PurchaseRequest:
    return PurchaseRequest(sale, user, quantity, rid if rid is not None else f"r{next(_rids)}")


def shape(result: PurchaseResult) -> tuple[PurchaseStatus, str | None, int, int | None]:
    return result.status, result.order_id, result.quantity, result.remaining


# --- sales ----------------------------------------------------------------------------


async def test_open_sale_returns_its_state(store: StockStore) -> None:
    state = await store.open_sale(spec(stock=5))
    assert (state.sale_id, state.room, state.product_id) == ("s1", "room-1", "p-9")
    assert (state.price, state.per_user_limit) == (9900, 2)
    assert (state.starts_at, state.ends_at) == (T0, T0 + 600)
    assert (state.initial, state.restocked, state.remaining, state.sold) == (5, 0, 5, 0)
    assert not state.closed and state.status is SaleStatus.OPEN
    assert await store.state("s1") == state


async def test_times_survive_exactly(store: StockStore) -> None:
    await store.open_sale(spec(starts_at=T0 + 0.1 + 0.2, ends_at=T0 + 1 / 3))
    state = await store.state("s1")
    assert (state.starts_at, state.ends_at) == (T0 + 0.1 + 0.2, T0 + 1 / 3)


async def test_opening_a_taken_sale_id_raises_sale_exists(store: StockStore) -> None:
    await store.open_sale(spec())
    await store.close_sale("s1")
    with pytest.raises(SaleExists):
        await store.open_sale(spec(stock=99))
    assert (await store.state("s1")).initial == 10


async def test_unknown_sale_raises_sale_not_found(store: StockStore) -> None:
    for call in (
        store.state("nope"),
        store.close_sale("nope"),
        store.restock("nope", 1),
        store.cancel_order("nope", "nope-1"),
        store.orders("nope"),
    ):
        with pytest.raises(SaleNotFound):
            await call


async def test_purchase_of_unknown_sale_is_not_found(store: StockStore) -> None:
    result = await store.purchase(buy(sale="nope", rid="a"))
    assert shape(result) == (NOT_FOUND, None, 1, None)
    await store.open_sale(spec("nope"))  # not remembered: the same request id now buys
    assert (await store.purchase(buy(sale="nope", rid="a"))).status is OK


async def test_status_follows_the_clock(store: StockStore, clock: FakeClock) -> None:
    clock.set(T0 - 1)
    assert (await store.open_sale(spec(stock=1))).status is SaleStatus.SCHEDULED
    clock.set(T0)
    assert (await store.state("s1")).status is SaleStatus.OPEN
    await store.purchase(buy())
    assert (await store.state("s1")).status is SaleStatus.SOLD_OUT
    clock.set(T0 + 600)
    assert (await store.state("s1")).status is SaleStatus.ENDED
    assert (await store.close_sale("s1")).status is SaleStatus.CLOSED


async def test_close_is_idempotent(store: StockStore) -> None:
    await store.open_sale(spec())
    first = await store.close_sale("s1")
    assert first.closed and first.status is SaleStatus.CLOSED
    assert await store.close_sale("s1") == first


# --- purchases ------------------------------------------------------------------------


async def test_purchase_takes_units_and_records_the_order(
    store: StockStore, clock: FakeClock
) -> None:
    await store.open_sale(spec(stock=5))
    clock.set(T0 + 1.5)
    result = await store.purchase(buy("u1", 2, "r-a"))
    assert result == PurchaseResult(OK, "r-a", "s1-1", 2, 3, "")
    assert result.ok
    state = await store.state("s1")
    assert (state.remaining, state.sold) == (3, 2)
    orders, cursor = await store.orders("s1")
    assert cursor is None
    assert [
        (o.order_id, o.sale_id, o.user_id, o.quantity, o.price, o.request_id) for o in orders
    ] == [("s1-1", "s1", "u1", 2, 9900, "r-a")]
    assert orders[0].ts_ms == int((T0 + 1.5) * 1000) and not orders[0].cancelled


async def test_second_purchase_with_same_request_id_is_not_charged_twice(
    store: StockStore,
) -> None:
    await store.open_sale(spec())
    first = await store.purchase(buy("u1", 1, "r-1"))
    again = await store.purchase(buy("u1", 1, "r-1"))
    assert again == first and first.status is OK
    assert (await store.state("s1")).sold == 1
    assert len((await store.orders("s1"))[0]) == 1
    await check_invariants(store, "s1")


async def test_a_replayed_first_answer_says_so(store: StockStore) -> None:
    await store.open_sale(spec(stock=1))
    first = await store.purchase(buy("u1", 1, "r-1"))
    assert first.status is OK and not first.replayed
    [again, other] = await store.purchase_many([buy("u1", 1, "r-1"), buy("u2", 1, "r-2")])
    assert again == first and again.replayed
    assert other.status is SOLD_OUT and not other.replayed
    assert (await store.purchase(buy("u2", 1, "r-2"))).replayed


async def test_retry_returns_the_first_answer_even_when_things_changed(
    store: StockStore, clock: FakeClock
) -> None:
    await store.open_sale(spec(stock=1, per_user_limit=1))
    ok = await store.purchase(buy("u1", 1, "r-ok"))
    sold_out = await store.purchase(buy("u2", 1, "r-late"))
    assert sold_out.status is SOLD_OUT and sold_out.remaining == 0
    await store.restock("s1", 5)
    assert await store.purchase(buy("u2", 1, "r-late")) == sold_out  # still sold out
    assert ok.order_id is not None and await store.cancel_order("s1", ok.order_id)
    assert await store.purchase(buy("u1", 1, "r-ok")) == ok  # not bought again
    clock.set(T0 + 600)
    assert await store.purchase(buy("u1", 1, "r-ok")) == ok
    # a retry with other details is still the same request: the first answer
    assert await store.purchase(buy("u1", 2, "r-ok")) == ok
    state = await store.state("s1")
    assert (state.sold, state.remaining) == (0, 6)


async def test_request_id_of_another_user_is_an_error_and_not_remembered(
    store: StockStore,
) -> None:
    await store.open_sale(spec())
    mine = await store.purchase(buy("u1", 1, "shared"))
    theirs = await store.purchase(buy("u2", 1, "shared"))
    assert shape(theirs) == (ERROR, None, 1, None)
    assert mine.order_id is not None and mine.order_id not in theirs.message
    assert await store.purchase(buy("u1", 1, "shared")) == mine
    assert (await store.state("s1")).sold == 1


async def test_purchase_before_start_is_not_open(store: StockStore, clock: FakeClock) -> None:
    await store.open_sale(spec(starts_at=T0 + 10))
    clock.set(T0 + 9.999)
    result = await store.purchase(buy())
    assert shape(result) == (NOT_OPEN, None, 1, 10)
    clock.set(T0 + 10)
    assert (await store.purchase(buy())).status is OK


async def test_not_open_before_start_is_not_remembered_so_the_same_attempt_buys_later(
    store: StockStore, clock: FakeClock
) -> None:
    await store.open_sale(spec(starts_at=T0 + 10))
    clock.set(T0 + 5)
    early = await store.purchase(buy("u1", 1, "r-early"))
    assert early.status is NOT_OPEN and early.message == "sale has not started"
    clock.set(T0 + 10)
    late = await store.purchase(buy("u1", 1, "r-early"))  # same attempt, now open
    assert late.status is OK and late.order_id == "s1-1"
    assert await store.purchase(buy("u1", 1, "r-early")) == late  # and that answer sticks
    await check_invariants(store, "s1")


async def test_not_open_after_end_is_final_for_its_request_id(
    store: StockStore, clock: FakeClock
) -> None:
    await store.open_sale(spec(stock=1))
    assert (await store.purchase(buy("u1", 1, "r-1"))).status is OK
    clock.set(T0 + 600)
    ended = await store.purchase(buy("u2", 1, "r-2"))  # sold out, then ended: not_open wins
    assert ended.status is NOT_OPEN and ended.message == "sale has ended"
    assert (await store.purchase(buy("u1", 1, "r-1"))).status is OK  # first answers stay


async def test_recent_sales_lists_sales_ending_since_in_opening_order(
    store: StockStore, clock: FakeClock
) -> None:
    await store.open_sale(spec("old", ends_at=T0 + 10))
    clock.advance(1)
    await store.open_sale(spec("b", room="直播间-1", starts_at=T0 + 100, ends_at=T0 + 200))
    clock.advance(1)
    await store.open_sale(spec("a", stock=3))
    await store.close_sale("a")
    assert [s.sale_id for s in await store.recent_sales(T0)] == ["old", "b", "a"]
    states = await store.recent_sales(T0 + 11)
    assert [s.sale_id for s in states] == ["b", "a"]
    b, a = states
    assert (b.room, b.status, b.opened_at) == ("直播间-1", SaleStatus.SCHEDULED, T0 + 1)
    assert (a.closed, a.remaining, a.opened_at) == (True, 3, T0 + 2)
    assert a == await store.state("a")
    assert await store.recent_sales(T0 + 10_000) == []


async def test_purchase_at_or_after_end_is_not_open(store: StockStore, clock: FakeClock) -> None:
    await store.open_sale(spec())
    clock.set(T0 + 599.999)
    assert (await store.purchase(buy("u1"))).status is OK
    clock.set(T0 + 600)
    assert (await store.purchase(buy("u2"))).status is NOT_OPEN
    clock.set(T0 + 10_000)
    assert (await store.purchase(buy("u3"))).status is NOT_OPEN


async def test_purchase_after_close_is_not_open(store: StockStore) -> None:
    await store.open_sale(spec())
    await store.close_sale("s1")
    result = await store.purchase(buy())
    assert shape(result) == (NOT_OPEN, None, 1, 10)
    assert "closed" in result.message
    assert (await store.state("s1")).sold == 0


@pytest.mark.parametrize("quantity", [0, -1, 3, 10**30])
async def test_quantity_outside_one_to_limit_is_an_error(store: StockStore, quantity: int) -> None:
    await store.open_sale(spec(per_user_limit=2))
    result = await store.purchase(buy("u1", quantity, "r-bad"))
    assert shape(result) == (ERROR, None, quantity, None)
    assert await store.purchase(buy("u1", 1, "r-bad")) == result  # remembered
    assert (await store.state("s1")).sold == 0


async def test_quantity_is_checked_before_the_sale_is_open(
    store: StockStore, clock: FakeClock
) -> None:
    await store.open_sale(spec())
    clock.set(T0 - 5)
    assert (await store.purchase(buy("u1", 0))).status is ERROR


async def test_user_over_limit_gets_limit_reached(store: StockStore) -> None:
    await store.open_sale(spec(per_user_limit=3))
    assert (await store.purchase(buy("u1", 2))).status is OK
    over = await store.purchase(buy("u1", 2))
    assert shape(over) == (LIMIT, None, 2, 8)
    assert (await store.purchase(buy("u1", 1))).status is OK
    assert (await store.purchase(buy("u1", 1))).status is LIMIT
    assert (await store.purchase(buy("u2", 3))).status is OK
    await check_invariants(store, "s1")


async def test_limit_is_checked_before_stock(store: StockStore) -> None:
    await store.open_sale(spec(stock=1, per_user_limit=1))
    assert (await store.purchase(buy("u1"))).status is OK
    assert (await store.purchase(buy("u1"))).status is LIMIT


async def test_last_units_then_sold_out(store: StockStore) -> None:
    await store.open_sale(spec(stock=3, per_user_limit=2))
    assert shape(await store.purchase(buy("u1", 2))) == (OK, "s1-1", 2, 1)
    too_many = await store.purchase(buy("u2", 2))
    assert shape(too_many) == (SOLD_OUT, None, 2, 1)
    assert shape(await store.purchase(buy("u2", 1))) == (OK, "s1-2", 1, 0)
    assert shape(await store.purchase(buy("u3", 1))) == (SOLD_OUT, None, 1, 0)
    state = await store.state("s1")
    assert (state.remaining, state.sold, state.status) == (0, 3, SaleStatus.SOLD_OUT)
    await check_invariants(store, "s1")


async def test_restock_after_sold_out_allows_purchases(store: StockStore) -> None:
    await store.open_sale(spec(stock=1))
    assert (await store.purchase(buy("u1"))).status is OK
    assert (await store.purchase(buy("u2"))).status is SOLD_OUT
    state = await store.restock("s1", 4)
    assert (state.initial, state.restocked, state.remaining, state.sold) == (1, 4, 4, 1)
    assert state.status is SaleStatus.OPEN
    assert shape(await store.purchase(buy("u2"))) == (OK, "s1-2", 1, 3)
    await check_invariants(store, "s1")


async def test_restock_of_a_closed_sale_or_bad_quantity_is_invalid(store: StockStore) -> None:
    await store.open_sale(spec())
    for quantity in (0, -1, 10**12):
        with pytest.raises(InvalidRequest):
            await store.restock("s1", quantity)
    await store.close_sale("s1")
    with pytest.raises(InvalidRequest):
        await store.restock("s1", 1)
    assert (await store.state("s1")).restocked == 0


async def test_a_sale_may_start_empty(store: StockStore) -> None:
    state = await store.open_sale(spec(stock=0))
    assert state.status is SaleStatus.SOLD_OUT
    assert (await store.purchase(buy())).status is SOLD_OUT
    await store.restock("s1", 1)
    assert (await store.purchase(buy())).status is OK


# --- cancels --------------------------------------------------------------------------


async def test_cancel_returns_units_and_is_idempotent(store: StockStore) -> None:
    await store.open_sale(spec(stock=2, per_user_limit=2))
    first = await store.purchase(buy("u1", 2))
    assert first.order_id is not None
    assert (await store.purchase(buy("u2", 1))).status is SOLD_OUT
    assert await store.cancel_order("s1", first.order_id) is True
    state = await store.state("s1")
    assert (state.remaining, state.sold) == (2, 0)
    assert await store.cancel_order("s1", first.order_id) is False
    assert await store.state("s1") == state
    # the units and the user's allowance are back
    assert (await store.purchase(buy("u1", 2))).status is OK
    orders, _ = await store.orders("s1")
    assert [(o.order_id, o.cancelled) for o in orders] == [("s1-1", True), ("s1-2", False)]
    report = await check_invariants(store, "s1")
    assert report.sold_by_orders == 2 and report.units_by_user == {"u1": 2}


async def test_cancel_of_unknown_order_is_false(store: StockStore) -> None:
    await store.open_sale(spec())
    await store.open_sale(spec("s2"))
    other = await store.purchase(buy(sale="s2"))
    assert other.order_id == "s2-1"
    for order_id in ("s1-1", "s2-1", "", "whatever"):
        assert await store.cancel_order("s1", order_id) is False
    assert (await store.state("s2")).sold == 1


async def test_orders_of_a_closed_sale_can_be_cancelled(store: StockStore) -> None:
    await store.open_sale(spec())
    result = await store.purchase(buy())
    await store.close_sale("s1")
    assert result.order_id is not None and await store.cancel_order("s1", result.order_id)
    state = await store.state("s1")
    assert (state.remaining, state.sold, state.status) == (10, 0, SaleStatus.CLOSED)


# --- orders log -----------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 3, 7, 100])
async def test_orders_paging_returns_every_order_once(store: StockStore, limit: int) -> None:
    await store.open_sale(spec(stock=100, per_user_limit=1))
    bought = [await store.purchase(buy(f"u{i}")) for i in range(20)]
    for result in bought[::3]:  # cancel entries interleave with orders in the log
        assert result.order_id is not None
        assert await store.cancel_order("s1", result.order_id)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await store.orders("s1", cursor, limit)
        assert len(page) <= limit
        seen += [o.order_id for o in page]
        pages += 1
        if cursor is None:
            break
        assert len(page) == limit
    assert seen == [f"s1-{i}" for i in range(1, 21)]
    assert pages <= 20 // limit + 2
    await check_invariants(store, "s1")


async def test_orders_of_an_empty_sale_is_one_empty_page(store: StockStore) -> None:
    await store.open_sale(spec())
    assert await store.orders("s1") == ([], None)


async def test_orders_rejects_bad_limits_and_cursors(store: StockStore) -> None:
    await store.open_sale(spec())
    for limit in (0, -1, 1001):
        with pytest.raises(InvalidRequest):
            await store.orders("s1", None, limit)
    for cursor in ("", "x", "1-2-3", "-1"):
        with pytest.raises(InvalidRequest):
            await store.orders("s1", cursor)


# --- batches --------------------------------------------------------------------------


async def test_batched_purchases_each_get_their_own_answer(store: StockStore) -> None:
    await store.open_sale(spec(stock=3, per_user_limit=2))
    await store.open_sale(spec("s2", stock=1, per_user_limit=1))
    results = await store.purchase_many(
        [
            buy("u1", 2, "b1"),
            buy("u2", 1, "b2", sale="s2"),
            buy("u1", 1, "b3"),  # over u1's limit
            buy("u1", 2, "b1"),  # duplicate of the first: its answer, not a new order
            buy("u3", 5, "b4"),  # bad quantity
            buy("u3", 2, "b5"),  # only 1 left
            buy("u3", 1, "b6"),
            buy("u4", 1, "b7"),  # sold out now
            buy("u9", 1, "b8", sale="nope"),
            buy("u3", 1, "b2", sale="s2"),  # s2's b2 belongs to u2
            buy("u2", 1, "b2", sale="s2"),
        ]
    )
    assert [shape(r) for r in results] == [
        (OK, "s1-1", 2, 1),
        (OK, "s2-1", 1, 0),
        (LIMIT, None, 1, 1),
        (OK, "s1-1", 2, 1),
        (ERROR, None, 5, None),
        (SOLD_OUT, None, 2, 1),
        (OK, "s1-2", 1, 0),
        (SOLD_OUT, None, 1, 0),
        (NOT_FOUND, None, 1, None),
        (ERROR, None, 1, None),
        (OK, "s2-1", 1, 0),
    ]
    assert [r.request_id for r in results] == [
        "b1", "b2", "b3", "b1", "b4", "b5", "b6", "b7", "b8", "b2", "b2"
    ]  # fmt: skip
    assert results[3] == results[0] and results[10] == results[1]
    # the batch remembered its answers like single purchases do
    assert await store.purchase(buy("u3", 1, "b5")) == results[5]
    await check_invariants(store, "s1")
    await check_invariants(store, "s2")


async def test_batch_is_judged_at_one_instant(store: StockStore, clock: FakeClock) -> None:
    await store.open_sale(spec(starts_at=T0 + 1))
    clock.set(T0 + 1)
    results = await store.purchase_many([buy(f"u{i}") for i in range(5)])
    assert all(r.status is OK for r in results)
    orders, _ = await store.orders("s1")
    assert {o.ts_ms for o in orders} == {int((T0 + 1) * 1000)}


async def test_big_batches_are_answered_in_order(store: StockStore) -> None:
    n = SCRIPT_BATCH * 2 + 17
    await store.open_sale(spec(stock=n - 10, per_user_limit=1))
    results = await store.purchase_many([buy(f"u{i}", 1, f"big{i}") for i in range(n)])
    assert [r.request_id for r in results] == [f"big{i}" for i in range(n)]
    assert [r.order_id for r in results[: n - 10]] == [f"s1-{i}" for i in range(1, n - 9)]
    assert {r.status for r in results[n - 10 :]} == {SOLD_OUT}
    assert await store.purchase_many([]) == []
    with pytest.raises(InvalidRequest):
        await store.purchase_many([buy()] * (MAX_BATCH + 1))
    await check_invariants(store, "s1")


# --- concurrency ----------------------------------------------------------------------


def _crowd(sale: str, users: int, requests: int, seed: int) -> list[PurchaseRequest]:
    rng = random.Random(seed)
    return [
        PurchaseRequest(sale, f"user{rng.randrange(users)}", 1, f"c{seed}-{i}")
        for i in range(requests)
    ]


async def test_invariants_hold_after_concurrent_purchases(store: StockStore) -> None:
    units = 300
    await store.open_sale(spec(stock=units, per_user_limit=2))
    crowd = _crowd("s1", users=500, requests=2000, seed=1)
    # some buyers retry (the same request id twice) while their first try is in flight
    crowd += crowd[::10]
    results = await asyncio.gather(*(store.purchase(r) for r in crowd))
    ok = {r.request_id for r in results if r.status is OK}
    assert len(ok) == units
    assert {r.status for r in results} <= {OK, SOLD_OUT, LIMIT}
    report = await check_invariants(store, "s1")
    assert report.state.sold == units and report.state.remaining == 0
    assert {o.request_id for o in report.orders} == ok


async def test_invariants_hold_after_concurrent_batches(store: StockStore) -> None:
    units = 300
    await store.open_sale(spec(stock=units, per_user_limit=2))
    crowd = _crowd("s1", users=500, requests=2000, seed=2)
    batches = [crowd[i : i + 50] for i in range(0, len(crowd), 50)]
    answers = await asyncio.gather(*(store.purchase_many(b) for b in batches))
    results = [r for batch in answers for r in batch]
    assert sum(r.status is OK for r in results) == units
    report = await check_invariants(store, "s1")
    assert report.state.sold == units and len(report.orders) == units


async def test_concurrent_cancels_return_units_once(store: StockStore) -> None:
    await store.open_sale(spec(stock=50, per_user_limit=1))
    bought = await store.purchase_many([buy(f"u{i}") for i in range(50)])
    ids = [r.order_id for r in bought if r.order_id is not None]
    done = await asyncio.gather(*(store.cancel_order("s1", i) for i in ids * 3))
    assert sum(done) == 50
    state = await store.state("s1")
    assert (state.remaining, state.sold) == (50, 0)
    await check_invariants(store, "s1")


# --- lifecycle and validation ---------------------------------------------------------


async def test_a_closed_store_raises_store_unavailable(store: StockStore) -> None:
    await store.open_sale(spec())
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.purchase(buy())
    with pytest.raises(StoreUnavailable):
        await store.state("s1")
    await store.close()  # idempotent


async def test_bad_sale_ids_are_invalid(store: StockStore) -> None:
    for sale_id in ("", "a b", "x" * 65, "{sale:1}", "a|b"):
        with pytest.raises(InvalidRequest):
            await store.state(sale_id)


def test_specs_and_requests_are_validated() -> None:
    with pytest.raises(InvalidRequest):
        spec(ends_at=T0)
    with pytest.raises(InvalidRequest):
        spec(stock=-1)
    with pytest.raises(InvalidRequest):
        spec(price=1.5)
    with pytest.raises(InvalidRequest):
        spec(per_user_limit=0)
    with pytest.raises(InvalidRequest):
        spec(starts_at=float("nan"))
    with pytest.raises(InvalidRequest):
        spec(room="no spaces")
    with pytest.raises(InvalidRequest):
        PurchaseRequest("s1", "", 1, "r")
    with pytest.raises(InvalidRequest):
        PurchaseRequest("s1", "u", 1, "")
    with pytest.raises(InvalidRequest):
        PurchaseRequest("s1", "u", True, "r")
    assert spec(starts_at=int(T0)).starts_at == T0  # ints are taken as floats


# --- Redis Cluster only -----------------------------------------------------------------


async def test_a_batch_spanning_sales_on_different_shards_is_answered_per_sale(
    redis_cluster_url: str, clock: FakeClock
) -> None:
    store = await connect(redis_cluster_url, timeout=5.0, clock=clock, cluster=True)
    try:
        client = store.client
        assert isinstance(client, RedisCluster)
        # Two sales whose keys live on different primaries.
        by_node: dict[str, str] = {}
        for i in range(100):
            sale_id = f"shard{i}"
            node = client.get_node_from_key(store.keys(sale_id)[0])
            assert node is not None
            by_node.setdefault(node.name, sale_id)
        assert len(by_node) == 3
        a, b = list(by_node.values())[:2]
        await store.open_sale(spec(a, stock=3, per_user_limit=5))
        await store.open_sale(spec(b, stock=1, per_user_limit=5))
        requests = [buy(f"u{i}", 1, f"x{i}", sale=a if i % 2 else b) for i in range(8)]
        results = await store.purchase_many(requests)
        assert [r.request_id for r in results] == [f"x{i}" for i in range(8)]
        assert [r.status for r in results if r.order_id and r.order_id.startswith(a)] == [OK] * 3
        assert sum(r.status is OK for r in results) == 4
        for sale_id in (a, b):
            await check_invariants(store, sale_id)
        assert {s.sale_id for s in await store.recent_sales(T0)} == {a, b}
    finally:
        await store.close()
