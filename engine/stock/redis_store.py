"""Redis stock store: every sale mutation is one Lua script run, so Redis is the admission gate.

Guarantees (beyond those of :mod:`engine.stock.base`):

* Each mutation (open, close, restock, a batch of purchases, cancel) is one script run,
  hence atomic; every script checks everything before it writes anything. Scripts live in
  ``engine/stock/lua/*.lua``, are loaded with SCRIPT LOAD by :meth:`RedisStockStore.load`,
  run with EVALSHA and reloaded once on NOSCRIPT (e.g. after a Redis restart or SCRIPT
  FLUSH): a NOSCRIPT reply means the script did not run, so running it again is safe.
* One purchase is a batch of one (``purchase.lua`` loops over N requests); a batch for one
  sale is one EVALSHA, so one round trip answers many buyers, each with its own answer.
  Batches spanning sales go out as one pipeline of EVALSHAs (one per sale).
* All keys of a sale share the hash tag ``{sale:ID}``, so every script touches one slot
  and the layout works on Redis Cluster (:func:`connect` with ``cluster=True``; the
  contract suite runs against a 3-primary cluster too)::

      <prefix>:{sale:ID}:meta       hash   room product_id price per_user_limit starts_at
                                           ends_at closed initial restocked remaining sold seq
      <prefix>:{sale:ID}:users      hash   user_id -> units held (absent when 0)
      <prefix>:{sale:ID}:rids       hash   request_id -> first answer
                                           "reason|quantity|remaining|order_id|user_id"
      <prefix>:{sale:ID}:orders     stream kind=order order_id user_id quantity price
                                           request_id ts_ms; kind=cancel order_id user_id
                                           quantity ts_ms
      <prefix>:{sale:ID}:ordermap   hash   order_id -> "quantity|user_id" (for cancels)
      <prefix>:{sale:ID}:cancelled  set    cancelled order ids
      <prefix>:sales                zset   sale_id -> ends_at: every sale, for
                                           :meth:`RedisStockStore.recent_sales`

  The ``sales`` index is written (ZADD NX) before the sale's meta, so every sale that
  exists is indexed; a member whose meta is missing (an open that failed half-way) is
  skipped by readers. Members that ended more than :data:`INDEX_KEEP` seconds ago are
  trimmed when the index is read.
  Order ids are ``<sale_id>-<n>`` from the meta ``seq`` counter; stream entry ids are
  Redis's own (``*``) and serve as :meth:`RedisStockStore.orders` cursors. Nothing
  expires; ledger consumers may read the stream with consumer groups but must not trim
  it while the sale's invariants are still checked against it.
* Time: the store's clock is read once per operation in Python and passed to the scripts
  as unix seconds (the exact float, as decimal text, compared as a Lua double: the same
  comparisons the memory store makes) plus unix milliseconds for ``ts_ms``.
* Bounded time: every call either completes or raises :class:`StoreUnavailable` within
  ``op_timeout`` seconds (connection refused / reset, socket timeouts, AOF loading,
  read-only replica, cluster down). :func:`connect` builds a client whose socket, connect
  and pool-wait timeouts match, and which never retries a command by itself: restock is not
  idempotent, and a purchase is retried by the caller with its request id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.resources
import re
import time
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.stock._answers import result_for
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
    StockError,
    StockStore,
    StoreUnavailable,
    sale_status,
    validate_id,
)

__all__ = ["SCRIPT_BATCH", "LuaScript", "RedisStockStore", "connect", "load_scripts"]

T = TypeVar("T")

SCRIPT_BATCH: Final = 500
"""Most purchase requests one ``purchase.lua`` run takes; bigger batches are split."""

SCRIPT_NAMES: Final = ("open", "close", "restock", "purchase", "cancel")

INDEX_KEEP: Final = 7 * 86400.0
"""Seconds after its end that a sale stays in the ``sales`` index."""

_UNAVAILABLE: Final = (
    RedisConnectionError,  # refused, reset, BusyLoadingError (AOF loading), no pool slot
    RedisTimeoutError,
    ReadOnlyError,
    ClusterDownError,  # and MasterDownError
    TryAgainError,
    OSError,
)
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


@dataclasses.dataclass(frozen=True, slots=True)
class LuaScript:
    """A script from ``engine/stock/lua/``: its name, source and SHA1 (the EVALSHA key)."""

    name: str
    source: str
    sha: str


def load_scripts() -> dict[str, LuaScript]:
    """Read every stock script from the package (works installed or from the source tree)."""
    folder = importlib.resources.files("engine.stock") / "lua"
    scripts = {}
    for name in SCRIPT_NAMES:
        source = (folder / f"{name}.lua").read_text(encoding="utf-8")
        sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        scripts[name] = LuaScript(name, source, sha)
    return scripts


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@dataclasses.dataclass(frozen=True, slots=True)
class _Keys:
    meta: str
    users: str
    rids: str
    orders: str
    ordermap: str
    cancelled: str


class RedisStockStore(StockStore):
    """A :class:`~engine.stock.base.StockStore` in Redis (7.0+).

    Args:
        client: an asyncio Redis client; the store closes it in :meth:`close` when
            ``close_client`` is true. Give it socket timeouts and no retries
            (:func:`connect` does).
        clock: unix seconds now; read once per operation.
        key_prefix: first part of every key (no braces).
        op_timeout: seconds after which any call raises :class:`StoreUnavailable`
            (None: rely on the client's socket timeouts alone).
        close_client: whether :meth:`close` closes ``client``.
        max_in_flight: most calls in flight at once (None: no bound of the store's own);
            :func:`connect` bounds a cluster client, whose pool fails instead of waiting.
    """

    __slots__ = (
        "_client",
        "_clock",
        "_close_client",
        "_closed",
        "_in_flight",
        "_op_timeout",
        "_prefix",
        "_scripts",
    )

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        clock: Callable[[], float] = time.time,
        key_prefix: str = "lr",
        *,
        op_timeout: float | None = 5.0,
        close_client: bool = True,
        max_in_flight: int | None = None,
    ) -> None:
        if not key_prefix or "{" in key_prefix or "}" in key_prefix:
            raise InvalidRequest("key_prefix must be non-empty and contain no braces")
        self._client = client
        self._clock = clock
        self._prefix = key_prefix
        self._op_timeout = op_timeout
        self._close_client = close_client
        self._closed = False
        self._scripts = load_scripts()
        # Calls in flight at once (for a cluster client, which fails rather than waits
        # when a node's connections are all busy); callers beyond it wait, within the
        # call's time bound.
        self._in_flight = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        return self._client

    @property
    def scripts(self) -> dict[str, LuaScript]:
        return dict(self._scripts)

    def keys(self, sale_id: str) -> tuple[str, ...]:
        """Every key of a sale (meta, users, rids, orders, ordermap, cancelled)."""
        k = self._keys(sale_id)
        return (k.meta, k.users, k.rids, k.orders, k.ordermap, k.cancelled)

    def _keys(self, sale_id: str) -> _Keys:
        base = f"{self._prefix}:{{sale:{sale_id}}}:"
        return _Keys(
            base + "meta",
            base + "users",
            base + "rids",
            base + "orders",
            base + "ordermap",
            base + "cancelled",
        )

    # --- plumbing ------------------------------------------------------------------

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` within ``op_timeout``, mapping Redis failures to stock errors."""
        if self._closed:
            raise StoreUnavailable("stock store is closed")
        try:
            async with asyncio.timeout(self._op_timeout):
                if self._in_flight is None:
                    return await call()
                async with self._in_flight:
                    return await call()
        except TimeoutError as exc:  # our deadline (asyncio.timeout)
            raise StoreUnavailable(f"redis did not answer within {self._op_timeout} s") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc
        except RedisError as exc:
            raise StockError(f"redis error: {exc}") from exc

    async def load(self) -> None:
        """SCRIPT LOAD every script (at start; EVALSHA reloads on NOSCRIPT anyway).

        Raises:
            StoreUnavailable: Redis cannot be reached.
            StockError: Redis answered with a different SHA1 than the script's.
        """

        async def load_all() -> None:
            for script in self._scripts.values():
                sha = _text(await self._client.script_load(script.source))
                if sha != script.sha:
                    raise StockError(f"{script.name}.lua loaded as {sha}, expected {script.sha}")

        await self._run(load_all)

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        script = self._scripts[name]
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # the script did not run: load it and run it once more
            await self._client.script_load(script.source)
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)

    def _state(self, sale_id: str, reply: Any, now: float) -> SaleState:
        if isinstance(reply, dict):
            meta = {_text(k): _text(v) for k, v in reply.items()}
        else:
            meta = {_text(k): _text(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}
        if not meta:
            raise SaleNotFound(sale_id)
        closed = meta["closed"] == "1"
        starts_at = float(meta["starts_at"])
        ends_at = float(meta["ends_at"])
        remaining = int(meta["remaining"])
        return SaleState(
            sale_id=sale_id,
            room=meta["room"],
            product_id=meta["product_id"],
            price=int(meta["price"]),
            per_user_limit=int(meta["per_user_limit"]),
            starts_at=starts_at,
            ends_at=ends_at,
            closed=closed,
            initial=int(meta["initial"]),
            restocked=int(meta["restocked"]),
            remaining=remaining,
            sold=int(meta["sold"]),
            status=sale_status(
                closed=closed, starts_at=starts_at, ends_at=ends_at, remaining=remaining, now=now
            ),
            opened_at=float(meta.get("opened_at", starts_at)),
        )

    # --- sales ---------------------------------------------------------------------

    @property
    def index_key(self) -> str:
        """The ``sales`` index (sale id -> ends_at)."""
        return f"{self._prefix}:sales"

    async def open_sale(self, spec: SaleSpec) -> SaleState:
        now = self._clock()
        args = (
            spec.room,
            spec.product_id,
            spec.price,
            spec.per_user_limit,
            repr(spec.starts_at),
            repr(spec.ends_at),
            spec.stock,
            repr(now),
        )
        meta_key = self._keys(spec.sale_id).meta

        async def index_then_open() -> Any:
            # Indexed first: a sale never exists unindexed (sale ids are never reused, so
            # NX keeps an existing member's score when the id is taken).
            await self._client.zadd(self.index_key, {spec.sale_id: spec.ends_at}, nx=True)
            return await self._eval("open", [meta_key], args)

        created = await self._run(index_then_open)
        if not created:
            raise SaleExists(spec.sale_id)
        return SaleState(
            sale_id=spec.sale_id,
            room=spec.room,
            product_id=spec.product_id,
            price=spec.price,
            per_user_limit=spec.per_user_limit,
            starts_at=spec.starts_at,
            ends_at=spec.ends_at,
            closed=False,
            initial=spec.stock,
            restocked=0,
            remaining=spec.stock,
            sold=0,
            status=sale_status(
                closed=False,
                starts_at=spec.starts_at,
                ends_at=spec.ends_at,
                remaining=spec.stock,
                now=now,
            ),
            opened_at=now,
        )

    async def close_sale(self, sale_id: str) -> SaleState:
        meta_key = self._keys(validate_id(sale_id, "sale_id")).meta
        reply = await self._run(lambda: self._eval("close", [meta_key], ()))
        now = self._clock()
        if _text(reply[0]) != "ok":
            raise SaleNotFound(sale_id)
        return self._state(sale_id, reply[1], now)

    async def restock(self, sale_id: str, quantity: int) -> SaleState:
        meta_key = self._keys(validate_id(sale_id, "sale_id")).meta
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            raise InvalidRequest(f"quantity must be an integer, got {quantity!r}")
        if not 1 <= quantity <= MAX_UNITS:
            raise InvalidRequest(f"quantity must be in 1..{MAX_UNITS}, got {quantity}")
        reply = await self._run(lambda: self._eval("restock", [meta_key], (quantity,)))
        now = self._clock()
        outcome = _text(reply[0])
        if outcome == "not_found":
            raise SaleNotFound(sale_id)
        if outcome == "closed":
            raise InvalidRequest(f"sale {sale_id} is closed")
        return self._state(sale_id, reply[1], now)

    async def state(self, sale_id: str) -> SaleState:
        meta_key = self._keys(validate_id(sale_id, "sale_id")).meta
        reply = await self._run(lambda: self._client.hgetall(meta_key))
        return self._state(sale_id, reply, self._clock())

    # --- purchases -----------------------------------------------------------------

    def _purchase_call(
        self, sale_id: str, requests: Sequence[PurchaseRequest], now: float
    ) -> tuple[list[str], list[str | int]]:
        k = self._keys(sale_id)
        args: list[str | int] = [sale_id, repr(now), int(now * 1000), len(requests)]
        for request in requests:
            args += (request.user_id, request.quantity, request.request_id)
        return [k.meta, k.users, k.rids, k.orders, k.ordermap], args

    @staticmethod
    def _purchase_answers(requests: Sequence[PurchaseRequest], reply: Any) -> list[PurchaseResult]:
        if reply is None:  # no such sale
            return [result_for("not_found", r.request_id, r.quantity, None, None) for r in requests]
        results = []
        for request, answer in zip(requests, reply, strict=True):
            text = _text(answer)
            replayed = text.startswith("+")
            reason, quantity, remaining, order_id, _user = text.lstrip("+").split("|", 4)
            result = result_for(
                reason,
                request.request_id,
                int(quantity),
                int(remaining) if remaining else None,
                order_id or None,
            )
            results.append(dataclasses.replace(result, replayed=True) if replayed else result)
        return results

    async def purchase(self, request: PurchaseRequest) -> PurchaseResult:
        requests = (request,)
        keys, args = self._purchase_call(request.sale_id, requests, self._clock())
        reply = await self._run(lambda: self._eval("purchase", keys, args))
        return self._purchase_answers(requests, reply)[0]

    async def purchase_many(self, requests: Sequence[PurchaseRequest]) -> list[PurchaseResult]:
        if self._closed:
            raise StoreUnavailable("stock store is closed")
        if len(requests) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} requests per batch")
        if not requests:
            return []
        now = self._clock()
        by_sale: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            by_sale.setdefault(request.sale_id, []).append(index)
        chunks = [
            indices[start : start + SCRIPT_BATCH]
            for indices in by_sale.values()
            for start in range(0, len(indices), SCRIPT_BATCH)
        ]
        calls = []
        for chunk in chunks:
            batch = [requests[i] for i in chunk]
            calls.append((batch, *self._purchase_call(batch[0].sale_id, batch, now)))

        if len(calls) == 1:
            batch, keys, args = calls[0]
            reply = await self._run(lambda: self._eval("purchase", keys, args))
            return self._purchase_answers(batch, reply)

        replies = await self._run(lambda: self._pipelined_purchases(calls))
        results: list[PurchaseResult | None] = [None] * len(requests)
        for chunk, (batch, _keys, _args), reply in zip(chunks, calls, replies, strict=True):
            for index, result in zip(chunk, self._purchase_answers(batch, reply), strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    async def _pipelined_purchases(
        self, calls: list[tuple[list[PurchaseRequest], list[str], list[str | int]]]
    ) -> list[Any]:
        """One pipeline of EVALSHAs (preloaded SHA); calls that got NOSCRIPT run again.

        On a cluster, whose client refuses scripts in pipelines, the sales (each on its
        own slot) run concurrently instead, each sale's chunks one after another, in order.
        """
        if isinstance(self._client, RedisCluster):
            replies: list[Any] = [None] * len(calls)
            by_sale: dict[str, list[int]] = {}
            for i, (batch, _keys, _args) in enumerate(calls):
                by_sale.setdefault(batch[0].sale_id, []).append(i)

            async def run_sale(indices: list[int]) -> None:
                for i in indices:
                    _batch, keys, args = calls[i]
                    replies[i] = await self._eval("purchase", keys, args)

            await asyncio.gather(*(run_sale(indices) for indices in by_sale.values()))
            return replies
        sha = self._scripts["purchase"].sha
        pipe = self._client.pipeline(transaction=False)
        for _batch, keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        replies = list(await pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                _batch, keys, args = calls[i]
                replies[i] = await self._eval("purchase", keys, args)
            elif isinstance(reply, Exception):
                raise reply
        return replies

    # --- cancels and orders --------------------------------------------------------

    async def cancel_order(self, sale_id: str, order_id: str) -> bool:
        k = self._keys(validate_id(sale_id, "sale_id"))
        if not isinstance(order_id, str):
            raise InvalidRequest(f"order_id must be a string, got {order_id!r}")
        keys = [k.meta, k.users, k.orders, k.ordermap, k.cancelled]
        now_ms = int(self._clock() * 1000)
        done = await self._run(lambda: self._eval("cancel", keys, (order_id, now_ms)))
        if done == -1:
            raise SaleNotFound(sale_id)
        return bool(done == 1)

    async def orders(
        self, sale_id: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[Order], str | None]:
        k = self._keys(validate_id(sale_id, "sale_id"))
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be an integer in 1..{MAX_PAGE}, got {limit!r}")
        if after is not None and not (isinstance(after, str) and _STREAM_ID.fullmatch(after)):
            raise InvalidRequest(f"bad cursor {after!r}")
        return await self._run(lambda: self._orders(sale_id, k, after, limit))

    async def _orders(
        self, sale_id: str, k: _Keys, after: str | None, limit: int
    ) -> tuple[list[Order], str | None]:
        page: list[Order] = []
        cursor = after
        exhausted = False
        while len(page) < limit:
            wanted = limit - len(page)
            start = "-" if cursor is None else f"({cursor}"
            entries = await self._client.xrange(k.orders, start, "+", wanted) or []
            for entry_id, raw in entries:
                assert entry_id is not None and raw is not None
                cursor = _text(entry_id)
                fields = {_text(key): _text(value) for key, value in raw.items()}
                if fields.get("kind") != "order":
                    continue
                page.append(
                    Order(
                        order_id=fields["order_id"],
                        sale_id=sale_id,
                        user_id=fields["user_id"],
                        quantity=int(fields["quantity"]),
                        price=int(fields["price"]),
                        request_id=fields["request_id"],
                        ts_ms=int(fields["ts_ms"]),
                    )
                )
            if len(entries) < wanted:
                exhausted = True
                break
        if not page and not await self._client.exists(k.meta):
            raise SaleNotFound(sale_id)
        if page:
            flags = await self._client.smismember(k.cancelled, [order.order_id for order in page])
            page = [
                dataclasses.replace(order, cancelled=True) if flag else order
                for order, flag in zip(page, flags, strict=True)
            ]
        return page, (None if exhausted else cursor)

    async def recent_sales(self, since: float) -> list[SaleState]:
        async def read() -> list[SaleState]:
            client = self._client
            await client.zremrangebyscore(self.index_key, "-inf", f"({since - INDEX_KEEP!r}")
            members = await client.zrangebyscore(self.index_key, since, "+inf")
            ids = [_text(typing.cast(bytes, i)) for i in members]
            if not ids:
                return []
            pipe = client.pipeline(transaction=False)  # one round trip (per node on a cluster)
            for sale_id in ids:
                pipe.hgetall(self._keys(sale_id).meta)
            replies = await pipe.execute()
            now = self._clock()
            states = [self._state(i, r, now) for i, r in zip(ids, replies, strict=True) if r]
            return sorted(states, key=lambda state: state.opened_at)

        return await self._run(read)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._close_client:
            await self._client.aclose()


async def connect(
    url: str,
    *,
    timeout: float = 1.0,
    clock: Callable[[], float] = time.time,
    key_prefix: str = "lr",
    max_connections: int = 64,
    cluster: bool = False,
) -> RedisStockStore:
    """A loaded :class:`RedisStockStore` on its own time-bounded client.

    Args:
        url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``).
        timeout: seconds; bounds connecting, each socket read, waiting for a pooled
            connection, and every store call as a whole (``op_timeout``).
        clock: the store clock.
        key_prefix: first part of every key.
        max_connections: pool size; callers beyond it wait (within ``timeout``).
        cluster: ``url`` names a node of a Redis Cluster: use redis-py's cluster client
            (it finds the other nodes; every key of a sale is in one slot). It never
            retries a command by itself either: a restock must not run twice.

    Raises:
        StoreUnavailable: Redis cannot be reached within ``timeout``.
    """
    client: aioredis.Redis | RedisCluster
    if cluster:
        client = RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
    else:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        client = aioredis.Redis.from_pool(pool)
    store = RedisStockStore(
        client,
        clock=clock,
        key_prefix=key_prefix,
        op_timeout=timeout,
        max_in_flight=max_connections if cluster else None,
    )
    try:
        await store.load()
    except BaseException:
        await store.close()
        raise
    return store
