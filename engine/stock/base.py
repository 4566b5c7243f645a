"""The flash-sale (秒杀) stock store: one interface, its value types and its errors.

A sale offers ``stock`` units of one product in one room, at one price, between
``starts_at`` and ``ends_at``, at most ``per_user_limit`` units per user. Buyers send
:class:`PurchaseRequest` s; every request gets exactly one :class:`PurchaseResult`.

Guarantees of every :class:`StockStore` (the memory and the Redis one alike; one contract
test suite runs against both):

* A purchase is one atomic step. Its rules apply in this order: the sale exists (else
  ``not_found``); a request id already answered for this sale gets that first answer
  again, unchanged (idempotency); quantity is ``1..per_user_limit`` (else ``error``); the
  sale is open now, i.e. not closed and ``starts_at <= now < ends_at`` (else
  ``not_open``); the user's units plus the quantity stay within the limit (else
  ``limit_reached``); enough units remain (else ``sold_out``); then the units are taken,
  the user's count grows and the order is appended to the sale's orders log.
* Every answer (not only ``ok``) except "not started yet" is remembered per sale by
  request id for the sale's lifetime, so a retry can never be charged twice and always
  sees the first answer, even after a restock or a cancel. A press before ``starts_at``
  is answered ``not_open`` and not remembered: the same request id may buy once the sale
  has started (SPEC §9.3). Pressing Buy again is a new request id. A request id that
  another user already used in this sale is answered ``error`` and not remembered (no
  one learns another buyer's order). Answers for an unknown sale are not remembered.
* No oversell, no double charge. At every moment, for every sale:
  ``initial + restocked == remaining + sold``; the quantities of the orders in the log that
  are not cancelled add up to ``sold``; at most one order per request id; no user holds
  more than ``per_user_limit`` units. :func:`engine.stock.check_invariants` checks these.
* Cancelling an order returns its units to stock and to the user's allowance, exactly
  once: the log keeps the order (:attr:`Order.cancelled` becomes true) and records the
  cancellation as an entry of its own, so a ledger consumer sees both.
* Time comes from the store's injectable clock (unix seconds as a float), read once per
  operation; a batch of purchases is judged at one instant.
* A store that cannot reach its backend raises :class:`StoreUnavailable` within a bounded
  time instead of hanging. For a purchase that outcome is unknown: retry with the same
  request id, which is safe by idempotency.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from protocol.names import ROOM_NAME_RULE, valid_room_name

__all__ = [
    "MAX_BATCH",
    "MAX_ID_LENGTH",
    "MAX_PAGE",
    "MAX_PRICE",
    "MAX_REQUEST_ID_LENGTH",
    "MAX_UNITS",
    "MAX_USER_ID_LENGTH",
    "InvalidRequest",
    "Order",
    "PurchaseRequest",
    "PurchaseResult",
    "PurchaseStatus",
    "SaleExists",
    "SaleNotFound",
    "SaleSpec",
    "SaleState",
    "SaleStatus",
    "StockError",
    "StockStore",
    "StoreUnavailable",
    "sale_status",
    "validate_id",
]

MAX_ID_LENGTH = 64
"""Sale, room and product ids: 1-64 characters of ``[A-Za-z0-9_.:-]``."""
MAX_USER_ID_LENGTH = 128
MAX_REQUEST_ID_LENGTH = 128
MAX_UNITS = 10**9
"""Upper bound of a sale's initial stock, of one restock, and of a per-user limit."""
MAX_PRICE = 10**15
"""Prices are integers in minor units (cents / 分); this keeps them exact everywhere."""
MAX_PAGE = 1000
"""Most orders one :meth:`StockStore.orders` call returns."""
MAX_BATCH = 10_000
"""Most requests one :meth:`StockStore.purchase_many` call takes."""

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


# --- errors ---------------------------------------------------------------------------


class StockError(Exception):
    """Base class of every error a stock store raises."""


class SaleNotFound(StockError):
    """No sale has this id."""


class SaleExists(StockError):
    """:meth:`StockStore.open_sale` with an id that is already taken (sale ids are never reused)."""


class StoreUnavailable(StockError):
    """The store's backend cannot be reached or did not answer in time (or the store is closed).

    Raised within a bounded time. Whether the operation took effect is unknown; purchases
    can be retried with the same request id.
    """


class InvalidRequest(StockError, ValueError):
    """A malformed argument (bad id, type or range), or an operation the sale's state forbids."""


# --- values ---------------------------------------------------------------------------


def validate_id(value: object, what: str) -> str:
    """``value`` if it is a valid sale / room / product id, else :class:`InvalidRequest`."""
    if not isinstance(value, str) or _ID.fullmatch(value) is None:
        raise InvalidRequest(
            f"{what} must be 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9_.:-], got {value!r}"
        )
    return value


def _check_int(value: object, what: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{what} must be an integer in {low}..{high}, got {value!r}")


def _check_text(value: object, what: str, max_length: int) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise InvalidRequest(
            f"{what} must be a non-empty string of at most {max_length} characters"
        )


def _check_time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{what} must be a number (unix seconds), got {value!r}")
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise InvalidRequest(f"{what} must be finite, got {value!r}")
    return result


class SaleStatus(enum.StrEnum):
    """Where a sale stands at a given instant (see :func:`sale_status`)."""

    SCHEDULED = "scheduled"
    OPEN = "open"
    SOLD_OUT = "sold_out"
    ENDED = "ended"
    CLOSED = "closed"


def sale_status(
    *, closed: bool, starts_at: float, ends_at: float, remaining: int, now: float
) -> SaleStatus:
    """The status at ``now``; the first that applies of closed, scheduled, ended, sold_out, open."""
    if closed:
        return SaleStatus.CLOSED
    if now < starts_at:
        return SaleStatus.SCHEDULED
    if now >= ends_at:
        return SaleStatus.ENDED
    if remaining <= 0:
        return SaleStatus.SOLD_OUT
    return SaleStatus.OPEN


@dataclass(frozen=True, slots=True)
class SaleSpec:
    """What a backend asks for when it opens a sale.

    Attributes:
        sale_id: unique for the store's lifetime; ``[A-Za-z0-9_.:-]``, at most 64 characters.
        room: the live room the sale runs in (same alphabet).
        product_id: the product on sale (same alphabet).
        stock: initial units, ``0..MAX_UNITS`` (a sale may start empty and be restocked).
        price: unit price in minor units (cents / 分), ``0..MAX_PRICE``.
        per_user_limit: most units one user may hold, ``1..MAX_UNITS``.
        starts_at: unix seconds; purchases are accepted from this instant…
        ends_at: …until just before this one (``starts_at < ends_at``).

    Raises:
        InvalidRequest: on construction, when a value is malformed or out of range.
    """

    sale_id: str
    room: str
    product_id: str
    stock: int
    price: int
    per_user_limit: int
    starts_at: float
    ends_at: float

    def __post_init__(self) -> None:
        validate_id(self.sale_id, "sale_id")
        if not valid_room_name(self.room):
            raise InvalidRequest(f"room must be {ROOM_NAME_RULE}, got {self.room!r}")
        validate_id(self.product_id, "product_id")
        _check_int(self.stock, "stock", 0, MAX_UNITS)
        _check_int(self.price, "price", 0, MAX_PRICE)
        _check_int(self.per_user_limit, "per_user_limit", 1, MAX_UNITS)
        object.__setattr__(self, "starts_at", _check_time(self.starts_at, "starts_at"))
        object.__setattr__(self, "ends_at", _check_time(self.ends_at, "ends_at"))
        if not self.starts_at < self.ends_at:
            raise InvalidRequest("starts_at must be before ends_at")


@dataclass(frozen=True, slots=True)
class SaleState:
    """A sale as the store holds it, with its :class:`SaleStatus` at the time of reading.

    ``initial + restocked == remaining + sold`` always holds.
    """

    sale_id: str
    room: str
    product_id: str
    price: int
    per_user_limit: int
    starts_at: float
    ends_at: float
    closed: bool
    initial: int
    restocked: int
    remaining: int
    sold: int
    status: SaleStatus
    opened_at: float = 0.0  # store clock when the sale was opened (orders a room's sales)


@dataclass(frozen=True, slots=True)
class PurchaseRequest:
    """One press of Buy.

    Attributes:
        sale_id: the sale.
        user_id: the buyer (1-128 characters).
        quantity: units wanted; any int is accepted here, out-of-range values are answered
            with :attr:`PurchaseStatus.ERROR`.
        request_id: the idempotency key, unique per attempt (1-128 characters); a retry of
            the same attempt reuses it and gets the first answer.

    Raises:
        InvalidRequest: on construction, when an id is malformed or quantity is not an int.
    """

    sale_id: str
    user_id: str
    quantity: int
    request_id: str

    def __post_init__(self) -> None:
        validate_id(self.sale_id, "sale_id")
        _check_text(self.user_id, "user_id", MAX_USER_ID_LENGTH)
        _check_text(self.request_id, "request_id", MAX_REQUEST_ID_LENGTH)
        if isinstance(self.quantity, bool) or not isinstance(self.quantity, int):
            raise InvalidRequest(f"quantity must be an integer, got {self.quantity!r}")


class PurchaseStatus(enum.StrEnum):
    """The answer to a purchase. Store unavailability is an exception, not a status."""

    OK = "ok"
    SOLD_OUT = "sold_out"
    LIMIT_REACHED = "limit_reached"
    NOT_OPEN = "not_open"
    NOT_FOUND = "not_found"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class PurchaseResult:
    """The answer to one :class:`PurchaseRequest`.

    Attributes:
        status: what happened.
        request_id: the request's id.
        order_id: the new order (``ok`` only), ``<sale_id>-<n>`` with n = 1, 2, 3… per sale.
        quantity: the quantity the answered request asked for.
        remaining: units left right after the answer was decided; None for ``not_found``
            and ``error``.
        message: a short human-readable reason (empty for ``ok``).
        replayed: True when this is a remembered first answer given again (a retry); not
            part of equality, so a replay equals its first answer.
    """

    status: PurchaseStatus
    request_id: str
    order_id: str | None
    quantity: int
    remaining: int | None
    message: str = ""
    replayed: bool = dataclasses.field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status is PurchaseStatus.OK


@dataclass(frozen=True, slots=True)
class Order:
    """An order in a sale's orders log, as :meth:`StockStore.orders` reads it.

    Attributes:
        order_id: ``<sale_id>-<n>``, n counting the sale's orders from 1.
        ts_ms: the store clock at purchase, in unix milliseconds (truncated).
        cancelled: whether the order has been cancelled (as of the read).
    """

    order_id: str
    sale_id: str
    user_id: str
    quantity: int
    price: int
    request_id: str
    ts_ms: int
    cancelled: bool = False


# --- the interface --------------------------------------------------------------------


class StockStore(Protocol):
    """Flash-sale stock behind one interface; see the module docstring for guarantees.

    Every method may raise :class:`StoreUnavailable`.
    """

    async def open_sale(self, spec: SaleSpec) -> SaleState:
        """Create the sale with ``spec.stock`` units.

        Raises:
            SaleExists: a sale with this id exists (open, closed or ended).
        """
        ...

    async def close_sale(self, sale_id: str) -> SaleState:
        """Stop accepting purchases for good (idempotent). Orders can still be cancelled.

        Raises:
            SaleNotFound: no such sale.
        """
        ...

    async def restock(self, sale_id: str, quantity: int) -> SaleState:
        """Add ``quantity`` (``1..MAX_UNITS``) units.

        Raises:
            SaleNotFound: no such sale.
            InvalidRequest: bad quantity, or the sale is closed.
        """
        ...

    async def purchase(self, request: PurchaseRequest) -> PurchaseResult:
        """Apply the purchase rules to ``request`` in one atomic step."""
        ...

    async def purchase_many(self, requests: Sequence[PurchaseRequest]) -> list[PurchaseResult]:
        """Answer each request as :meth:`purchase` would, in order, in one round trip per sale.

        Requests are judged in the given order at one instant; a request id repeated
        within the batch gets the answer its first occurrence got.

        Raises:
            InvalidRequest: more than :data:`MAX_BATCH` requests.
        """
        ...

    async def cancel_order(self, sale_id: str, order_id: str) -> bool:
        """Cancel an order: its units return to stock and to its user's allowance.

        Returns:
            True if this call cancelled it; False if it was already cancelled or unknown.

        Raises:
            SaleNotFound: no such sale.
        """
        ...

    async def state(self, sale_id: str) -> SaleState:
        """The sale's counts and its status at the store clock's now.

        Raises:
            SaleNotFound: no such sale.
        """
        ...

    async def orders(
        self, sale_id: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[Order], str | None]:
        """Up to ``limit`` (``1..MAX_PAGE``) orders in log order, after cursor ``after``.

        Returns:
            The orders and the cursor of the next page, None when the log is exhausted.
            Paging from None until the cursor is None yields every order exactly once.
            Cursors are opaque and belong to the store that made them.

        Raises:
            SaleNotFound: no such sale.
            InvalidRequest: bad limit or cursor.
        """
        ...

    async def recent_sales(self, since: float) -> list[SaleState]:
        """Every sale whose ``ends_at`` is at or after ``since``, in the order they were opened.

        A node reads them at start to learn the sales of the rooms it will hold: what to
        show in a joiner's snapshot and which sales a Buy press may name. Includes
        scheduled, open, sold-out, closed and (recently) ended sales.
        """
        ...

    async def close(self) -> None:
        """Release connections; later calls raise :class:`StoreUnavailable`."""
        ...
