"""End to end: flash sales (秒杀) over real websockets, on the memory and the Redis store.

Viewers connect with the ``websockets`` client to a real server on 127.0.0.1, join a room
and press Buy; the sale is opened on the server's :class:`~engine.sales.SaleDesk`. Each test
states one promise of ``engine/sales.py`` / SPEC §9.3 as a buyer or a watching viewer sees
it: no oversell, exactly one answer per press, idempotent retries, the local sold-out flag,
refusals, the joiner's snapshot, a Redis that dies mid-sale, and batching.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from websockets.protocol import State

from engine.server import LiveroomServer
from engine.stock import PurchaseRequest, PurchaseResult, SaleSpec, SaleState, check_invariants
from protocol import (
    Batch,
    Buy,
    BuyResult,
    Error,
    ErrorCode,
    Joined,
    Ping,
    Pong,
    Product,
    Purchase,
    Rid,
    SaleClosed,
    SaleOpened,
    ServerMessage,
    SoldOut,
    Stock,
)
from tests.conftest import Peer, ServerFactory, bounded, expect, token
from tests.redis_fixture import RedisServer

__all__: list[str] = []

ROOM = "live-1"
PRICE = 9_900
DEFINITE = frozenset({"ok", "sold_out", "limit_reached"})


# --- helpers --------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def stock(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``stock`` config section of the backend under test."""
    if request.param == "redis":
        return {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    return {"backend": "memory"}


def raise_fd_limit(wanted: int) -> None:
    """Raise the soft open-files limit towards ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def sale_spec(
    sale_id: str,
    stock: int,
    limit: int,
    *,
    room: str = ROOM,
    starts_in: float = -1.0,
    ends_in: float = 600.0,
) -> SaleSpec:
    now = time.time()
    return SaleSpec(
        sale_id,
        room,
        f"p-{sale_id}",
        stock=stock,
        price=PRICE,
        per_user_limit=limit,
        starts_at=now + starts_in,
        ends_at=now + ends_in,
    )


async def open_sale(
    srv: LiveroomServer,
    sale_id: str,
    stock: int,
    limit: int,
    *,
    starts_in: float = -1.0,
    ends_in: float = 600.0,
) -> SaleState:
    assert srv.desk is not None
    spec = sale_spec(sale_id, stock, limit, starts_in=starts_in, ends_in=ends_in)
    return await srv.desk.open_sale(spec)


def keep(peer: Peer, msg: ServerMessage) -> None:
    """File a message that is not an awaited answer: batches into ``peer.events``."""
    if isinstance(msg, Batch):
        peer.batches.append(msg)
        peer.events.extend((msg.room, event) for event in msg.events)
    else:
        peer.others.append(msg)


async def joined_peer(srv: LiveroomServer, user: str, room: str = ROOM) -> Peer:
    peer = await Peer.open(srv, token(user), timeout=10)
    await peer.join(room)
    return peer


async def joined_peers(srv: LiveroomServer, users: Sequence[str], parallel: int = 50) -> list[Peer]:
    gate = asyncio.Semaphore(parallel)

    async def one(user: str) -> Peer:
        async with gate:
            return await joined_peer(srv, user)

    return list(await asyncio.gather(*(one(user) for user in users)))


async def collect_answers(
    peer: Peer, rids: Sequence[Rid], timeout: float = 10.0
) -> dict[Rid, BuyResult | Error]:
    """The answer to each of ``rids``; fails on a second answer to the same rid."""
    wanted = set(rids)
    got: dict[Rid, BuyResult | Error] = {}
    async with asyncio.timeout(timeout):
        while len(got) < len(wanted):
            msg = await peer.recv(timeout)
            if isinstance(msg, BuyResult | Error) and msg.rid in wanted:
                assert msg.rid not in got, f"second answer to {msg.rid!r}: {msg} after {got}"
                got[msg.rid] = msg
            else:
                keep(peer, msg)
    return got


async def settle(peer: Peer, timeout: float = 10.0) -> None:
    """Ping and read up to the pong: no (late, second) buy answer may show up meanwhile."""
    rid = f"ping-{peer.next_rid()}"
    await peer.send(Ping(rid=rid))
    async with asyncio.timeout(timeout):
        while True:
            msg = await peer.recv(timeout)
            if isinstance(msg, Pong) and msg.rid == rid:
                return
            assert not isinstance(msg, BuyResult | Error), f"unexpected answer {msg}"
            keep(peer, msg)


async def pump_until(peer: Peer, done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Read (keeping events) until ``done()`` holds."""
    async with asyncio.timeout(timeout):
        while not done():
            keep(peer, await peer.recv(timeout))


async def buy(
    peer: Peer,
    sale_id: str,
    rid: Rid,
    *,
    qty: int = 1,
    retry: bool | None = None,
    room: str = ROOM,
    timeout: float = 10.0,
) -> BuyResult:
    msg = await peer.call(Buy(room=room, sale=sale_id, qty=qty, rid=rid, retry=retry), timeout)
    return expect(msg, BuyResult)


def events(peer: Peer, cls: type[Any], sale_id: str) -> list[Any]:
    return [e for _, e in peer.events if isinstance(e, cls) and e.sale_id == sale_id]


def last_stock(peer: Peer, sale_id: str) -> int | None:
    stocks: list[Stock] = events(peer, Stock, sale_id)
    return stocks[-1].remaining if stocks else None


async def quiet(peer: Peer, seconds: float = 0.3) -> None:
    """Let a few conflation ticks pass, then read everything that came meanwhile."""
    await asyncio.sleep(seconds)
    await settle(peer)


class CountingStore:
    """Counts ``purchase_many`` calls of a server's store (patched on the instance)."""

    def __init__(self, srv: LiveroomServer, monkeypatch: pytest.MonkeyPatch) -> None:
        assert srv.store is not None and srv.desk is not None
        assert srv.desk.batcher.store is srv.store
        self.calls = 0
        self.requests = 0
        self.batch_sizes: list[int] = []
        real = srv.store.purchase_many

        async def purchase_many(requests: Sequence[PurchaseRequest]) -> list[PurchaseResult]:
            self.calls += 1
            self.requests += len(requests)
            self.batch_sizes.append(len(requests))
            return await real(requests)

        monkeypatch.setattr(srv.store, "purchase_many", purchase_many)


# --- 1. the must-show: a storm of buys on K units -----------------------------------------

N_USERS = 500
BUYS_EACH = 4
UNITS = 300
LIMIT = 2


@bounded(60)
async def test_2000_buys_from_500_viewers_sell_exactly_k_units_and_everyone_gets_one_answer(
    start_server: ServerFactory, stock: dict[str, Any]
) -> None:
    raise_fd_limit(8192)
    srv = await start_server(stock=stock)
    assert srv.store is not None and srv.desk is not None
    observer = await joined_peer(srv, "observer")
    sid = "storm"
    await open_sale(srv, sid, UNITS, LIMIT)

    started = time.perf_counter()
    users = [f"u{i:03d}" for i in range(N_USERS)]
    peers = await joined_peers(srv, users)
    connected = time.perf_counter()
    rids = [f"buy-{j}" for j in range(BUYS_EACH)]

    async def press_all(peer: Peer) -> None:
        for rid in rids:
            await peer.send(Buy(room=ROOM, sale=sid, qty=1, rid=rid))

    await asyncio.gather(*(press_all(peer) for peer in peers))
    answered = await asyncio.gather(*(collect_answers(peer, rids, 30) for peer in peers))
    storm = time.perf_counter() - connected

    # Every attempt got exactly one definite answer.
    results: list[tuple[str, BuyResult]] = []
    for user, answers in zip(users, answered, strict=True):
        for rid in rids:
            answer = expect(answers[rid], BuyResult)
            assert answer.sale == sid and answer.status in DEFINITE, answer
            results.append((user, answer))
    assert len(results) == N_USERS * BUYS_EACH >= 2000
    statuses = Counter(answer.status for _, answer in results)
    oks = [(user, answer) for user, answer in results if answer.status == "ok"]

    # Exactly K units sold, each taking the next unit, no user above the limit.
    assert sum(answer.qty or 0 for _, answer in oks) == UNITS
    assert sorted(answer.remaining for _, answer in oks) == list(range(UNITS))  # type: ignore[type-var]
    assert statuses["sold_out"] > 0 and statuses["limit_reached"] > 0, statuses
    ok_per_user = Counter(user for user, _ in oks)
    assert max(ok_per_user.values()) <= LIMIT
    for user, answer in results:
        if answer.status == "limit_reached":
            assert ok_per_user[user] == LIMIT, (user, answer)

    # The store agrees: invariants, and its orders are exactly the answered ones.
    report = await check_invariants(srv.store, sid)
    assert (report.state.sold, report.state.remaining) == (UNITS, 0)
    answered_orders = {answer.order: user for user, answer in oks}
    assert len(answered_orders) == UNITS
    assert {order.order_id: order.user_id for order in report.orders} == answered_orders
    stats = srv.desk.statistics()
    assert sum(stats.purchases.values()) == N_USERS * BUYS_EACH
    assert stats.purchases["ok"] == UNITS

    # What the room saw: one purchase per order, one sold_out, stock ending at 0.
    await pump_until(
        observer,
        lambda: (
            len(events(observer, Purchase, sid)) >= UNITS
            and len(events(observer, SoldOut, sid)) >= 1
            and last_stock(observer, sid) == 0
        ),
        timeout=15,
    )
    await quiet(observer)
    assert len(events(observer, Purchase, sid)) == len(oks)
    assert len(events(observer, SoldOut, sid)) == 1
    assert last_stock(observer, sid) == 0
    assert all("*" in p.name for p in events(observer, Purchase, sid))

    # No second answer arrives later, and every connection is still open.
    await asyncio.gather(*(settle(peer, 20) for peer in peers))
    assert all(peer.ws.state is State.OPEN for peer in peers)
    print(
        f"\n[{stock['backend']}] {len(results)} buys from {N_USERS} viewers: "
        f"connect+join {connected - started:.2f} s, storm {storm:.2f} s, "
        f"{dict(statuses)}, store calls {stats.store_calls}, "
        f"local sold-out answers {stats.local_sold_out_answers}"
    )


# --- 2. idempotency ---------------------------------------------------------------------


@bounded(20)
async def test_a_retried_buy_with_the_same_rid_gets_the_first_answer_and_is_not_charged_twice(
    start_server: ServerFactory, stock: dict[str, Any]
) -> None:
    srv = await start_server(stock=stock)
    assert srv.store is not None
    observer = await joined_peer(srv, "observer")
    sid = "idem"
    await open_sale(srv, sid, 5, 2)
    alice = await joined_peer(srv, "alice")

    first = await buy(alice, sid, "attempt-1")
    assert (first.status, first.qty, first.remaining) == ("ok", 1, 4) and first.order
    assert await buy(alice, sid, "attempt-1", retry=True) == first
    assert await buy(alice, sid, "attempt-1") == first  # even without the retry flag
    # A retry that changes qty still gets the first answer.
    assert await buy(alice, sid, "attempt-1", qty=2, retry=True) == first
    # The same user on a new connection (a reconnect) gets it too.
    again = await joined_peer(srv, "alice")
    assert await buy(again, sid, "attempt-1", retry=True) == first
    assert (await srv.store.state(sid)).sold == 1

    # The same rid from another user is that user's own, independent attempt.
    bob = await buy(await joined_peer(srv, "bob"), sid, "attempt-1")
    assert bob.status == "ok" and bob.order != first.order
    state = await srv.store.state(sid)
    assert (state.sold, state.remaining) == (2, 3)
    # Integer rids work the same way.
    numbered = await buy(alice, sid, 7)
    assert numbered.status == "ok" and numbered.rid == 7
    assert await buy(alice, sid, 7, retry=True) == numbered

    report = await check_invariants(srv.store, sid)
    assert {(o.order_id, o.user_id) for o in report.orders} == {
        (first.order, "alice"),
        (bob.order, "bob"),
        (numbered.order, "alice"),
    }
    # The room saw three purchases, not one per answer.
    await pump_until(observer, lambda: last_stock(observer, sid) == 2)
    await quiet(observer)
    assert len(events(observer, Purchase, sid)) == 3
    assert last_stock(observer, sid) == 2


@bounded(20)
async def test_a_long_user_id_with_a_long_rid_still_buys_once_and_keeps_its_connection(
    start_server: ServerFactory, stock: dict[str, Any]
) -> None:
    srv = await start_server(stock=stock)
    assert srv.store is not None
    user = "wx:" + "o" * 125  # the longest user id a token may carry (128)
    peer = await Peer.open(srv, token(user, name="Long"))
    await peer.join(ROOM)
    sid = "long-ids"
    await open_sale(srv, sid, 5, 2)
    rid = "r" * 64  # the longest string rid
    first = await buy(peer, sid, rid)
    assert first.status == "ok"
    assert await buy(peer, sid, rid, retry=True) == first
    other = await buy(peer, sid, "q" * 64)
    assert other.status == "ok" and other.order != first.order
    report = await check_invariants(srv.store, sid)
    assert {o.user_id for o in report.orders} == {user} and report.state.sold == 2
    await settle(peer)
    assert peer.ws.state is State.OPEN


# --- 3. the local sold-out flag ---------------------------------------------------------


@bounded(20)
async def test_after_sold_out_buys_are_answered_locally_retries_reach_the_store_restock_reopens(
    start_server: ServerFactory, stock: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = await start_server(stock=stock)
    assert srv.store is not None and srv.desk is not None
    desk = srv.desk
    observer = await joined_peer(srv, "observer")
    sid = "flag"
    await open_sale(srv, sid, 2, 1)
    alice, bob, carol = [await joined_peer(srv, user) for user in ("alice", "bob", "carol")]

    first = await buy(alice, sid, "a-1")
    assert (first.status, first.remaining) == ("ok", 1)
    last = await buy(bob, sid, "b-1")
    assert (last.status, last.remaining) == ("ok", 0)
    await pump_until(observer, lambda: bool(events(observer, SoldOut, sid)))
    assert sid in desk.sold_out

    counting = CountingStore(srv, monkeypatch)
    local = desk.statistics().local_sold_out_answers
    for i in range(5):
        late = await buy(carol, sid, f"c-{i}")
        assert (late.status, late.remaining) == ("sold_out", 0)
    assert counting.calls == 0
    assert desk.statistics().local_sold_out_answers == local + 5

    # A retry reaches the store and gets its first answer, not the flag's sold_out.
    retried = await buy(alice, sid, "a-1", retry=True)
    assert retried == first and counting.calls == 1
    # A fresh press flagged retry reaches the store too.
    fresh = await buy(carol, sid, "c-fresh", retry=True)
    assert fresh.status == "sold_out" and counting.calls == 2
    # Replayed first answers do not move the room's state back.
    assert sid in desk.sold_out
    room = desk.room(ROOM)
    assert room.sale is not None and (room.sale.remaining, room.sale.status) == (0, "sold_out")
    await quiet(observer)
    assert last_stock(observer, sid) == 0
    assert len(events(observer, Purchase, sid)) == 2
    assert len(events(observer, SoldOut, sid)) == 1

    # A restock clears the flag: viewers see the new stock and buys succeed again.
    await desk.restock(sid, 3)
    assert sid not in desk.sold_out
    await pump_until(observer, lambda: last_stock(observer, sid) == 3)
    assert room.sale is not None and (room.sale.remaining, room.sale.status) == (3, "open")
    # A resend of an attempt answered sold_out before the restock still gets that answer…
    assert await buy(carol, sid, "c-fresh", retry=True) == fresh
    # …and does not make the node believe the sale is sold out again.
    assert sid not in desk.sold_out
    calls = counting.calls
    bought = await buy(carol, sid, "c-after-restock")
    assert (bought.status, bought.remaining) == ("ok", 2)
    assert counting.calls == calls + 1
    report = await check_invariants(srv.store, sid)
    assert (report.state.sold, report.state.remaining, report.state.restocked) == (3, 2, 3)


# --- 4. refusals ------------------------------------------------------------------------


@bounded(20)
async def test_buys_before_the_start_and_after_the_close_are_not_open(
    start_server: ServerFactory, stock: dict[str, Any]
) -> None:
    srv = await start_server(stock=stock)
    assert srv.desk is not None
    alice = await joined_peer(srv, "alice")
    later = await open_sale(srv, "later", 5, 1, starts_in=60.0, ends_in=600.0)
    assert later.status == "scheduled"
    early = await buy(alice, "later", "early-1")
    assert (early.status, early.sale) == ("not_open", "later") and early.order is None

    await open_sale(srv, "closing", 5, 1)
    assert (await buy(alice, "closing", "before-close")).status == "ok"
    await srv.desk.close_sale("closing")
    await pump_until(alice, lambda: bool(events(alice, SaleClosed, "closing")))
    (closed,) = events(alice, SaleClosed, "closing")
    assert closed.reason == "closed"
    after = await buy(alice, "closing", "after-close")
    assert after.status == "not_open" and after.order is None
    assert (await srv.desk.state("closing")).sold == 1


@bounded(20)
async def test_a_sale_past_its_end_announces_ended_and_answers_not_open(
    start_server: ServerFactory, stock: dict[str, Any]
) -> None:
    srv = await start_server(stock=stock)
    alice = await joined_peer(srv, "alice")
    await open_sale(srv, "short", 5, 1, ends_in=0.4)
    assert (await buy(alice, "short", "in-time")).status == "ok"
    await pump_until(alice, lambda: bool(events(alice, SaleClosed, "short")), timeout=5)
    (ended,) = events(alice, SaleClosed, "short")
    assert ended.reason == "ended"
    assert (await buy(alice, "short", "too-late")).status == "not_open"


@bounded(20)
async def test_unknown_sales_unjoined_rooms_anonymous_viewers_and_greedy_quantities_are_refused(
    start_server: ServerFactory, stock: dict[str, Any]
) -> None:
    srv = await start_server(stock=stock, auth={"allow_anonymous": True})
    assert srv.store is not None
    alice = await joined_peer(srv, "alice")
    sid = "refusals"
    await open_sale(srv, sid, 10, 2)

    unknown = await buy(alice, "no-such-sale", "u-1")
    assert (unknown.status, unknown.msg) == ("error", "unknown sale")
    # A sale of another room is unknown in this one.
    await alice.join("other-room")
    elsewhere = await buy(alice, sid, "u-2", room="other-room")
    assert (elsewhere.status, elsewhere.msg) == ("error", "unknown sale")

    # The room must be joined on this connection.
    bob = await Peer.open(srv, token("bob"))
    refused = expect(await bob.call(Buy(room=ROOM, sale=sid, qty=1, rid="nj-1")), Error)
    assert (refused.code, refused.rid) == (ErrorCode.NOT_JOINED, "nj-1")

    # Anonymous viewers watch but cannot buy.
    anonymous = await Peer.open(srv, None)
    await anonymous.join(ROOM)
    read_only = expect(await anonymous.call(Buy(room=ROOM, sale=sid, qty=1, rid="an-1")), Error)
    assert (read_only.code, read_only.rid) == (ErrorCode.READ_ONLY, "an-1")

    # More than the per-user limit at once, or on top of earlier purchases.
    greedy = await buy(alice, sid, "g-1", qty=3)
    assert greedy.status == "limit_reached" and greedy.order is None
    assert (await buy(alice, sid, "g-2", qty=2)).status == "ok"
    assert (await buy(alice, sid, "g-3", qty=1)).status == "limit_reached"
    state = await srv.store.state(sid)
    assert (state.sold, state.remaining) == (2, 8)
    await check_invariants(srv.store, sid)


# --- 5. the late joiner's snapshot ------------------------------------------------------


@bounded(20)
async def test_a_late_joiner_gets_the_current_pin_and_sale_in_its_snapshot(
    start_server: ServerFactory, stock: dict[str, Any]
) -> None:
    srv = await start_server(stock=stock)
    assert srv.desk is not None
    alice = await joined_peer(srv, "alice")
    product = Product(id="p-late", title="保温杯 500ml", price=PRICE, currency="CNY")
    await srv.desk.pin(ROOM, product)
    sid = "snap"
    await open_sale(srv, sid, 3, 2)
    assert (await buy(alice, sid, "s-1", qty=2)).status == "ok"

    late = await Peer.open(srv, token("late"))
    joined = await late.join(ROOM)
    assert joined.pin == product
    assert joined.sale is not None
    assert (joined.sale.id, joined.sale.remaining, joined.sale.stock) == (sid, 1, 3)
    assert (joined.sale.status, joined.sale.limit, joined.sale.price) == ("open", 2, PRICE)
    assert any(isinstance(e, SaleOpened) and e.sale.id == sid for e in joined.recent)
    assert sum(isinstance(e, Purchase) for e in joined.recent) == 1

    assert (await buy(alice, sid, "s-2", retry=None)).status == "limit_reached"
    assert (await buy(late, sid, "s-3")).status == "ok"
    latest = expect(await (await Peer.open(srv, token("latest"))).join(ROOM), Joined)
    assert latest.sale is not None
    assert (latest.sale.remaining, latest.sale.status) == (0, "sold_out")
    assert any(isinstance(e, SoldOut) for e in latest.recent)


# --- 6. Redis dies mid-sale ---------------------------------------------------------------


async def timed_answers(
    peers: Sequence[Peer], sale_id: str, rid: Rid, *, retry: bool | None = None
) -> list[tuple[BuyResult, float]]:
    """Each peer presses Buy with ``rid``; every answer must come within 3 s."""

    async def one(peer: Peer) -> tuple[BuyResult, float]:
        started = time.perf_counter()
        answer = await buy(peer, sale_id, rid, retry=retry, timeout=3.0)
        return answer, time.perf_counter() - started

    return list(await asyncio.gather(*(one(peer) for peer in peers)))


async def settled_answer(peer: Peer, sale_id: str, rid: Rid, attempts: int = 40) -> BuyResult:
    """Retry (same rid, retry flag) until the answer is not ``try again``."""
    for _ in range(attempts):
        answer = await buy(peer, sale_id, rid, retry=True, timeout=3.0)
        if answer.status != "error":
            return answer
        assert answer.msg == "try again", answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"{rid!r}: still no definite answer after {attempts} retries")


@bounded(60)
async def test_redis_killed_mid_sale_gives_bounded_try_again_answers_and_retries_recover(
    start_server: ServerFactory, own_redis: RedisServer
) -> None:
    srv = await start_server(
        stock={"backend": "redis", "redis_url": own_redis.url, "redis_timeout": 0.5}
    )
    assert srv.store is not None
    units = 30
    sid = "crash"
    buyers = await joined_peers(srv, [f"b{i:02d}" for i in range(40)])
    await open_sale(srv, sid, units, 1)

    # A first wave succeeds.
    wave1 = await timed_answers(buyers[:10], sid, "w1")
    assert [a.status for a, _ in wave1] == ["ok"] * 10

    # Kill Redis while a second wave is in flight (frozen first, so that the calls are out).
    own_redis.pause()
    in_flight = asyncio.create_task(timed_answers(buyers[10:], sid, "w2"))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(own_redis.kill)
    wave2 = await in_flight
    # And a third wave while it is down.
    wave3 = await timed_answers(buyers, sid, "w3")
    for answer, seconds in wave2 + wave3:
        assert seconds < 3.0
        assert answer.status in ("ok", "error"), answer
        if answer.status == "error":
            assert answer.msg == "try again"
    assert all(a.status == "error" for a, _ in wave3)
    print(
        f"\n[redis killed] wave during the kill: {Counter(a.status for a, _ in wave2)}, "
        f"slowest answer {max(s for _, s in wave2 + wave3):.2f} s"
    )

    # Back up (the AOF replays): a retry with the same rid learns the real outcome.
    await asyncio.to_thread(own_redis.restart)
    for peer, (first, _) in zip(buyers[:10], wave1, strict=True):
        assert await settled_answer(peer, sid, "w1") == first
    final2 = [await settled_answer(peer, sid, "w2") for peer in buyers[10:]]
    for (answer, _), final in zip(wave2, final2, strict=True):
        if answer.status == "ok":
            assert final == answer  # same order id
    assert all(a.status in DEFINITE for a in final2)
    recorded = sum(
        first.status == "error" and final.status == "ok"
        for (first, _), final in zip(wave2, final2, strict=True)
    )
    print(f"[redis killed] 'try again' answers that had bought (learnt by retry): {recorded}")

    report = await check_invariants(srv.store, sid)
    oks = [a for a, _ in wave1] + [a for a in final2 if a.status == "ok"]
    assert report.state.sold == len(oks) <= units  # nothing oversold
    assert {o.order_id for o in report.orders} == {a.order for a in oks}
    # The sale is usable again, and no connection was dropped.
    assert all(peer.ws.state is State.OPEN for peer in buyers)
    await asyncio.gather(*(settle(peer) for peer in buyers))
    left = report.state.remaining
    # A fresh answer brings the room's view of the stock up to date.
    newcomer = await buy(await joined_peer(srv, "newcomer"), sid, "n1")
    assert newcomer.status == ("ok" if left else "sold_out")
    room = srv.desk.room(ROOM) if srv.desk is not None else None
    assert room is not None and room.sale is not None
    assert room.sale.remaining == (await srv.store.state(sid)).remaining


@bounded(60)
async def test_a_frozen_redis_answers_try_again_within_the_timeout_and_nothing_hangs(
    start_server: ServerFactory, own_redis: RedisServer
) -> None:
    srv = await start_server(
        stock={"backend": "redis", "redis_url": own_redis.url, "redis_timeout": 0.5}
    )
    assert srv.store is not None
    sid = "frozen"
    buyers = await joined_peers(srv, [f"f{i:02d}" for i in range(20)])
    await open_sale(srv, sid, 100, 1)
    own_redis.pause()
    try:
        frozen = await timed_answers(buyers, sid, "x1")
    finally:
        own_redis.resume()
    for answer, seconds in frozen:
        assert (answer.status, answer.msg) == ("error", "try again")
        assert seconds < 3.0
    print(f"\n[redis frozen] slowest answer {max(s for _, s in frozen):.2f} s")
    finals = [await settled_answer(peer, sid, "x1") for peer in buyers]
    assert all(a.status == "ok" for a in finals)
    report = await check_invariants(srv.store, sid)
    assert report.state.sold == len(buyers)
    assert {o.order_id for o in report.orders} == {a.order for a in finals}


# --- 7. batching ------------------------------------------------------------------------


@bounded(30)
async def test_simultaneous_buys_go_to_the_store_in_batches_and_each_buyer_gets_its_own_answer(
    start_server: ServerFactory, stock: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = await start_server(stock={**stock, "batch_window_ms": 5})
    assert srv.store is not None and srv.desk is not None
    counting = CountingStore(srv, monkeypatch)
    sid = "batched"
    users = [f"v{i:02d}" for i in range(50)]
    peers = await joined_peers(srv, users)
    await open_sale(srv, sid, 1000, 4)
    rids: list[Rid] = [f"{j}" for j in range(4)]

    async def press(peer: Peer) -> None:
        for rid in rids:
            await peer.send(Buy(room=ROOM, sale=sid, qty=1, rid=rid))

    await asyncio.gather(*(press(peer) for peer in peers))
    answered = await asyncio.gather(*(collect_answers(peer, rids) for peer in peers))
    presses = len(users) * len(rids)
    assert counting.requests == presses
    assert counting.calls < presses
    assert max(counting.batch_sizes) > 1
    assert srv.desk.statistics().store_calls == counting.calls
    orders: dict[str | None, str] = {}
    for user, answers in zip(users, answered, strict=True):
        for rid in rids:
            answer = expect(answers[rid], BuyResult)
            assert (answer.status, answer.rid, answer.qty) == ("ok", rid, 1)
            assert answer.order not in orders
            orders[answer.order] = user
    report = await check_invariants(srv.store, sid)
    assert {o.order_id: o.user_id for o in report.orders} == orders
    print(f"\n[{stock['backend']}] {presses} buys in {counting.calls} store calls")
