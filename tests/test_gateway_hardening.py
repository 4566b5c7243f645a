"""Limits a client cannot bypass, and closes it can read: real server, real sockets.

Per-connection budgets for likes, buy presses, pings and joins (with a cap on the likes
one message counts); close reasons cut to 123 UTF-8 bytes on a character boundary; the
1009 close frame reaching a client that is still writing.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from engine.gateway import MAX_CLOSE_REASON, close_reason
from engine.server import LiveroomServer
from protocol import Buy, Error, ErrorCode, Join, Leave, Like, Ping, Pong, Refresh, Refreshed
from tests.conftest import Peer, ServerFactory, bounded, expect, token, wait_for_condition
from tests.processes import Engine
from tests.test_tls import certificate as certificate  # the fixture


def test_close_reason_is_cut_by_bytes_on_a_character_boundary() -> None:
    assert close_reason("short") == "short"
    cut = close_reason("类" * 60)  # 180 bytes, 3 per character
    assert cut == "类" * 41 and len(cut.encode()) == 123
    cut = close_reason("a" + "类" * 60)  # a boundary falls inside a character
    assert cut == "a" + "类" * 40 and len(cut.encode()) == 121
    assert len(close_reason("🔥" * 40).encode()) <= MAX_CLOSE_REASON


@bounded(20)
async def test_unknown_type_with_a_long_cjk_name_closes_4003_with_a_short_reason(
    server: LiveroomServer, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await Peer.open(server, token("mallory"))
    with caplog.at_level(logging.WARNING):
        await peer.send_data(msgpack.packb({"t": "类" * 34}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await peer.ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
    reason = closed.value.rcvd.reason
    assert "unknown message type" in reason and len(reason.encode()) <= MAX_CLOSE_REASON
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    other = await Peer.open(server, token("bob"))  # the server lives on
    await other.ping()


@pytest.fixture
def served() -> Iterator[Engine]:
    engine = Engine()
    try:
        engine.start()
        yield engine
    finally:
        engine.kill()


async def _codes_after_oversized(
    url: str, sizes: tuple[int, ...], *, tries: int, **options: Any
) -> list[int | None]:
    """The close code a client reads, per try, after an oversized message it follows with
    more commands (as a client streaming commands would); None: no close frame read."""
    codes: list[int | None] = []
    for size in sizes:
        for _ in range(tries):
            async with connect(
                url, subprotocols=[Subprotocol("liveroom.v1.msgpack")], close_timeout=2, **options
            ) as ws:
                await ws.recv()  # welcome
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.send(b"\x00" * size)
                    for i in range(500):
                        await ws.send(msgpack.packb({"t": "ping", "rid": i}))
                        await asyncio.sleep(0)
                    while True:
                        await ws.recv()
                rcvd = closed.value.rcvd
                codes.append(rcvd.code if rcvd is not None else None)
    return codes


@bounded(60)
async def test_a_client_still_writing_after_an_oversized_message_reads_1009(
    served: Engine,
) -> None:
    # A real `liveroom serve` (uvloop): there, closing the socket at once with the rest
    # of the message unread sent a reset that destroyed the client's unread close frame.
    url = f"ws://127.0.0.1:{served.ws_port}/?token={token('big')}"
    codes = await _codes_after_oversized(url, (5_000, 100_000, 1_000_000), tries=5)
    assert codes == [1009] * 15


@bounded(20)
async def test_likes_are_budgeted_per_connection_and_capped_per_message(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(
        rooms={"like_rate": 0.001, "like_burst": 20, "max_likes_per_message": 10}
    )
    peer = await Peer.open(srv, token("thumb"))
    await peer.join("likes-room")
    for i in range(200):
        await peer.send(Like(room="likes-room", count=100, rid=i))
    answers = [await peer.answer(i) for i in range(200)]
    refused = [a for a in answers if isinstance(a, Error)]
    assert len(refused) == 180 and all(e.code == ErrorCode.RATE_LIMITED for e in refused)
    room = srv.hub.get("likes-room") if srv.hub is not None else None
    assert room is not None and room.likes == 20 * 10


@bounded(20)
async def test_buy_presses_pings_and_joins_have_their_own_budgets(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(
        rooms={
            "buy_rate": 0.001,
            "buy_burst": 2,
            "ping_rate": 0.001,
            "ping_burst": 3,
            "join_rate": 0.001,
            "join_burst": 4,
        }
    )
    peer = await Peer.open(srv, token("eager"))
    await peer.join("budget-room")
    buys = [await peer.call(Buy(room="budget-room", sale="nope", rid=f"b{i}")) for i in range(3)]
    assert [type(a).__name__ for a in buys] == ["BuyResult", "BuyResult", "Error"]
    refused = expect(buys[2], Error)
    assert refused.code == ErrorCode.RATE_LIMITED and refused.rid == "b2"
    pings = [await peer.call(Ping(rid=f"p{i}")) for i in range(4)]
    assert [type(a) for a in pings] == [Pong, Pong, Pong, Error]
    # join + leave share one budget: the first join spent one of four
    moves = [
        await peer.call(Leave(room="budget-room", rid="l1")),
        await peer.call(Join(room="other", rid="j1")),
        await peer.call(Join(room="third", rid="j2")),
        await peer.call(Join(room="fourth", rid="j3")),
    ]
    assert [type(a).__name__ for a in moves] == ["Left", "Joined", "Joined", "Error"]
    assert expect(moves[3], Error).code == ErrorCode.RATE_LIMITED
    # a comment still goes through: budgets are separate
    await peer.comment("other", "still here")
    await wait_for_condition(lambda: srv.hub is not None and srv.hub.get("other") is not None)


@bounded(20)
async def test_a_connection_is_closed_with_4002_when_its_token_expires(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(server={"heartbeat_interval": 0.2, "idle_timeout": 30.0})
    peer = await Peer.open(srv, token("brief", ttl=1.0))
    assert peer.welcome is not None and peer.welcome.expires is not None
    assert abs(peer.welcome.expires - (time.time() + 1.0) * 1000) < 1000
    await peer.join("expiry-room")
    assert await peer.close_code(timeout=5) == 4002
    gateway = srv.gateway
    assert gateway is not None
    await wait_for_condition(lambda: gateway.statistics().closed_by_code.get(4002) == 1)


@bounded(20)
async def test_a_refreshed_token_keeps_the_connection_and_bad_refreshes_change_nothing(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(
        server={"heartbeat_interval": 0.2, "idle_timeout": 30.0}, rooms={"ping_burst": 20}
    )
    peer = await Peer.open(srv, token("keeper", ["r1", "r2"], ttl=1.5))
    await peer.join("r1")
    refusals = {
        "garbage": "not-a-token",
        "other user": token("intruder", ["r1"]),
        "expired": token("keeper", ["r1"], ttl=-5),
        "bad signature": token("keeper", ["r1"], secret="another-secret"),
        "room not admitted": token("keeper", ["r2"]),
    }
    codes = {}
    for what, tok in refusals.items():
        codes[what] = expect(await peer.call(Refresh(token=tok, rid=what)), Error).code
    assert codes == {
        "garbage": "token_invalid",
        "other user": "token_invalid",
        "expired": "token_expired",
        "bad signature": "token_invalid",
        "room not admitted": "forbidden_room",
    }
    refreshed = expect(await peer.call(Refresh(token=token("keeper", ["r1"]), rid="ok")), Refreshed)
    assert abs(refreshed.expires - (time.time() + 3600) * 1000) < 2000
    await asyncio.sleep(2.0)  # past the first token's expiry
    await peer.ping()
    await peer.comment("r1", "still here")

    other = await Peer.open(srv, token("lapsed", ttl=1.0))  # a refused refresh keeps the old
    assert expect(await other.call(Refresh(token="x", rid=1)), Error).code == "token_invalid"
    assert await other.close_code(timeout=5) == 4002


@bounded(20)
async def test_anonymous_viewers_cannot_refresh_into_an_identity(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(auth={"allow_anonymous": True})
    peer = await Peer.open(srv, None)
    assert peer.welcome is not None and peer.welcome.expires is None
    answer = await peer.call(Refresh(token=token("someone"), rid=1))
    assert expect(answer, Error).code == "token_invalid"


@bounded(20)
async def test_anonymous_viewers_join_live_rooms_only(start_server: ServerFactory) -> None:
    srv = await start_server(auth={"allow_anonymous": True})
    anon = await Peer.open(srv, None)
    refused = expect(await anon.call(Join(room="made-up", rid=1)), Error)
    assert refused.code == "room_not_live" and refused.rid == 1
    assert srv.hub is not None and srv.hub.get("made-up") is None
    host = await Peer.open(srv, token("host"))
    await host.join("made-up")
    assert (await anon.join("made-up")).viewers == 2
    assert (await anon.join("made-up")).room == "made-up"  # joining again is fine too


@bounded(30)
async def test_rooms_are_capped_per_node_and_event_less_rooms_do_not_pile_up(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(rooms={"max_rooms": 2, "join_rate": 10_000.0, "join_burst": 10_000})
    hub = srv.hub
    assert hub is not None
    peer = await Peer.open(srv, token("roamer"))
    for i in range(300):  # join and leave many distinct rooms: nothing stays behind
        await peer.join(f"room-{i}")
        await peer.leave(f"room-{i}")
    assert len(hub.rooms) == 0
    await peer.join("a")
    await peer.join("b")
    full = expect(await peer.call(Join(room="c", rid="c1")), Error)
    assert full.code == "rooms_full" and full.rid == "c1"
    await peer.leave("a")  # never had an event: dropped at once, making room
    assert (await peer.join("c")).room == "c"
    await peer.comment("c", "history")
    await peer.leave("c")  # has history: kept for reconnects, but dropped to make room
    other = await Peer.open(srv, token("late"))
    assert (await other.join("d")).room == "d"
    assert set(hub.rooms) == {"b", "d"}


@bounded(60)
async def test_over_wss_a_client_still_writing_after_an_oversized_message_reads_1009(
    certificate: tuple[Path, Path],
) -> None:
    # TLS cannot half-close, so there the server still closes once the close frame is
    # out (the TLS close_notify follows it); the client must read 1009 all the same.
    cert, key = certificate
    engine = Engine(SERVER_TLS_CERT=str(cert), SERVER_TLS_KEY=str(key))
    try:
        engine.start()
        trust = ssl.create_default_context(cafile=str(cert))
        url = f"wss://127.0.0.1:{engine.ws_port}/?token={token('big')}"
        codes = await _codes_after_oversized(url, (100_000, 1_000_000), tries=4, ssl=trust)
        assert codes == [1009] * 8
    finally:
        engine.kill()
