"""Random histories against a plain model of the purchase rules, for both stores.

A hypothesis state machine drives purchases, retries (earlier request ids, by their user or
by someone else), batches (with repeated request ids inside), restocks, cancels, closes
and clock moves; every answer and, after every step, every sale's state must equal what a
few lines of plain Python (:class:`Model`) predict. Each machine runs its store on its
own event loop (one ``run_until_complete`` per step).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine.stock import (
    InvalidRequest,
    MemoryStockStore,
    PurchaseRequest,
    PurchaseResult,
    PurchaseStatus,
    SaleSpec,
    SaleStatus,
    StockStore,
    check_invariants,
    connect,
)
from tests.redis_fixture import T0, FakeClock

__all__: list[str] = []

T = TypeVar("T")
S = PurchaseStatus
StoreFactory = Callable[[FakeClock], Awaitable[StockStore]]

SALES = ("s1", "s2")
STARTS, ENDS = T0 + 10, T0 + 20
INSTANTS = (T0, STARTS - 0.001, STARTS, T0 + 15, ENDS - 0.001, ENDS, T0 + 30)
users = st.sampled_from(("u1", "u2", "u3"))
sales = st.sampled_from(SALES)
any_sale = st.sampled_from((*SALES, "s404"))
quantities = st.integers(min_value=-1, max_value=4)

Answer = tuple[S, str | None, int, int | None]  # status, order id, quantity, remaining


# --- the model ------------------------------------------------------------------------


@dataclasses.dataclass
class ModelSale:
    sale_id: str
    stock: int
    limit: int
    closed: bool = False
    restocked: int = 0
    sold: int = 0
    held: dict[str, int] = dataclasses.field(default_factory=dict)
    answers: dict[str, tuple[str, Answer]] = dataclasses.field(default_factory=dict)
    orders: list[tuple[str, str, int, str]] = dataclasses.field(default_factory=list)
    cancelled: set[str] = dataclasses.field(default_factory=set)

    @property
    def remaining(self) -> int:
        return self.stock + self.restocked - self.sold

    def status(self, now: float) -> SaleStatus:
        if self.closed:
            return SaleStatus.CLOSED
        if now < STARTS:
            return SaleStatus.SCHEDULED
        if now >= ENDS:
            return SaleStatus.ENDED
        return SaleStatus.OPEN if self.remaining > 0 else SaleStatus.SOLD_OUT


class Model:
    """The rules of engine.stock.base, written as plainly as possible."""

    def __init__(self) -> None:
        self.sales: dict[str, ModelSale] = {}

    def purchase(self, sale_id: str, user: str, quantity: int, rid: str, now: float) -> Answer:
        sale = self.sales.get(sale_id)
        if sale is None:
            return (S.NOT_FOUND, None, quantity, None)
        if rid in sale.answers:
            owner, first = sale.answers[rid]
            return first if owner == user else (S.ERROR, None, quantity, None)
        answer: Answer
        if quantity < 1 or quantity > sale.limit:
            answer = (S.ERROR, None, quantity, None)
        elif sale.closed or not STARTS <= now < ENDS:
            answer = (S.NOT_OPEN, None, quantity, sale.remaining)
        elif sale.held.get(user, 0) + quantity > sale.limit:
            answer = (S.LIMIT_REACHED, None, quantity, sale.remaining)
        elif sale.remaining < quantity:
            answer = (S.SOLD_OUT, None, quantity, sale.remaining)
        else:
            order_id = f"{sale_id}-{len(sale.orders) + 1}"
            sale.sold += quantity
            sale.held[user] = sale.held.get(user, 0) + quantity
            sale.orders.append((order_id, user, quantity, rid))
            answer = (S.OK, order_id, quantity, sale.remaining)
        if not (answer[0] is S.NOT_OPEN and not sale.closed and now < STARTS):
            sale.answers[rid] = (user, answer)  # "not started yet" is not final
        return answer

    def cancel(self, sale_id: str, order_id: str) -> bool:
        sale = self.sales[sale_id]
        found = [o for o in sale.orders if o[0] == order_id]
        if not found or order_id in sale.cancelled:
            return False
        _, user, quantity, _ = found[0]
        sale.cancelled.add(order_id)
        sale.sold -= quantity
        sale.held[user] -= quantity
        return True


# --- the machine ----------------------------------------------------------------------


def shape(result: PurchaseResult) -> Answer:
    return result.status, result.order_id, result.quantity, result.remaining


class StockMachine(RuleBasedStateMachine):
    def __init__(self, factory: StoreFactory) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(T0 + 15)
        self.store = self.run(factory(self.clock))
        self.model = Model()
        self.used: list[tuple[str, str, str]] = []  # (sale, user, request id)
        self.order_ids: list[tuple[str, str]] = []  # (sale, order id)
        self.next_rid = 0

    def run(self, coro: Awaitable[T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(30):
                return await coro

        return self.loop.run_until_complete(bounded())

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()

    def new_rid(self) -> str:
        self.next_rid += 1
        return f"r{self.next_rid}"

    def expect_purchases(
        self, requests: list[PurchaseRequest], results: list[PurchaseResult]
    ) -> None:
        now = self.clock()
        assert len(results) == len(requests)
        for request, result in zip(requests, results, strict=True):
            expected = self.model.purchase(
                request.sale_id, request.user_id, request.quantity, request.request_id, now
            )
            assert shape(result) == expected, (request, result)
            assert result.request_id == request.request_id
            if (request.sale_id, request.user_id, request.request_id) not in self.used:
                self.used.append((request.sale_id, request.user_id, request.request_id))
            if (
                result.order_id is not None
                and (request.sale_id, result.order_id) not in self.order_ids
            ):
                self.order_ids.append((request.sale_id, result.order_id))

    @initialize(
        stock1=st.integers(0, 4), limit1=st.integers(1, 3), stock2=st.integers(0, 4),
        limit2=st.integers(1, 3),
    )  # fmt: skip
    def open_sales(self, stock1: int, limit1: int, stock2: int, limit2: int) -> None:
        for sale_id, stock, limit in (("s1", stock1, limit1), ("s2", stock2, limit2)):
            spec = SaleSpec(sale_id, "room", "prod", stock, 500, limit, STARTS, ENDS)
            state = self.run(self.store.open_sale(spec))
            assert state.remaining == stock
            self.model.sales[sale_id] = ModelSale(sale_id, stock, limit)

    @rule(sale=any_sale, user=users, quantity=quantities)
    def purchase(self, sale: str, user: str, quantity: int) -> None:
        request = PurchaseRequest(sale, user, quantity, self.new_rid())
        self.expect_purchases([request], [self.run(self.store.purchase(request))])

    @precondition(lambda self: bool(self.used))
    @rule(data=st.data(), same_user=st.booleans(), user=users, quantity=quantities)
    def retry(self, data: st.DataObject, same_user: bool, user: str, quantity: int) -> None:
        sale, first_user, rid = data.draw(st.sampled_from(self.used))
        request = PurchaseRequest(sale, first_user if same_user else user, quantity, rid)
        self.expect_purchases([request], [self.run(self.store.purchase(request))])

    @rule(items=st.lists(st.tuples(any_sale, users, quantities, st.integers(-3, 50)), max_size=8))
    def purchase_many(self, items: list[tuple[str, str, int, int]]) -> None:
        pool = list(self.used)
        requests = []
        for sale, user, quantity, choice in items:
            if choice < 0 or not pool:  # a new request id
                request = PurchaseRequest(sale, user, quantity, self.new_rid())
                pool.append((sale, user, request.request_id))
            else:  # an earlier one, possibly from this very batch, by its user
                sale, user, rid = pool[choice % len(pool)]
                request = PurchaseRequest(sale, user, quantity, rid)
            requests.append(request)
        self.expect_purchases(requests, self.run(self.store.purchase_many(requests)))

    @rule(sale=sales, quantity=st.integers(1, 3))
    def restock(self, sale: str, quantity: int) -> None:
        model = self.model.sales[sale]
        if model.closed:
            with pytest.raises(InvalidRequest):
                self.run(self.store.restock(sale, quantity))
        else:
            state = self.run(self.store.restock(sale, quantity))
            model.restocked += quantity
            assert state.remaining == model.remaining

    @rule(data=st.data(), sale=sales, bogus=st.booleans())
    def cancel(self, data: st.DataObject, sale: str, bogus: bool) -> None:
        if bogus or not self.order_ids:
            order_id = data.draw(st.sampled_from(("s1-99", "s2-1", "nope")))
        else:
            sale, order_id = data.draw(st.sampled_from(self.order_ids))
        done = self.run(self.store.cancel_order(sale, order_id))
        assert done is self.model.cancel(sale, order_id)

    @rule(sale=sales)
    def close(self, sale: str) -> None:
        state = self.run(self.store.close_sale(sale))
        self.model.sales[sale].closed = True
        assert state.closed

    @rule(instant=st.sampled_from(INSTANTS))
    def move_clock(self, instant: float) -> None:
        self.clock.set(instant)

    @rule(sale=sales, limit=st.integers(1, 4))
    def orders_match(self, sale: str, limit: int) -> None:
        report = self.run(check_invariants(self.store, sale))
        model = self.model.sales[sale]
        assert [(o.order_id, o.user_id, o.quantity, o.request_id) for o in report.orders] == (
            model.orders
        )
        assert {o.order_id for o in report.orders if o.cancelled} == model.cancelled
        assert report.units_by_user == {u: n for u, n in model.held.items() if n}
        paged: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = self.run(self.store.orders(sale, cursor, limit))
            paged += [o.order_id for o in page]
            if cursor is None:
                break
        assert paged == [o[0] for o in model.orders]

    @invariant()
    def states_match(self) -> None:
        if not self.model.sales:
            return
        now = self.clock()
        for sale_id, model in self.model.sales.items():
            state = self.run(self.store.state(sale_id))
            assert (state.closed, state.initial, state.restocked, state.remaining, state.sold) == (
                model.closed,
                model.stock,
                model.restocked,
                model.remaining,
                model.sold,
            )
            assert state.status is model.status(now)
            assert state.per_user_limit == model.limit


def _run(factory: StoreFactory, examples: int) -> None:
    class Machine(StockMachine):
        def __init__(self) -> None:
            super().__init__(factory)

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_memory_store_follows_the_model() -> None:
    async def factory(clock: FakeClock) -> StockStore:
        return MemoryStockStore(clock=clock)

    _run(factory, examples=200)


def test_redis_store_follows_the_model(redis_url: str) -> None:
    async def factory(clock: FakeClock) -> StockStore:
        store = await connect(redis_url, timeout=5.0, clock=clock)
        await store.client.flushall()
        return store

    _run(factory, examples=60)
