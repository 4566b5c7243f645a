"""Invariant checks for a sale, for tests, load-test reconciliation and operators.

:func:`check_invariants` reads a sale through the :class:`~engine.stock.base.StockStore`
interface only (state, then every page of orders), so it works on any store. The reads are
not one atomic snapshot: call it on a quiescent sale (no purchases, cancels or restocks in
flight), e.g. after a run or after closing the sale.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from engine.stock.base import MAX_PAGE, Order, SaleState, StockError, StockStore

__all__ = ["InvariantReport", "InvariantViolation", "check_invariants"]


class InvariantViolation(StockError, AssertionError):
    """A sale broke a stock invariant; :attr:`problems` says which, :attr:`report` what was read."""

    def __init__(self, report: InvariantReport) -> None:
        super().__init__(f"sale {report.state.sale_id}: " + "; ".join(report.problems))
        self.report = report
        self.problems = report.problems


@dataclasses.dataclass(frozen=True, slots=True)
class InvariantReport:
    """What :func:`check_invariants` read, and every problem it found (empty when sound).

    Attributes:
        state: the sale's state.
        orders: every order in the log, cancelled ones included, in log order.
        sold_by_orders: units of the orders that are not cancelled.
        units_by_user: units each user holds according to the orders.
        problems: one line per broken invariant.
    """

    state: SaleState
    orders: tuple[Order, ...]
    sold_by_orders: int
    units_by_user: dict[str, int]
    problems: tuple[str, ...]


async def check_invariants(store: StockStore, sale_id: str) -> InvariantReport:
    """Check a sale's invariants; return the report or raise :class:`InvariantViolation`.

    Checked: ``initial + restocked == remaining + sold``; ``remaining`` and ``sold`` are not
    negative; the non-cancelled orders' quantities add up to ``sold``; no order id and no
    request id appears twice among the orders; every order has the sale's price and a
    quantity in ``1..per_user_limit``; no user holds more than ``per_user_limit`` units.

    Raises:
        InvariantViolation: at least one invariant is broken.
        SaleNotFound: no such sale.
    """
    state = await store.state(sale_id)
    orders: list[Order] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.orders(sale_id, cursor, MAX_PAGE)
        orders.extend(page)
        if cursor is None:
            break

    problems: list[str] = []
    if state.initial + state.restocked != state.remaining + state.sold:
        problems.append(
            f"initial {state.initial} + restocked {state.restocked} != "
            f"remaining {state.remaining} + sold {state.sold}"
        )
    if state.remaining < 0 or state.sold < 0:
        problems.append(f"negative count: remaining {state.remaining}, sold {state.sold}")
    live = [order for order in orders if not order.cancelled]
    sold_by_orders = sum(order.quantity for order in live)
    if sold_by_orders != state.sold:
        problems.append(f"orders not cancelled hold {sold_by_orders} units, sold is {state.sold}")
    for what, counts in (
        ("order id", Counter(order.order_id for order in orders)),
        ("request id", Counter(order.request_id for order in orders)),
    ):
        repeated = sorted(key for key, n in counts.items() if n > 1)
        if repeated:
            problems.append(f"{what}s in more than one order: {repeated[:10]}")
    for order in orders:
        if order.price != state.price or not 1 <= order.quantity <= state.per_user_limit:
            problems.append(f"malformed order {order}")
    by_user: Counter[str] = Counter()
    for order in live:
        by_user[order.user_id] += order.quantity
    over = sorted(user for user, units in by_user.items() if units > state.per_user_limit)
    if over:
        problems.append(f"users over the limit of {state.per_user_limit}: {over[:10]}")

    report = InvariantReport(state, tuple(orders), sold_by_orders, dict(by_user), tuple(problems))
    if problems:
        raise InvariantViolation(report)
    return report
