"""Flash sales and product pins on one node: the bridge between rooms and the stock store.

``SaleDesk`` opens, closes and restocks sales through the :class:`~engine.stock.StockStore`,
answers viewers' Buy presses, and publishes what the room sees: pins, sale opened /
closed, "a viewer bought", sold out, and the live stock count (conflated).

Guarantees:
- Every Buy press gets exactly one answer: the store's, the local sold-out flag's, or an
  ``error`` with msg "try again" (the node's queue is full, or the store is unreachable:
  bounded by ``stock.redis_timeout``: when a store call finds the store unreachable, every
  press waiting on the node gets that answer too). A retry with the same request id is
  safe: the store remembers every answer by ``<user id>:<rid>`` (its SHA-256 when that is
  longer than a store request id may be).
- Buy presses are gathered for up to ``stock.batch_window_ms`` (or ``stock.batch_max``)
  and sent to the store in one call; each buyer still gets its own answer. At most
  ``stock.max_pending`` presses wait on a node; workers are owned by the server's task
  group (no task per press). One store call is in flight at a time, so answers arrive in
  the order the store decided them.
- Once a sale is sold out, this node answers new presses (``retry`` false) from a local
  flag without touching the store; a press flagged ``retry`` still goes to the store, so a
  retried request always gets its first answer. A restock or a cancel clears the flag.
- Room events are published in the order the store decided them. A replayed first answer
  (a retry) is not shown to the room again, and an answer to a ``retry`` press (possibly
  decided long ago) never moves the room's stock, status or sold-out flag.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine.config import StockConfig
from engine.room import Hub, Room
from engine.stock import (
    PurchaseRequest,
    PurchaseResult,
    PurchaseStatus,
    SaleSpec,
    SaleState,
    StockError,
    StockStore,
    StoreUnavailable,
)
from engine.stock._answers import REASONS
from engine.stock.base import MAX_REQUEST_ID_LENGTH
from protocol import (
    BuyResult,
    Pinned,
    Product,
    Purchase,
    SaleClosed,
    SaleInfo,
    SaleOpened,
    SoldOut,
    Stock,
    SystemMessage,
    Unpinned,
)

log = logging.getLogger("liveroom.sales")

__all__ = ["PurchaseBatcher", "SaleDesk", "SaleDeskStatistics", "mask_name"]

Answer = Callable[[BuyResult], None]
_Done = Callable[[PurchaseResult | StockError], None]


def mask_name(name: str) -> str:
    """A display name as other viewers see it in "someone just bought": ``张**``, ``A***``."""
    name = name.strip()
    if not name:
        return "***"
    return name[0] + "*" * min(3, max(2, len(name) - 1))


def _request_id(user_id: str, rid: str | int) -> str:
    """The store's request id of a press: the rid scoped by user, within the store's limit.

    Unambiguous: the user id's length prefix keeps ``a:b`` + ``c`` apart from ``a`` +
    ``b:c``, and the rid's type tag keeps the integer 5 apart from the string "5".
    """
    kind = "i" if isinstance(rid, int) else "s"
    key = f"{len(user_id)}:{user_id}:{kind}{rid}"
    if len(key) <= MAX_REQUEST_ID_LENGTH:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def sale_info(state: SaleState) -> SaleInfo:
    """The protocol's sale snapshot of a store state."""
    return SaleInfo(
        id=state.sale_id,
        product_id=state.product_id,
        price=state.price,
        limit=state.per_user_limit,
        stock=state.initial + state.restocked,
        remaining=state.remaining,
        starts=_ms(state.starts_at),
        ends=_ms(state.ends_at),
        status=str(state.status),
    )


class PurchaseBatcher:
    """Gathers purchase requests into ``purchase_many`` calls, with bounded waiting.

    ``submit`` never blocks; :meth:`run` (one task per worker, owned by the caller) takes a
    first request, waits ``window`` seconds for more unless ``batch_max`` are already
    waiting, and sends them in one store call. ``workers`` calls may be in flight at once.
    """

    def __init__(
        self,
        store: StockStore,
        *,
        window: float,
        batch_max: int,
        max_pending: int,
        workers: int = 4,
        on_round_trip: Callable[[float, int], None] | None = None,
    ) -> None:
        self.store = store
        self.window = window
        self.batch_max = batch_max
        self.workers = workers
        self._queue: asyncio.Queue[tuple[PurchaseRequest, _Done]] = asyncio.Queue(max_pending)
        self._on_round_trip = on_round_trip

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, request: PurchaseRequest, done: _Done) -> bool:
        """Queue a request; ``done`` gets its result (or the store's error). False if full."""
        try:
            self._queue.put_nowait((request, done))
        except asyncio.QueueFull:
            return False
        return True

    async def run(self) -> None:
        """Run ``workers`` workers until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            for _ in range(self.workers):
                tasks.create_task(self._work())

    async def _work(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            if self.window > 0 and queue.qsize() < self.batch_max - 1:
                await asyncio.sleep(self.window)
            while len(batch) < self.batch_max and not queue.empty():
                batch.append(queue.get_nowait())
            started = time.perf_counter()
            try:
                results: list[PurchaseResult] | StockError = await self.store.purchase_many(
                    [request for request, _ in batch]
                )
            except StockError as exc:
                results = exc
            except Exception as exc:  # a bug must not stop every later purchase on the node
                log.exception("stock store failed on a batch of %d purchases", len(batch))
                results = StoreUnavailable(f"store failure: {type(exc).__name__}")
            if self._on_round_trip is not None:
                self._on_round_trip(time.perf_counter() - started, len(batch))
            for i, (_, done) in enumerate(batch):
                try:
                    done(results if isinstance(results, StockError) else results[i])
                except Exception:
                    log.exception("answering a purchase failed")
            if isinstance(results, StoreUnavailable):
                # Unreachable: the waiting presses get the same answer now, not one timeout
                # per batch later (one call in flight would make that wait add up).
                while not queue.empty():
                    queue.get_nowait()[1](results)


@dataclass(frozen=True, slots=True)
class SaleDeskStatistics:
    purchases: dict[str, int]  # answers by status, incl. local sold-out answers
    local_sold_out_answers: int
    pending: int
    store_calls: int
    store_seconds_total: float  # summed store round trips of purchase batches


class SaleDesk:
    """Pins and sales of this node's rooms. Service API calls and Buy presses land here."""

    def __init__(
        self,
        store: StockStore,
        hub: Hub,
        config: StockConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hub = hub
        self.clock = clock
        self.batcher = PurchaseBatcher(
            store,
            window=config.batch_window_ms / 1000,
            batch_max=config.batch_max,
            max_pending=config.max_pending,
            on_round_trip=self._count_round_trip,
            workers=1,  # one call in flight: answers come back in the store's order
        )
        self.sold_out: set[str] = set()  # local flags
        # sale id -> request ids whose ok / sold_out answer the room has already been shown
        self._shown: dict[str, set[str]] = {}
        self.sale_rooms: dict[str, str] = {}  # sale id -> room, for sales opened via this node
        self.answers: Counter[str] = Counter()
        self.local_sold_out_answers = 0
        self.store_calls = 0
        self.store_seconds = 0.0
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}  # (sale, start|end)

    def _count_round_trip(self, seconds: float, _size: int) -> None:
        self.store_calls += 1
        self.store_seconds += seconds

    def statistics(self) -> SaleDeskStatistics:
        return SaleDeskStatistics(
            purchases=dict(self.answers),
            local_sold_out_answers=self.local_sold_out_answers,
            pending=self.batcher.pending,
            store_calls=self.store_calls,
            store_seconds_total=self.store_seconds,
        )

    async def run(self) -> None:
        """The purchase workers; run as a task of the server's task group."""
        await self.batcher.run()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # --- viewers ----------------------------------------------------------------------

    def buy(
        self,
        room: Room,
        *,
        user_id: str,
        name: str,
        sale_id: str,
        quantity: int,
        rid: str | int,
        retry: bool,
        answer: Answer,
    ) -> None:
        """Answer one Buy press through ``answer`` (now or once the store has decided)."""

        def reply(
            status: str,
            *,
            msg: str | None = None,
            order: str | None = None,
            qty: int | None = quantity,
            remaining: int | None = None,
        ) -> None:
            self.answers[status] += 1
            answer(
                BuyResult(
                    rid=rid,
                    sale=sale_id,
                    status=status,
                    order=order,
                    qty=qty,
                    remaining=remaining,
                    msg=msg,
                )
            )

        if self.sale_rooms.get(sale_id) != room.name:
            reply("error", msg="unknown sale")
            return
        if sale_id in self.sold_out and not retry:
            self.local_sold_out_answers += 1
            reply("sold_out", remaining=0, msg="sold out")
            return
        request = PurchaseRequest(
            sale_id=sale_id,
            user_id=user_id,
            quantity=quantity,
            request_id=_request_id(user_id, rid),
        )

        def done(result: PurchaseResult | StockError) -> None:
            if isinstance(result, StockError):
                reply("error", msg="try again")
                return
            self._after_purchase(room, sale_id, name, result, retry=retry)
            status = _STATUS.get(result.status, "error")
            if result.status is PurchaseStatus.ERROR and result.message == _BAD_QUANTITY:
                status = "limit_reached"  # more than the per-user limit at once (SPEC §9.3)
            reply(
                status,
                order=result.order_id,
                qty=result.quantity,
                remaining=result.remaining,
                msg=result.message or None,
            )

        if not self.batcher.submit(request, done):
            reply("error", msg="try again")

    def _after_purchase(
        self, room: Room, sale_id: str, name: str, result: PurchaseResult, *, retry: bool
    ) -> None:
        if result.status not in _STOCK_CHANGES:
            return
        shown = self._shown.setdefault(sale_id, set())
        if result.request_id in shown:
            return  # a replay of a first answer the room has seen: old news
        shown.add(result.request_id)
        if result.status is PurchaseStatus.OK:
            room.publish(
                lambda off, ts: Purchase(
                    sale_id=sale_id, name=mask_name(name), qty=result.quantity, ts=ts, offset=off
                )
            )
        if result.remaining is not None and not retry:
            self._stock_changed(room, sale_id, result.remaining)

    def _stock_changed(self, room: Room, sale_id: str, remaining: int) -> None:
        room.conflate(f"stock:{sale_id}", Stock(sale_id=sale_id, remaining=remaining))
        info = room.sale
        if info is not None and info.id == sale_id:
            status = info.status
            if remaining == 0 and status == "open":
                status = "sold_out"
            elif remaining > 0 and status == "sold_out":
                status = "open"
            room.sale = replace(info, remaining=remaining, status=status)
        if remaining == 0:
            if sale_id not in self.sold_out:
                self.sold_out.add(sale_id)
                room.publish(lambda off, ts: SoldOut(sale_id=sale_id, ts=ts, offset=off))
        else:
            self.sold_out.discard(sale_id)

    # --- backend services -------------------------------------------------------------

    def room(self, name: str) -> Room:
        """A room known to this node; raises KeyError for an unknown one."""
        room = self.hub.get(name)
        if room is None:
            raise KeyError(name)
        return room

    def pin(self, room_name: str, product: Product) -> None:
        room = self.room(room_name)
        room.pin = product
        room.publish(lambda off, ts: Pinned(product=product, ts=ts, offset=off))

    def unpin(self, room_name: str) -> bool:
        """Unpin the room's product; False when nothing was pinned."""
        room = self.room(room_name)
        product = room.pin
        if product is None:
            return False
        room.pin = None
        room.publish(lambda off, ts: Unpinned(product_id=product.id, ts=ts, offset=off))
        return True

    def system_message(self, room_name: str, text: str) -> int:
        """Post a host/system message to the room; returns its offset."""
        room = self.room(room_name)
        return room.publish(
            lambda off, ts: SystemMessage(id=f"{room.epoch}.{off}", text=text, ts=ts, offset=off)
        )

    async def open_sale(self, spec: SaleSpec) -> SaleState:
        room = self.room(spec.room)
        state = await self.store.open_sale(spec)
        self.sale_rooms[spec.sale_id] = spec.room
        info = sale_info(state)
        room.sale = info
        room.publish(lambda off, ts: SaleOpened(sale=info, ts=ts, offset=off))
        if state.remaining == 0:
            self.sold_out.add(spec.sale_id)
        self._schedule_end(room, state)
        return state

    def _schedule_end(self, room: Room, state: SaleState) -> None:
        """Timers for the snapshot's status: open at ``starts_at``, ended at ``ends_at``."""
        loop = asyncio.get_running_loop()
        now = self.clock()
        sale_id = state.sale_id
        if state.starts_at > now:
            self._timers[sale_id, "start"] = loop.call_later(
                state.starts_at - now, self._started, room, sale_id
            )
        self._timers[sale_id, "end"] = loop.call_later(
            max(0.0, state.ends_at - now), self._ended, room, sale_id, "ended"
        )

    def _started(self, room: Room, sale_id: str) -> None:
        self._timers.pop((sale_id, "start"), None)
        info = room.sale
        if info is not None and info.id == sale_id and info.status == "scheduled":
            room.sale = replace(info, status="open" if info.remaining else "sold_out")

    def _ended(self, room: Room, sale_id: str, reason: str) -> None:
        for kind in ("start", "end"):
            timer = self._timers.pop((sale_id, kind), None)
            if timer is not None:
                timer.cancel()
        info = room.sale
        if info is not None and info.id == sale_id:
            if info.status in ("closed", "ended"):
                return
            room.sale = replace(info, status=reason)
        room.publish(lambda off, ts: SaleClosed(sale_id=sale_id, reason=reason, ts=ts, offset=off))

    async def close_sale(self, sale_id: str) -> SaleState:
        state = await self.store.close_sale(sale_id)
        room = self.hub.get(state.room)
        if room is not None:
            self._ended(room, sale_id, "closed")
        return state

    async def restock(self, sale_id: str, quantity: int) -> SaleState:
        state = await self.store.restock(sale_id, quantity)
        room = self.hub.get(state.room)
        if room is not None:
            if room.sale is not None and room.sale.id == sale_id:
                room.sale = replace(room.sale, stock=state.initial + state.restocked)
            self._stock_changed(room, sale_id, state.remaining)
        else:
            self.sold_out.discard(sale_id)
        return state

    async def cancel_order(self, sale_id: str, order_id: str) -> bool:
        cancelled = await self.store.cancel_order(sale_id, order_id)
        if cancelled:
            state = await self.store.state(sale_id)
            room = self.hub.get(state.room)
            if room is not None:
                self._stock_changed(room, sale_id, state.remaining)
            else:
                self.sold_out.discard(sale_id)
        return cancelled

    async def state(self, sale_id: str) -> SaleState:
        return await self.store.state(sale_id)


_STATUS = {
    PurchaseStatus.OK: "ok",
    PurchaseStatus.SOLD_OUT: "sold_out",
    PurchaseStatus.LIMIT_REACHED: "limit_reached",
    PurchaseStatus.NOT_OPEN: "not_open",
}
_STOCK_CHANGES = frozenset({PurchaseStatus.OK, PurchaseStatus.SOLD_OUT})
_BAD_QUANTITY = REASONS["bad_quantity"][1]
