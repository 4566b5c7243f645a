"""Flash-sale (秒杀) stock: one :class:`StockStore` interface, a memory and a Redis store.

The guarantees every store keeps are stated in :mod:`engine.stock.base`; the Redis key
layout and scripts in :mod:`engine.stock.redis_store`.

::

    store = MemoryStockStore()                                  # embedded default
    store = await connect("redis://127.0.0.1:6379/0", timeout=1.0)  # or Redis
    await store.open_sale(SaleSpec("s1", "room1", "p1", stock=100, price=9900,
                                   per_user_limit=2, starts_at=t0, ends_at=t0 + 600))
    result = await store.purchase(PurchaseRequest("s1", "u42", 1, request_id="r-1"))
"""

from engine.stock.base import (
    MAX_BATCH,
    MAX_PAGE,
    MAX_PRICE,
    MAX_UNITS,
    InvalidRequest,
    Order,
    PurchaseRequest,
    PurchaseResult,
    PurchaseStatus,
    SaleExists,
    SaleNotFound,
    SaleSpec,
    SaleState,
    SaleStatus,
    StockError,
    StockStore,
    StoreUnavailable,
    sale_status,
)
from engine.stock.checks import InvariantReport, InvariantViolation, check_invariants
from engine.stock.memory import MemoryStockStore
from engine.stock.redis_store import RedisStockStore, connect

__all__ = [
    "MAX_BATCH",
    "MAX_PAGE",
    "MAX_PRICE",
    "MAX_UNITS",
    "InvalidRequest",
    "InvariantReport",
    "InvariantViolation",
    "MemoryStockStore",
    "Order",
    "PurchaseRequest",
    "PurchaseResult",
    "PurchaseStatus",
    "RedisStockStore",
    "SaleExists",
    "SaleNotFound",
    "SaleSpec",
    "SaleState",
    "SaleStatus",
    "StockError",
    "StockStore",
    "StoreUnavailable",
    "check_invariants",
    "connect",
    "sale_status",
]
