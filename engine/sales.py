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
- Shared rooms (a :class:`~engine.relay.Relay` is set): events go through the broker;
  pins and the room's current sale are kept in the room's broker state, and every node
  follows pins, sales, closes and sold-out flags from the events delivered to it
  (:meth:`SaleDesk.observe`) and from a linking room's state (:meth:`SaleDesk.adopt`).
  Events every node may decide (sold out, ended) are once-only cluster-wide. Each node
  reads the stock of its rooms' current sales from the store every tick
  (:meth:`SaleDesk.poll`), so counts, restocks and cancels made on any node reach its
  viewers. Service calls work for any room, held here or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from engine.config import StockConfig
from engine.relay import Relay, decode_event, encode_event
from engine.room import UNSTAMPED, Hub, Room
from engine.stock import (
    PurchaseRequest,
    PurchaseResult,
    PurchaseStatus,
    SaleNotFound,
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
    ProtocolError,
    Purchase,
    RoomEvent,
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
    purchases: dict[str, int]  # answers by status, incl. local answers
    local_sold_out_answers: int
    local_not_open_answers: int
    pending: int
    store_calls: int
    store_seconds_total: float  # summed store round trips of purchase batches
    sales_known: int  # sales this node has learnt (opened here, read at start, looked up)
    lookups: int  # store reads for sales a press or a service call named first


@dataclass(slots=True)
class _Known:
    """What this node knows of a sale: its room, window and snapshot (``info``)."""

    room: str
    info: SaleInfo
    starts_at: float
    ends_at: float
    opened_at: float
    closed: bool
    over: bool  # ended or closed as far as this node's rooms were told (sale_closed)


_Then = Callable[[bool | None], None]  # lookup outcome: known, unknown, store unreachable


class SaleDesk:
    """Pins and sales of this node's rooms. Service API calls and Buy presses land here.

    The stock store is the authority on sales; the desk keeps what it learnt of each
    (:class:`_Known`) and, per room, which sale is current (the latest opened), so that a
    joiner's snapshot (``Room.sale``, set by :meth:`attach`) shows it.
    """

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
        self.sales: dict[str, _Known] = {}
        self.current: dict[str, str] = {}  # room -> its current sale (the latest opened)
        self.pins: dict[str, Product] = {}  # room -> its pinned product, kept across drops
        self.answers: Counter[str] = Counter()
        self.local_sold_out_answers = 0
        self.local_not_open_answers = 0
        self.store_calls = 0
        self.store_seconds = 0.0
        self.lookups = 0
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}  # (sale, start|end)
        self._waiting: dict[str, list[_Then]] = {}  # sale id -> presses awaiting its lookup
        self._lookup_queue: asyncio.Queue[str] = asyncio.Queue()
        self._unknown: dict[str, float] = {}  # sale id -> monotonic time its "unknown" expires
        self.relay: Relay | None = None  # shared rooms: events go through the broker

    def _count_round_trip(self, seconds: float, _size: int) -> None:
        self.store_calls += 1
        self.store_seconds += seconds

    def statistics(self) -> SaleDeskStatistics:
        return SaleDeskStatistics(
            purchases=dict(self.answers),
            local_sold_out_answers=self.local_sold_out_answers,
            local_not_open_answers=self.local_not_open_answers,
            pending=self.batcher.pending,
            store_calls=self.store_calls,
            store_seconds_total=self.store_seconds,
            sales_known=len(self.sales),
            lookups=self.lookups,
        )

    async def load(self) -> int:
        """Learn from the store every sale that ended less than ``SALE_MEMORY`` ago.

        Called once at start, before viewers are accepted, so that the rooms this node
        will hold show their sales in the first snapshot, even after a restart.
        Returns how many sales were learnt.

        Raises:
            StockError: the store could not be read.
        """
        states = await self.store.recent_sales(self.clock() - SALE_MEMORY)
        for state in states:
            self._learn(state)
        return len(states)

    async def run(self) -> None:
        """The purchase and lookup workers; run as a task of the server's task group."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.batcher.run())
            for _ in range(LOOKUP_WORKERS):
                tasks.create_task(self._look_up_sales())

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def attach(self, room: Room) -> None:
        """Give a room (new, or held) its pin and current sale, for its joiners' snapshots."""
        sale_id = self.current.get(room.name)
        room.sale = self.sales[sale_id].info if sale_id is not None else None
        room.pin = self.pins.get(room.name)

    # --- what the node knows of sales ----------------------------------------------------

    def _learn(self, state: SaleState) -> _Known:
        """Record (or refresh) a sale from a store state; show it if it is its room's latest."""
        return self._record(state.room, sale_info(state), state.opened_at, closed=state.closed)

    def _record(self, room: str, info: SaleInfo, opened_at: float, *, closed: bool) -> _Known:
        known = self.sales.get(info.id)
        if known is None:
            starts_at, ends_at = info.starts / 1000, info.ends / 1000
            known = self.sales[info.id] = _Known(
                room=room,
                info=info,
                starts_at=starts_at,
                ends_at=ends_at,
                opened_at=opened_at,
                closed=closed,
                over=closed or ends_at <= self.clock(),
            )
            self._unknown.pop(info.id, None)
            self._schedule(info.id, starts_at, ends_at, closed=closed)
        else:
            known.info, known.closed = info, closed
        if info.remaining == 0:
            self.sold_out.add(info.id)
        else:
            self.sold_out.discard(info.id)
        current = self.current.get(room)
        if current is None or current == info.id or self.sales[current].opened_at <= opened_at:
            self.current[room] = info.id
        self._show(info.id)
        return known

    def _show(self, sale_id: str) -> None:
        """Put the sale's snapshot on its room (if held and it is the room's current sale)."""
        known = self.sales[sale_id]
        if self.current.get(known.room) != sale_id:
            return
        room = self.hub.get(known.room)
        if room is not None:
            room.sale = known.info

    def _set_info(self, sale_id: str, **changes: object) -> None:
        known = self.sales[sale_id]
        known.info = replace(known.info, **changes)  # type: ignore[arg-type]
        self._show(sale_id)

    def _look_up(self, sale_id: str, then: _Then) -> None:
        """Learn a sale this node does not know from the store; ``then`` gets the outcome."""
        expires = self._unknown.get(sale_id)
        if expires is not None and expires > time.monotonic():
            then(False)
            return
        waiting = self._waiting.get(sale_id)
        if waiting is not None:
            waiting.append(then)
            return
        if len(self._waiting) >= MAX_LOOKUPS:
            then(None)
            return
        self._waiting[sale_id] = [then]
        self._lookup_queue.put_nowait(sale_id)

    async def _look_up_sales(self) -> None:
        while True:
            sale_id = await self._lookup_queue.get()
            self.lookups += 1
            outcome: bool | None
            try:
                self._learn(await self.store.state(sale_id))
                outcome = True
            except SaleNotFound:
                if len(self._unknown) >= MAX_LOOKUPS:
                    self._unknown.clear()
                self._unknown[sale_id] = time.monotonic() + UNKNOWN_TTL
                outcome = False
            except StockError:
                outcome = None
            except Exception:  # a bug must not stop every later lookup on the node
                log.exception("looking up sale %r failed", sale_id)
                outcome = None
            for then in self._waiting.pop(sale_id, []):
                try:
                    then(outcome)
                except Exception:
                    log.exception("answering a press after a sale lookup failed")

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

        known = self.sales.get(sale_id)
        if known is None:

            def then(outcome: bool | None) -> None:
                if outcome is None:
                    reply("error", msg="try again")
                elif not outcome or sale_id not in self.sales:
                    reply("error", msg="unknown sale")
                else:
                    self.buy(
                        room,
                        user_id=user_id,
                        name=name,
                        sale_id=sale_id,
                        quantity=quantity,
                        rid=rid,
                        retry=retry,
                        answer=answer,
                    )

            self._look_up(sale_id, then)
            return
        if known.room != room.name:
            reply("error", msg="unknown sale")
            return
        if not retry:  # local answers, never recorded; a retry always reaches the store
            now = self.clock()
            if known.closed or now >= known.ends_at or now < known.starts_at:
                self.local_not_open_answers += 1
                reason = (
                    "closed" if known.closed else "ended" if now >= known.ends_at else "not_started"
                )
                reply("not_open", msg=REASONS[reason][1])
                return
            if sale_id in self.sold_out:
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
            self._after_purchase(sale_id, name, result, retry=retry)
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
        self, sale_id: str, name: str, result: PurchaseResult, *, retry: bool
    ) -> None:
        if result.status not in _STOCK_CHANGES or result.replayed:
            return  # a replayed first answer is old news for the room
        if result.status is PurchaseStatus.OK:
            self._publish(
                self.sales[sale_id].room,
                Purchase(
                    sale_id=sale_id, name=mask_name(name), qty=result.quantity, ts=_now(), offset=0
                ),
            )
        if result.remaining is not None and not retry:
            self._stock_changed(sale_id, result.remaining)

    def _stock_changed(self, sale_id: str, remaining: int) -> None:
        known = self.sales[sale_id]
        room = self.hub.get(known.room)
        if room is not None:
            room.conflate(f"stock:{sale_id}", Stock(sale_id=sale_id, remaining=remaining))
        status = known.info.status
        if remaining == 0 and status == "open":
            status = "sold_out"
        elif remaining > 0 and status == "sold_out":
            status = "open"
        self._set_info(sale_id, remaining=remaining, status=status)
        if remaining == 0:
            if sale_id not in self.sold_out:
                self.sold_out.add(sale_id)
                self._publish(
                    known.room,
                    SoldOut(sale_id=sale_id, ts=_now(), offset=0),
                    once=f"sold_out:{sale_id}:{known.info.stock}",
                )
        else:
            self.sold_out.discard(sale_id)

    # --- backend services -------------------------------------------------------------

    def room(self, name: str) -> Room:
        """A room known to this node; raises KeyError for an unknown one."""
        room = self.hub.get(name)
        if room is None:
            raise KeyError(name)
        return room

    def _publish(self, room_name: str, event: RoomEvent, *, once: str | None = None) -> None:
        """Publish ``event`` (made with offset 0): to the room here, or through the relay
        (shared rooms; a failure is logged: the store already holds what happened)."""
        relay = self.relay
        if relay is not None:
            relay.submit(room_name, event, _log_failure(room_name, event), once=once)
            return
        room = self.hub.get(room_name)
        if room is not None:
            room.publish_event(event)

    async def pin(self, room_name: str, product: Product) -> None:
        """Pin ``product`` in the room.

        Raises:
            KeyError: the room is not held here (local rooms only).
            BrokerError: the broker could not be reached (shared rooms).
        """
        event = Pinned(product=product, ts=_now(), offset=0)
        if self.relay is not None:
            await self.relay.publish(room_name, event, state={"pin": encode_event(event)})
            return
        room = self.room(room_name)
        room.pin = self.pins[room_name] = product
        room.publish_event(event)

    async def unpin(self, room_name: str) -> bool:
        """Unpin the room's product; False when nothing was pinned."""
        if self.relay is not None:
            state = (await self.relay.broker.snapshot(room_name, 1)).state
            pinned = _pinned(state.get("pin"))
            if pinned is None:
                return False
            event = Unpinned(product_id=pinned.product.id, ts=_now(), offset=0)
            await self.relay.publish(room_name, event, state={"pin": None})
            return True
        room = self.room(room_name)
        product = self.pins.pop(room_name, None)
        if product is None:
            return False
        room.pin = None
        room.publish_event(Unpinned(product_id=product.id, ts=_now(), offset=0))
        return True

    async def system_message(self, room_name: str, text: str) -> int:
        """Post a host/system message to the room; returns its offset."""
        event = SystemMessage(id=UNSTAMPED, text=text, ts=_now(), offset=0)
        if self.relay is not None:
            offset = await self.relay.publish(room_name, event)
            assert offset is not None
            return offset
        return self.room(room_name).publish_event(event)

    async def open_sale(self, spec: SaleSpec) -> SaleState:
        room = self.room(spec.room) if self.relay is None else None  # local: held here
        state = await self.store.open_sale(spec)
        known = self._learn(state)
        event = SaleOpened(sale=known.info, ts=_now(), offset=0)
        if room is not None:
            room.publish_event(event)
        else:
            assert self.relay is not None
            await self.relay.publish(spec.room, event, state={"sale": spec.sale_id.encode()})
        return state

    # --- shared rooms: what other nodes did -------------------------------------------

    def observe(self, room: Room, event: RoomEvent) -> None:
        """Follow an event delivered to a shared room (published by any node)."""
        if isinstance(event, Pinned):
            room.pin = self.pins[room.name] = event.product
        elif isinstance(event, Unpinned):
            self.pins.pop(room.name, None)
            room.pin = None
        elif isinstance(event, SaleOpened):
            self._record(room.name, event.sale, event.ts / 1000, closed=False)
        elif isinstance(event, SaleClosed):
            if event.sale_id in self.sales:
                self._ended(event.sale_id, event.reason, publish=False)
        elif isinstance(event, SoldOut):
            known = self.sales.get(event.sale_id)
            if known is not None and event.sale_id not in self.sold_out:
                self.sold_out.add(event.sale_id)
                status = "sold_out" if known.info.status == "open" else known.info.status
                self._set_info(event.sale_id, remaining=0, status=status)

    async def adopt(self, room: Room, state: Mapping[str, bytes]) -> None:
        """Take a linking shared room's pin and current sale from its broker state."""
        pinned = _pinned(state.get("pin"))
        if pinned is None:
            self.pins.pop(room.name, None)
        else:
            self.pins[room.name] = pinned.product
        sale = state.get("sale")
        if sale is not None:
            sale_id = sale.decode("utf-8", "replace")
            try:
                state_now = await self.store.state(sale_id)
            except StockError as exc:
                log.warning("room %r: sale %r not read (%s)", room.name, sale_id, exc)
            else:
                self._learn(state_now)
        self.attach(room)

    async def poll(self, rooms: Iterable[Room]) -> None:
        """Read the stock of these shared rooms' current sales from the store."""
        sales = [
            sale_id
            for room in rooms
            if (sale_id := self.current.get(room.name)) is not None and not self.sales[sale_id].over
        ]
        if not sales:
            return
        states = await asyncio.gather(
            *(self.store.state(sale_id) for sale_id in sales), return_exceptions=True
        )
        for sale_id, state in zip(sales, states, strict=True):
            if not isinstance(state, SaleState):
                continue
            known = self.sales[sale_id]
            stock = state.initial + state.restocked
            if known.info.stock != stock:
                self._set_info(sale_id, stock=stock)
            if known.info.remaining != state.remaining:
                self._stock_changed(sale_id, state.remaining)

    def _schedule(self, sale_id: str, starts_at: float, ends_at: float, *, closed: bool) -> None:
        """Timers for the snapshot's status: open at ``starts_at``, ended at ``ends_at``."""
        if closed:
            return
        loop = asyncio.get_running_loop()
        now = self.clock()
        if starts_at > now:
            self._timers[sale_id, "start"] = loop.call_later(
                starts_at - now, self._started, sale_id
            )
        self._timers[sale_id, "end"] = loop.call_later(
            max(0.0, ends_at - now), self._ended, sale_id, "ended"
        )

    def _started(self, sale_id: str) -> None:
        self._timers.pop((sale_id, "start"), None)
        info = self.sales[sale_id].info
        if info.status == "scheduled":
            self._set_info(sale_id, status="open" if info.remaining else "sold_out")

    def _ended(self, sale_id: str, reason: str, *, publish: bool = True) -> None:
        for kind in ("start", "end"):
            timer = self._timers.pop((sale_id, kind), None)
            if timer is not None:
                timer.cancel()
        known = self.sales[sale_id]
        known.closed = known.closed or reason == "closed"
        if known.over:
            return
        known.over = True
        self._set_info(sale_id, status=reason)
        if publish:
            self._publish(
                known.room,
                SaleClosed(sale_id=sale_id, reason=reason, ts=_now(), offset=0),
                once=f"closed:{sale_id}",
            )

    async def _know(self, sale_id: str) -> None:
        """Learn a sale that a service call names before changing it, so its room is told."""
        if sale_id not in self.sales:
            await self.state(sale_id)

    async def close_sale(self, sale_id: str) -> SaleState:
        await self._know(sale_id)
        state = await self.store.close_sale(sale_id)
        self._ended(sale_id, "closed")
        return state

    async def restock(self, sale_id: str, quantity: int) -> SaleState:
        await self._know(sale_id)
        state = await self.store.restock(sale_id, quantity)
        self._set_info(sale_id, stock=state.initial + state.restocked)
        self._stock_changed(sale_id, state.remaining)
        return state

    async def cancel_order(self, sale_id: str, order_id: str) -> bool:
        await self._know(sale_id)
        cancelled = await self.store.cancel_order(sale_id, order_id)
        if cancelled:
            state = await self.store.state(sale_id)
            self._stock_changed(sale_id, state.remaining)
        return cancelled

    async def state(self, sale_id: str) -> SaleState:
        """The sale as the store holds it now (and the node learns it if it did not know it)."""
        state = await self.store.state(sale_id)
        if sale_id not in self.sales:
            self._learn(state)
        return state


def _now() -> int:
    return int(time.time() * 1000)


def _pinned(data: bytes | None) -> Pinned | None:
    """The pin event kept in a room's broker state, if any."""
    if data is None:
        return None
    try:
        event = decode_event(data)
    except ProtocolError:
        return None
    return event if isinstance(event, Pinned) else None


def _log_failure(room: str, event: RoomEvent) -> Callable[[int | None], None]:
    def done(offset: int | None) -> None:
        if offset is None and not isinstance(event, SaleClosed | SoldOut):
            log.warning("room %r: %s event not published (broker unreachable)", room, event.TYPE)

    return done


SALE_MEMORY: Final = 86400.0
"""Seconds after its end that a node still learns a sale at start (for snapshots)."""
LOOKUP_WORKERS: Final = 4
MAX_LOOKUPS: Final = 10_000
"""Most sales looked up at once, and most sales remembered as unknown."""
UNKNOWN_TTL: Final = 1.0
"""Seconds a sale the store did not hold is answered "unknown sale" without asking again."""
_STATUS = {
    PurchaseStatus.OK: "ok",
    PurchaseStatus.SOLD_OUT: "sold_out",
    PurchaseStatus.LIMIT_REACHED: "limit_reached",
    PurchaseStatus.NOT_OPEN: "not_open",
}
_STOCK_CHANGES = frozenset({PurchaseStatus.OK, PurchaseStatus.SOLD_OUT})
_BAD_QUANTITY = REASONS["bad_quantity"][1]
