"""The service HTTP API against a real server: real HTTP client, real websocket viewers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest

from engine.server import LiveroomServer
from engine.stock import StoreUnavailable
from protocol import (
    Buy,
    BuyResult,
    Pinned,
    SaleClosed,
    SaleOpened,
    Stock,
    SystemMessage,
    Unpinned,
)
from protocol.names import ROOM_NAME_RULE
from tests.conftest import Peer, ServerFactory, bounded, expect, token, wait_for_condition

KEY = "test-service-key"
OTHER_KEY = "second-key"
ROOM = "room-1"
E = TypeVar("E")

Json = dict[str, Any]


class Api:
    """A thin JSON client of one server's service API."""

    def __init__(self, srv: LiveroomServer, session: aiohttp.ClientSession) -> None:
        self.srv = srv
        self.session = session
        self.base = srv.service_url

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        data: bytes | None = None,
        key: str | None = KEY,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        if body is not None:
            data = orjson.dumps(body)
            hdrs["Content-Type"] = "application/json"
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as r:
            raw = await r.read()
            ctype = r.headers.get("Content-Type", "")
            parsed: Any = orjson.loads(raw) if ctype.startswith("application/json") else raw
            return r.status, parsed, r.headers

    async def ok(self, method: str, path: str, body: object = None, status: int = 200) -> Json:
        got, parsed, _ = await self.call(method, path, body)
        assert got == status, parsed
        assert isinstance(parsed, dict)
        return parsed

    async def error(
        self, method: str, path: str, body: object = None, *, status: int, **kwargs: Any
    ) -> Json:
        got, parsed, _ = await self.call(method, path, body, **kwargs)
        assert got == status, parsed
        assert isinstance(parsed, dict) and set(parsed) == {"error"}, parsed
        error = parsed["error"]
        assert isinstance(error, dict)
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        return error


@pytest.fixture
async def srv(start_server: ServerFactory) -> LiveroomServer:
    return await start_server(
        # A short body timeout: a test that stalls a body waits 2 s for its answer, not 10.
        service={"port": 0, "api_keys": f"{KEY}, {OTHER_KEY}", "body_timeout": 2.0},
        stock={"batch_window_ms": 0.0},
    )


@pytest.fixture
async def api(srv: LiveroomServer) -> AsyncIterator[Api]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield Api(srv, session)


@pytest.fixture
async def viewer(srv: LiveroomServer) -> AsyncIterator[Peer]:
    """A viewer in ROOM (which makes the room known to the node)."""
    peer = await Peer.open(srv, token("alice"))
    await peer.join(ROOM)
    yield peer
    await peer.close()


async def event_of(peer: Peer, cls: type[E], timeout: float = 3.0) -> E:
    """The next room event of type ``cls``, skipping others (viewer counts, likes…)."""
    async with asyncio.timeout(timeout):
        while True:
            _, event = await peer.next_event(timeout)
            if isinstance(event, cls):
                return event


def sale_body(sale_id: str = "s1", **changes: Any) -> Json:
    body: Json = {
        "sale_id": sale_id,
        "room": ROOM,
        "product_id": "p1",
        "stock": 5,
        "price": 9900,
        "per_user_limit": 2,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


PRODUCT: Json = {
    "id": "sku-1",
    "title": "保温杯 500ml",
    "price": 5990,
    "currency": "CNY",
    "image": "https://img.example/1.jpg",
    "extra": {"颜色": "黑", "stars": 5, "new": True},
}


# --- health, auth, routing -------------------------------------------------------------


@bounded(10)
async def test_health_needs_no_key(api: Api, viewer: Peer) -> None:
    status, body, _ = await api.call("GET", "/health", key=None)
    assert status == 200
    assert isinstance(body, dict) and body.pop("node") == f"{socket.gethostname()}-{os.getpid()}"
    assert body == {
        "status": "ok",
        "connections": 1,
        "rooms": 1,
        "store": "memory",
        "store_ok": True,
        "broker": "memory",
        "broker_ok": True,
    }


@bounded(10)
async def test_a_configured_node_id_is_in_health_and_metrics(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(server={"node_id": "edge-7"})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(srv.service_url + "/health") as r:
            assert (await r.json())["node"] == "edge-7"
        headers = {"Authorization": "Bearer dev-service-key"}
        async with session.get(srv.service_url + "/metrics", headers=headers) as r:
            text = await r.text()
    assert 'liveroom_node_info{node="edge-7"} 1.0' in text.splitlines()


@bounded(10)
async def test_health_reports_store_down(
    api: Api, srv: LiveroomServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("down")

    assert srv.desk is not None
    monkeypatch.setattr(srv.desk.store, "state", down)
    status, body, _ = await api.call("GET", "/health", key=None)
    assert status == 200
    assert body["status"] == "degraded" and body["store_ok"] is False


@bounded(10)
async def test_auth(api: Api) -> None:
    for path in ("/metrics", "/v1/sales/s1", "/v1/nowhere"):
        error = await api.error("GET", path, key=None, status=401)
        assert error["code"] == "unauthorized"
    _, _, headers = await api.call("GET", "/metrics", key=None)
    assert headers["WWW-Authenticate"] == "Bearer"
    await api.error("GET", "/v1/sales/s1", key="wrong", status=401)
    await api.error("GET", "/v1/sales/s1", key="", status=401)
    await api.error("GET", "/v1/sales/s1", key=KEY + "x", status=401)
    await api.error(
        "GET", "/v1/sales/s1", key=None, headers={"Authorization": f"Basic {KEY}"}, status=401
    )
    await api.error("GET", "/v1/sales/s1", key=None, headers={"X-API-Key": "nope"}, status=401)
    # Valid keys get through to the handler (the sale does not exist: 404).
    await api.error("GET", "/v1/sales/s1", status=404)
    await api.error("GET", "/v1/sales/s1", key=OTHER_KEY, status=404)
    await api.error("GET", "/v1/sales/s1", key=None, headers={"X-API-Key": KEY}, status=404)
    await api.error(
        "GET", "/v1/sales/s1", key=None, headers={"authorization": f"bearer {KEY}"}, status=404
    )


@bounded(10)
async def test_unknown_path_and_wrong_method(api: Api) -> None:
    error = await api.error("GET", "/v1/nowhere", status=404)
    assert error["code"] == "not_found"
    await api.error("POST", "/", status=404)
    status, body, headers = await api.call("GET", "/v1/rooms/r/pin")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    assert "POST" in headers["Allow"] and "DELETE" in headers["Allow"]
    await api.error("DELETE", "/v1/sales/s1", status=405)
    await api.error("PUT", "/v1/sales", status=405)


# --- pins and messages ---------------------------------------------------------------


@bounded(10)
async def test_pin_and_unpin_reach_viewers(api: Api, srv: LiveroomServer, viewer: Peer) -> None:
    body = await api.ok("POST", f"/v1/rooms/{ROOM}/pin", PRODUCT)
    assert body == {"room": ROOM, "product": PRODUCT}
    pinned = await event_of(viewer, Pinned)
    assert pinned.product.id == "sku-1" and pinned.product.title == "保温杯 500ml"
    assert pinned.product.price == 5990 and pinned.product.currency == "CNY"
    assert dict(pinned.product.extra or ()) == {"颜色": "黑", "stars": 5, "new": True}

    late = await Peer.open(srv, token("bob"))
    try:
        joined = await late.join(ROOM)
        assert joined.pin == pinned.product
    finally:
        await late.close()

    minimal = {"id": "sku-2", "title": "T", "price": 0, "image": None}
    body = await api.ok("POST", f"/v1/rooms/{ROOM}/pin", minimal)
    assert body["product"] == {"id": "sku-2", "title": "T", "price": 0}
    assert (await event_of(viewer, Pinned)).product.id == "sku-2"

    assert await api.ok("DELETE", f"/v1/rooms/{ROOM}/pin") == {"room": ROOM, "unpinned": True}
    assert (await event_of(viewer, Unpinned)).product_id == "sku-2"
    assert await api.ok("DELETE", f"/v1/rooms/{ROOM}/pin") == {"room": ROOM, "unpinned": False}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": None}, "id"),
        ({"id": ""}, "id"),
        ({"id": "x" * 65}, "id"),
        ({"id": 7}, "id"),
        ({"title": None}, "title"),
        ({"title": "t" * 201}, "title"),
        ({"title": "a\nb"}, "title"),
        ({"price": None}, "price"),
        ({"price": -1}, "price"),
        ({"price": 1.5}, "price"),
        ({"price": "10"}, "price"),
        ({"price": True}, "price"),
        ({"currency": "yuan"}, "currency"),
        ({"currency": "cny"}, "currency"),
        ({"image": "x" * 1001}, "image"),
        ({"extra": [1]}, "extra"),
        ({"extra": {f"k{i}": i for i in range(33)}}, "extra"),
        ({"extra": {"": 1}}, "extra"),
        ({"extra": {"k" * 65: 1}}, "extra"),
        ({"extra": {"size": [1]}}, "extra.size"),
        ({"extra": {"size": 1.5}}, "extra.size"),
        ({"extra": {"size": 2**53}}, "extra.size"),
        ({"extra": {"size": "x" * 1001}}, "extra.size"),
        ({"colour": "red"}, "colour"),
    ],
)
@bounded(10)
async def test_pin_validation(api: Api, viewer: Peer, change: Json, field: str) -> None:
    body = {**PRODUCT, **change}
    body = {k: v for k, v in body.items() if not (k in change and change[k] is None)}
    error = await api.error("POST", f"/v1/rooms/{ROOM}/pin", body, status=400)
    assert error["code"] == "invalid_field"
    assert error["field"] == field
    assert error["message"].startswith(field)


@bounded(10)
async def test_malformed_bodies(api: Api, viewer: Peer) -> None:
    path = f"/v1/rooms/{ROOM}/pin"
    for data in (b"{", b"", b"nan", b'{"id": 1,}', b"\xff\xfe"):
        error = await api.error("POST", path, data=data, status=400)
        assert error["code"] == "invalid_json" and "field" not in error
    for data in (b"[]", b'"pin"', b"42", b"null"):
        error = await api.error("POST", path, data=data, status=400)
        assert error["code"] == "invalid_body"
    error = await api.error("POST", path, data=b" " * (300 * 1024), status=413)
    assert error["code"] == "payload_too_large"
    for path in ("/v1/sales", f"/v1/rooms/{ROOM}/messages", "/v1/sales/s1/restock"):
        await api.error("POST", path, data=b"[1]", status=400)


@bounded(10)
async def test_unknown_room(api: Api) -> None:
    for method, path, body in (
        ("POST", "/v1/rooms/nobody/pin", PRODUCT),
        ("DELETE", "/v1/rooms/nobody/pin", None),
        ("POST", "/v1/rooms/nobody/messages", {"text": "hi"}),
        ("POST", "/v1/sales", sale_body(room="nobody")),
    ):
        error = await api.error(method, path, body, status=404)
        assert error["code"] == "room_not_found" and error["field"] == "room"


@bounded(10)
async def test_system_message_reaches_viewers(api: Api, viewer: Peer) -> None:
    body = await api.ok("POST", f"/v1/rooms/{ROOM}/messages", {"text": "Sale at 8pm! 八点开抢"})
    assert body["room"] == ROOM and isinstance(body["offset"], int)
    event = await event_of(viewer, SystemMessage)
    assert event.text == "Sale at 8pm! 八点开抢" and event.offset == body["offset"]


@pytest.mark.parametrize(
    "body",
    [{}, {"text": ""}, {"text": "   "}, {"text": "a\x00b"}, {"text": "x" * 2001}, {"text": 5}],
)
@bounded(10)
async def test_system_message_validation(api: Api, viewer: Peer, body: Json) -> None:
    error = await api.error("POST", f"/v1/rooms/{ROOM}/messages", body, status=400)
    assert error["field"] == "text"
    error = await api.error(
        "POST", f"/v1/rooms/{ROOM}/messages", {"text": "ok", "x": 1}, status=400
    )
    assert error["field"] == "x"


# --- sales -----------------------------------------------------------------------------


@bounded(15)
async def test_sale_lifecycle(api: Api, srv: LiveroomServer, viewer: Peer) -> None:
    before = time.time()
    state = await api.ok("POST", "/v1/sales", sale_body(), status=201)
    assert before - 1 <= state["starts_at"] <= time.time() + 1
    assert state["ends_at"] == pytest.approx(state["starts_at"] + 600)
    assert {k: v for k, v in state.items() if k not in ("starts_at", "ends_at")} == {
        "sale_id": "s1",
        "room": ROOM,
        "product_id": "p1",
        "price": 9900,
        "per_user_limit": 2,
        "closed": False,
        "initial": 5,
        "restocked": 0,
        "remaining": 5,
        "sold": 0,
        "status": "open",
    }
    opened = await event_of(viewer, SaleOpened)
    assert opened.sale.id == "s1" and opened.sale.remaining == 5 and opened.sale.status == "open"

    late = await Peer.open(srv, token("bob"))
    try:
        joined = await late.join(ROOM)
        assert joined.sale is not None and joined.sale.id == "s1"
    finally:
        await late.close()

    assert await api.ok("GET", "/v1/sales/s1") == state

    result = await viewer.call(Buy(room=ROOM, sale="s1", qty=1, rid="b1"))
    result = expect(result, BuyResult)
    assert result.status == "ok" and result.order is not None
    state = await api.ok("GET", "/v1/sales/s1")
    assert state["sold"] == 1 and state["remaining"] == 4

    page = await api.ok("GET", "/v1/sales/s1/orders")
    assert page["next"] is None
    [order] = page["orders"]
    assert order["order_id"] == result.order and order["user_id"] == "alice"
    assert order["quantity"] == 1 and order["price"] == 9900 and order["cancelled"] is False

    state = await api.ok("POST", "/v1/sales/s1/restock", {"quantity": 10})
    assert state["restocked"] == 10 and state["remaining"] == 14
    while (stock := await event_of(viewer, Stock)).remaining != 14:  # conflated: latest wins
        assert stock.remaining == 4
    assert stock.sale_id == "s1"

    cancel = f"/v1/sales/s1/orders/{result.order}/cancel"
    body = await api.ok("POST", cancel)
    assert body == {"sale_id": "s1", "order_id": result.order, "cancelled": True}
    assert (await api.ok("POST", cancel))["cancelled"] is False
    assert (await api.ok("POST", "/v1/sales/s1/orders/s1-999/cancel"))["cancelled"] is False
    state = await api.ok("GET", "/v1/sales/s1")
    assert state["sold"] == 0 and state["remaining"] == 15
    [order] = (await api.ok("GET", "/v1/sales/s1/orders"))["orders"]
    assert order["cancelled"] is True

    state = await api.ok("POST", "/v1/sales/s1/close")
    assert state["closed"] is True and state["status"] == "closed"
    closed = await event_of(viewer, SaleClosed)
    assert closed.sale_id == "s1" and closed.reason == "closed"
    assert (await api.ok("POST", "/v1/sales/s1/close"))["closed"] is True  # idempotent

    error = await api.error("POST", "/v1/sales/s1/restock", {"quantity": 1}, status=409)
    assert error["code"] == "sale_closed"


@bounded(10)
async def test_sale_times(api: Api, viewer: Peer) -> None:
    now = time.time()
    state = await api.ok(
        "POST", "/v1/sales", sale_body("later", starts_at=now + 60, ends_at=now + 120), status=201
    )
    assert state["status"] == "scheduled"
    assert state["starts_at"] == pytest.approx(now + 60)
    assert state["ends_at"] == pytest.approx(now + 120)
    state = await api.ok(
        "POST", "/v1/sales", sale_body("short", starts_at=int(now), duration=30), status=201
    )
    assert state["ends_at"] == pytest.approx(int(now) + 30)
    state = await api.ok("POST", "/v1/sales", sale_body("empty", stock=0), status=201)
    assert state["status"] == "sold_out"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sale_id": None}, "sale_id"),
        ({"sale_id": "has space"}, "sale_id"),
        ({"sale_id": "x" * 65}, "sale_id"),
        ({"room": 3}, "room"),
        ({"product_id": ""}, "product_id"),
        ({"stock": -1}, "stock"),
        ({"stock": None}, "stock"),
        ({"stock": "5"}, "stock"),
        ({"stock": 10**9 + 1}, "stock"),
        ({"price": 1.0}, "price"),
        ({"price": 10**15 + 1}, "price"),
        ({"per_user_limit": 0}, "per_user_limit"),
        ({"per_user_limit": False}, "per_user_limit"),
        ({"starts_at": "now"}, "starts_at"),
        ({"starts_at": -5}, "starts_at"),
        ({"starts_at": 10**13}, "starts_at"),
        ({"ends_at": 1000.0}, "ends_at"),
        ({"ends_at": True}, "ends_at"),
        ({"duration": 0}, "duration"),
        ({"duration": -3}, "duration"),
        ({"duration": "1m"}, "duration"),
        ({"duration": 10**13}, "duration"),
        ({"ends_at": time.time() + 60, "duration": 60}, "duration"),
        ({"extra": 1}, "extra"),
    ],
)
@bounded(10)
async def test_sale_validation(api: Api, viewer: Peer, change: Json, field: str) -> None:
    body = {**sale_body(), **change}
    body = {k: v for k, v in body.items() if not (k in change and change[k] is None)}
    error = await api.error("POST", "/v1/sales", body, status=400)
    assert error["code"] == "invalid_field"
    assert error["field"] == field
    # Nothing was opened.
    await api.error("GET", "/v1/sales/s1", status=404)


@bounded(10)
async def test_duplicate_sale(api: Api, viewer: Peer) -> None:
    await api.ok("POST", "/v1/sales", sale_body(), status=201)
    error = await api.error("POST", "/v1/sales", sale_body(stock=1), status=409)
    assert error["code"] == "sale_exists"
    await api.ok("POST", "/v1/sales/s1/close")
    await api.error("POST", "/v1/sales", sale_body(), status=409)


@bounded(10)
async def test_unknown_sale(api: Api) -> None:
    for method, path, body in (
        ("GET", "/v1/sales/nope", None),
        ("POST", "/v1/sales/nope/close", None),
        ("POST", "/v1/sales/nope/restock", {"quantity": 1}),
        ("GET", "/v1/sales/nope/orders", None),
        ("POST", "/v1/sales/nope/orders/nope-1/cancel", None),
    ):
        error = await api.error(method, path, body, status=404)
        assert error["code"] == "sale_not_found"
    error = await api.error("GET", "/v1/sales/bad%20id", status=400)
    assert error["field"] == "sale_id"


@bounded(10)
async def test_restock_validation(api: Api, viewer: Peer) -> None:
    await api.ok("POST", "/v1/sales", sale_body(), status=201)
    for body in ({}, {"quantity": 0}, {"quantity": -1}, {"quantity": "3"}, {"quantity": 10**9 + 1}):
        error = await api.error("POST", "/v1/sales/s1/restock", body, status=400)
        assert error["field"] == "quantity"
    error = await api.error("POST", "/v1/sales/s1/restock", {"quantity": 1, "n": 1}, status=400)
    assert error["field"] == "n"


@bounded(15)
async def test_orders_paging(api: Api, srv: LiveroomServer, viewer: Peer) -> None:
    await api.ok("POST", "/v1/sales", sale_body(stock=10, per_user_limit=10), status=201)
    for i in range(5):
        answer = expect(await viewer.call(Buy(room=ROOM, sale="s1", rid=f"b{i}")), BuyResult)
        assert answer.status == "ok"
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        query = "?limit=2" + (f"&after={cursor}" if cursor else "")
        page = await api.ok("GET", f"/v1/sales/s1/orders{query}")
        assert len(page["orders"]) <= 2
        seen += [o["order_id"] for o in page["orders"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [f"s1-{n}" for n in range(1, 6)]
    for query in ("limit=0", "limit=1001", "limit=x", "limit=-1", "limit=1.5"):
        error = await api.error("GET", f"/v1/sales/s1/orders?{query}", status=400)
        assert error["field"] == "limit"
    for query in ("after=zzz", "after=999", "after=" + "9" * 300):
        error = await api.error("GET", f"/v1/sales/s1/orders?{query}", status=400)
        assert error["field"] == "after"
    page = await api.ok("GET", "/v1/sales/s1/orders?limit=1000")
    assert len(page["orders"]) == 5


@bounded(10)
async def test_store_unavailable(
    api: Api, srv: LiveroomServer, viewer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.ok("POST", "/v1/sales", sale_body(), status=201)

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("redis timeout")

    assert srv.desk is not None
    store = srv.desk.store
    for name in ("open_sale", "close_sale", "restock", "state", "orders", "cancel_order"):
        monkeypatch.setattr(store, name, down)
    for method, path, body in (
        ("POST", "/v1/sales", sale_body("s2")),
        ("GET", "/v1/sales/s1", None),
        ("POST", "/v1/sales/s1/close", None),
        ("POST", "/v1/sales/s1/restock", {"quantity": 1}),
        ("GET", "/v1/sales/s1/orders", None),
        ("POST", "/v1/sales/s1/orders/s1-1/cancel", None),
    ):
        status, parsed, headers = await api.call(method, path, body)
        assert status == 503, (path, parsed)
        assert parsed["error"]["code"] == "store_unavailable"
        assert headers["Retry-After"] == "1"
    monkeypatch.undo()
    assert (await api.ok("GET", "/v1/sales/s1"))["closed"] is False


# --- metrics -----------------------------------------------------------------------------


@bounded(10)
async def test_metrics(api: Api, viewer: Peer) -> None:
    await api.ok("POST", "/v1/sales", sale_body(), status=201)
    answer = expect(await viewer.call(Buy(room=ROOM, sale="s1", qty=1, rid="m1")), BuyResult)
    assert answer.status == "ok"
    status, text, headers = await api.call("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert isinstance(text, bytes)
    lines = text.decode().splitlines()
    for name in (
        "liveroom_connections",
        "liveroom_rooms",
        "liveroom_room_subscriptions",
        "liveroom_events_published_total",
        "liveroom_frames_written_total",
        "liveroom_purchase_local_sold_out_total",
        "liveroom_purchase_queue_depth",
        "liveroom_store_round_trip_seconds_sum",
        "liveroom_store_round_trip_seconds_count",
        "liveroom_purchase_local_not_open_total",
        "liveroom_sales_known",
        "liveroom_sale_lookups_total",
        "liveroom_connections_max",
        "liveroom_connections_refused_total",
        "liveroom_connections_aborted_total",
        "liveroom_descriptors_exhausted_total",
        "liveroom_unsent_bytes",
        "liveroom_write_budget_cuts_total",
        "liveroom_rooms_dropped_total",
        "liveroom_rooms_full_total",
    ):
        assert any(line.startswith(name + " ") for line in lines), name
    assert "liveroom_sales_known 1.0" in lines
    assert "liveroom_connections 1.0" in lines
    assert "liveroom_rooms 1.0" in lines
    assert 'liveroom_purchases_total{result="ok"} 1.0' in lines
    assert "liveroom_store_round_trip_seconds_count 1.0" in lines
    assert any(line.startswith("# TYPE liveroom_connections_closed") for line in lines)


@bounded(10)
async def test_closed_connections_in_metrics(api: Api, srv: LiveroomServer) -> None:
    peer = await Peer.open(srv, token("carol"))
    await peer.close()
    assert srv.gateway is not None
    gateway = srv.gateway
    await wait_for_condition(lambda: bool(gateway.statistics().closed_by_code), timeout=3)
    _, text, _ = await api.call("GET", "/metrics")
    assert 'liveroom_connections_closed_total{code="1000"} 1.0' in text.decode().splitlines()


@bounded(10)
async def test_service_runner_close_is_idempotent(start_server: ServerFactory) -> None:
    srv = await start_server(service={"port": 0})
    assert srv.service is not None
    runner = srv.service
    assert runner.port > 0
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(srv.service_url + "/health") as r:
            assert r.status == 200
        await runner.close()
        await runner.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(f"http://127.0.0.1:{runner.port}/health") as r:
                pass


@bounded(10)
async def test_service_disabled(start_server: ServerFactory) -> None:
    srv = await start_server(service={"enabled": False})
    assert srv.service is None


# --- hardening: bodies, bad HTTP, query parameters, room names ---------------------------


class RawHttp:
    """A bare TCP connection to the service port: it writes exactly the bytes a test gives
    and parses what comes back by hand (status, headers, a Content-Length body)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, srv: LiveroomServer) -> RawHttp:
        assert srv.service is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.service.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_some(self, timeout: float) -> bool:
        """Read what arrives within ``timeout``; False if nothing did (EOF counts as news)."""
        try:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        self.eof = self.eof or not data
        self.buffer += data
        return True

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body."""
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in self.buffer:
                assert not self.eof, f"closed without a response: {bytes(self.buffer)!r}"
                await self.read_some(timeout)
            head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers: dict[str, str] = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            self.buffer[:] = rest
            while len(self.buffer) < length:
                assert not self.eof, "closed in the middle of a response body"
                await self.read_some(timeout)
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
        return int(status_line.split()[1]), headers, body

    async def closed(self, timeout: float) -> bool:
        """Whether the server closes the connection within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not self.eof:
                    await self.read_some(timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.close()


def http_head(
    method: str, path: str, *, key: str | None = KEY, headers: Mapping[str, str] | None = None
) -> bytes:
    """A request line and headers, ready for :meth:`RawHttp.send` (the body follows)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def error_of(body: bytes) -> Json:
    parsed = orjson.loads(body)
    assert isinstance(parsed, dict) and set(parsed) == {"error"}, parsed
    error = parsed["error"]
    assert isinstance(error, dict)
    return error


def logged_trouble(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records that would alarm an operator: ERROR and above, or any with a traceback."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("key", [KEY, None])
@bounded(10)
async def test_declared_body_over_the_limit_is_413_at_once(
    start_server: ServerFactory, key: str | None
) -> None:
    srv = await start_server(service={"port": 0, "api_keys": KEY, "body_timeout": 1.0})
    loop = asyncio.get_running_loop()
    conn = await RawHttp.open(srv)
    try:
        headers = {"Content-Length": "1000000000000", "Content-Type": "application/json"}
        started = loop.time()
        await conn.send(http_head("POST", "/v1/sales", key=key, headers=headers) + b"{}")
        status, got, body = await conn.response(timeout=2)
        assert loop.time() - started < 0.9  # not read, so no wait for the body timeout
        assert status == 413
        assert error_of(body)["code"] == "payload_too_large"
        assert got["connection"].lower() == "close"
        # The rest of the body is waited for (and dropped) for body_timeout at most.
        assert await conn.closed(timeout=2)
    finally:
        await conn.close()


@bounded(15)
async def test_body_not_received_in_time_is_408_and_closed(start_server: ServerFactory) -> None:
    srv = await start_server(service={"port": 0, "api_keys": KEY, "body_timeout": 0.5})
    loop = asyncio.get_running_loop()
    headers = {"Content-Length": "100", "Content-Type": "application/json"}

    # A body that stalls after 10 of its 100 bytes.
    conn = await RawHttp.open(srv)
    try:
        started = loop.time()
        await conn.send(http_head("POST", "/v1/sales", headers=headers) + b'{"sale_id"')
        status, got, body = await conn.response(timeout=3)
        assert status == 408 and loop.time() - started >= 0.4
        error = error_of(body)
        assert error["code"] == "body_timeout" and "0.5" in error["message"]
        assert got["connection"].lower() == "close"
        assert await conn.closed(timeout=1)
    finally:
        await conn.close()

    # A body trickled a byte every 0.1 s: the limit is on the whole body, not between bytes.
    conn = await RawHttp.open(srv)
    try:
        started = loop.time()
        await conn.send(http_head("POST", "/v1/sales", headers=headers))
        for _ in range(99):
            await conn.send(b" ")
            if await conn.read_some(0.1):
                break
        status, _, body = await conn.response(timeout=3)
        assert status == 408 and error_of(body)["code"] == "body_timeout"
        assert loop.time() - started < 2
        assert await conn.closed(timeout=1)
    finally:
        await conn.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
@bounded(10)
async def test_client_leaving_mid_body_is_not_logged_as_an_error(
    srv: LiveroomServer, api: Api, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = await RawHttp.open(srv)
    headers = {"Content-Length": "100", "Content-Type": "application/json"}
    await conn.send(http_head("POST", "/v1/sales", headers=headers) + b'{"sale_id"')
    await asyncio.sleep(0.2)  # let the handler start reading the body
    if how == "fin":
        await conn.close()
    else:
        await conn.reset()

    def settled() -> bool:
        return any(
            r.levelno >= logging.ERROR or (r.name == "liveroom.service" and "went away" in r.msg)
            for r in caplog.records
        )

    # Nothing logged at all (had the server dropped the request unread) is fine too.
    with contextlib.suppress(TimeoutError):
        await wait_for_condition(settled, timeout=3)
    assert (await api.call("GET", "/health", key=None))[0] == 200
    assert logged_trouble(caplog) == []


BAD_HTTP = [
    pytest.param(
        (b"GET /v1/sales/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",), id="long-url"
    ),
    pytest.param(
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",),
        id="long-header",
    ),
    pytest.param((b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",), id="bad-header"),
    pytest.param(
        (b"POST /v1/sales HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",),
        id="bad-length",
    ),
    pytest.param(
        (
            http_head("POST", "/v1/sales", headers={"Transfer-Encoding": "chunked"})
            + b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        id="bad-chunk",
    ),
    pytest.param((b"G@T /health HTTP/1.1\r\nHost: x\r\n\r\n",), id="bad-method"),
    # The bad chunk arrives while the handler reads the body: aiohttp's C parser drops the
    # body without telling the reader, so this is answered 408 after the body timeout.
    pytest.param(
        (
            http_head("POST", "/v1/sales", headers={"Transfer-Encoding": "chunked"}),
            b"zz\r\n{}\r\n0\r\n\r\n",
        ),
        id="bad-chunk-later",
    ),
]


@pytest.mark.parametrize("parts", BAD_HTTP)
@bounded(10)
async def test_bad_http_gets_4xx_and_no_traceback_in_the_log(
    srv: LiveroomServer, api: Api, caplog: pytest.LogCaptureFixture, parts: tuple[bytes, ...]
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = await RawHttp.open(srv)
    try:
        for i, data in enumerate(parts):
            if i:
                await asyncio.sleep(0.2)  # let the server act on the parts before
            await conn.send(data)
        status, _, _ = await conn.response(timeout=4)
        assert 400 <= status < 500
        assert await conn.closed(timeout=2)
    finally:
        await conn.close()
    assert (await api.call("GET", "/health", key=None))[0] == 200
    assert logged_trouble(caplog) == []
    ours = [r for r in caplog.records if r.name.startswith(("aiohttp", "liveroom.service"))]
    assert len(ours) <= 2, [r.getMessage() for r in ours]
    assert all(len(r.getMessage()) < 300 for r in ours), [r.getMessage() for r in ours]


@bounded(10)
async def test_unknown_query_parameters_are_refused(api: Api, viewer: Peer) -> None:
    await api.ok("POST", "/v1/sales", sale_body(), status=201)
    for method, path, body in (
        ("GET", "/metrics", None),
        ("POST", f"/v1/rooms/{ROOM}/pin", PRODUCT),
        ("DELETE", f"/v1/rooms/{ROOM}/pin", None),
        ("POST", f"/v1/rooms/{ROOM}/messages", {"text": "hi"}),
        ("POST", "/v1/sales", sale_body("s2")),
        ("GET", "/v1/sales/s1", None),
        ("POST", "/v1/sales/s1/close", None),
        ("POST", "/v1/sales/s1/restock", {"quantity": 1}),
        ("POST", "/v1/sales/s1/orders/s1-1/cancel", None),
    ):
        error = await api.error(method, f"{path}?cursor=abc", body, status=400)
        assert error["code"] == "invalid_field" and error["field"] == "cursor", (path, error)
        assert "no query parameters" in error["message"]
    error = await api.error("GET", "/health?verbose=1", key=None, status=400)
    assert error["field"] == "verbose"
    # Nothing happened: the sale s2 was not opened, s1 not closed.
    await api.error("GET", "/v1/sales/s2", status=404)
    assert (await api.ok("GET", "/v1/sales/s1"))["closed"] is False

    error = await api.error("GET", "/v1/sales/s1/orders?cursor=abc", status=400)
    assert error["field"] == "cursor" and "after, limit" in error["message"]
    error = await api.error("GET", "/v1/sales/s1/orders?limit=1&limit=2", status=400)
    assert error["field"] == "limit"
    error = await api.error("GET", "/v1/sales/s1/orders?" + "x" * 5000 + "=1", status=400)
    assert len(error["field"]) <= 65 and len(error["message"]) < 300
    assert await api.ok("GET", "/v1/sales/s1/orders?after=&limit=2") == {"orders": [], "next": None}
    # Authentication and routing come first.
    await api.error("GET", "/v1/sales/s1?cursor=abc", key=None, status=401)
    await api.error("GET", "/v1/nowhere?cursor=abc", status=404)


@bounded(15)
async def test_room_names_follow_the_one_rule(api: Api, srv: LiveroomServer) -> None:
    room = "直播间-1"
    peer = await Peer.open(srv, token("alice"))
    try:
        await peer.join(room)
        path = f"/v1/rooms/{urllib.parse.quote(room, safe='')}"
        assert "%E7%9B%B4" in path  # the client sends it percent-encoded
        state = await api.ok("POST", "/v1/sales", sale_body("cn1", room=room), status=201)
        assert state["room"] == room
        assert (await event_of(peer, SaleOpened)).sale.id == "cn1"
        assert (await api.ok("POST", f"{path}/pin", PRODUCT))["room"] == room
        assert (await event_of(peer, Pinned)).product.id == PRODUCT["id"]
        body = await api.ok("POST", f"{path}/messages", {"text": "欢迎"})
        assert body["room"] == room
        assert (await event_of(peer, SystemMessage)).text == "欢迎"
        assert await api.ok("DELETE", f"{path}/pin") == {"room": room, "unpinned": True}
    finally:
        await peer.close()

    for bad in ("a%20b", "a%2Fb", "%E2%80%AE", "%7Bx%7D", "x" * 65, "y" * 5000):
        for method, suffix, payload in (
            ("POST", "pin", PRODUCT),
            ("DELETE", "pin", None),
            ("POST", "messages", {"text": "hi"}),
        ):
            error = await api.error(method, f"/v1/rooms/{bad}/{suffix}", payload, status=400)
            assert error["code"] == "invalid_field" and error["field"] == "room", (bad, error)
            assert ROOM_NAME_RULE in error["message"] and len(error["message"]) < 300
    for bad in ("a b", "a/b", "\u202e", "x\u200ey", "{x}", "x" * 65, "z" * 5000, ""):
        error = await api.error("POST", "/v1/sales", sale_body(room=bad), status=400)
        assert error["code"] == "invalid_field" and error["field"] == "room", (bad, error)
        assert ROOM_NAME_RULE in error["message"] and len(error["message"]) < 300
