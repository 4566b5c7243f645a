"""In-process stock store: the embedded default, with exactly the Redis store's semantics.

Guarantees (beyond those of :mod:`engine.stock.base`): every operation runs to completion
without awaiting, so on one event loop each purchase, batch, cancel and restock is atomic.
State lives in this process only and is lost when it exits. Memory grows with the orders
and the remembered answers of every sale; sales are never forgotten.

Orders log: one list per sale holding order entries and cancel entries in the order they
happened (like the Redis stream); cursors are positions in that list.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from engine.stock._answers import RID_CONFLICT, result_for
from engine.stock.base import (
    MAX_BATCH,
    MAX_PAGE,
    MAX_UNITS,
    InvalidRequest,
    Order,
    PurchaseRequest,
    PurchaseResult,
    SaleExists,
    SaleNotFound,
    SaleSpec,
    SaleState,
    StockStore,
    StoreUnavailable,
    sale_status,
    validate_id,
)

__all__ = ["MemoryStockStore"]


@dataclasses.dataclass(slots=True)
class _Sale:
    spec: SaleSpec
    remaining: int
    opened_at: float
    closed: bool = False
    restocked: int = 0
    sold: int = 0
    seq: int = 0
    users: dict[str, int] = dataclasses.field(default_factory=dict)
    answers: dict[str, tuple[str, PurchaseResult]] = dataclasses.field(default_factory=dict)
    # the orders log: an Order, or the id of an order cancelled at that point
    log: list[Order | str] = dataclasses.field(default_factory=list)
    orders: dict[str, Order] = dataclasses.field(default_factory=dict)
    cancelled: set[str] = dataclasses.field(default_factory=set)


class MemoryStockStore(StockStore):
    """A :class:`~engine.stock.base.StockStore` in this process's memory.

    Args:
        clock: unix seconds now; read once per operation (inject a fake one in tests).
    """

    __slots__ = ("_clock", "_closed", "_sales")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sales: dict[str, _Sale] = {}
        self._closed = False

    def _sale(self, sale_id: str) -> _Sale:
        if self._closed:
            raise StoreUnavailable("stock store is closed")
        sale = self._sales.get(validate_id(sale_id, "sale_id"))
        if sale is None:
            raise SaleNotFound(sale_id)
        return sale

    def _state(self, sale: _Sale, now: float) -> SaleState:
        spec = sale.spec
        return SaleState(
            sale_id=spec.sale_id,
            room=spec.room,
            product_id=spec.product_id,
            price=spec.price,
            per_user_limit=spec.per_user_limit,
            starts_at=spec.starts_at,
            ends_at=spec.ends_at,
            closed=sale.closed,
            initial=spec.stock,
            restocked=sale.restocked,
            remaining=sale.remaining,
            sold=sale.sold,
            status=sale_status(
                closed=sale.closed,
                starts_at=spec.starts_at,
                ends_at=spec.ends_at,
                remaining=sale.remaining,
                now=now,
            ),
            opened_at=sale.opened_at,
        )

    async def open_sale(self, spec: SaleSpec) -> SaleState:
        if self._closed:
            raise StoreUnavailable("stock store is closed")
        if spec.sale_id in self._sales:
            raise SaleExists(spec.sale_id)
        now = self._clock()
        sale = self._sales[spec.sale_id] = _Sale(spec=spec, remaining=spec.stock, opened_at=now)
        return self._state(sale, now)

    async def close_sale(self, sale_id: str) -> SaleState:
        sale = self._sale(sale_id)
        sale.closed = True
        return self._state(sale, self._clock())

    async def restock(self, sale_id: str, quantity: int) -> SaleState:
        sale = self._sale(sale_id)
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            raise InvalidRequest(f"quantity must be an integer, got {quantity!r}")
        if not 1 <= quantity <= MAX_UNITS:
            raise InvalidRequest(f"quantity must be in 1..{MAX_UNITS}, got {quantity}")
        if sale.closed:
            raise InvalidRequest(f"sale {sale_id} is closed")
        sale.restocked += quantity
        sale.remaining += quantity
        return self._state(sale, self._clock())

    async def purchase(self, request: PurchaseRequest) -> PurchaseResult:
        if self._closed:
            raise StoreUnavailable("stock store is closed")
        return self._purchase(request, self._clock())

    async def purchase_many(self, requests: Sequence[PurchaseRequest]) -> list[PurchaseResult]:
        if self._closed:
            raise StoreUnavailable("stock store is closed")
        if len(requests) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} requests per batch")
        now = self._clock()
        return [self._purchase(request, now) for request in requests]

    def _purchase(self, req: PurchaseRequest, now: float) -> PurchaseResult:
        rid, quantity = req.request_id, req.quantity
        sale = self._sales.get(req.sale_id)
        if sale is None:
            return result_for("not_found", rid, quantity, None, None)
        first = sale.answers.get(rid)
        if first is not None:
            owner, answer = first
            if owner == req.user_id:
                return dataclasses.replace(answer, replayed=True)
            return result_for(RID_CONFLICT, rid, quantity, None, None)
        spec = sale.spec
        limit = spec.per_user_limit
        order_id: str | None = None
        if not 1 <= quantity <= limit:
            reason = "bad_quantity"
        elif sale.closed:
            reason = "closed"
        elif now < spec.starts_at:
            reason = "not_started"
        elif now >= spec.ends_at:
            reason = "ended"
        elif sale.users.get(req.user_id, 0) + quantity > limit:
            reason = "limit_reached"
        elif sale.remaining < quantity:
            reason = "sold_out"
        else:
            reason = "ok"
            sale.seq += 1
            order_id = f"{spec.sale_id}-{sale.seq}"
            sale.remaining -= quantity
            sale.sold += quantity
            sale.users[req.user_id] = sale.users.get(req.user_id, 0) + quantity
            order = Order(
                order_id=order_id,
                sale_id=spec.sale_id,
                user_id=req.user_id,
                quantity=quantity,
                price=spec.price,
                request_id=rid,
                ts_ms=int(now * 1000),
            )
            sale.orders[order_id] = order
            sale.log.append(order)
        remaining = None if reason == "bad_quantity" else sale.remaining
        answer = result_for(reason, rid, quantity, remaining, order_id)
        if reason != "not_started":  # the same attempt may buy once the sale starts
            sale.answers[rid] = (req.user_id, answer)
        return answer

    async def cancel_order(self, sale_id: str, order_id: str) -> bool:
        sale = self._sale(sale_id)
        if not isinstance(order_id, str):
            raise InvalidRequest(f"order_id must be a string, got {order_id!r}")
        order = sale.orders.get(order_id)
        if order is None or order_id in sale.cancelled:
            return False
        sale.cancelled.add(order_id)
        sale.remaining += order.quantity
        sale.sold -= order.quantity
        left = sale.users[order.user_id] - order.quantity
        if left > 0:
            sale.users[order.user_id] = left
        else:
            del sale.users[order.user_id]
        sale.log.append(order_id)
        return True

    async def state(self, sale_id: str) -> SaleState:
        return self._state(self._sale(sale_id), self._clock())

    async def orders(
        self, sale_id: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[Order], str | None]:
        sale = self._sale(sale_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be an integer in 1..{MAX_PAGE}, got {limit!r}")
        position = 0
        if after is not None:
            if not (isinstance(after, str) and after.isascii() and after.isdigit()):
                raise InvalidRequest(f"bad cursor {after!r}")
            position = int(after)
            if position > len(sale.log):
                raise InvalidRequest(f"bad cursor {after!r}")
        page: list[Order] = []
        log = sale.log
        while position < len(log) and len(page) < limit:
            entry = log[position]
            position += 1
            if isinstance(entry, Order):
                if entry.order_id in sale.cancelled:
                    entry = dataclasses.replace(entry, cancelled=True)
                page.append(entry)
        return page, (str(position) if len(page) == limit else None)

    async def recent_sales(self, since: float) -> list[SaleState]:
        if self._closed:
            raise StoreUnavailable("stock store is closed")
        now = self._clock()
        return [self._state(s, now) for s in self._sales.values() if s.spec.ends_at >= since]

    async def close(self) -> None:
        self._closed = True
