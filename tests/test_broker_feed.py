"""RoomFeed: one room's publications reach a node in order, once, with gaps filled.

Gaps are made for real: the Redis broker's pub/sub connection is killed (CLIENT KILL) and
Redis itself restarted, while another node publishes; a lost history gives a resync.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from engine.broker import MemoryBroker, Position, Publication, RoomFeed, Snapshot, connect
from tests.conftest import bounded, wait_for_condition
from tests.redis_fixture import RedisServer


class Node:
    """What a node's room would see: delivered offsets and resyncs."""

    def __init__(self) -> None:
        self.delivered: list[int] = []
        self.data: list[bytes] = []
        self.resyncs: list[Position] = []

    def deliver(self, publication: Publication) -> None:
        self.delivered.append(publication.offset)
        self.data.append(publication.data)

    def resync(self, position: Position, newest: tuple[Publication, ...]) -> None:
        self.resyncs.append(position)
        self.newest = newest

    def load(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot


@bounded(20)
async def test_a_publication_lost_across_a_pubsub_reconnect_is_filled_from_history(
    redis_url: str,
) -> None:
    publisher = await connect(redis_url, history_size=100)
    subscriber = await connect(redis_url, history_size=100)
    killer = aioredis.Redis.from_url(redis_url)
    node = Node()
    feed = RoomFeed(subscriber, "gappy", deliver=node.deliver, resync=node.resync)
    try:
        await feed.start(100, node.load)
        await publisher.publish("gappy", [b"1", b"2"])
        await wait_for_condition(lambda: node.delivered == [1, 2])
        assert await killer.client_kill_filter(_type="pubsub") == 1
        await publisher.publish("gappy", [b"3", b"4"])  # lost: nobody is subscribed now
        await asyncio.sleep(0.5)  # the reader reconnects and subscribes again
        await publisher.publish("gappy", [b"5"])
        await wait_for_condition(lambda: len(node.delivered) == 5)
        assert node.delivered == [1, 2, 3, 4, 5]
        assert node.data == [b"1", b"2", b"3", b"4", b"5"]
        assert node.resyncs == [] and feed.fills >= 1
        await publisher.publish("gappy", [b"6"])
        await wait_for_condition(lambda: node.delivered[-1] == 6)
        assert node.delivered == [1, 2, 3, 4, 5, 6]  # no duplicate, in order
    finally:
        await feed.close()
        await publisher.close()
        await subscriber.close()
        await killer.aclose()


@bounded(30)
async def test_history_lost_in_a_redis_restart_tells_the_node_to_resync(
    own_redis: RedisServer,
) -> None:
    publisher = await connect(own_redis.url, history_size=100, timeout=0.5)
    subscriber = await connect(own_redis.url, history_size=100, timeout=0.5)
    node = Node()
    feed = RoomFeed(subscriber, "lost", deliver=node.deliver, resync=node.resync)
    try:
        start = (await feed.start(100, node.load)).position
        await publisher.publish("lost", [b"a", b"b"])
        await wait_for_condition(lambda: node.delivered == [1, 2])
        # Restarted from an empty directory's view: the room's keys are gone.
        own_redis.kill()
        for path in own_redis.directory.glob("appendonly*"):
            if path.is_dir():
                for part in path.iterdir():
                    part.unlink()
            else:
                path.unlink()
        own_redis.start()
        published: list[Publication] = []
        for _ in range(50):  # the publisher's connection comes back
            try:
                published = await publisher.publish("lost", [b"c"])
                break
            except Exception:
                await asyncio.sleep(0.1)
        assert published and published[0].offset == 1 and published[0].epoch != start.epoch
        await asyncio.sleep(0.5)  # the subscriber's reader reconnects
        await publisher.publish("lost", [b"d"])
        await wait_for_condition(lambda: node.data[-1:] == [b"d"])
        assert node.resyncs and node.resyncs[0].epoch == published[0].epoch
        assert node.delivered[:2] == [1, 2] and node.data[:2] == [b"a", b"b"]
        assert node.data[-1] == b"d" and len(set(node.data)) == len(node.data)
    finally:
        await feed.close()
        await publisher.close()
        await subscriber.close()


@bounded(10)
async def test_held_publications_wait_for_the_gap_and_duplicates_are_dropped() -> None:
    broker = MemoryBroker(history_size=3)
    node = Node()
    feed = RoomFeed(broker, "r", deliver=node.deliver, resync=node.resync)
    position = (await feed.start(100, node.load)).position
    published = await broker.publish("r", [b"1", b"2", b"3", b"4", b"5"])
    await wait_for_condition(lambda: len(node.delivered) == 5)
    epoch = published[0].epoch
    # Replays and reordering as a flaky transport could produce them:
    for offset in (3, 5, 1):
        feed._on_publication(Publication("r", epoch, offset, b"dup"))
    more = await broker.publish("r", [b"6", b"7", b"8", b"9"])  # history keeps 7..9 only
    await wait_for_condition(lambda: len(node.delivered) == 9)
    assert node.delivered == list(range(1, 10)) and b"dup" not in node.data
    # A publication far ahead whose gap the history no longer holds: resync, then on.
    feed.offset = 2  # as if 3..9 had been lost
    feed._on_publication(Publication("r", epoch, 10, b"10"))
    await wait_for_condition(lambda: bool(node.resyncs))
    assert node.resyncs[0] == Position(epoch, 9) and node.delivered[-1] == 10
    assert [p.offset for p in node.newest] == [7, 8, 9]
    assert position.offset == 0 and more[-1].offset == 9
    await feed.close()
    assert not broker.subscribed("r")
