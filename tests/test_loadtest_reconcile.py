"""The sale reconciliation: a clean sale passes, every broken rule is named."""

from __future__ import annotations

from typing import Any

from loadtest.reconcile import reconcile

STATE = {"sale_id": "s", "initial": 3, "restocked": 0, "remaining": 1, "sold": 2,
         "per_user_limit": 1}  # fmt: skip


def order(n: int, user: str, qty: int = 1, **more: Any) -> dict[str, Any]:
    return {"order_id": f"o{n}", "user_id": user, "quantity": qty, "request_id": f"r{n}", **more}


def answer(user: str, status: str, order_id: str | None = None) -> dict[str, Any]:
    return {"user": user, "rid": "b1", "status": status, "order": order_id}


def test_a_clean_sale_is_clean() -> None:
    result = reconcile(
        STATE,
        [order(1, "u1"), order(2, "u2")],
        [answer("u1", "ok", "o1"), answer("u2", "ok", "o2"), answer("u3", "sold_out")],
        buyers=3,
    )
    assert result.clean, result.problems
    assert (result.stock, result.sold, result.oversold, result.orders) == (3, 2, 0, 2)
    assert result.answers == {"ok": 2, "sold_out": 1} and result.buyers == 3


def test_every_broken_rule_is_named() -> None:
    state = {**STATE, "remaining": 0, "sold": 4}  # 3 units, 4 sold: oversold, and 3 != 0 + 4
    orders = [order(1, "u1"), order(2, "u1"), order(3, "u2", qty=2, request_id="r1")]
    answers = [answer("u1", "ok", "o1"), answer("u1", "ok", "o1"), answer("u9", "ok", "o9")]
    problems = "\n".join(reconcile(state, orders, answers, buyers=5).problems)
    for expected in (
        "initial 3 + restocked 0 != remaining 0 + sold 4",
        "oversold by 1 units",
        "request ids with more than one order",
        "users over the limit of 1",
        "recorded more than one final answer",
        "5 buyers pressed, 2 got a final answer",
        "1 ok answers name no order in the store",
        "orders in the store have no ok answer",
    ):
        assert expected in problems, (expected, problems)


def test_cancelled_orders_do_not_count() -> None:
    orders = [order(1, "u1"), order(2, "u2"), order(3, "u3", cancelled=True)]
    answers = [answer("u1", "ok", "o1"), answer("u2", "ok", "o2")]
    assert reconcile(STATE, orders, answers).clean
