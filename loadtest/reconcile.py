"""After a flash sale: every buyer's answer checked against the store's orders.

:func:`reconcile` takes the sale's state and orders (as the service API returns them:
``GET /v1/sales/{id}`` and the pages of ``GET /v1/sales/{id}/orders``) and the final buy
answer each Locust buyer recorded, and checks the sale's invariants:

* ``initial + restocked = remaining + sold``, nothing oversold (``sold <= initial +
  restocked``), nothing negative;
* the (not cancelled) orders' quantities add up to ``sold``;
* one order per request id, and no user holds more than the per-user limit;
* the orders are exactly the ``ok`` answers (same order ids), each buyer got one final
  answer, and no ``ok`` answer names an order the store does not hold.

It never raises on bad data: every broken rule is a line in :attr:`Reconciliation.problems`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Reconciliation", "reconcile"]


@dataclass(slots=True)
class Reconciliation:
    """The figures of one sale after the run, and what was found wrong (empty: clean)."""

    sale_id: str
    stock: int = 0  # initial + restocked
    sold: int = 0
    remaining: int = 0
    oversold: int = 0
    orders: int = 0
    answers: dict[str, int] = field(default_factory=dict)  # final answers by status
    buyers: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def reconcile(
    state: Mapping[str, Any],
    orders: Sequence[Mapping[str, Any]],
    answers: Iterable[Mapping[str, Any]],
    *,
    buyers: int | None = None,
) -> Reconciliation:
    """Check a sale's invariants and its answers; see the module docstring.

    Args:
        state: the sale's state (``initial``, ``restocked``, ``remaining``, ``sold``,
            ``per_user_limit``).
        orders: every order of the sale.
        answers: the buyers' final answers (``user``, ``rid``, ``status``, ``order``).
        buyers: how many buyers pressed (each must have exactly one final answer).
    """
    sale_id = str(state.get("sale_id", "?"))
    out = Reconciliation(sale_id)
    problems = out.problems
    initial, restocked = int(state.get("initial", 0)), int(state.get("restocked", 0))
    out.stock = initial + restocked
    out.sold, out.remaining = int(state.get("sold", 0)), int(state.get("remaining", 0))
    out.oversold = max(0, out.sold - out.stock)
    if out.stock != out.remaining + out.sold:
        problems.append(
            f"initial {initial} + restocked {restocked} != remaining {out.remaining} "
            f"+ sold {out.sold}"
        )
    if out.oversold:
        problems.append(f"oversold by {out.oversold} units")
    if out.remaining < 0 or out.sold < 0:
        problems.append(f"negative figures: remaining {out.remaining}, sold {out.sold}")

    live = [o for o in orders if not o.get("cancelled")]
    out.orders = len(live)
    if sum(int(o.get("quantity", 0)) for o in live) != out.sold:
        problems.append(f"the orders add up to {sum(int(o['quantity']) for o in live)} units, "
                        f"the store says {out.sold} sold")  # fmt: skip
    twice = [rid for rid, n in Counter(o.get("request_id") for o in orders).items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} request ids with more than one order, e.g. {twice[0]!r}")
    limit = int(state.get("per_user_limit", 0)) or None
    held: Counter[str] = Counter()
    for order in live:
        held[str(order.get("user_id"))] += int(order.get("quantity", 0))
    over = [user for user, qty in held.items() if limit is not None and qty > limit]
    if over:
        problems.append(f"{len(over)} users over the limit of {limit}, e.g. {over[0]!r}")

    finals: dict[tuple[str, str], Mapping[str, Any]] = {}
    repeated = 0
    for answer in answers:
        key = (str(answer.get("user")), str(answer.get("rid")))
        if key in finals:
            repeated += 1
        finals[key] = answer
    if repeated:
        problems.append(f"{repeated} buyers recorded more than one final answer")
    out.answers = dict(Counter(str(a.get("status")) for a in finals.values()))
    out.buyers = len({user for user, _ in finals})
    if buyers is not None and out.buyers != buyers:
        problems.append(f"{buyers} buyers pressed, {out.buyers} got a final answer")
    ok_orders = {str(a.get("order")) for a in finals.values() if a.get("status") == "ok"}
    store_orders = {str(o.get("order_id")) for o in live}
    if ok_orders - store_orders:
        problems.append(f"{len(ok_orders - store_orders)} ok answers name no order in the store")
    if store_orders - ok_orders:
        problems.append(
            f"{len(store_orders - ok_orders)} orders in the store have no ok answer "
            "(an answer lost, or a buyer outside this run)"
        )
    return out
