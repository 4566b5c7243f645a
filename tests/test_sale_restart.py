"""A flash sale outlives the engine process that opened it (Redis store, real processes).

A real ``liveroom serve`` process on uvloop with the Redis stock store: a sale is opened
in a room through the service API, buyers press Buy, and the process is stopped mid-sale
(SIGTERM, or SIGKILL so that answers are lost on the way), then started again on the same
ports and Redis. Afterwards every buyer rejoins and must see the sale in its ``joined``
snapshot; every retry with the same request id gets its first answer (never "unknown
sale"); new presses are decided by the store; and the sale's invariants hold, with every
order in the stream matched by exactly one ``ok`` answer.

Every process a test starts is stopped by its PID, even when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from engine.stock import check_invariants, connect
from protocol import Buy, BuyResult, SaleOpened
from tests.conftest import Peer, expect, token
from tests.processes import Engine

ROOM = "show-restart"


@pytest.fixture
def engine(redis_url: str) -> Iterator[Engine]:
    e = Engine(
        STOCK_BACKEND="redis", STOCK_REDIS_URL=redis_url, STOCK_KEY_PREFIX=f"restart{os.getpid()}"
    )
    try:
        yield e
    finally:
        e.kill()


async def _viewer(engine: Engine, user: str) -> Peer:
    peer = await Peer.open(engine.endpoint, token(user, [ROOM]))
    await peer.join(ROOM)
    return peer


async def _answers(peer: Peer, rids: set[str], timeout: float) -> dict[str, BuyResult]:
    """The buy answers that arrive for ``rids`` before the connection drops or time runs out."""
    got: dict[str, BuyResult] = {}
    try:
        async with asyncio.timeout(timeout):
            while len(got) < len(rids):
                msg = await peer.recv(timeout)
                if isinstance(msg, BuyResult) and msg.rid in rids:
                    got[str(msg.rid)] = msg
    except Exception:  # the engine went away mid-sale: later answers are lost
        pass
    return got


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_sale_outlives_its_engine_and_every_retry_gets_its_first_answer(
    engine: Engine, redis_url: str, sig: signal.Signals
) -> None:
    stock, buyers, late = 12, 16, 8
    async with asyncio.timeout(90):
        engine.start()
        host = await _viewer(engine, "host")
        status, opened = await engine.api(
            "POST",
            "/v1/sales",
            {
                "sale_id": "s1",
                "room": ROOM,
                "product_id": "p1",
                "stock": stock,
                "price": 9900,
                "per_user_limit": 1,
                "duration": 600,
            },
        )
        assert status == 201, opened
        _, event = await host.next_event()
        assert isinstance(event, SaleOpened) and event.sale.id == "s1"

        # Half the buyers are answered before the stop; the other half press right before it.
        peers = [await _viewer(engine, f"u{i}") for i in range(buyers)]
        first: dict[str, BuyResult] = {}
        for i, peer in enumerate(peers[: buyers // 2]):
            result = expect(await peer.call(Buy(room=ROOM, sale="s1", rid=f"x{i}")), BuyResult)
            first[f"x{i}"] = result
        for i in range(buyers // 2, buyers):
            await peers[i].send(Buy(room=ROOM, sale="s1", rid=f"x{i}"))
        engine.stop(sig)
        for i in range(buyers // 2, buyers):
            first.update(await _answers(peers[i], {f"x{i}"}, timeout=1.0))
        assert all(r.status in ("ok", "sold_out") for r in first.values()), first
        lost = buyers - len(first)

        engine.start()
        host = await _viewer(engine, "host")  # keeps the room held for the service calls
        # The restarted node shows the sale to joiners, and answers every retry with its
        # first answer, or (for answers lost in the stop) with the store's decision.
        retried: dict[str, BuyResult] = {}
        for i in range(buyers):
            peer = await Peer.open(engine.endpoint, token(f"u{i}", [ROOM]))
            joined = await peer.join(ROOM)
            assert joined.sale is not None and joined.sale.id == "s1", joined
            assert joined.sale.status in ("open", "sold_out")
            rid = f"x{i}"
            again = expect(
                await peer.call(Buy(room=ROOM, sale="s1", rid=rid, retry=True)), BuyResult
            )
            assert again.msg != "unknown sale" and again.status in ("ok", "sold_out"), again
            if rid in first:
                assert (again.status, again.order) == (first[rid].status, first[rid].order)
            retried[rid] = again
            await peer.close()
        # New presses after the restart: decided by the store, never "unknown sale".
        for j in range(late):
            peer = await Peer.open(engine.endpoint, token(f"late{j}", [ROOM]))
            await peer.join(ROOM)
            answer = expect(await peer.call(Buy(room=ROOM, sale="s1", rid=f"y{j}")), BuyResult)
            assert answer.status in ("ok", "sold_out"), answer
            if answer.status == "ok":
                retried[f"y{j}"] = answer
            await peer.close()
        status, state = await engine.api("GET", "/v1/sales/s1")
        assert status == 200 and isinstance(state, dict)
        assert state["remaining"] == 0 and state["sold"] == stock
        status, _ = await engine.api(
            "POST",
            "/v1/sales",
            {
                "sale_id": "s1",
                "room": ROOM,
                "product_id": "p1",
                "stock": 1,
                "price": 1,
                "per_user_limit": 1,
            },
        )
        assert status == 409  # sale ids are never reused, restart or not

    store = await connect(redis_url, key_prefix=engine.env["LIVEROOM_STOCK_KEY_PREFIX"])
    try:
        report = await check_invariants(store, "s1")
    finally:
        await store.close()
    ok_orders = {r.order for r in retried.values() if r.status == "ok"}
    assert len(ok_orders) == sum(1 for r in retried.values() if r.status == "ok")
    assert {o.order_id for o in report.orders} == ok_orders, (lost, report.orders)
    assert len(report.orders) == stock
    assert engine.starts == 2
