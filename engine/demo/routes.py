"""The demo's routes on the service port: pages, demo tokens and the host console's calls.

Served only while ``demo.enabled``, without an API key (the service's middleware lets
exactly these routes through; every other path keeps its key check)::

    GET    /demo/                             the viewer page
    GET    /demo/host                         the host console
    GET    /demo/{file}                       a file of static/ (modules, CSS, images, catalogue)
    GET    /demo/session?role=&user=          a demo token: {url, room, token, user, name,
                                              role, expires}; role viewer (default) or host;
                                              user: renew the token of a viewer it gave
    GET    /demo/api/rooms/{room}/figures     viewers, orders, units sold, GMV, stock left,
                                              the pinned product and the current sale's state
    POST   /demo/api/rooms/{room}/pin         pin a product    (body as POST /v1/rooms/{room}/pin)
    DELETE /demo/api/rooms/{room}/pin         unpin
    POST   /demo/api/rooms/{room}/messages    system message   (body as its /v1 twin)
    POST   /demo/api/sales                    open a sale      (body as POST /v1/sales; sale_id
                                              and room may be left out, duration defaults
                                              to an hour)
    POST   /demo/api/sales/{sale_id}/close    close a sale of the demo room
    POST   /demo/api/sales/{sale_id}/restock  restock it       (body as its /v1 twin)

Guarantees:

* One room, ``demo.room``: demo tokens admit it alone (viewer tokens for a fresh random
  user ``demo-<12 hex>``, or for one such user again; the host console's for ``demo-host``,
  role host), living ``demo.token_ttl`` seconds; an endpoint naming another room, or a
  sale of another room, is 403 ``forbidden_room``.
* Each endpoint is the service API's own handler (:mod:`engine.service`) behind that
  check: the same validation, the same JSON errors (``{"error": {"code", "message",
  "field"}}``), the same effects on the room.
* The room is set up on the first demo request, not at start (a node whose demo nobody
  opens holds no demo room and no sale): the hub holds it from then on (never dropped, with
  or without viewers, so the console can act on an empty room), the catalogue's first
  product is pinned with a welcome message, and a flash sale of it opens; whatever of that
  the room already has (its pin, a current sale: in Redis with shared rooms) is kept. A
  restarted node does it again on its first demo request (the memory store forgot).
* Static files: only a plain name (no ``/``, not starting with a dot) of a file in
  ``static/`` with a known type; nothing else on disk can be reached. Pages carry a
  Content-Security-Policy: scripts and styles from this origin only, images also from any
  http(s) URL, no plugins, no framing.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web

from engine.auth import Claims, Role, mint_token
from engine.room import RoomsFull
from engine.service import (
    _ROOM,
    ApiError,
    _Api,
    _bad_field,
    _int,
    _json,
    _product,
    _product_json,
    _read_object,
    _room,
    _state_json,
)
from engine.stock import MAX_PAGE, MAX_PRICE, MAX_UNITS, SaleSpec
from protocol import Product

__all__ = ["SALE_SECONDS", "STATIC", "Demo", "DemoItem"]

STATIC: Final = Path(__file__).with_name("static")
"""The pages, their modules, styles, images and ``catalogue.json``."""
SALE_SECONDS: Final = 3600.0
"""How long a demo sale runs when its opener does not say."""
MAX_FIGURE_SALES: Final = 20
"""The room's latest sales counted in its figures."""
MAX_ORDER_PAGES: Final = 10
"""Pages of the orders log read per sale for the figures (orders counted up to 10,000)."""
WELCOME: Final = (
    "欢迎来到 liveroom 演示直播间! Comments, likes and Buy are live; "
    "the host console pins products and runs the flash sales."
)
HOST_USER: Final = "demo-host"
HOST_NAME: Final = "主播"
_USER = re.compile(r"demo-[0-9a-f]{12}")
_NAMES: Final = ("小明", "Ann", "小红", "Leo", "阿杰", "Mia", "小雨", "Kai", "晓峰", "Zoe")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' http: https:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class DemoItem:
    """A product of the demo's catalogue, with the flash sale the console offers for it."""

    product: Product
    price: int  # the sale's unit price, minor units
    stock: int
    per_user_limit: int


def load_catalogue(path: Path = STATIC / "catalogue.json") -> tuple[DemoItem, ...]:
    """The catalogue the pages show (``catalogue.json``), checked as the service API would."""
    items = []
    for entry in orjson.loads(path.read_bytes()):
        sale: Mapping[str, Any] = entry["sale"]
        items.append(
            DemoItem(
                product=_product(entry["product"]),
                price=_int(sale["price"], "price", 0, MAX_PRICE),
                stock=_int(sale["stock"], "stock", 0, MAX_UNITS),
                per_user_limit=_int(sale["per_user_limit"], "per_user_limit", 1, MAX_UNITS),
            )
        )
    if not items:
        raise ValueError(f"{path}: empty catalogue")
    return tuple(items)


def viewer_name(user_id: str) -> str:
    """The display name of a demo viewer: fixed by its id, e.g. ``小明42``."""
    digest = hashlib.sha256(user_id.encode()).digest()
    return f"{_NAMES[digest[0] % len(_NAMES)]}{digest[1] % 90 + 10}"


class Demo:
    """The demo's routes, for the service API ``api``; ``ws_port()`` names the ws port."""

    def __init__(self, api: _Api, ws_port: Callable[[], int]) -> None:
        self.api = api
        self.config = api.config
        self.room = api.config.demo.room
        self.ws_port = ws_port
        self.catalogue = load_catalogue()
        self._ready = False
        self._lock = asyncio.Lock()
        self._run = secrets.token_hex(3)  # sale ids stay unique across restarts
        self._sales = itertools.count(1)

    def add_routes(self, router: web.UrlDispatcher) -> None:
        room = f"/demo/api/rooms/{_ROOM}"
        for method, path, handler, query in (
            ("GET", "/demo", self.to_viewer, ()),
            ("GET", "/demo/", self.viewer, ()),
            ("GET", "/demo/host", self.host, ()),
            ("GET", "/demo/session", self.session, ("role", "user")),
            ("GET", f"{room}/figures", self.figures, ()),
            ("POST", f"{room}/pin", self.pin, ()),
            ("DELETE", f"{room}/pin", self.unpin, ()),
            ("POST", f"{room}/messages", self.message, ()),
            ("POST", "/demo/api/sales", self.open_sale, ()),
            ("POST", "/demo/api/sales/{sale_id}/close", self.close_sale, ()),
            ("POST", "/demo/api/sales/{sale_id}/restock", self.restock, ()),
            ("GET", "/demo/{file}", self.file, ()),  # last: the paths above win
        ):
            self.api.add_route(router, method, path, handler, query, public=True)

    # --- the room ----------------------------------------------------------------------

    async def ready(self) -> None:
        """Set the demo room up, once (see the module's guarantees); retried after a failure."""
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            desk, first = self.api.desk, self.catalogue[0]
            if desk.relay is None:
                try:
                    self.api.hub.hold(self.room)
                except RoomsFull as exc:
                    raise ApiError(503, "rooms_full", f"{exc}; try again later") from None
                has_pin, has_sale = self.room in desk.pins, self.room in desk.current
            else:  # shared rooms are known without viewers; their pin and sale are in Redis
                state = (await desk.relay.broker.snapshot(self.room, 1)).state
                has_pin, has_sale = state.get("pin") is not None, state.get("sale") is not None
            if not has_pin:
                await desk.pin(self.room, first.product)
                await desk.system_message(self.room, WELCOME)
            if not has_sale:
                now = desk.clock()
                await desk.open_sale(
                    SaleSpec(
                        sale_id=self.new_sale_id(),
                        room=self.room,
                        product_id=first.product.id,
                        stock=first.stock,
                        price=first.price,
                        per_user_limit=first.per_user_limit,
                        starts_at=now,
                        ends_at=now + SALE_SECONDS,
                    )
                )
            self._ready = True

    def new_sale_id(self) -> str:
        return f"demo-{self._run}-{next(self._sales)}"

    def check_room(self, name: str, *, field: str = "room") -> None:
        if name != self.room:
            raise ApiError(
                403,
                "forbidden_room",
                f"the demo serves room {self.room!r} only",
                field=field,
            )

    def path_room(self, request: web.Request) -> str:
        """The path's room: a room name (else 400), the demo's (else 403)."""
        name = _room(request.match_info["room"])
        self.check_room(name)
        return name

    async def demo_sale(self, request: web.Request) -> None:
        """Refuse a sale of another room (403) or unknown to the store (404)."""
        state = await self.api.desk.state(self.api.sale_id(request))
        self.check_room(state.room, field="sale_id")

    # --- pages and files ----------------------------------------------------------------

    async def to_viewer(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/demo/")

    async def viewer(self, request: web.Request) -> web.StreamResponse:
        return _file("viewer.html")

    async def host(self, request: web.Request) -> web.StreamResponse:
        return _file("host.html")

    async def file(self, request: web.Request) -> web.StreamResponse:
        return _file(request.match_info["file"])

    # --- tokens -------------------------------------------------------------------------

    async def session(self, request: web.Request) -> web.Response:
        role = request.query.get("role", Role.VIEWER.value)
        user = request.query.get("user")
        if role == Role.HOST.value:
            if user is not None:
                _bad_field("user", "the host console has one user: leave user out")
            user, name = HOST_USER, HOST_NAME
        elif role == Role.VIEWER.value:
            if user is None:
                user = f"demo-{secrets.token_hex(6)}"
            elif not _USER.fullmatch(user):
                _bad_field("user", "must be a user id a demo session gave (demo-<12 hex digits>)")
            name = viewer_name(user)
        else:
            _bad_field("role", "must be viewer or host")
        await self.ready()
        expires = time.time() + self.config.demo.token_ttl
        claims = Claims(
            user_id=user, name=name, rooms=(self.room,), role=Role(role), expires_at=expires
        )
        answer = {
            "url": self.ws_url(request),
            "room": self.room,
            "token": mint_token(self.config.auth.secret, claims),
            "user": user,
            "name": name,
            "role": role,
            "expires": int(expires),
        }
        return _json(answer, headers={"Cache-Control": "no-store"})

    def ws_url(self, request: web.Request) -> str:
        """``demo.ws_url``, else the websocket listener on the host the page was loaded from."""
        if self.config.demo.ws_url:
            return self.config.demo.ws_url
        try:
            host = request.url.host or self.config.server.host
        except ValueError:  # a Host header yarl cannot parse
            host = self.config.server.host
        if ":" in host:
            host = f"[{host}]"
        scheme = "wss" if self.config.server.tls else "ws"
        return f"{scheme}://{host}:{self.ws_port()}/"

    # --- the host console ---------------------------------------------------------------

    async def figures(self, request: web.Request) -> web.Response:
        name = self.path_room(request)
        await self.ready()
        desk, store = self.api.desk, self.api.desk.store
        room = self.api.hub.get(name)
        sales = [sale for sale, known in desk.sales.items() if known.room == name]
        states = await asyncio.gather(*(store.state(s) for s in sales[-MAX_FIGURE_SALES:]))
        orders = gmv = 0
        for state in states:
            after: str | None = None
            for _ in range(MAX_ORDER_PAGES):
                page, after = await store.orders(state.sale_id, after, MAX_PAGE)
                for order in page:
                    if not order.cancelled:
                        orders += 1
                        gmv += order.quantity * order.price
                if after is None:
                    break
        current = desk.current.get(name)
        sale = next((s for s in states if s.sale_id == current), None)
        pin = desk.pins.get(name)
        return _json(
            {
                "room": name,
                "viewers": room.viewer_count if room is not None else 0,
                "orders": orders,
                "units_sold": sum(s.sold for s in states),
                "gmv": gmv,
                "stock_left": sale.remaining if sale is not None else None,
                "pin": _product_json(pin) if pin is not None else None,
                "sale": _state_json(sale) if sale is not None else None,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def pin(self, request: web.Request) -> web.Response:
        self.path_room(request)
        await self.ready()
        return await self.api.pin(request)

    async def unpin(self, request: web.Request) -> web.Response:
        self.path_room(request)
        await self.ready()
        return await self.api.unpin(request)

    async def message(self, request: web.Request) -> web.Response:
        self.path_room(request)
        await self.ready()
        return await self.api.message(request)

    async def open_sale(self, request: web.Request) -> web.Response:
        data = await _read_object(request, self.api.body_timeout)
        if data.get("room") is None:
            data["room"] = self.room
        if data.get("sale_id") is None:
            data["sale_id"] = self.new_sale_id()
        if data.get("ends_at") is None and data.get("duration") is None:
            data["duration"] = SALE_SECONDS
        spec = self.api.sale_spec(data)
        self.check_room(spec.room)
        await self.ready()
        return await self.api.start_sale(spec)

    async def close_sale(self, request: web.Request) -> web.Response:
        await self.demo_sale(request)
        return await self.api.close_sale(request)

    async def restock(self, request: web.Request) -> web.Response:
        await self.demo_sale(request)
        return await self.api.restock(request)


def _file(name: str) -> web.Response:
    """The static file ``name``, or 404: only plain names of files in :data:`STATIC`."""
    path = STATIC / name
    kind = _TYPES.get(path.suffix)
    if not _FILE.fullmatch(name) or kind is None or not path.is_file():
        raise ApiError(404, "not_found", "no such demo file")
    headers = {
        "Content-Type": kind,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = _CSP
        headers["Referrer-Policy"] = "no-referrer"
    return web.Response(body=path.read_bytes(), headers=headers)
