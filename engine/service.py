"""Internal HTTP JSON API for backend services: pins, system messages, flash sales, metrics.

Backends (the shop, the host's console, the order pipeline) drive live rooms through this
API, served by ``aiohttp.web`` on its own port (``service.host`` / ``service.port``), apart
from the viewers' websocket listener. JSON in and out (orjson).

Endpoints::

    GET    /health                                    liveness; no key needed
    GET    /metrics                                   Prometheus text format
    POST   /v1/rooms/{room}/pin                       pin a product card      -> 200
    DELETE /v1/rooms/{room}/pin                       unpin                   -> 200
    POST   /v1/rooms/{room}/messages                  post a system message   -> 200
    POST   /v1/sales                                  open a flash sale       -> 201
    GET    /v1/sales/{sale_id}                        sale state              -> 200
    POST   /v1/sales/{sale_id}/close                  close for good          -> 200
    POST   /v1/sales/{sale_id}/restock                add units               -> 200
    GET    /v1/sales/{sale_id}/orders?after=&limit=   orders log, paged       -> 200
    POST   /v1/sales/{sale_id}/orders/{order_id}/cancel                       -> 200

Only the orders log takes query parameters: ``limit`` (1..1000, default 100) and ``after``,
the cursor of the next page: the ``next`` of the previous page's answer
(``{"orders": [...], "next": "..."}``), absent for the first page; ``next`` is ``null``
on the last page. Any other query parameter, on any endpoint, is refused (so a typo such
as ``cursor=`` cannot silently page the first page forever).

Guarantees:

* Authentication: every path except ``/health`` (and, with ``demo.enabled``, the demo's
  own routes under ``/demo/``: :mod:`engine.demo`) needs one of ``service.api_keys``, sent
  as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The key given is compared
  with every configured key in constant time (``hmac.compare_digest``, no early exit).
  With no key configured, every such request is refused. A missing or bad key is a 401,
  whatever the path (unknown paths do not leak through an unauthenticated 404).
* Errors are always JSON, never a traceback::

      {"error": {"code": "...", "message": "...", "field": "..."}}   (field when known)

  400 ``invalid_json`` (body not JSON), ``invalid_body`` (not an object),
  ``invalid_field`` (a missing, unknown, mistyped or out-of-range field, named in
  ``field``; for path and query parameters too: an unknown or repeated query parameter
  is named in ``field``, and the message lists the parameters the endpoint accepts),
  ``bad_request`` (malformed body framing, or the client left mid-body; the connection
  is closed); 401 ``unauthorized``; 404 ``room_not_found`` / ``sale_not_found`` /
  ``not_found`` (unknown path); 405 ``method_not_allowed`` (with ``Allow``); 408
  ``body_timeout`` (the body did not arrive within ``service.body_timeout`` seconds; the
  connection is closed); 409 ``sale_exists`` (sale ids are never reused) /
  ``sale_closed`` (restock of a closed sale); 413 ``payload_too_large`` (body over
  :data:`MAX_BODY_SIZE`; a declared ``Content-Length`` over it is refused at once, before
  authentication and without reading the body); 503
  ``store_unavailable`` with ``Retry-After: 1`` (the stock store cannot be reached; the
  operation may or may not have taken effect: read the sale state before retrying); 503
  ``broker_unavailable`` with ``Retry-After: 1`` (shared rooms: the room broker cannot be
  reached; the event was not acknowledged); 500
  ``internal`` only for a server bug (logged with its traceback). A request aiohttp cannot
  parse (request line or a header over 8 KiB, malformed headers) never reaches the API:
  aiohttp answers it with a plain-text 400 and closes the connection.
* A client cannot fill the log: its faults (unparseable HTTP, leaving mid-body) are logged
  as one short debug line at most, without traceback; ERROR records and tracebacks are
  for our bugs.
* No connection is held by a slow or lying client: reading a body is bounded by
  ``service.body_timeout``; after an answer given before the body was read (401, 404,
  413…), the rest of it is read and dropped for ``service.body_timeout`` at most, then the
  connection closes.
* Every field of a body is validated before anything changes: unknown fields are refused
  (a typo cannot silently fall back to a default); ``null`` counts as absent for optional
  fields. Ids and texts follow the protocol limits of :mod:`protocol.messages` and the
  stock store's (:mod:`engine.stock.base`), so whatever the API accepts, viewers decode.
  Room names, in a path (percent-encoded) or a body, follow the one rule of
  :mod:`protocol.names` (``直播间-1`` is a room name; spaces, ``/``, control and bidi
  characters are not); sale and product ids keep their ASCII rule ``[A-Za-z0-9_.:-]``.
  A refused room name is never echoed back.
* With shared rooms (``broker.backend = "redis"``) every room is known on every node:
  pins, messages and sales go through the broker to every node with viewers in the room,
  whichever node the call reached. With the memory broker a room is known to the API
  while it exists in this node's hub: from its first viewer's join until it has been
  empty for a while (the hub's empty-room TTL); pins, messages and new sales for a room
  unknown to this node are 404 ``room_not_found``. Sale reads, closes, restocks and
  cancels go to the store, so they work for any sale the store knows.
* Metrics are read at scrape time from the gateway's, hub's and sale desk's statistics
  by a collector on a private registry (several servers in one process do not clash).
* The access log is off; shutdown waits at most ``server.close_timeout`` for requests in
  flight.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NoReturn

import orjson
from aiohttp import web
from aiohttp.http import HttpProcessingError
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import CollectorRegistry

from engine.broker import BrokerError
from engine.config import Config
from engine.gateway import Gateway
from engine.room import Hub
from engine.sales import SaleDesk
from engine.stock import (
    MAX_PAGE,
    MAX_PRICE,
    MAX_UNITS,
    InvalidRequest,
    Order,
    SaleExists,
    SaleNotFound,
    SaleSpec,
    SaleState,
    StockError,
    StoreUnavailable,
)
from engine.stock.base import MAX_ID_LENGTH, validate_id
from protocol import Product
from protocol.messages import (
    MAX_ATTR_KEY_LENGTH,
    MAX_ATTR_TEXT_LENGTH,
    MAX_ATTRS,
    MAX_INT,
    MAX_TEXT_LENGTH,
    AttrValue,
)
from protocol.names import ROOM_NAME_RULE, valid_room_name

__all__ = ["DEFAULT_SALE_DURATION", "MAX_BODY_SIZE", "ServiceRunner", "start_service"]

log = logging.getLogger("liveroom.service")

DEFAULT_SALE_DURATION = 600.0
"""Seconds a sale runs when ``POST /v1/sales`` gives neither ``ends_at`` nor ``duration``."""
MAX_BODY_SIZE = 256 * 1024
"""Largest request body accepted (bytes); larger is 413."""
MAX_ORDER_ID_LENGTH = 128
MAX_CURSOR_LENGTH = 256
_MAX_TIME = MAX_INT // 1000
"""Latest accepted unix second: sale times travel to viewers as exact integer milliseconds."""
_CONTROL_CHARS = frozenset(chr(c) for c in (*range(0x20), 0x7F))
_JSON = "application/json"
_ROOM = "{room:[^/]+}"
"""The room path parameter: any one segment, so that the room-name rule decides (400), not
aiohttp's default pattern (which refuses braces with a 404)."""
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- errors ---------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP status, machine-readable code, message, optional field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})
        self.close = close
        """Close the connection once answered, without waiting for the rest of the body."""

    def response(self) -> web.Response:
        error: dict[str, str] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return _json({"error": error}, status=self.status, headers=self.headers)


def _bad_field(field: str, message: str) -> NoReturn:
    raise ApiError(400, "invalid_field", f"{field}: {message}", field=field)


def _clip(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[:limit] + "…"


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


async def _answer_and_close(request: web.Request, response: web.Response) -> None:
    """Send ``response`` now, then close the connection, unread body and all.

    aiohttp would otherwise keep reading (and dropping) the rest of the body for its
    lingering time; a client that gets this answer has already had its time.
    """
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # gone already
    finally:
        request.protocol.force_close()  # closes once the answer is flushed


def _json(
    data: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type=_JSON)


# --- logging of client faults -----------------------------------------------------------


_HTTP_LOG = logging.getLogger("liveroom.service.http")
"""aiohttp's server logger for this service (instead of ``aiohttp.server``)."""


class _ClientFaultFilter(logging.Filter):
    """Turns aiohttp's tracebacks for a client's fault into one short debug line.

    aiohttp logs ``Error handling request`` at ERROR, with a traceback, for every
    request it cannot parse (request line or header too long, malformed headers, bad
    Content-Length or chunked framing: the ``BadHttpMessage`` family, which it answers 400)
    and for some peers that leave early. Those are the client's doing, and any client
    could flood the log with them. Records whose exception is one of those are dropped
    and replaced by a debug line on ``liveroom.service``; every other record (a bug of
    ours or of aiohttp) passes untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            detail = _clip(exc.message.partition("\n")[0], 100)
        elif isinstance(exc, ConnectionError):
            detail = type(exc).__name__
        else:
            return True
        log.debug("%s: %s (%s)", _clip(record.getMessage(), 100), type(exc).__name__, detail)
        return False


_CLIENT_FAULTS = _ClientFaultFilter()


# --- body and field validation ---------------------------------------------------------


async def _read_object(request: web.Request, timeout: float) -> dict[str, Any]:
    """The body as a JSON object, read within ``timeout`` seconds.

    Raises:
        ApiError: 408 ``body_timeout`` (the body did not arrive in time), 413 (too large),
            400 ``bad_request`` (broken framing, or the client left mid-body), 400
            ``invalid_json`` / ``invalid_body``. The 408 and the ``bad_request`` close the
            connection at once.
    """
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"request body not received within {timeout:g} s", close=True
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large() from None  # answered with Connection: close, the rest drained
    except ConnectionError as exc:  # the client went away: not an error of ours
        log.debug(
            "client %s went away mid-body (%s %s): %r",
            request.remote,
            request.method,
            _clip(request.path),
            exc,
        )
        raise ApiError(400, "bad_request", "connection lost mid-body", close=True) from None
    except HttpProcessingError as exc:  # broken chunked framing, bad compression…
        raise ApiError(
            400, "bad_request", f"malformed request body: {_clip(exc.message, 100)}", close=True
        ) from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "request body must be a JSON object")
    return data


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"request body over {MAX_BODY_SIZE} bytes")


def _only(data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    known = set(allowed)
    for key in data:
        if key not in known:
            _bad_field(_clip(key), f"unknown field (expected: {', '.join(sorted(known))})")


def _present(data: Mapping[str, Any], name: str) -> bool:
    return data.get(name) is not None


def _required(data: Mapping[str, Any], name: str) -> Any:
    value = data.get(name)
    if value is None:
        _bad_field(name, "missing")
    return value


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _bad_field(name, f"must be an integer in {low}..{high}")
    if value < low:
        _bad_field(name, f"must be an integer >= {low}")
    if value > high:
        _bad_field(name, f"must be an integer <= {high}")
    return value


def _text(value: Any, name: str, low: int, high: int, *, control: bool = False) -> str:
    if not isinstance(value, str):
        _bad_field(name, "must be a string")
    if not low <= len(value) <= high:
        _bad_field(name, f"must be {low}..{high} characters long, got {len(value)}")
    if not control and not _CONTROL_CHARS.isdisjoint(value):
        _bad_field(name, "must not contain control characters")
    return value


def _id(value: Any, name: str) -> str:
    try:
        return validate_id(value, name)
    except InvalidRequest:  # its message echoes the value, which may be huge
        _bad_field(name, f"must be 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9_.:-]")


def _room(value: Any) -> str:
    if not valid_room_name(value):  # never echo the value: it may be huge or unprintable
        _bad_field("room", f"must be {ROOM_NAME_RULE}")
    assert isinstance(value, str)
    return value


def _time(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _bad_field(name, "must be a number (unix seconds)")
    result = float(value)
    if not (math.isfinite(result) and 0 <= result <= _MAX_TIME):
        _bad_field(name, f"must be unix seconds in 0..{_MAX_TIME}")
    return result


def _product(data: Mapping[str, Any]) -> Product:
    _only(data, ("id", "title", "price", "currency", "image", "extra"))
    currency = image = None
    extra: tuple[tuple[str, AttrValue], ...] | None = None
    if _present(data, "currency"):
        currency = _text(data["currency"], "currency", 3, 3)
        if not (currency.isascii() and currency.isalpha() and currency.isupper()):
            _bad_field("currency", "must be an ISO 4217 code of 3 capital letters, e.g. CNY")
    if _present(data, "image"):
        image = _text(data["image"], "image", 1, 1000)
    if _present(data, "extra"):
        extra = _attrs(data["extra"])
    return Product(
        id=_text(_required(data, "id"), "id", 1, 64),
        title=_text(_required(data, "title"), "title", 1, 200),
        price=_int(_required(data, "price"), "price", 0, MAX_PRICE),
        currency=currency,
        image=image,
        extra=extra,
    )


def _attrs(value: Any) -> tuple[tuple[str, AttrValue], ...]:
    if not isinstance(value, dict):
        _bad_field("extra", "must be an object of string keys to strings, integers or booleans")
    if len(value) > MAX_ATTRS:
        _bad_field("extra", f"at most {MAX_ATTRS} entries")
    out: list[tuple[str, AttrValue]] = []
    for key, item in value.items():
        _text(key, "extra", 1, MAX_ATTR_KEY_LENGTH)  # orjson keys are always strings
        field = f"extra.{key}"
        if item is None:
            continue
        if isinstance(item, bool):
            pass
        elif isinstance(item, int):
            if not -MAX_INT <= item <= MAX_INT:
                _bad_field(field, f"integers must be within ±{MAX_INT}")
        elif isinstance(item, str):
            if len(item) > MAX_ATTR_TEXT_LENGTH:
                _bad_field(field, f"at most {MAX_ATTR_TEXT_LENGTH} characters")
        else:
            _bad_field(field, "must be a string, an integer or a boolean")
        out.append((key, item))
    return tuple(out)


def _product_json(product: Product) -> dict[str, Any]:
    out: dict[str, Any] = {"id": product.id, "title": product.title, "price": product.price}
    if product.currency is not None:
        out["currency"] = product.currency
    if product.image is not None:
        out["image"] = product.image
    if product.extra is not None:
        out["extra"] = dict(product.extra)
    return out


def _state_json(state: SaleState) -> dict[str, Any]:
    return {
        "sale_id": state.sale_id,
        "room": state.room,
        "product_id": state.product_id,
        "price": state.price,
        "per_user_limit": state.per_user_limit,
        "starts_at": state.starts_at,
        "ends_at": state.ends_at,
        "closed": state.closed,
        "initial": state.initial,
        "restocked": state.restocked,
        "remaining": state.remaining,
        "sold": state.sold,
        "status": str(state.status),
    }


def _order_json(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "sale_id": order.sale_id,
        "user_id": order.user_id,
        "quantity": order.quantity,
        "price": order.price,
        "request_id": order.request_id,
        "ts_ms": order.ts_ms,
        "cancelled": order.cancelled,
    }


# --- metrics --------------------------------------------------------------------------


class _StatsCollector:
    """Reads the node's statistics at scrape time."""

    def __init__(self, hub: Hub, gateway: Gateway, desk: SaleDesk) -> None:
        self.hub = hub
        self.gateway = gateway
        self.desk = desk

    def collect(self) -> Iterable[Metric]:
        gw = self.gateway.statistics()
        hub = self.hub.statistics()
        desk = self.desk.statistics()
        node = GaugeMetricFamily("liveroom_node_info", "This node's id.", labels=["node"])
        node.add_metric([self.gateway.node_id], 1)
        yield node
        yield GaugeMetricFamily(
            "liveroom_connections", "Open websocket connections.", value=gw.connections
        )
        yield GaugeMetricFamily(
            "liveroom_connections_authenticated",
            "Open websocket connections past authentication.",
            value=gw.authenticated,
        )
        yield CounterMetricFamily(
            "liveroom_connections_accepted",
            "Websocket connections accepted.",
            value=gw.accepted_total,
        )
        closed = CounterMetricFamily(
            "liveroom_connections_closed",
            "Websocket connections closed, by close code.",
            labels=["code"],
        )
        for code, count in sorted(gw.closed_by_code.items()):
            closed.add_metric([str(code)], count)
        yield closed
        yield GaugeMetricFamily("liveroom_rooms", "Rooms held by this node.", value=hub.rooms)
        yield GaugeMetricFamily(
            "liveroom_room_subscriptions",
            "Room subscriptions (viewers summed over rooms).",
            value=hub.subscriptions,
        )
        yield CounterMetricFamily(
            "liveroom_events_published",
            "Room events published (rooms held now).",
            value=hub.events_published,
        )
        yield CounterMetricFamily(
            "liveroom_frames_written",
            "Batch frames written to subscribers (rooms held now).",
            value=hub.frames_written,
        )
        purchases = CounterMetricFamily(
            "liveroom_purchases",
            "Answers to Buy presses, by result (incl. local sold-out answers).",
            labels=["result"],
        )
        for result, count in sorted(desk.purchases.items()):
            purchases.add_metric([result], count)
        yield purchases
        yield CounterMetricFamily(
            "liveroom_purchase_local_sold_out",
            "Buy presses answered sold out from the node's local flag, without the store.",
            value=desk.local_sold_out_answers,
        )
        yield GaugeMetricFamily(
            "liveroom_purchase_queue_depth",
            "Buy presses waiting for a store call.",
            value=desk.pending,
        )
        yield CounterMetricFamily(
            "liveroom_purchase_local_not_open",
            "Buy presses answered not_open from the sale's window, without the store.",
            value=desk.local_not_open_answers,
        )
        yield GaugeMetricFamily(
            "liveroom_sales_known",
            "Sales this node has learnt from the store.",
            value=desk.sales_known,
        )
        yield CounterMetricFamily(
            "liveroom_sale_lookups",
            "Store reads for sales a press or a service call named first.",
            value=desk.lookups,
        )
        guard = self.gateway.guard
        yield GaugeMetricFamily(
            "liveroom_connections_max",
            "Effective connection limit (configured, capped by open files less fd_reserve).",
            value=guard.max_connections,
        )
        yield CounterMetricFamily(
            "liveroom_connections_refused",
            "Connections refused with 1013 at the connection limit.",
            value=guard.refused,
        )
        yield CounterMetricFamily(
            "liveroom_connections_aborted",
            "New connections aborted at once because descriptors were nearly used up.",
            value=guard.aborted,
        )
        yield CounterMetricFamily(
            "liveroom_descriptors_exhausted",
            "Failed accepts (open-files limit hit) seen by the event loop or its probe.",
            value=guard.exhausted,
        )
        yield GaugeMetricFamily(
            "liveroom_unsent_bytes",
            "Bytes written to connections and not yet taken by the kernel.",
            value=gw.unsent_bytes,
        )
        yield CounterMetricFamily(
            "liveroom_write_budget_cuts",
            "Connections cut off (4008) because the node passed server.write_budget.",
            value=hub.budget_cuts,
        )
        yield CounterMetricFamily(
            "liveroom_rooms_dropped", "Empty rooms forgotten.", value=hub.rooms_dropped
        )
        yield CounterMetricFamily(
            "liveroom_rooms_full",
            "Joins refused because the node held rooms.max_rooms rooms, all with viewers.",
            value=hub.rooms_full,
        )
        yield SummaryMetricFamily(
            "liveroom_store_round_trip_seconds",
            "Stock store round trips of purchase batches.",
            count_value=desk.store_calls,
            sum_value=desk.store_seconds_total,
        )
        relay = self.desk.relay
        if relay is not None:  # shared rooms (broker.backend redis)
            yield GaugeMetricFamily(
                "liveroom_broker_up",
                "1 while the room broker (Redis) answers, 0 from a failed call until the next.",
                value=int(relay.healthy),
            )
            yield CounterMetricFamily(
                "liveroom_broker_published",
                "Events the broker acknowledged with an offset.",
                value=relay.published,
            )
            yield CounterMetricFamily(
                "liveroom_broker_publish_failures",
                "Events not acknowledged (their senders were told to retry).",
                value=relay.publish_failures,
            )
            yield CounterMetricFamily(
                "liveroom_broker_publish_calls",
                "Publish script runs (each carries one room's events gathered meanwhile).",
                value=relay.publish_calls,
            )
            yield CounterMetricFamily(
                "liveroom_broker_resyncs",
                "Rooms restarted because their shared history was lost (viewers resynced).",
                value=relay.resyncs,
            )
            yield GaugeMetricFamily(
                "liveroom_broker_rooms_followed",
                "Shared rooms this node is subscribed to (rooms with viewers here).",
                value=relay.followed,
            )


# --- the API --------------------------------------------------------------------------


class _Api:
    def __init__(self, config: Config, hub: Hub, gateway: Gateway, desk: SaleDesk) -> None:
        self.config = config
        self.hub = hub
        self.gateway = gateway
        self.desk = desk
        self.body_timeout = config.service.body_timeout
        configured = config.service.keys()
        self.keys = tuple(key.encode() for key in configured)
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(hub, gateway, desk))
        self.query_params: dict[web.AbstractRoute, frozenset[str]] = {}
        """The query parameters each route takes (routes absent here: 404 and 405)."""
        self.public: set[web.AbstractRoute] = set()
        """Routes served without an API key (the demo's, when it is on)."""

    def add_route(
        self,
        router: web.UrlDispatcher,
        method: str,
        path: str,
        handler: _Handler,
        query: Iterable[str] = (),
        *,
        public: bool = False,
    ) -> None:
        """Route ``method path`` (and HEAD for a GET) to ``handler``, which takes the query
        parameters ``query`` and no others; ``public`` routes need no API key."""
        for verb in (method, "HEAD") if method == "GET" else (method,):
            route = router.add_route(verb, path, handler)
            self.query_params[route] = frozenset(query)
            if public:
                self.public.add(route)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for method, path, handler, query in (
            ("GET", "/health", self.health, ()),
            ("GET", "/metrics", self.metrics, ()),
            ("POST", f"/v1/rooms/{_ROOM}/pin", self.pin, ()),
            ("DELETE", f"/v1/rooms/{_ROOM}/pin", self.unpin, ()),
            ("POST", f"/v1/rooms/{_ROOM}/messages", self.message, ()),
            ("POST", "/v1/sales", self.open_sale, ()),
            ("GET", "/v1/sales/{sale_id}", self.sale_state, ()),
            ("POST", "/v1/sales/{sale_id}/close", self.close_sale, ()),
            ("POST", "/v1/sales/{sale_id}/restock", self.restock, ()),
            ("GET", "/v1/sales/{sale_id}/orders", self.orders, ("after", "limit")),
            ("POST", "/v1/sales/{sale_id}/orders/{order_id}/cancel", self.cancel, ()),
        ):
            self.add_route(router, method, path, handler, query)

    # cross-cutting

    def authorized(self, request: web.Request) -> bool:
        given: list[bytes] = []
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, credential = header.strip().partition(" ")
            if scheme.lower() == "bearer":
                given.append(credential.strip().encode())
        api_key = request.headers.get("X-API-Key")
        if api_key is not None:
            given.append(api_key.strip().encode())
        ok = False
        for candidate in given:
            for key in self.keys:  # every key, no early exit
                ok |= hmac.compare_digest(candidate, key)
        return ok

    def check_query(self, request: web.Request) -> None:
        allowed = self.query_params.get(request.match_info.route)
        if allowed is None:  # no route: the handler answers 404 or 405
            return
        seen: set[str] = set()
        for name, _ in request.query.items():  # every occurrence, repeats too
            if name not in allowed:
                takes = (
                    f"accepted: {', '.join(sorted(allowed))}"
                    if allowed
                    else "this endpoint takes no query parameters"
                )
                _bad_field(_clip(name), f"unknown query parameter ({takes})")
            if name in seen:
                _bad_field(name, "given more than once")
            seen.add(name)

    @web.middleware
    async def middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            length = request.content_length
            if length is not None and length > MAX_BODY_SIZE:  # refused unread
                raise _too_large()
            if (
                request.path != "/health"
                and request.match_info.route not in self.public
                and not self.authorized(request)
            ):
                raise ApiError(
                    401,
                    "unauthorized",
                    "missing or invalid API key (Authorization: Bearer <key>, or X-API-Key)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            self.check_query(request)
            return await handler(request)
        except ApiError as exc:
            response = exc.response()
            if exc.status == 413:
                response.force_close()  # aiohttp drains the rest (service.body_timeout at most)
            if exc.close:
                await _answer_and_close(request, response)
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            code = _HTTP_CODES.get(exc.status, "http_error")
            return ApiError(exc.status, code, exc.reason, headers=headers).response()
        except StoreUnavailable as exc:
            return ApiError(
                503,
                "store_unavailable",
                f"stock store unavailable, retry later: {exc}",
                headers={"Retry-After": "1"},
            ).response()
        except BrokerError as exc:
            return ApiError(
                503,
                "broker_unavailable",
                f"room broker unavailable, retry later: {exc}",
                headers={"Retry-After": "1"},
            ).response()
        except SaleNotFound as exc:
            return ApiError(404, "sale_not_found", f"no such sale: {exc}").response()
        except SaleExists as exc:
            return ApiError(409, "sale_exists", f"sale id already taken: {exc}").response()
        except InvalidRequest as exc:
            return ApiError(400, "invalid_request", str(exc)).response()
        except StockError as exc:
            log.warning("stock store error on %s %s: %r", request.method, request.path, exc)
            return ApiError(
                503, "store_unavailable", "stock store error", headers={"Retry-After": "1"}
            ).response()
        except Exception:
            log.exception("service API error on %s %s", request.method, request.path)
            return ApiError(500, "internal", "internal error").response()

    def known_room(self, request: web.Request) -> str:
        """The path's room: any room when rooms are shared, else one this node holds."""
        name = _room(request.match_info["room"])
        if self.desk.relay is None and self.hub.get(name) is None:
            raise ApiError(
                404, "room_not_found", f"room {name!r} has no viewers on this node", field="room"
            )
        return name

    @staticmethod
    def sale_id(request: web.Request) -> str:
        return _id(request.match_info["sale_id"], "sale_id")

    # health and metrics

    async def health(self, request: web.Request) -> web.Response:
        store_ok = True
        try:
            await self.desk.store.state("_health")
        except SaleNotFound:
            pass
        except StockError:
            store_ok = False
        return _json(
            {
                "status": "ok" if store_ok else "degraded",
                "node": self.gateway.node_id,
                "connections": self.gateway.statistics().connections,
                "rooms": self.hub.statistics().rooms,
                "store": self.config.stock.backend,
                "store_ok": store_ok,
                "broker": self.config.broker.backend,
                "broker_ok": self.desk.relay is None or self.desk.relay.healthy,
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    # rooms

    async def pin(self, request: web.Request) -> web.Response:
        room = self.known_room(request)
        product = _product(await _read_object(request, self.body_timeout))
        room = self.known_room(request)  # the body may have taken a while
        await self.desk.pin(room, product)
        return _json({"room": room, "product": _product_json(product)})

    async def unpin(self, request: web.Request) -> web.Response:
        room = self.known_room(request)
        return _json({"room": room, "unpinned": await self.desk.unpin(room)})

    async def message(self, request: web.Request) -> web.Response:
        self.known_room(request)
        data = await _read_object(request, self.body_timeout)
        _only(data, ("text",))
        text = _text(_required(data, "text"), "text", 1, MAX_TEXT_LENGTH)
        if not text.strip():
            _bad_field("text", "must not be blank")
        room = self.known_room(request)
        return _json({"room": room, "offset": await self.desk.system_message(room, text)})

    # sales

    async def open_sale(self, request: web.Request) -> web.Response:
        return await self.start_sale(self.sale_spec(await _read_object(request, self.body_timeout)))

    def sale_spec(self, data: Mapping[str, Any]) -> SaleSpec:
        """The sale a ``POST /v1/sales`` body describes, every field checked."""
        _only(
            data,
            (
                "sale_id",
                "room",
                "product_id",
                "stock",
                "price",
                "per_user_limit",
                "starts_at",
                "ends_at",
                "duration",
            ),
        )
        sale_id = _id(_required(data, "sale_id"), "sale_id")
        room = _room(_required(data, "room"))
        product_id = _id(_required(data, "product_id"), "product_id")
        stock = _int(_required(data, "stock"), "stock", 0, MAX_UNITS)
        price = _int(_required(data, "price"), "price", 0, MAX_PRICE)
        limit = _int(_required(data, "per_user_limit"), "per_user_limit", 1, MAX_UNITS)
        starts_at = (
            _time(data["starts_at"], "starts_at")
            if _present(data, "starts_at")
            else self.desk.clock()
        )
        if _present(data, "ends_at"):
            if _present(data, "duration"):
                _bad_field("duration", "give ends_at or duration, not both")
            ends_at = _time(data["ends_at"], "ends_at")
            if ends_at <= starts_at:
                _bad_field("ends_at", "must be after starts_at")
        else:
            duration = DEFAULT_SALE_DURATION
            if _present(data, "duration"):
                duration = data["duration"]
                if (
                    isinstance(duration, bool)
                    or not isinstance(duration, int | float)
                    or not (math.isfinite(duration) and duration > 0)
                ):
                    _bad_field("duration", "must be a number of seconds > 0")
            ends_at = starts_at + float(duration)
            if ends_at > _MAX_TIME:
                _bad_field("duration", f"sale would end after unix second {_MAX_TIME}")
        return SaleSpec(
            sale_id=sale_id,
            room=room,
            product_id=product_id,
            stock=stock,
            price=price,
            per_user_limit=limit,
            starts_at=starts_at,
            ends_at=ends_at,
        )

    async def start_sale(self, spec: SaleSpec) -> web.Response:
        """Open ``spec``'s sale in its room: 201 with the sale's state."""
        room = spec.room
        if self.desk.relay is None and self.hub.get(room) is None:  # no await until the desk's
            raise ApiError(
                404, "room_not_found", f"room {room!r} has no viewers on this node", field="room"
            )
        state = await self.desk.open_sale(spec)
        return _json(
            _state_json(state), status=201, headers={"Location": f"/v1/sales/{spec.sale_id}"}
        )

    async def sale_state(self, request: web.Request) -> web.Response:
        return _json(_state_json(await self.desk.state(self.sale_id(request))))

    async def close_sale(self, request: web.Request) -> web.Response:
        return _json(_state_json(await self.desk.close_sale(self.sale_id(request))))

    async def restock(self, request: web.Request) -> web.Response:
        sale_id = self.sale_id(request)
        data = await _read_object(request, self.body_timeout)
        _only(data, ("quantity",))
        quantity = _int(_required(data, "quantity"), "quantity", 1, MAX_UNITS)
        try:
            state = await self.desk.restock(sale_id, quantity)
        except InvalidRequest as exc:  # the quantity is valid: the sale's state forbids it
            raise ApiError(409, "sale_closed", str(exc)) from None
        return _json(_state_json(state))

    async def orders(self, request: web.Request) -> web.Response:
        sale_id = self.sale_id(request)
        query = request.query
        limit = 100
        if "limit" in query:
            raw = query["limit"]
            if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE):
                _bad_field("limit", f"must be an integer in 1..{MAX_PAGE}")
            limit = int(raw)
        after = query.get("after") or None
        if after is not None and len(after) > MAX_CURSOR_LENGTH:
            _bad_field("after", "not a cursor of this store")
        try:
            orders, cursor = await self.desk.store.orders(sale_id, after, limit)
        except InvalidRequest:
            _bad_field("after", "not a cursor of this store")
        return _json({"orders": [_order_json(o) for o in orders], "next": cursor})

    async def cancel(self, request: web.Request) -> web.Response:
        sale_id = self.sale_id(request)
        order_id = _text(request.match_info["order_id"], "order_id", 1, MAX_ORDER_ID_LENGTH)
        try:
            cancelled = await self.desk.cancel_order(sale_id, order_id)
        except InvalidRequest as exc:
            _bad_field("order_id", str(exc))
        return _json({"sale_id": sale_id, "order_id": order_id, "cancelled": cancelled})


# --- lifecycle ------------------------------------------------------------------------


class ServiceRunner:
    """The running service API; :attr:`port` is the bound port."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner: web.AppRunner | None = runner
        self.port = port

    async def close(self) -> None:
        """Stop listening, finish requests in flight (bounded), release the port. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def make_app(
    config: Config,
    hub: Hub,
    gateway: Gateway,
    desk: SaleDesk,
    *,
    ws_port: Callable[[], int] | None = None,
) -> web.Application:
    """The service's aiohttp application (routes and middleware), not yet served.

    With ``demo.enabled`` it serves the demo pages too (:mod:`engine.demo`), whose pages
    connect to the websocket port ``ws_port()`` (default: ``server.port``).
    """
    api = _Api(config, hub, gateway, desk)
    app = web.Application(middlewares=[api.middleware], client_max_size=MAX_BODY_SIZE)
    api.add_routes(app.router)
    if config.demo.enabled:
        from engine.demo import Demo  # imported here: the demo builds on this module

        Demo(api, ws_port or (lambda: config.server.port)).add_routes(app.router)
    return app


async def start_service(
    config: Config,
    hub: Hub,
    gateway: Gateway,
    desk: SaleDesk,
    *,
    ws_port: Callable[[], int] | None = None,
) -> ServiceRunner:
    """Serve the API on ``config.service.host``/``port`` (0: a free port); return its runner.

    ``ws_port``: the websocket listener's port, for the demo pages (see :func:`make_app`).
    """
    app = make_app(config, hub, gateway, desk, ws_port=ws_port)
    _HTTP_LOG.addFilter(_CLIENT_FAULTS)  # idempotent
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=config.server.close_timeout,
        logger=_HTTP_LOG,
        # After an answer given before the body was read (401, 404, 413…), what is left of
        # the body is read and dropped for this long at most, then the connection closes.
        lingering_time=config.service.body_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            config.service.host,
            config.service.port,
            reuse_port=config.server.reuse_port or None,
        )
        await site.start()
        port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    log.info("service API on http://%s:%d", config.service.host, port)
    return ServiceRunner(runner, port)
