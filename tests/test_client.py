"""engine.client.LiveroomClient against a real server on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
from websockets.exceptions import ConnectionClosed

from engine.client import CommandError, LiveroomClient
from engine.server import LiveroomServer
from engine.stock import SaleSpec
from protocol import CloseCode, Comment, ErrorCode, SystemMessage
from tests.conftest import ServerFactory, bounded, token

ROOM = "room-1"


async def next_comment(client: LiveroomClient, timeout: float = 5.0) -> tuple[str, Comment]:
    """The next comment event, skipping conflated likes / viewers events."""
    while True:
        room, event = await client.next_event(timeout)
        if isinstance(event, Comment):
            return room, event


@bounded(10)
async def test_join_comment_and_next_event_deliver_to_both_clients(
    server: LiveroomServer,
) -> None:
    async with (
        await LiveroomClient.connect(server.url, token("alice")) as alice,
        await LiveroomClient.connect(server.url, token("bob"), codec="json") as bob,
    ):
        assert alice.welcome.user_id == "alice" and bob.welcome.user_id == "bob"
        joined = await alice.join(ROOM)
        await bob.join(ROOM)
        ack = await alice.comment(ROOM, "hello from alice")
        assert ack.offset == joined.offset + 1
        for client in (alice, bob):
            room, comment = await next_comment(client)
            assert (room, comment.text, comment.user_id, comment.offset) == (
                ROOM,
                "hello from alice",
                "alice",
                ack.offset,
            )
        assert bob.offsets[ROOM] == (joined.epoch, ack.offset)
        pong = await bob.ping()
        assert pong.server_time > 0


@bounded(15)
async def test_join_with_resume_after_reconnect_yields_exactly_the_missed_comments(
    server: LiveroomServer,
) -> None:
    async with await LiveroomClient.connect(server.url, token("writer")) as writer:
        await writer.join(ROOM)
        viewer = await LiveroomClient.connect(server.url, token("viewer"))
        await viewer.join(ROOM)
        await writer.comment(ROOM, "seen")
        _, seen = await next_comment(viewer)
        # A system message takes an offset too: a resume starts after it, not after the
        # last comment (else the viewer would get it twice).
        assert server.desk is not None
        system = await server.desk.system_message(ROOM, "welcome")
        while not isinstance((await viewer.next_event())[1], SystemMessage):
            pass
        assert viewer.offsets[ROOM][1] == system == seen.offset + 1
        remembered = dict(viewer.offsets)
        await viewer.close()

        for text in ("missed 1", "missed 2"):
            await writer.comment(ROOM, text)

        async with await LiveroomClient.connect(server.url, token("viewer")) as again:
            again.offsets.update(remembered)  # what a reconnecting app carries over
            joined = await again.join(ROOM, resume=True)
            assert joined.resync is False
            assert all(isinstance(e, Comment) for e in joined.recent)
            missed = [e for e in joined.recent if isinstance(e, Comment)]
            assert [c.text for c in missed] == ["missed 1", "missed 2"]
            assert [c.offset for c in missed] == [system + 1, system + 2]
            assert again.offsets[ROOM] == (joined.epoch, system + 2)

            await writer.comment(ROOM, "live")
            _, live = await next_comment(again)
            assert (live.text, live.offset) == ("live", system + 3)


@bounded(10)
async def test_join_with_resume_and_nothing_remembered_is_a_plain_join(
    server: LiveroomServer,
) -> None:
    async with await LiveroomClient.connect(server.url, token("alice")) as alice:
        await alice.join(ROOM)
        await alice.comment(ROOM, "one")
        async with await LiveroomClient.connect(server.url, token("bob")) as bob:
            joined = await bob.join(ROOM, resume=True)
            assert joined.resync is False
            assert [e.text for e in joined.recent if isinstance(e, Comment)] == ["one"]
            assert bob.offsets[ROOM] == (joined.epoch, 1)


@bounded(10)
async def test_refused_commands_raise_command_error_with_the_code(
    server: LiveroomServer,
) -> None:
    async with await LiveroomClient.connect(server.url, token("alice", ["room-a"])) as alice:
        with pytest.raises(CommandError) as forbidden:
            await alice.join("room-b")
        assert forbidden.value.code == ErrorCode.FORBIDDEN_ROOM
        with pytest.raises(CommandError) as not_joined:
            await alice.comment("room-a", "too early")
        assert not_joined.value.code == ErrorCode.NOT_JOINED
        await alice.join("room-a")
        with pytest.raises(CommandError) as empty:
            await alice.comment("room-a", "   ")
        assert empty.value.code == ErrorCode.EMPTY_COMMENT
        assert empty.value.error.rid is not None
        with pytest.raises(CommandError) as left_twice:
            await alice.leave("room-a")
            await alice.leave("room-a")
        assert left_twice.value.code == ErrorCode.NOT_JOINED
        await alice.ping()  # still connected


@bounded(10)
async def test_connect_with_a_bad_token_raises_connection_closed(
    server: LiveroomServer,
) -> None:
    with pytest.raises(ConnectionClosed) as info:
        await LiveroomClient.connect(server.url, token("eve", secret="not-the-secret"))
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == CloseCode.TOKEN_INVALID


@bounded(10)
async def test_likes_are_acknowledged(start_server: ServerFactory) -> None:
    srv = await start_server()
    async with await LiveroomClient.connect(srv.url, token("fan")) as fan:
        await fan.join(ROOM)
        ack = await fan.like(ROOM, 7)
        assert ack.rid is not None and ack.offset is None
        async with await LiveroomClient.connect(srv.url, token("late")) as late:
            assert (await late.join(ROOM)).likes == 7


@bounded(10)
async def test_buy_answers_ok_and_a_retry_with_the_same_rid_returns_the_same_order(
    server: LiveroomServer,
) -> None:
    async with await LiveroomClient.connect(server.url, token("ann", ["show"])) as c:
        await c.join("show")
        assert server.desk is not None
        now = time.time()
        await server.desk.open_sale(
            SaleSpec(
                "s1",
                "show",
                "p1",
                stock=1,
                price=100,
                per_user_limit=1,
                starts_at=now - 1,
                ends_at=now + 60,
            )
        )
        first = await c.buy("show", "s1", rid="attempt-1")
        assert first.status == "ok" and first.order == "s1-1" and first.remaining == 0
        again = await c.buy("show", "s1", rid="attempt-1", retry=True)
        assert (again.status, again.order) == ("ok", "s1-1")
        other = await c.buy("show", "s1")
        assert other.status == "sold_out"
        state = await server.desk.state("s1")
        assert state.sold == 1


@bounded(10)
async def test_refresh_puts_a_fresh_token_in_force_and_refusals_raise(
    server: LiveroomServer,
) -> None:
    async with await LiveroomClient.connect(server.url, token("kim", ttl=60)) as kim:
        assert kim.welcome.expires is not None
        before = kim.welcome.expires
        refreshed = await kim.refresh(token("kim", ttl=3600))
        assert refreshed.expires > before + 3_000_000
        with pytest.raises(CommandError) as other:
            await kim.refresh(token("lee"))
        assert other.value.code == ErrorCode.TOKEN_INVALID
        await kim.ping()
