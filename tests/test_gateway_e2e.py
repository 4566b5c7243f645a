"""End to end: a real server on 127.0.0.1, driven by ``websockets`` clients and raw sockets.

Each test states one behaviour of the gateway as a frontend (or a hostile peer) sees it:
fan-out, codecs, snapshots and resume, authentication, bad input, rate limits, slow
consumers, heartbeats, capacity, shutdown, likes, leave and subprotocol negotiation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State

from engine.gateway import Connection
from engine.server import LiveroomServer
from protocol import (
    JSON,
    MSGPACK,
    Ack,
    Batch,
    CloseCode,
    Codec,
    Comment,
    Error,
    ErrorCode,
    Join,
    Joined,
    Left,
    Like,
    Likes,
    Ping,
    SendComment,
    Viewers,
    Welcome,
)
from tests.conftest import (
    Peer,
    RawClient,
    ServerFactory,
    bounded,
    expect,
    make_config,
    token,
    wait_for_condition,
)

ROOM = "room-1"


def now_ms() -> int:
    return int(time.time() * 1000)


async def joined_peers(
    srv: LiveroomServer, *users: str, room: str = ROOM, codec: Codec = MSGPACK
) -> list[Peer]:
    peers = []
    for user in users:
        peer = await Peer.open(srv, token(user), codec=codec)
        await peer.join(room)
        peers.append(peer)
    return peers


async def refused_with(peer: Peer) -> int | None:
    """The close code of a connection closed before any message (no welcome)."""
    with pytest.raises(ConnectionClosed) as info:
        await peer.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


def expect_error(message: object, code: ErrorCode, rid: str | int) -> Error:
    error = expect(message, Error)
    assert (error.code, error.rid) == (code, rid), error
    return error


def connection_of(srv: LiveroomServer, user: str) -> Connection:
    assert srv.gateway is not None
    found = [c for c in srv.gateway.connections if c.claims and c.claims.user_id == user]
    assert len(found) == 1, found
    return found[0]


# --- welcome and fan-out ---------------------------------------------------------------


@bounded(10)
async def test_welcome_carries_identity_heartbeat_and_server_time(server: LiveroomServer) -> None:
    peer = await Peer.open(server, token("alice", name="Alice A."))
    welcome = peer.welcome
    assert welcome is not None
    assert (welcome.version, welcome.user_id, welcome.name, welcome.role) == (
        1,
        "alice",
        "Alice A.",
        "viewer",
    )
    assert welcome.session
    assert welcome.heartbeat_ms == int(server.config.server.heartbeat_interval * 1000)
    assert abs(welcome.server_time - now_ms()) < 5000
    await peer.close()


@bounded(10)
async def test_comment_reaches_every_viewer_in_a_batch_with_server_ts_and_offset(
    server: LiveroomServer,
) -> None:
    alice = await Peer.open(server, token("alice"))
    bob = await Peer.open(server, token("bob"))
    joined = await alice.join(ROOM)
    await bob.join(ROOM)
    before = now_ms()
    await alice.send(SendComment(room=ROOM, text="first!", rid="c-1"))
    ack = expect(await alice.answer("c-1"), Ack)

    (seen_by_alice,) = await alice.comments(1)
    (seen_by_bob,) = await bob.comments(1)
    assert seen_by_alice == seen_by_bob
    assert (seen_by_bob.text, seen_by_bob.user_id, seen_by_bob.name) == ("first!", "alice", "Alice")
    assert before - 50 <= seen_by_bob.ts <= now_ms() + 50  # server clock, unix ms
    assert seen_by_bob.offset == joined.offset + 1 == ack.offset
    assert any(b.room == ROOM and seen_by_bob in b.events for b in bob.batches), (
        "the comment travels inside a batch"
    )
    await alice.close()
    await bob.close()


@bounded(10)
async def test_msgpack_and_json_viewers_of_one_room_receive_the_same_comments(
    server: LiveroomServer,
) -> None:
    (packer,) = await joined_peers(server, "packer", codec=MSGPACK)
    (texter,) = await joined_peers(server, "texter", codec=JSON)
    expect(await packer.comment(ROOM, "from msgpack 🛍️"), Ack)
    expect(await texter.comment(ROOM, "from json ✓"), Ack)
    by_packer = await packer.comments(2)
    by_texter = await texter.comments(2)
    assert by_packer == by_texter
    assert [c.text for c in by_texter] == ["from msgpack 🛍️", "from json ✓"]
    assert packer.text_frames == 0 and packer.binary_frames > 0
    assert texter.binary_frames == 0 and texter.text_frames > 0
    await packer.close()
    await texter.close()


@bounded(10)
async def test_rooms_are_isolated(server: LiveroomServer) -> None:
    (in_a,) = await joined_peers(server, "a", room="room-a")
    (in_b,) = await joined_peers(server, "b", room="room-b")
    expect(await in_a.comment("room-a", "only for a"), Ack)
    (got,) = await in_a.comments(1)
    assert got.text == "only for a"
    await in_b.assert_no_comment(0.3)
    await in_a.close()
    await in_b.close()


@bounded(10)
async def test_bearer_token_in_the_authorization_header_is_accepted(
    server: LiveroomServer,
) -> None:
    peer = await Peer.open(
        server, None, additional_headers={"Authorization": f"Bearer {token('hdr')}"}
    )
    assert peer.welcome is not None and peer.welcome.user_id == "hdr"
    await peer.close()


@bounded(10)
async def test_fragmented_message_is_reassembled(server: LiveroomServer) -> None:
    (peer,) = await joined_peers(server, "frag")
    data = MSGPACK.encode(SendComment(room=ROOM, text="in three pieces", rid="frag-1"))
    await peer.ws.send([data[:3], data[3:9], data[9:]])  # websockets: one fragment each
    expect(await peer.answer("frag-1"), Ack)
    (got,) = await peer.comments(1)
    assert got.text == "in three pieces"
    await peer.close()


@bounded(10)
async def test_joining_more_rooms_than_allowed_is_refused_but_rejoining_is_not(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(rooms={"max_rooms_per_connection": 2})
    peer = await Peer.open(srv, token("busy"))
    await peer.join("a")
    await peer.join("b")
    await peer.send(Join(room="c", rid="j-c"))
    expect_error(await peer.answer("j-c"), ErrorCode.TOO_MANY_ROOMS, "j-c")
    again = await peer.join("a")  # a second join restarts the subscription
    assert again.viewers == 1
    await peer.close()


@bounded(10)
async def test_peer_that_never_completes_the_handshake_is_dropped(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(server={"handshake_timeout": 0.3})
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        assert await reader.read() == b""  # server aborted, answering nothing
    assert 0.25 <= time.monotonic() - started <= 3.0
    writer.close()
    gateway = srv.gateway
    assert gateway is not None
    await wait_for_condition(lambda: not gateway.connections)


# --- snapshot and resume ---------------------------------------------------------------


@bounded(10)
async def test_late_joiner_gets_a_snapshot_of_the_latest_comments(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(rooms={"snapshot_size": 3})
    early = await Peer.open(srv, token("early"))
    first = await early.join(ROOM)
    for i in range(5):
        expect(await early.comment(ROOM, f"c{i}"), Ack)
    await early.comments(5)  # all five were flushed

    late = await Peer.open(srv, token("late"))
    joined = await late.join(ROOM)
    recent = [e for e in joined.recent if isinstance(e, Comment)]
    assert [c.text for c in recent] == ["c2", "c3", "c4"]
    assert [c.offset for c in recent] == [3, 4, 5]
    assert (joined.offset, joined.epoch, joined.resync, joined.viewers) == (
        5,
        first.epoch,
        False,
        2,
    )
    assert joined.room == ROOM and joined.rid is not None
    await early.close()
    await late.close()


@bounded(15)
async def test_reconnect_with_offset_and_epoch_gets_exactly_the_missed_comments(
    server: LiveroomServer,
) -> None:
    viewer = await Peer.open(server, token("viewer"))
    epoch = (await viewer.join(ROOM)).epoch
    (writer,) = await joined_peers(server, "writer")
    for text in ("a", "b"):
        expect(await writer.comment(ROOM, text), Ack)
    last = (await viewer.comments(2))[-1]
    await viewer.close()

    for text in ("missed-1", "missed-2", "missed-3"):
        expect(await writer.comment(ROOM, text), Ack)
    await writer.comments(5)

    back = await Peer.open(server, token("viewer"))
    joined = await back.join(ROOM, offset=last.offset, epoch=epoch)
    assert joined.resync is False
    missed = [e for e in joined.recent if isinstance(e, Comment)]
    assert [c.text for c in missed] == ["missed-1", "missed-2", "missed-3"]
    assert [c.offset for c in missed] == [3, 4, 5]
    assert joined.offset == 5

    expect(await writer.comment(ROOM, "live again"), Ack)
    (live,) = await back.comments(1)
    assert (live.text, live.offset) == ("live again", 6)  # nothing twice, nothing skipped
    await back.close()
    await writer.close()


@bounded(10)
async def test_reconnect_with_a_wrong_epoch_is_told_to_resync(server: LiveroomServer) -> None:
    (writer,) = await joined_peers(server, "writer")
    for i in range(3):
        expect(await writer.comment(ROOM, f"c{i}"), Ack)
    await writer.comments(3)
    back = await Peer.open(server, token("viewer"))
    joined = await back.join(ROOM, offset=2, epoch="epoch-of-another-life")
    assert joined.resync is True
    assert joined.epoch != "epoch-of-another-life"
    assert [e.offset for e in joined.recent if isinstance(e, Comment)] == [1, 2, 3]
    await back.close()
    await writer.close()


@bounded(10)
async def test_reconnect_older_than_the_history_buffer_is_told_to_resync(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(rooms={"history_size": 4, "snapshot_size": 2})
    writer = await Peer.open(srv, token("writer"))
    epoch = (await writer.join(ROOM)).epoch
    for i in range(10):
        expect(await writer.comment(ROOM, f"c{i}"), Ack)
    await writer.comments(10)  # history now holds offsets 7..10

    back = await Peer.open(srv, token("viewer"))
    too_old = await back.join(ROOM, offset=5, epoch=epoch)
    assert too_old.resync is True
    assert [e.offset for e in too_old.recent if isinstance(e, Comment)] == [9, 10]

    just_in_time = await back.join(ROOM, offset=6, epoch=epoch)
    assert just_in_time.resync is False
    assert [e.offset for e in just_in_time.recent if isinstance(e, Comment)] == [7, 8, 9, 10]
    await back.close()
    await writer.close()


# --- authentication --------------------------------------------------------------------


@bounded(10)
async def test_token_with_a_bad_signature_is_closed_with_4001(server: LiveroomServer) -> None:
    peer = await Peer.open(server, token("mallory", secret="guessed"), expect_welcome=False)
    assert await refused_with(peer) == CloseCode.TOKEN_INVALID


@bounded(10)
async def test_expired_token_is_closed_with_4002(server: LiveroomServer) -> None:
    peer = await Peer.open(server, token("late", ttl=-5), expect_welcome=False)
    assert await refused_with(peer) == CloseCode.TOKEN_EXPIRED


@bounded(10)
async def test_missing_token_is_closed_with_4001(server: LiveroomServer) -> None:
    peer = await Peer.open(server, None, expect_welcome=False)
    assert await refused_with(peer) == CloseCode.TOKEN_INVALID


@bounded(10)
async def test_anonymous_viewer_may_watch_but_not_comment_or_like(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(auth={"allow_anonymous": True})
    anon = await Peer.open(srv, None)
    assert anon.welcome is not None
    assert anon.welcome.user_id.startswith("anon:") and anon.welcome.role == "viewer"
    (writer,) = await joined_peers(srv, "writer")  # anonymous viewers join live rooms only
    await anon.join(ROOM)
    expect(await writer.comment(ROOM, "hello lurkers"), Ack)
    (got,) = await anon.comments(1)
    assert got.text == "hello lurkers"
    await writer.comments(1)  # its own

    await anon.send(SendComment(room=ROOM, text="me too", rid="anon-1"))
    expect_error(await anon.answer("anon-1"), ErrorCode.READ_ONLY, "anon-1")
    await anon.send(Like(room=ROOM, rid="anon-2"))
    expect_error(await anon.answer("anon-2"), ErrorCode.READ_ONLY, "anon-2")
    await writer.assert_no_comment(0.2)
    await anon.close()
    await writer.close()


@bounded(10)
async def test_join_of_a_room_the_token_does_not_admit_is_refused_and_connection_stays(
    server: LiveroomServer,
) -> None:
    peer = await Peer.open(server, token("alice", ["room-a"]))
    await peer.send(Join(room="room-b", rid="j-b"))
    expect_error(await peer.answer("j-b"), ErrorCode.FORBIDDEN_ROOM, "j-b")
    await peer.ping()
    assert (await peer.join("room-a")).room == "room-a"
    await peer.close()


# --- bad input closes only the offender --------------------------------------------------


BAD_INPUT = [
    pytest.param(MSGPACK, b"\xc1\x00\x00", CloseCode.INVALID_PAYLOAD, id="invalid-msgpack-1007"),
    pytest.param(MSGPACK, MSGPACK.dumps([1, 2]), CloseCode.INVALID_PAYLOAD, id="not-a-map-1007"),
    pytest.param(JSON, "{not json", CloseCode.INVALID_PAYLOAD, id="invalid-json-1007"),
    pytest.param(
        MSGPACK, MSGPACK.dumps({"t": "dance", "rid": 1}), CloseCode.UNKNOWN_TYPE, id="unknown-4003"
    ),
    pytest.param(
        MSGPACK,
        MSGPACK.dumps({"t": "comment", "room": ROOM, "text": "x" * 5000}),
        CloseCode.MESSAGE_TOO_BIG,
        id="oversized-1009",
    ),
    pytest.param(MSGPACK, '{"t": "ping"}', CloseCode.UNSUPPORTED_DATA, id="text-on-msgpack-1003"),
    pytest.param(JSON, b'{"t": "ping"}', CloseCode.UNSUPPORTED_DATA, id="binary-on-json-1003"),
]


@pytest.mark.parametrize(("codec", "data", "code"), BAD_INPUT)
@bounded(10)
async def test_bad_input_closes_only_the_offending_connection(
    server: LiveroomServer, codec: Codec, data: bytes | str, code: CloseCode
) -> None:
    assert len(data) < server.config.server.max_message_size or code == 1009
    (offender,) = await joined_peers(server, "offender", codec=codec)
    viewer, writer = await joined_peers(server, "viewer", "writer")
    await offender.send_data(data)
    assert await offender.close_code() == code

    expect(await writer.comment(ROOM, "still here"), Ack)
    (got,) = await viewer.comments(1)
    assert got.text == "still here"
    gateway = server.gateway
    assert gateway is not None
    await wait_for_condition(lambda: len(gateway.connections) == 2)
    assert gateway.closed_by_code.get(code) == 1
    await viewer.close()
    await writer.close()


@bounded(10)
async def test_broken_websocket_framing_is_closed_with_1002_and_others_are_served(
    server: LiveroomServer,
) -> None:
    viewer, writer = await joined_peers(server, "viewer", "writer")
    raw = await RawClient.connect(server, token("raw"))
    expect(await raw.next_message(), Welcome)
    await raw.send_raw(b"\x82\x05hello")  # a client frame without a mask: RFC 6455 5.1
    close = await raw.read_until_close()
    assert close.code == CloseCode.PROTOCOL_ERROR
    await raw.read_until(lambda _: False)  # then the server closes the TCP connection
    assert raw.eof and raw.frames[-1].opcode is Opcode.CLOSE
    raw.close()

    expect(await writer.comment(ROOM, "unaffected"), Ack)
    (got,) = await viewer.comments(1)
    assert got.text == "unaffected"
    await viewer.close()
    await writer.close()


@bounded(10)
async def test_a_connection_failed_by_the_frame_parser_leaves_its_rooms_before_closing(
    server: LiveroomServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rooms write straight to transports, so a connection must be out of every room
    # before its transport closes, not only once connection_lost runs.
    rooms_at_lost: dict[str, list[str]] = {}
    lost = Connection.connection_lost

    def spy(self: Connection, exc: Exception | None) -> None:
        if self.claims is not None:
            rooms_at_lost[self.claims.user_id] = list(self.rooms)
        lost(self, exc)

    monkeypatch.setattr(Connection, "connection_lost", spy)
    viewer, writer = await joined_peers(server, "viewer", "writer")
    raw = await RawClient.connect(server, token("raw"))
    expect(await raw.next_message(), Welcome)
    await raw.send(Join(room=ROOM, rid="j"))
    expect(await raw.next_message(), Joined)
    assert server.hub is not None
    room = server.hub.get(ROOM)
    assert room is not None and room.viewers == 3
    await raw.send_raw(b"\x82\x05hello")  # unmasked: the parser fails the connection
    assert (await raw.read_until_close()).code == CloseCode.PROTOCOL_ERROR
    await raw.read_until(lambda _: False)
    raw.close()
    await wait_for_condition(lambda: "raw" in rooms_at_lost)
    assert rooms_at_lost["raw"] == [] and room.viewers == 2

    expect(await writer.comment(ROOM, "unaffected"), Ack)
    (got,) = await viewer.comments(1)
    assert got.text == "unaffected"
    await viewer.close()
    await writer.close()


# --- refused commands keep the connection open ------------------------------------------


@bounded(15)
async def test_refused_comments_get_an_error_with_their_rid_and_the_connection_stays(
    server: LiveroomServer,
) -> None:
    author, viewer = await joined_peers(server, "author", "viewer")
    limit = server.config.rooms.max_comment_length
    cases: list[tuple[dict[str, object], ErrorCode]] = [
        ({"room": ROOM, "text": ""}, ErrorCode.EMPTY_COMMENT),
        ({"room": ROOM, "text": "  \t  "}, ErrorCode.EMPTY_COMMENT),
        ({"room": ROOM, "text": "x" * (limit + 1)}, ErrorCode.COMMENT_TOO_LONG),
        ({"room": ROOM, "text": "ring \x07 bell"}, ErrorCode.INVALID_FIELD),
        ({"room": ROOM, "text": "two\nlines"}, ErrorCode.INVALID_FIELD),
        ({"room": ROOM, "text": 42}, ErrorCode.INVALID_FIELD),
        ({"room": ROOM}, ErrorCode.INVALID_FIELD),
        ({"room": "elsewhere", "text": "hi"}, ErrorCode.NOT_JOINED),
    ]
    for i, (fields, code) in enumerate(cases):
        rid = f"bad-{i}"
        await author.send_data(MSGPACK.dumps({"t": "comment", **fields, "rid": rid}))
        expect_error(await author.answer(rid), code, rid)
        await author.ping()
    await author.send(Like(room="elsewhere", rid="like-x"))
    expect_error(await author.answer("like-x"), ErrorCode.NOT_JOINED, "like-x")

    ack = expect(await author.comment(ROOM, "  just right  "), Ack)
    (got,) = await viewer.comments(1)
    assert (got.text, got.offset, ack.offset) == ("just right", 1, 1)  # refusals used no offset
    expect(await author.comment(ROOM, "y" * limit), Ack)
    await author.close()
    await viewer.close()


# --- flood and slow consumers ----------------------------------------------------------


@bounded(15)
async def test_flooding_client_is_rate_limited_while_others_keep_working(
    start_server: ServerFactory,
) -> None:
    rate, burst = 5.0, 10
    srv = await start_server(rooms={"comment_rate": rate, "comment_burst": burst})
    flooder, other, viewer = await joined_peers(srv, "flooder", "other", "viewer")
    started = time.monotonic()
    rids = [f"f{i}" for i in range(40)]
    for rid in rids:
        await flooder.send(SendComment(room=ROOM, text=f"buy {rid}", rid=rid))
    answers = [await flooder.answer(rid) for rid in rids]
    elapsed = time.monotonic() - started

    acks = [a for a in answers if isinstance(a, Ack)]
    limited = [a for a in answers if isinstance(a, Error)]
    assert len(acks) + len(limited) == len(rids)
    assert all(e.code == ErrorCode.RATE_LIMITED for e in limited)
    assert burst <= len(acks) <= burst + rate * elapsed + 1
    assert len(limited) >= len(rids) - burst - rate * elapsed - 1

    expect(await other.comment(ROOM, "I am not flooding"), Ack)
    got = await viewer.comments(len(acks) + 1)
    assert [c.user_id for c in got].count("flooder") == len(acks)
    assert got[-1].text == "I am not flooding"
    await flooder.ping()  # the server answers the flooder too
    assert srv.gateway is not None and len(srv.gateway.connections) == 3

    await asyncio.sleep(2 / rate)  # the bucket refills at the configured rate
    expect(await flooder.comment(ROOM, "later"), Ack)
    for peer in (flooder, other, viewer):
        await peer.close()


@bounded(45)
async def test_slow_consumer_is_cut_off_with_4008_and_its_buffer_stays_bounded(
    start_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 64 * 1024
    srv = await start_server(
        server={"write_buffer_limit": limit, "close_timeout": 10.0},
        rooms={"comment_rate": 1e6, "comment_burst": 1_000_000, "max_comment_length": 200},
    )
    gateway = srv.gateway
    assert gateway is not None

    # Spy on every frame a room writes to a connection: its unsent bytes right afterwards.
    peak: dict[Connection, int] = {}
    largest_frame = 0

    class SpySink:
        def __init__(self, conn: Connection, transport: asyncio.Transport) -> None:
            self.conn, self.transport = conn, transport

        def write(self, data: bytes) -> None:
            nonlocal largest_frame
            self.transport.write(data)
            largest_frame = max(largest_frame, len(data))
            size = self.transport.get_write_buffer_size()
            peak[self.conn] = max(peak.get(self.conn, 0), size)

        def get_write_buffer_size(self) -> int:
            return self.transport.get_write_buffer_size()

    def spy_sink(self: Connection) -> SpySink:
        assert self.transport is not None
        return SpySink(self, self.transport)

    monkeypatch.setattr(Connection, "sink", property(spy_sink))

    slow = await RawClient.connect(srv, token("slow"), rcvbuf=4096)
    expect(await slow.next_message(), Welcome)
    await slow.send(Join(room=ROOM, rid="j"))
    expect(await slow.next_message(), Joined)
    slow_conn = connection_of(srv, "slow")
    # Keep the kernel's share small too, so the gateway's own buffer fills quickly.
    assert slow_conn.transport is not None
    server_sock = slow_conn.transport.get_extra_info("socket")
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    healthy = await Peer.open(srv, token("healthy"), max_queue=None)
    flooder = await Peer.open(srv, token("flooder"), max_queue=None)
    await healthy.join(ROOM)
    await flooder.join(ROOM)
    received: dict[str, list[Comment]] = {"healthy": [], "flooder": []}

    async def drain(peer: Peer, into: list[Comment]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                msg = await peer.recv(timeout=60)
                if isinstance(msg, Batch):
                    into.extend(e for e in msg.events if isinstance(e, Comment))

    drains = [
        asyncio.create_task(drain(healthy, received["healthy"])),
        asyncio.create_task(drain(flooder, received["flooder"])),
    ]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        sent = 0
        while slow_conn.open and sent < 100_000 and loop.time() < deadline:
            await flooder.send(SendComment(room=ROOM, text=f"{sent:08d}".ljust(150, "x")))
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0)  # let the server and the readers run
        assert not slow_conn.open, f"not cut off after {sent} comments"
        assert slow_conn.ws.close_sent is not None
        assert slow_conn.ws.close_sent.code == CloseCode.SLOW_CONSUMER

        # Memory bounded: the slow peer's unsent bytes never exceeded the limit + one frame.
        assert limit < peak[slow_conn] <= limit + largest_frame
        assert slow_conn.transport.get_write_buffer_size() <= limit + largest_frame + 256
        for conn, size in peak.items():
            if conn is not slow_conn:
                assert size <= limit, "a reading peer never came near the limit"

        # Others kept receiving, every comment exactly once and in order.
        await flooder.send(SendComment(room=ROOM, text="after the cut"))
        last = sent + 1
        healthy_got = received["healthy"]
        await wait_for_condition(lambda: len(healthy_got) >= last, timeout=10)
        assert [c.offset for c in healthy_got] == list(range(1, last + 1))
        assert healthy_got[-1].text == "after the cut"
        await wait_for_condition(lambda: len(received["flooder"]) >= last, timeout=10)
        assert healthy.ws.state is State.OPEN and flooder.ws.state is State.OPEN

        # Reading the slow socket now: comments 1..k intact, then the 4008 close frame.
        close = await slow.read_until_close(timeout=10)
        assert close.code == CloseCode.SLOW_CONSUMER
        got = [
            e.offset
            for m in slow.messages()
            if isinstance(m, Batch)
            for e in m.events
            if isinstance(e, Comment)
        ]
        assert got == list(range(1, len(got) + 1)) and len(got) < last
        await slow.flush()  # acknowledge the close
        await slow.read_until(lambda _: False, timeout=5)  # until the server's EOF
        assert slow.eof
        assert slow.frames[-1].opcode is Opcode.CLOSE
        assert [f.opcode for f in slow.frames].count(Opcode.CLOSE) == 1
        await wait_for_condition(lambda: slow_conn not in gateway.connections)
        assert gateway.closed_by_code.get(CloseCode.SLOW_CONSUMER) == 1
        assert len(gateway.connections) == 2
    finally:
        slow.close()
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
    await healthy.close()
    await flooder.close()


# --- heartbeat, idle timeout, capacity, shutdown ----------------------------------------


@bounded(15)
async def test_heartbeat_keeps_a_ponging_client_and_idle_timeout_closes_a_silent_one(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(
        server={"heartbeat_interval": 0.2, "idle_timeout": 0.6, "close_timeout": 0.5}
    )
    loop = asyncio.get_running_loop()
    # ping_interval=None: this client never pings on its own; it only answers server pings.
    live = await Peer.open(srv, token("live"), ping_interval=None)
    started = loop.time()
    silent = await RawClient.connect(srv, token("silent"))
    close = await silent.read_until_close(timeout=5)
    silent_for = loop.time() - started
    assert close.code == CloseCode.IDLE_TIMEOUT
    assert 0.5 <= silent_for <= 3.0
    assert any(f.opcode is Opcode.PING for f in silent.frames), "the server pinged first"
    silent.close()

    await asyncio.sleep(max(0.0, 1.5 - (loop.time() - started)))
    assert live.ws.state is State.OPEN
    await live.ping()
    await live.close()


@bounded(15)
async def test_connection_beyond_max_connections_is_closed_with_1013(
    start_server: ServerFactory,
) -> None:
    srv = await start_server(server={"max_connections": 2})
    gateway = srv.gateway
    assert gateway is not None
    first = await Peer.open(srv, token("first"))
    second = await Peer.open(srv, token("second"))
    third = await Peer.open(srv, token("third"), expect_welcome=False)
    assert await refused_with(third) == CloseCode.TRY_AGAIN_LATER
    await first.ping()
    await second.ping()

    await first.close()
    await wait_for_condition(lambda: len(gateway.connections) == 1)
    fourth = await Peer.open(srv, token("fourth"))  # capacity freed: welcomed
    await fourth.ping()
    await second.close()
    await fourth.close()


@bounded(20)
async def test_graceful_shutdown_sends_1001_and_leaves_no_connection_or_task() -> None:
    tasks_before = asyncio.all_tasks()
    srv = LiveroomServer(make_config())
    await srv.start()
    gateway = srv.gateway
    assert gateway is not None
    port = srv.port
    peers = await joined_peers(srv, "a", "b")
    peers.append(await Peer.open(srv, token("c"), codec=JSON))

    await srv.close()
    for peer in peers:
        assert await peer.close_code() == CloseCode.GOING_AWAY
    assert not gateway.connections
    for peer in peers:
        async with asyncio.timeout(5):
            await peer.ws.wait_closed()
    await wait_for_condition(lambda: asyncio.all_tasks() <= tasks_before, timeout=5)
    assert asyncio.all_tasks() <= tasks_before
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()


# --- likes, viewers, leave -------------------------------------------------------------


@bounded(10)
async def test_likes_are_conflated_into_likes_events_with_the_right_total(
    server: LiveroomServer,
) -> None:
    viewer, alice, bob = await joined_peers(server, "viewer", "alice", "bob")
    expect(await alice.like(ROOM, 3), Ack)
    expect(await bob.like(ROOM, 2), Ack)
    for _ in range(20):
        await alice.send(Like(room=ROOM))  # no rid: no ack
    await alice.ping()

    totals: list[int] = []
    viewer_counts: list[int] = []
    async with asyncio.timeout(5):
        while totals[-1:] != [25] or viewer_counts[-1:] != [3]:
            _, event = await viewer.next_event()
            if isinstance(event, Likes):
                totals.append(event.total)
            elif isinstance(event, Viewers):
                viewer_counts.append(event.count)
    assert totals == sorted(totals) and totals[-1] == 25
    assert len(totals) < 22, f"22 like commands, {len(totals)} likes events: not conflated"
    assert viewer_counts[-1] == 3

    late = await Peer.open(server, token("late"))
    assert (await late.join(ROOM)).likes == 25
    for peer in (viewer, alice, bob, late):
        await peer.close()


@bounded(10)
async def test_after_leave_no_more_comments_and_leaving_again_is_not_joined(
    server: LiveroomServer,
) -> None:
    leaver, writer = await joined_peers(server, "leaver", "writer")
    left = expect(await leaver.leave(ROOM), Left)
    assert left.room == ROOM
    expect(await writer.comment(ROOM, "anyone?"), Ack)
    (got,) = await writer.comments(1)
    assert got.text == "anyone?"
    await leaver.assert_no_comment(0.3)
    answer = await leaver.leave(ROOM)
    assert expect(answer, Error).code == ErrorCode.NOT_JOINED
    await leaver.send(SendComment(room=ROOM, text="hi", rid="after-leave"))
    expect_error(await leaver.answer("after-leave"), ErrorCode.NOT_JOINED, "after-leave")
    await leaver.ping()
    await leaver.close()
    await writer.close()


# --- subprotocol negotiation -----------------------------------------------------------


@bounded(10)
async def test_client_offering_no_subprotocol_gets_msgpack(server: LiveroomServer) -> None:
    peer = await Peer.open(server, token("plain"), subprotocols=[])
    assert peer.ws.subprotocol is None
    assert peer.welcome is not None and peer.binary_frames == 1
    await peer.join(ROOM)
    expect(await peer.comment(ROOM, "msgpack by default"), Ack)
    await peer.close()


@bounded(10)
async def test_client_offering_only_an_unknown_subprotocol_is_refused_with_400(
    server: LiveroomServer,
) -> None:
    with pytest.raises(InvalidStatus) as info:
        await Peer.open(server, token("future"), subprotocols=["liveroom.v2.cbor"])
    assert info.value.response.status_code == 400


@bounded(10)
async def test_json_subprotocol_is_negotiated_when_offered(server: LiveroomServer) -> None:
    peer = await Peer.open(server, token("js"), codec=JSON)
    assert peer.ws.subprotocol == JSON.subprotocol
    assert peer.text_frames == 1
    await peer.close()


# --- memory per connection -----------------------------------------------------------------


@bounded(10)
async def test_the_handshake_request_is_not_kept_alive_after_the_connection_opens(
    server: LiveroomServer,
) -> None:
    peer = await Peer.open(server, token("ann", ["r"]))
    try:
        await peer.ping()
        assert server.gateway is not None
        (conn,) = list(server.gateway.connections)
        # The parser now is websockets' base frame parser, whose frame holds no Request.
        assert conn.ws.parser.gi_code is WsProtocol.parse.__code__  # type: ignore[attr-defined]
        assert not any(
            isinstance(ref, Request)
            for ref in gc.get_referents(conn.ws.parser.gi_frame)  # type: ignore[attr-defined]
        )
    finally:
        await peer.close()


@bounded(10)
async def test_a_first_frame_sent_with_the_handshake_in_one_segment_is_answered(
    server: LiveroomServer,
) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    request = (
        f"GET /?token={token('ann', ['r'])} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: liveroom.v1.msgpack\r\n\r\n"
    ).encode()
    payload = MSGPACK.encode(Ping(rid=7))
    frame = bytes([0x82, 0x80 | len(payload)]) + b"\0\0\0\0" + payload  # masked, zero key
    # The handshake and half of the first frame in one segment, the rest later: the
    # parser is mid-frame after the handshake, so the request is released one read later.
    await loop.sock_sendall(sock, request + frame[:3])
    await asyncio.sleep(0.1)
    await loop.sock_sendall(sock, frame[3:])
    received = b""
    try:
        while b"pong" not in received:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, "server closed the connection"
            received += chunk
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 101")


@bounded(15)
async def test_closed_connections_are_freed_by_reference_counting_alone(
    server: LiveroomServer,
) -> None:
    gc.collect()
    gc.disable()
    try:
        for i in range(10):
            peer = await Peer.open(server, token(f"u{i}", ["r"]))
            await peer.join("r")
            await peer.close()
        for i in range(10):  # and peers that vanish without a closing handshake
            raw = await RawClient.connect(server, token(f"v{i}", ["r"]))
            await raw.send(Join(room="r"))
            await raw.next_message()
            raw.close()
        assert server.gateway is not None
        await wait_for_condition(lambda: not server.gateway.connections)  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        alive = [o for o in gc.get_objects() if type(o) is Connection]
        assert alive == []
    finally:
        gc.enable()
