"""The demo on the service port (engine/demo/) against a real ``liveroom serve``: its pages
and files with their types and no key, demo tokens the websocket server takes for the demo
room only, a room held without viewers, the host console's endpoints (the demo room only,
bad input answered with JSON errors), the API key check unchanged everywhere else, nothing
outside ``static/`` reachable, and ``demo.enabled = false`` serving no demo at all."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
import pytest

from engine.client import CommandError, LiveroomClient
from engine.config import Config, ServiceConfig
from engine.demo import demo_line, demo_warning
from engine.room import UNSTAMPED, Hub
from protocol import Pinned, SaleClosed, SaleOpened, SystemMessage, Unpinned
from tests.conftest import RecordingSubscriber, bounded, token, wait_for_condition
from tests.processes import API_KEY, Engine

__all__: list[str] = []

ROOM = "demo"
E = TypeVar("E")


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """``liveroom serve`` on the embedded defaults (demo on), stderr kept."""
    with Engine(log=tmp_path / "liveroom.stderr") as e:
        yield e


async def http(
    port: int, method: str, path: str, body: object = None, *, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request with ``path`` sent as is (no normalisation): status, headers
    (lower-case names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


async def call(
    engine: Engine, method: str, path: str, body: object = None, *, key: str | None = None
) -> tuple[int, Any]:
    """A demo (or, with ``key``, service) call: status and JSON answer."""
    status, _, payload = await http(engine.api_port, method, path, body, key=key)
    return status, orjson.loads(payload)


def assert_error(answer: tuple[int, Any], status: int, code: str, field: str | None = None) -> None:
    got_status, data = answer
    assert got_status == status, data
    assert data["error"]["code"] == code, data
    assert data["error"].get("field") == field, data
    assert data["error"]["message"]


async def next_of(client: LiveroomClient, kind: type[E]) -> E:
    """The client's next room event of type ``kind`` (others skipped)."""
    while True:
        _, event = await client.next_event()
        if isinstance(event, kind):
            return event


async def viewer(engine: Engine) -> tuple[LiveroomClient, dict[str, Any]]:
    """A demo session's viewer, connected with its token and joined to the demo room."""
    status, session = await call(engine, "GET", "/demo/session")
    assert status == 200, session
    client = await LiveroomClient.connect(session["url"], session["token"])
    await client.join(ROOM)
    return client, session


def catalogue() -> list[dict[str, Any]]:
    path = Path(__file__).resolve().parent.parent / "engine/demo/static/catalogue.json"
    items: list[dict[str, Any]] = orjson.loads(path.read_bytes())
    return items


# --- pages and files ---------------------------------------------------------------------


@bounded(20)
async def test_pages_and_files_are_served_with_their_types_and_no_key(engine: Engine) -> None:
    for path, kind, marker in (
        ("/demo/", "text/html", b'data-testid="buy-button"'),
        ("/demo/host", "text/html", b'data-testid="open-sale"'),
        ("/demo/viewer.js", "text/javascript", b'from "./liveroom.mjs"'),
        ("/demo/host.js", "text/javascript", b'from "./liveroom.mjs"'),
        ("/demo/common.js", "text/javascript", b"textContent"),
        ("/demo/demo.css", "text/css", b".phone"),
        ("/demo/thermos.svg", "image/svg+xml", b"<svg"),
        ("/demo/catalogue.json", "application/json", b"p-thermos"),
    ):
        status, headers, body = await http(engine.api_port, "GET", path)
        assert status == 200, (path, body[:200])
        assert headers["content-type"].startswith(kind), path
        assert headers["x-content-type-options"] == "nosniff"
        assert marker in body, path
        if kind == "text/html":
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "img-src 'self' http: https:" in csp
            assert b'<script type="module"' in body
    status, headers, _ = await http(engine.api_port, "GET", "/demo")
    assert status == 302 and headers["location"] == "/demo/"
    status, headers, body = await http(engine.api_port, "HEAD", "/demo/")
    assert status == 200 and body == b""


@bounded(20)
async def test_serve_prints_where_the_viewer_page_and_the_host_console_are(engine: Engine) -> None:
    base = f"http://127.0.0.1:{engine.api_port}/demo"
    line = f"demo: open {base}/ (host console: {base}/host)"
    await wait_for_condition(lambda: line in engine.output().splitlines(), timeout=10)


def test_the_start_line_uses_loopback_and_a_demo_beyond_it_is_warned_of() -> None:
    everywhere = Config(service=ServiceConfig(host="0.0.0.0", port=9000))
    base = "http://127.0.0.1:9000/demo"
    assert demo_line(everywhere, 9000) == f"demo: open {base}/ (host console: {base}/host)"
    assert demo_line(Config(service=ServiceConfig(host="::1")), 1).startswith(
        "demo: open http://[::1]:1/demo/"
    )
    assert demo_warning(Config()) is None
    assert "LIVEROOM_DEMO_ENABLED=false" in (demo_warning(everywhere) or "")


# --- tokens and the room ------------------------------------------------------------------


@bounded(20)
async def test_a_session_token_joins_the_seeded_demo_room_and_no_other(engine: Engine) -> None:
    status, session = await call(engine, "GET", "/demo/session")
    assert status == 200, session
    assert session["url"] == f"ws://127.0.0.1:{engine.ws_port}/"
    assert session["room"] == ROOM and session["role"] == "viewer"
    assert re.fullmatch(r"demo-[0-9a-f]{12}", session["user"]) and session["name"]
    assert 590 < session["expires"] - time.time() <= 601  # demo.token_ttl: 600 s
    _, other = await call(engine, "GET", "/demo/session")
    assert other["user"] != session["user"]

    async with await LiveroomClient.connect(session["url"], session["token"]) as client:
        assert (client.welcome.user_id, client.welcome.name) == (session["user"], session["name"])
        joined = await client.join(ROOM)
        first = catalogue()[0]
        assert joined.pin is not None and joined.pin.id == first["product"]["id"]
        assert joined.pin.title == first["product"]["title"]
        assert joined.sale is not None and joined.sale.product_id == first["product"]["id"]
        assert joined.sale.status == "open"
        assert joined.sale.remaining == first["sale"]["stock"]
        assert any(isinstance(e, SystemMessage) for e in joined.recent)  # the welcome
        with pytest.raises(CommandError) as refused:
            await client.join("other")
        assert refused.value.code == "forbidden_room"

        # The same viewer again: its page refreshes the token before it expires.
        status, again = await call(engine, "GET", f"/demo/session?user={session['user']}")
        assert status == 200 and (again["user"], again["name"]) == (
            session["user"],
            session["name"],
        )
        await client.refresh(again["token"])

    status, host = await call(engine, "GET", "/demo/session?role=host")
    assert status == 200 and (host["user"], host["role"]) == ("demo-host", "host")
    assert_error(await call(engine, "GET", "/demo/session?user=u42"), 400, "invalid_field", "user")
    assert_error(
        await call(engine, "GET", f"/demo/session?role=host&user={session['user']}"),
        400,
        "invalid_field",
        "user",
    )
    assert_error(
        await call(engine, "GET", "/demo/session?role=admin"), 400, "invalid_field", "role"
    )
    assert_error(await call(engine, "GET", "/demo/session?room=x"), 400, "invalid_field", "room")


@bounded(20)
async def test_the_demo_room_is_held_while_other_empty_rooms_are_dropped(tmp_path: Path) -> None:
    with Engine(ROOMS_EMPTY_ROOM_TTL="0") as engine:
        assert (await call(engine, "GET", "/demo/session"))[0] == 200  # sets the room up
        async with await LiveroomClient.connect(
            f"ws://127.0.0.1:{engine.ws_port}/", token("u1", ["demo", "other"])
        ) as client:
            for room in (ROOM, "other"):
                await client.join(room)
                await client.comment(room, "hi")
                await client.leave(room)

        async with asyncio.timeout(5):  # "other" has no viewer: gone at the next tick
            while True:
                message = {"text": "x"}
                status, _ = await call(
                    engine, "POST", "/v1/rooms/other/messages", message, key=API_KEY
                )
                if status == 404:
                    break
                await asyncio.sleep(0.05)
        status, answer = await call(
            engine, "POST", "/v1/rooms/demo/messages", {"text": "still here"}, key=API_KEY
        )
        assert status == 200, answer


async def test_a_held_room_outlives_its_viewers_and_the_room_cap() -> None:
    hub = Hub(
        history_size=10, snapshot_size=5, min_flush_interval=0.0, empty_room_ttl=0.0, max_rooms=2
    )
    held = hub.hold("demo")
    assert hub.hold("demo") is held and "demo" in hub.rooms
    sub = RecordingSubscriber()
    for name in ("demo", "a"):
        hub.room(name).join(sub, offset=None, epoch=None, rid=None)
        hub.room(name).publish_event(SystemMessage(id=UNSTAMPED, text="x", ts=0, offset=0))
        hub.room(name).leave(sub)
    await asyncio.sleep(0.01)
    hub.tick()
    assert hub.get("demo") is held and hub.get("a") is None
    hub.room("b")
    hub.room("c")  # the cap drops the longest-empty rooms, never the held one
    assert hub.get("demo") is held and hub.get("b") is None
    hub.close()


# --- the host console's endpoints ------------------------------------------------------------


@bounded(30)
async def test_the_console_endpoints_pin_sell_restock_close_and_count(engine: Engine) -> None:
    client, _ = await viewer(engine)
    tea = catalogue()[1]["product"]
    try:
        status, answer = await call(engine, "POST", f"/demo/api/rooms/{ROOM}/pin", tea)
        assert status == 200 and answer["product"]["id"] == tea["id"], answer
        assert (await next_of(client, Pinned)).product.title == tea["title"]

        body = {"product_id": tea["id"], "price": 12800, "stock": 3, "per_user_limit": 2}
        status, sale = await call(engine, "POST", "/demo/api/sales", body)
        assert status == 201, sale
        assert sale["room"] == ROOM and sale["sale_id"].startswith("demo-")
        assert sale["ends_at"] - sale["starts_at"] == 3600 and sale["remaining"] == 3
        assert (await next_of(client, SaleOpened)).sale.id == sale["sale_id"]

        bought = await client.buy(ROOM, sale["sale_id"], 2)
        assert bought.status == "ok" and bought.order
        status, figures = await call(engine, "GET", f"/demo/api/rooms/{ROOM}/figures")
        assert status == 200, figures
        assert figures["viewers"] == 1 and figures["orders"] == 1 and figures["units_sold"] == 2
        assert figures["gmv"] == 2 * 12800 and figures["stock_left"] == 1
        assert figures["pin"]["id"] == tea["id"] and figures["sale"]["sale_id"] == sale["sale_id"]

        path = f"/demo/api/sales/{sale['sale_id']}"
        status, state = await call(engine, "POST", f"{path}/restock", {"quantity": 5})
        assert status == 200 and state["remaining"] == 6, state
        status, state = await call(engine, "POST", f"{path}/close")
        assert status == 200 and state["closed"] is True, state
        assert (await next_of(client, SaleClosed)).reason == "closed"

        status, answer = await call(
            engine, "POST", f"/demo/api/rooms/{ROOM}/messages", {"text": "下单"}
        )
        assert status == 200, answer
        assert (await next_of(client, SystemMessage)).text == "下单"
        status, answer = await call(engine, "DELETE", f"/demo/api/rooms/{ROOM}/pin")
        assert status == 200 and answer["unpinned"] is True
        assert (await next_of(client, Unpinned)).product_id == tea["id"]
    finally:
        await client.close()


@bounded(30)
async def test_the_console_endpoints_refuse_other_rooms_and_bad_input(engine: Engine) -> None:
    product = catalogue()[0]["product"]
    sale = {"product_id": product["id"], "price": 100, "stock": 5, "per_user_limit": 1}
    assert_error(
        await call(engine, "POST", "/demo/api/rooms/other/pin", product),
        403,
        "forbidden_room",
        "room",
    )
    assert_error(
        await call(engine, "GET", "/demo/api/rooms/other/figures"), 403, "forbidden_room", "room"
    )
    assert_error(
        await call(engine, "POST", "/demo/api/rooms/a%20b/pin", product),
        400,
        "invalid_field",
        "room",
    )
    assert_error(
        await call(engine, "POST", f"/demo/api/rooms/{ROOM}/pin", {"id": "x", "price": 1}),
        400,
        "invalid_field",
        "title",
    )
    assert_error(
        await call(engine, "POST", f"/demo/api/rooms/{ROOM}/pin", b"{no"), 400, "invalid_json"
    )
    assert_error(
        await call(engine, "POST", f"/demo/api/rooms/{ROOM}/messages", {"text": " "}),
        400,
        "invalid_field",
        "text",
    )
    assert_error(
        await call(engine, "POST", "/demo/api/sales", {**sale, "room": "other"}),
        403,
        "forbidden_room",
        "room",
    )
    assert_error(
        await call(engine, "POST", "/demo/api/sales", {**sale, "stock": -1}),
        400,
        "invalid_field",
        "stock",
    )
    assert_error(
        await call(engine, "POST", "/demo/api/sales", {**sale, "colour": "red"}),
        400,
        "invalid_field",
        "colour",
    )
    assert_error(
        await call(engine, "GET", f"/demo/api/rooms/{ROOM}/figures?x=1"), 400, "invalid_field", "x"
    )
    assert_error(await call(engine, "POST", "/demo/api/sales/nope/close"), 404, "sale_not_found")

    # A sale of another room, opened through the service API: the demo cannot touch it.
    async with await LiveroomClient.connect(
        f"ws://127.0.0.1:{engine.ws_port}/", token("u1", ["other"])
    ) as other:
        await other.join("other")
        body = {**sale, "sale_id": "elsewhere", "room": "other"}
        assert (await call(engine, "POST", "/v1/sales", body, key=API_KEY))[0] == 201
        for action, payload in (("close", None), ("restock", {"quantity": 1})):
            assert_error(
                await call(engine, "POST", f"/demo/api/sales/elsewhere/{action}", payload),
                403,
                "forbidden_room",
                "sale_id",
            )
        status, state = await call(engine, "GET", "/v1/sales/elsewhere", key=API_KEY)
        assert status == 200 and state["closed"] is False and state["remaining"] == 5


# --- the key check and the files ----------------------------------------------------------------


@bounded(20)
async def test_every_other_path_keeps_its_api_key_check(engine: Engine) -> None:
    for method, path in (
        ("GET", "/v1/sales/s1"),
        ("GET", "/metrics"),
        ("POST", "/v1/rooms/demo/pin"),
        ("POST", "/v1/sales"),
        ("GET", "/demox"),
        ("GET", "/demo/api/nothing/here"),
        ("GET", "/demo/../metrics"),
        ("GET", "/demo/%2e%2e/metrics"),
        ("GET", "/x/../demo/../v1/sales/s1"),
    ):
        status, data = await call(engine, method, path)
        assert status == 401 and data["error"]["code"] == "unauthorized", (path, data)
    assert (await call(engine, "GET", "/health"))[0] == 200


@bounded(20)
async def test_no_file_outside_static_can_be_reached(engine: Engine) -> None:
    for path in (
        "/demo/routes.py",
        "/demo/__init__.py",
        "/demo/..",
        "/demo/.%2e",
        "/demo/..%2fpyproject.toml",
        "/demo/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/demo/..%5c..%5cpyproject.toml",
        "/demo/%2fetc%2fpasswd",
        "/demo/viewer.html%00.js",
        "/demo/.hidden.css",
        "/demo/static%2fviewer.html",
    ):
        status, _, body = await http(engine.api_port, "GET", path)
        assert status in (401, 404), (path, status)
        assert b"[build-system]" not in body and b"root:" not in body and b"import" not in body
    status, _, body = await http(engine.api_port, "GET", "/demo/viewer.html")
    assert status == 200 and b"<!doctype html>" in body


# --- other settings -------------------------------------------------------------------------


@bounded(30)
async def test_demo_off_serves_nothing_under_demo_and_prints_no_demo_line(tmp_path: Path) -> None:
    with Engine(log=tmp_path / "err.log", DEMO_ENABLED="false") as engine:
        await wait_for_condition(lambda: "liveroom listening on" in engine.output(), timeout=10)
        assert "demo:" not in engine.output()
        for path in (
            "/demo/",
            "/demo/session",
            "/demo/viewer.js",
            f"/demo/api/rooms/{ROOM}/figures",
        ):
            assert_error(await call(engine, "GET", path), 401, "unauthorized")
            assert_error(await call(engine, "GET", path, key=API_KEY), 404, "not_found")
        assert (await call(engine, "GET", "/v1/sales/s1", key=API_KEY))[0] == 404


@bounded(30)
async def test_another_room_name_and_websocket_url(tmp_path: Path) -> None:
    room = "直播间-1"
    with Engine(DEMO_ROOM=room, DEMO_WS_URL="ws://localhost:9/live", DEMO_TOKEN_TTL="60") as engine:
        status, session = await call(engine, "GET", "/demo/session")
        assert status == 200, session
        assert (session["room"], session["url"]) == (room, "ws://localhost:9/live")
        assert 55 < session["expires"] - time.time() <= 61
        status, figures = await call(engine, "GET", f"/demo/api/rooms/{quote(room)}/figures")
        assert status == 200 and figures["room"] == room and figures["pin"] is not None
        assert_error(
            await call(engine, "GET", f"/demo/api/rooms/{ROOM}/figures"),
            403,
            "forbidden_room",
            "room",
        )
        url = f"ws://127.0.0.1:{engine.ws_port}/"
        async with await LiveroomClient.connect(url, session["token"]) as client:
            joined = await client.join(room)
            assert joined.sale is not None and joined.sale.status == "open"
