"""Unit tests of engine.sales: SaleDesk and PurchaseBatcher on the memory store.

A real :class:`~engine.room.Hub` and :class:`~engine.room.Room` carry the desk's events to
a recording subscriber (it keeps the websocket frames the room hands it and decodes the
batches); buy answers are collected through the desk's ``answer`` callback. No sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.config import StockConfig
from engine.room import Hub, Room
from engine.sales import SaleDesk, mask_name
from engine.stock import (
    MemoryStockStore,
    PurchaseRequest,
    PurchaseResult,
    SaleSpec,
    StoreUnavailable,
    check_invariants,
)
from protocol import (
    BuyResult,
    Pinned,
    Product,
    Purchase,
    SaleClosed,
    SaleOpened,
    SoldOut,
    Stock,
    Unpinned,
    Viewers,
)
from tests.conftest import RecordingSubscriber, bounded, expect, wait_for_condition

ROOM = "desk-room"


Recorder = RecordingSubscriber


@dataclass
class Harness:
    hub: Hub
    room: Room
    viewer: Recorder
    desk: SaleDesk
    store: MemoryStockStore
    answers: list[BuyResult] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the desk's purchase workers (as the server's task group would)."""
        assert self.task is None
        self.task = asyncio.create_task(self.desk.run())

    def press(
        self, user: str, sale_id: str, rid: str | int, *, qty: int = 1, retry: bool = False
    ) -> asyncio.Future[BuyResult]:
        """Press Buy; the future resolves with the press's one answer (a second one fails)."""
        answered: asyncio.Future[BuyResult] = asyncio.get_running_loop().create_future()

        def answer(result: BuyResult) -> None:
            assert not answered.done(), f"second answer {result} after {answered.result()}"
            self.answers.append(result)
            answered.set_result(result)

        self.desk.buy(
            self.room,
            user_id=user,
            name=user.title(),
            sale_id=sale_id,
            quantity=qty,
            rid=rid,
            retry=retry,
            answer=answer,
        )
        return answered

    async def buy(
        self, user: str, sale_id: str, rid: str | int, *, qty: int = 1, retry: bool = False
    ) -> BuyResult:
        async with asyncio.timeout(5):
            return await self.press(user, sale_id, rid, qty=qty, retry=retry)

    async def flushed(self) -> None:
        """Send conflated values (a tick) and let the room flush."""
        self.hub.tick()
        for _ in range(3):
            await asyncio.sleep(0)

    def last_stock(self, sale_id: str) -> int | None:
        stocks = [e for e in self.viewer.of(Stock) if isinstance(e, Stock) and e.sale_id == sale_id]
        return stocks[-1].remaining if stocks else None


@contextlib.asynccontextmanager
async def desk_harness(
    store: MemoryStockStore | None = None, *, run: bool = True, **stock: Any
) -> AsyncIterator[Harness]:
    hub = Hub(history_size=1000, snapshot_size=50, min_flush_interval=0.0)
    room = hub.room(ROOM)
    viewer = Recorder()
    room.join(viewer, offset=None, epoch=None, rid=None)
    store = store if store is not None else MemoryStockStore()
    config = StockConfig(**stock)
    harness = Harness(hub, room, viewer, SaleDesk(store, hub, config), store)
    if run:
        harness.start()
    try:
        yield harness
    finally:
        harness.desk.close()
        if harness.task is not None:
            harness.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await harness.task
        hub.close()


def spec(
    sale_id: str, stock: int, limit: int = 1, *, starts_in: float = -1.0, ends_in: float = 600.0
) -> SaleSpec:
    now = time.time()
    return SaleSpec(
        sale_id, ROOM, f"p-{sale_id}", stock, 1999, limit, now + starts_in, now + ends_in
    )


# --- masked names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三", "张**"),
        ("Alice", "A***"),
        ("", "***"),
        ("   ", "***"),
        ("李", "李**"),
        (" Bob ", "B**"),
        ("小明同学", "小***"),
        ("Maximilian", "M***"),
    ],
)
def test_mask_name_shows_the_first_character_and_hides_the_rest(name: str, masked: str) -> None:
    assert mask_name(name) == masked


# --- answers when the node or the store cannot take a press -----------------------------


@bounded(10)
async def test_a_full_queue_answers_try_again_at_once_and_queued_presses_are_still_served() -> None:
    async with desk_harness(run=False, max_pending=2) as h:
        await h.desk.open_sale(spec("busy", 10, 5))
        queued = [h.press("alice", "busy", f"q{i}") for i in range(2)]
        overflow = h.press("alice", "busy", "q-over")
        assert overflow.done()  # answered right away, nothing waits for a worker
        refused = overflow.result()
        assert (refused.status, refused.msg, refused.rid) == ("error", "try again", "q-over")
        assert h.desk.statistics().pending == 2
        assert not any(f.done() for f in queued)

        h.start()
        async with asyncio.timeout(5):
            served = [await f for f in queued]
        assert [a.status for a in served] == ["ok", "ok"]
        assert h.desk.statistics().pending == 0
        # The refused press bought nothing: its retry is a real first attempt.
        retried = await h.buy("alice", "busy", "q-over", retry=True)
        assert retried.status == "ok"
        assert (await h.store.state("busy")).sold == 3


class FlakyStore(MemoryStockStore):
    """A memory store whose purchases fail with StoreUnavailable while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def purchase_many(self, requests: Sequence[PurchaseRequest]) -> list[PurchaseResult]:
        if self.down:
            raise StoreUnavailable("redis did not answer within 0.5 s")
        return await super().purchase_many(requests)


@bounded(10)
async def test_an_unreachable_store_answers_try_again_and_a_retry_later_buys() -> None:
    store = FlakyStore()
    async with desk_harness(store) as h:
        await h.desk.open_sale(spec("flaky", 3, 1))
        store.down = True
        answers = await asyncio.gather(*(h.buy(u, "flaky", "r1") for u in ("ann", "ben")))
        for answer in answers:
            assert (answer.status, answer.msg, answer.order) == ("error", "try again", None)
        assert h.desk.statistics().purchases["error"] == 2
        store.down = False
        retried = await h.buy("ann", "flaky", "r1", retry=True)
        assert retried.status == "ok"
        assert (await check_invariants(store, "flaky")).state.sold == 1


class BuggyStore(MemoryStockStore):
    """A memory store whose next purchase call fails with an unexpected exception."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    async def purchase_many(self, requests: Sequence[PurchaseRequest]) -> list[PurchaseResult]:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a bug in the store")
        return await super().purchase_many(requests)


@bounded(10)
async def test_an_unexpected_store_failure_answers_try_again_and_later_purchases_still_work() -> (
    None
):
    store = BuggyStore()
    async with desk_harness(store) as h:
        await h.desk.open_sale(spec("buggy", 3, 1))
        store.fail_next = True
        first = await h.buy("ann", "buggy", "r1")
        assert (first.status, first.msg) == ("error", "try again")
        later = await h.buy("ben", "buggy", "r1")
        assert later.status == "ok"


class StalledStore(MemoryStockStore):
    """A memory store whose purchase calls time out (after ``timeout`` s) while ``down``."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout
        self.down = False
        self.calls = 0

    async def purchase_many(self, requests: Sequence[PurchaseRequest]) -> list[PurchaseResult]:
        self.calls += 1
        if self.down:
            await asyncio.sleep(self.timeout)
            raise StoreUnavailable(f"redis did not answer within {self.timeout} s")
        return await super().purchase_many(requests)


@bounded(10)
async def test_during_an_outage_every_waiting_press_is_answered_within_about_one_timeout() -> None:
    timeout = 0.3
    store = StalledStore(timeout)
    async with desk_harness(store, batch_max=100) as h:
        await h.desk.open_sale(spec("outage", 10, 1))
        store.down = True
        started = time.perf_counter()
        presses = [h.press(f"u{i}", "outage", "r") for i in range(1000)]  # 10 batches' worth
        async with asyncio.timeout(5):
            answers = [await p for p in presses]
        elapsed = time.perf_counter() - started
        assert all((a.status, a.msg) == ("error", "try again") for a in answers)
        # Within about one timeout, not one per batch (10 x 0.3 s); the margin is for a
        # busy machine.
        assert elapsed < 5 * timeout, f"answers took {elapsed:.2f} s"
        assert store.calls < 10
        store.down = False
        assert (await h.buy("u1", "outage", "r", retry=True)).status == "ok"


# --- sale timers --------------------------------------------------------------------------


@bounded(10)
async def test_a_sale_opens_at_its_start_and_its_end_timer_publishes_sale_closed_ended() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("timed", 5, 1, starts_in=0.3, ends_in=0.8))
        assert h.room.sale is not None and h.room.sale.status == "scheduled"
        early = await h.buy("ann", "timed", "early")
        assert early.status == "not_open"

        await wait_for_condition(lambda: h.room.sale is not None and h.room.sale.status == "open")
        assert (await h.buy("ann", "timed", "in-time")).status == "ok"

        await wait_for_condition(lambda: bool(h.viewer.of(SaleClosed)), timeout=5)
        (closed,) = h.viewer.of(SaleClosed)
        assert isinstance(closed, SaleClosed)
        assert (closed.sale_id, closed.reason) == ("timed", "ended")
        assert h.room.sale is not None and h.room.sale.status == "ended"
        assert (await h.buy("ben", "timed", "late")).status == "not_open"
        # Closing an ended sale does not announce it again.
        await h.desk.close_sale("timed")
        await h.flushed()
        assert len(h.viewer.of(SaleClosed)) == 1


@bounded(10)
async def test_closing_a_sale_publishes_sale_closed_once_and_cancels_its_end_timer() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("closing", 5, 1, ends_in=0.3))
        state = await h.desk.close_sale("closing")
        assert state.closed
        await asyncio.sleep(0.5)  # past the end: the timer was cancelled
        closed = h.viewer.of(SaleClosed)
        assert [(e.sale_id, e.reason) for e in closed if isinstance(e, SaleClosed)] == [
            ("closing", "closed")
        ]
        assert h.room.sale is not None and h.room.sale.status == "closed"
        assert (await h.buy("ann", "closing", "after")).status == "not_open"


# --- the sold-out flag, restocks and cancels ---------------------------------------------


@bounded(10)
async def test_restock_clears_the_sold_out_flag_and_publishes_the_new_stock() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("re", 1, 1))
        assert (await h.buy("ann", "re", "a1")).status == "ok"
        assert "re" in h.desk.sold_out
        local = await h.buy("ben", "re", "b1")
        assert (local.status, local.remaining) == ("sold_out", 0)
        assert h.desk.statistics().local_sold_out_answers == 1
        await h.flushed()
        assert len(h.viewer.of(SoldOut)) == 1 and h.last_stock("re") == 0
        assert h.room.sale is not None and h.room.sale.status == "sold_out"

        state = await h.desk.restock("re", 2)
        assert (state.remaining, state.restocked) == (2, 2)
        assert "re" not in h.desk.sold_out
        assert h.room.sale is not None
        assert (h.room.sale.stock, h.room.sale.remaining, h.room.sale.status) == (3, 2, "open")
        await h.flushed()
        assert h.last_stock("re") == 2
        assert (await h.buy("ben", "re", "b2")).status == "ok"
        assert (await check_invariants(h.store, "re")).state.sold == 2


@bounded(10)
async def test_cancel_order_returns_the_units_clears_the_flag_and_publishes_stock() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("cx", 1, 1))
        bought = await h.buy("ann", "cx", "a1")
        assert bought.status == "ok" and bought.order is not None
        assert "cx" in h.desk.sold_out

        assert await h.desk.cancel_order("cx", bought.order) is True
        assert "cx" not in h.desk.sold_out
        assert h.room.sale is not None
        assert (h.room.sale.remaining, h.room.sale.status) == (1, "open")
        await h.flushed()
        assert h.last_stock("cx") == 1
        # The unit and the buyer's allowance are back.
        again = await h.buy("ann", "cx", "a2")
        assert again.status == "ok" and again.order != bought.order
        assert await h.desk.cancel_order("cx", bought.order) is False
        report = await check_invariants(h.store, "cx")
        assert (report.state.sold, report.state.remaining) == (1, 0)


@bounded(10)
async def test_a_sale_opened_empty_is_sold_out_until_restocked() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("empty", 0, 1))
        assert "empty" in h.desk.sold_out
        assert h.room.sale is not None and h.room.sale.status == "sold_out"
        assert (await h.buy("ann", "empty", "a1")).status == "sold_out"
        await h.desk.restock("empty", 1)
        assert (await h.buy("ann", "empty", "a2")).status == "ok"


# --- answers and what the room sees --------------------------------------------------------


@bounded(10)
async def test_replayed_answers_are_not_shown_to_the_room_again_nor_move_its_stock() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("replay", 2, 1))
        first = await h.buy("ann", "replay", "a1")
        assert (first.status, first.remaining) == ("ok", 1)
        assert (await h.buy("ben", "replay", "b1")).remaining == 0
        assert await h.buy("ann", "replay", "a1", retry=True) == first
        # Without the retry flag the node may answer from its sold-out flag (SPEC §9.3).
        assert (await h.buy("ann", "replay", "a1")).status == "sold_out"
        assert "replay" in h.desk.sold_out
        assert h.room.sale is not None and (h.room.sale.remaining, h.room.sale.status) == (
            0,
            "sold_out",
        )
        await h.flushed()
        purchases = h.viewer.of(Purchase)
        assert [e.name for e in purchases if isinstance(e, Purchase)] == ["A**", "B**"]
        assert h.last_stock("replay") == 0
        assert len(h.viewer.of(SoldOut)) == 1


class ReorderingStore(MemoryStockStore):
    """Decides each batch at once, but the first call's answer comes back late."""

    def __init__(self, first_delay: float) -> None:
        super().__init__()
        self.delays = [first_delay]

    async def purchase_many(self, requests: Sequence[PurchaseRequest]) -> list[PurchaseResult]:
        results = await super().purchase_many(requests)
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0.0)
        return results


@bounded(10)
async def test_room_events_follow_the_store_decisions_even_when_a_call_answers_late() -> None:
    async with desk_harness(ReorderingStore(0.3), batch_window_ms=1) as h:
        await h.desk.open_sale(spec("order", 2, 1))
        ann = h.press("ann", "order", "a1")
        await asyncio.sleep(0.05)  # ann's batch is decided, its answer still on the way
        ben = h.press("ben", "order", "b1")
        async with asyncio.timeout(5):
            answers = [await ann, await ben]
        assert [(a.status, a.remaining) for a in answers] == [("ok", 1), ("ok", 0)]
        await h.flushed()
        purchases = h.viewer.of(Purchase)
        assert [e.name for e in purchases if isinstance(e, Purchase)] == ["A**", "B**"]
        assert h.last_stock("order") == 0
        assert len(h.viewer.of(SoldOut)) == 1
        assert "order" in h.desk.sold_out
        assert h.room.sale is not None and h.room.sale.status == "sold_out"


@bounded(10)
async def test_batched_presses_get_their_own_answers_and_statistics_count_them() -> None:
    async with desk_harness(batch_window_ms=5, batch_max=50) as h:
        await h.desk.open_sale(spec("many", 30, 2))
        presses = [h.press(f"u{i}", "many", "r", qty=1 + i % 2) for i in range(40)]
        async with asyncio.timeout(5):
            answers = [await p for p in presses]
        assert all(a.rid == "r" for a in answers)
        assert [a.qty for a in answers] == [1 + i % 2 for i in range(40)]
        assert sum(a.qty or 0 for a in answers if a.status == "ok") == 30
        stats = h.desk.statistics()
        assert stats.store_calls < 40
        assert sum(stats.purchases.values()) == 40 == len(h.answers)
        assert stats.purchases["ok"] == sum(a.status == "ok" for a in answers)
        assert stats.store_seconds_total >= 0
        await check_invariants(h.store, "many")


@bounded(10)
async def test_more_than_the_limit_at_once_is_limit_reached_and_unknown_sales_are_errors() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("lim", 10, 2))
        greedy = await h.buy("ann", "lim", "g1", qty=3)
        assert (greedy.status, greedy.qty, greedy.order) == ("limit_reached", 3, None)
        assert (await h.buy("ann", "lim", "g2", qty=2)).status == "ok"
        assert (await h.buy("ann", "lim", "g3")).status == "limit_reached"
        unknown = await h.buy("ann", "nope", "u1")
        assert (unknown.status, unknown.msg) == ("error", "unknown sale")
        # A sale of another room is unknown in this one.
        other = h.hub.room("other-room")
        answers: list[BuyResult] = []
        h.desk.buy(
            other,
            user_id="ann",
            name="Ann",
            sale_id="lim",
            quantity=1,
            rid="o1",
            retry=False,
            answer=answers.append,
        )
        assert [(a.status, a.msg) for a in answers] == [("error", "unknown sale")]


@bounded(10)
async def test_pin_and_unpin_set_the_room_card_and_publish_events() -> None:
    async with desk_harness() as h:
        product = Product(id="cup", title="保温杯", price=5900, currency="CNY")
        await h.desk.pin(ROOM, product)
        assert h.room.pin == product
        assert (await h.desk.unpin(ROOM)) is True
        assert h.room.pin is None
        assert (await h.desk.unpin(ROOM)) is False
        await h.desk.open_sale(spec("pinned", 1, 1))
        await h.flushed()
        events = [e for e in h.viewer.events() if not isinstance(e, Viewers)]
        kinds = [type(e) for e in events]
        assert kinds == [Pinned, Unpinned, SaleOpened]
        assert expect(events[0], Pinned).product == product
        with pytest.raises(KeyError):
            await h.desk.pin("no-such-room", product)


# --- answers SPEC 9.3 fixes, and sales the node learns from the store ---------------------


@bounded(10)
async def test_a_press_before_the_start_is_not_recorded_so_the_same_rid_buys_once_open() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("soon", 5, 1, starts_in=0.3))
        early = await h.buy("ann", "soon", "x1")
        assert (early.status, early.msg) == ("not_open", "sale has not started")
        early_retry = await h.buy("ann", "soon", "x1", retry=True)  # reaches the store
        assert early_retry.status == "not_open"
        await asyncio.sleep(0.35)
        bought = await h.buy("ann", "soon", "x1")
        assert bought.status == "ok" and bought.order == "soon-1"
        assert (await h.buy("ann", "soon", "x1", retry=True)).order == "soon-1"


@bounded(10)
async def test_a_sale_that_sold_out_and_then_ended_answers_not_open() -> None:
    async with desk_harness() as h:
        await h.desk.open_sale(spec("brief", 1, 1, ends_in=0.3))
        assert (await h.buy("ann", "brief", "a1")).status == "ok"
        assert (await h.buy("ben", "brief", "b1")).status == "sold_out"  # local flag
        await asyncio.sleep(0.35)
        late = await h.buy("cat", "brief", "c1")
        assert (late.status, late.msg) == ("not_open", "sale has ended")
        assert (await h.buy("cat", "brief", "c2", retry=True)).status == "not_open"  # store too
        first = await h.buy("ann", "brief", "a1", retry=True)  # first answers stay
        assert (first.status, first.order) == ("ok", "brief-1")


@bounded(10)
async def test_a_desk_learns_sales_from_the_store_at_start_and_on_a_press() -> None:
    store = MemoryStockStore()
    async with desk_harness(store) as first:
        await first.desk.open_sale(spec("old", 5, 2))
        await first.desk.open_sale(spec("new", 5, 2))
        assert (await first.buy("ann", "new", "a1")).status == "ok"
    # A new desk on the same store (a restarted node): the latest sale shows at once.
    async with desk_harness(store) as second:
        assert await second.desk.load() == 2
        second.desk.attach(second.room)
        assert second.room.sale is not None and second.room.sale.id == "new"
        assert second.room.sale.remaining == 4
        again = await second.buy("ann", "new", "a1", retry=True)
        assert (again.status, again.order) == ("ok", "new-1")
        assert (await second.buy("ben", "old", "b1")).status == "ok"
        # A Buy for a sale opened elsewhere after the start is looked up, not refused.
        await store.open_sale(spec("later", 1, 1))
        assert (await second.buy("cat", "later", "c1")).status == "ok"
        assert (await second.buy("dan", "nope", "d1")).msg == "unknown sale"
        assert second.desk.statistics().lookups == 2
        other = SaleSpec("elsewhere", "other-room", "p", 5, 1, 1, time.time() - 1, time.time() + 60)
        await store.open_sale(other)
        assert (await second.buy("eve", "elsewhere", "e1")).msg == "unknown sale"


@bounded(10)
async def test_a_room_dropped_and_made_again_gets_its_pin_and_sale_back() -> None:
    async with desk_harness() as h:
        product = Product(id="p1", title="保温杯", price=9900)
        await h.desk.pin(ROOM, product)
        await h.desk.open_sale(spec("kept", 3, 1))
        h.room.leave(h.viewer)
        del h.hub.rooms[ROOM]  # dropped (empty for longer than the TTL, or to make room)
        again = h.hub.room(ROOM)
        assert again is not h.room and again.pin is None and again.sale is None
        h.desk.attach(again)
        assert again.pin == product
        assert again.sale is not None and again.sale.id == "kept"
        assert (await h.desk.unpin(ROOM)) is True
        h.desk.attach(again)
        assert again.pin is None


@bounded(10)
async def test_a_service_call_for_a_sale_the_node_never_saw_reaches_the_room() -> None:
    store = MemoryStockStore()
    async with desk_harness(store) as other:  # another node (or this one, before a restart)
        await other.desk.open_sale(spec("far", 2, 1))
    async with desk_harness(store) as h:  # no load(): the desk has never heard of "far"
        assert "far" not in h.desk.sales
        await h.desk.restock("far", 3)
        await h.flushed()
        assert h.last_stock("far") == 5
        assert h.room.sale is not None and (h.room.sale.id, h.room.sale.stock) == ("far", 5)
        await h.desk.close_sale("far")
        await h.flushed()
        closed = [e for e in h.viewer.of(SaleClosed) if isinstance(e, SaleClosed)]
        assert [(e.sale_id, e.reason) for e in closed] == [("far", "closed")]
        assert h.room.sale.status == "closed"
        assert (await h.buy("ann", "far", "a1")).status == "not_open"
