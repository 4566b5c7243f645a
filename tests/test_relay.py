"""The relay, in one process: two nodes (a hub and a relay each) on one memory broker.

Fast checks of what the multi-process tests (tests/test_scaleout.py) show end to end:
publishes are batched and acked with the broker's offsets, a room is linked with its
snapshot before its joiners are answered and unlinked with its last viewer, every node
delivers each event once in order, totals add up, an unreachable broker is told to the
sender, and a lost history restarts the room with an unsolicited ``joined``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from engine.broker import MemoryBroker, Position
from engine.relay import Relay
from engine.room import UNSTAMPED, Hub, Room
from protocol import MSGPACK, Comment, Joined, Likes, Viewers
from tests.conftest import RecordingSubscriber, bounded, parse_frame, wait_for_condition

ROOM = "r"


@dataclass
class Node:
    hub: Hub
    relay: Relay

    def room(self) -> Room:
        return self.hub.room(ROOM)

    async def join(self, sub: RecordingSubscriber) -> Joined:
        """Join as the gateway does: in the link's callback, once the snapshot is in."""
        room = self.room()
        answers: list[Joined] = []

        def then(error: BaseException | None) -> None:
            assert error is None
            sub.room = room
            answers.append(room.join(sub, offset=None, epoch=None, rid=None).joined)

        self.relay.link(room, then)
        await wait_for_condition(lambda: bool(answers))
        return answers[0]


def comment(text: str) -> Comment:
    return Comment(id=UNSTAMPED, user_id="u", name="U", text=text, ts=1, offset=0)


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[Node, Node, MemoryBroker]]:
    broker = MemoryBroker(history_size=100)
    loop = asyncio.get_running_loop()
    made = []
    for name, node_broker in (("a", broker), ("b", broker.peer())):
        hub = Hub(history_size=100, snapshot_size=50, min_flush_interval=0, loop=loop)
        made.append(Node(hub, Relay(node_broker, hub, node=name, viewers_ttl=5.0)))
    yield made[0], made[1], broker
    for node in made:
        await node.relay.close()
        node.hub.close()


@bounded(5)
async def test_events_published_on_one_node_reach_both_in_one_order_with_broker_offsets(
    nodes: tuple[Node, Node, MemoryBroker],
) -> None:
    a, b, _ = nodes
    on_a, on_b = RecordingSubscriber(), RecordingSubscriber()
    await a.join(on_a)
    await b.join(on_b)
    acks: list[int | None] = []
    for i in range(5):  # one loop turn: the first goes alone, the rest in one batch
        a.relay.submit(ROOM, comment(f"a{i}"), acks.append)
    b.relay.submit(ROOM, comment("b0"), acks.append)
    await wait_for_condition(lambda: len(on_b.comment_offsets()) == 6)
    await wait_for_condition(lambda: len(on_a.comment_offsets()) == 6)
    assert on_a.comment_offsets() == on_b.comment_offsets() == [1, 2, 3, 4, 5, 6]
    assert sorted(x for x in acks if x is not None) == [1, 2, 3, 4, 5, 6]
    assert a.relay.publish_calls < 5  # batched while a publish was in flight
    got = [e for e in on_b.events() if isinstance(e, Comment)]
    assert got[0].id == f"{b.room().epoch}.1" and a.room().epoch == b.room().epoch


@bounded(5)
async def test_a_late_joiner_on_another_node_gets_the_snapshot_and_the_last_leave_unlinks(
    nodes: tuple[Node, Node, MemoryBroker],
) -> None:
    a, b, _ = nodes
    await a.join(RecordingSubscriber())
    for i in range(3):
        assert await a.relay.publish(ROOM, comment(f"x{i}")) == i + 1
    late = RecordingSubscriber()
    joined = await b.join(late)
    assert joined.offset == 3
    entries = b.room().join(RecordingSubscriber(), offset=0, epoch=joined.epoch, rid=None)
    assert [e.event.offset for e in entries.entries] == [1, 2, 3]  # type: ignore[union-attr]
    b_broker = b.relay.broker
    assert isinstance(b_broker, MemoryBroker)
    assert b.relay.followed == 1 and b_broker.subscribed(ROOM)
    for sub in list(b.room().slices[0].subs[MSGPACK]):
        b.room().leave(sub)
    await wait_for_condition(lambda: not b_broker.subscribed(ROOM))
    assert b.relay.followed == 0 and not b.relay.linked(b.room())
    a_broker = a.relay.broker
    assert isinstance(a_broker, MemoryBroker) and a_broker.subscribed(ROOM)  # a still has viewers


@bounded(5)
async def test_totals_add_up_over_nodes_and_likes_are_not_lost(
    nodes: tuple[Node, Node, MemoryBroker],
) -> None:
    a, b, _ = nodes
    subs_a = [RecordingSubscriber() for _ in range(3)]
    for sub in subs_a:
        await a.join(sub)
    on_b = RecordingSubscriber()
    await b.join(on_b)
    a.room().add_likes(4)
    b.room().add_likes(2)
    await a.relay.tick()
    await b.relay.tick()
    await a.relay.tick()
    a.hub.tick()
    b.hub.tick()
    await wait_for_condition(lambda: bool(on_b.of(Viewers)) and bool(on_b.of(Likes)))
    assert on_b.of(Viewers)[-1] == Viewers(count=4)
    assert a.room().likes == b.room().likes == 6


@bounded(5)
async def test_an_unreachable_broker_is_told_to_the_sender(
    nodes: tuple[Node, Node, MemoryBroker],
) -> None:
    a, _, broker = nodes
    await a.join(RecordingSubscriber())
    await broker.close()
    acks: list[int | None] = []
    a.relay.submit(ROOM, comment("lost"), acks.append)
    await wait_for_condition(lambda: bool(acks))
    assert acks == [None] and not a.relay.healthy and a.relay.publish_failures == 1


@bounded(5)
async def test_a_lost_history_restarts_the_room_and_tells_its_viewers(
    nodes: tuple[Node, Node, MemoryBroker],
) -> None:
    a, _, _ = nodes
    viewer = RecordingSubscriber()
    first = await a.join(viewer)
    await a.relay.publish(ROOM, comment("old"))
    await wait_for_condition(lambda: viewer.comment_offsets() == [1])
    viewer.frames.clear()
    # As the feed does when the broker's epoch changed under it:
    a.relay._resync(a.room(), Position("new-epoch", 0), ())
    told = MSGPACK.decode_server(bytes(parse_frame(viewer.frames[-1]).data))
    assert isinstance(told, Joined) and told.rid is None and told.resync
    assert told.epoch == "new-epoch" != first.epoch and told.offset == 0
    assert a.room().epoch == "new-epoch" and a.relay.resyncs == 1
