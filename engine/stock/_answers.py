"""Purchase answer reasons shared by the stores, so both word their answers identically.

A *reason* is finer than a :class:`PurchaseStatus` (``not_open`` splits into not started,
ended and closed). Stores remember reasons; the public status and message derive from it.
The Redis scripts use the same reason strings.
"""

from __future__ import annotations

from typing import Final

from engine.stock.base import PurchaseResult, PurchaseStatus

__all__ = ["REASONS", "RID_CONFLICT", "result_for"]

RID_CONFLICT: Final = "rid_conflict"
"""The request id was used by another user of the same sale: answered, never remembered."""

REASONS: Final[dict[str, tuple[PurchaseStatus, str]]] = {
    "ok": (PurchaseStatus.OK, ""),
    "sold_out": (PurchaseStatus.SOLD_OUT, "not enough units left"),
    "limit_reached": (PurchaseStatus.LIMIT_REACHED, "per-user limit reached"),
    "not_started": (PurchaseStatus.NOT_OPEN, "sale has not started"),
    "ended": (PurchaseStatus.NOT_OPEN, "sale has ended"),
    "closed": (PurchaseStatus.NOT_OPEN, "sale is closed"),
    "not_found": (PurchaseStatus.NOT_FOUND, "no such sale"),
    "bad_quantity": (PurchaseStatus.ERROR, "quantity must be between 1 and the per-user limit"),
    RID_CONFLICT: (PurchaseStatus.ERROR, "request id already used by another user"),
}


def result_for(
    reason: str, request_id: str, quantity: int, remaining: int | None, order_id: str | None
) -> PurchaseResult:
    """The public answer for ``reason``."""
    status, message = REASONS[reason]
    return PurchaseResult(status, request_id, order_id, quantity, remaining, message)
