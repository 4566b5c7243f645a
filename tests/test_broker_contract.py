"""The room broker contract: every test runs against the memory and the Redis broker alike.

Two "nodes" share a broker's state: for the memory broker, the same instance (one
process); for Redis, two brokers on their own connections to one Redis server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.broker import (
    Broker,
    BrokerUnavailable,
    MemoryBroker,
    Position,
    Publication,
    RedisBroker,
    Totals,
    connect,
)
from tests.conftest import wait_for_condition
from tests.redis_fixture import T0, FakeClock, RedisServer

HISTORY = 5


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def nodes(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[tuple[Broker, Broker]]:
    if request.param == "memory":
        broker = MemoryBroker(history_size=HISTORY, clock=clock)
        other = broker.peer()  # another node on the same rooms
        yield broker, other
        await broker.close()
        await other.close()
        return
    cluster = request.param == "cluster"  # a 3-primary Redis Cluster on loopback
    url = request.getfixturevalue("redis_cluster_url" if cluster else "redis_url")
    a = await connect(url, history_size=HISTORY, timeout=2.0, cluster=cluster, clock=clock)
    b = await connect(url, history_size=HISTORY, timeout=2.0, cluster=cluster, clock=clock)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


class Inbox:
    """A handler that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[Publication] = []

    def __call__(self, publication: Publication) -> None:
        self.got.append(publication)

    async def wait(self, n: int) -> list[Publication]:
        await wait_for_condition(lambda: len(self.got) >= n)
        return self.got


async def test_publish_gives_consecutive_offsets_in_one_epoch(
    nodes: tuple[Broker, Broker],
) -> None:
    a, b = nodes
    first = await a.publish("r1", [b"one", b"two"])
    second = await b.publish("r1", [b"three"])
    assert [(p.offset, p.data) for p in first + second] == [(1, b"one"), (2, b"two"), (3, b"three")]
    assert len({p.epoch for p in first + second}) == 1
    position = await a.position("r1")
    assert (position.epoch, position.offset) == (first[0].epoch, 3)
    other = await a.publish("r2", [b"x"])
    assert other[0].offset == 1  # rooms are numbered apart


async def test_every_node_subscribed_gets_each_publication_once_in_order(
    nodes: tuple[Broker, Broker],
) -> None:
    a, b = nodes
    inbox = Inbox()
    start = await b.subscribe("live", inbox)
    assert start.offset == 0
    for i in range(20):
        await a.publish("live", [f"m{i}".encode(), f"n{i}".encode()])
    got = await inbox.wait(40)
    await asyncio.sleep(0.05)
    assert [p.offset for p in got] == list(range(1, 41))
    assert got[0].data == b"m0" and got[-1].data == b"n19"
    assert {p.room for p in got} == {"live"}


async def test_history_resumes_after_an_offset_or_says_resync(
    nodes: tuple[Broker, Broker],
) -> None:
    a, _ = nodes
    published = await a.publish("h", [f"e{i}".encode() for i in range(1, 5)])
    epoch = published[0].epoch
    resumed = await a.history("h", after=2, epoch=epoch, limit=100)
    assert resumed.complete and [p.offset for p in resumed.publications] == [3, 4]
    assert (resumed.position.epoch, resumed.position.offset) == (epoch, 4)
    assert resumed.publications[0].data == b"e3"
    up_to_date = await a.history("h", after=4, epoch=epoch, limit=100)
    assert up_to_date.complete and up_to_date.publications == ()
    limited = await a.history("h", after=0, epoch=epoch, limit=2)
    assert limited.complete and [p.offset for p in limited.publications] == [1, 2]
    for after, ep in ((5, epoch), (1, "another-epoch"), (0, None)):
        resync = await a.history("h", after=after, epoch=ep, limit=3)
        assert not resync.complete
        assert [p.offset for p in resync.publications] == [2, 3, 4]  # the newest held
    await a.publish("h", [f"e{i}".encode() for i in range(5, 9)])  # 8 > HISTORY = 5
    gone = await a.history("h", after=2, epoch=epoch, limit=100)
    assert not gone.complete and [p.offset for p in gone.publications] == [4, 5, 6, 7, 8]
    still = await a.history("h", after=3, epoch=epoch, limit=100)
    assert still.complete and [p.offset for p in still.publications] == [4, 5, 6, 7, 8]


async def test_unsubscribed_nodes_get_nothing_more(nodes: tuple[Broker, Broker]) -> None:
    a, b = nodes
    inbox = Inbox()
    await b.subscribe("quiet", inbox)
    await a.publish("quiet", [b"before"])
    await inbox.wait(1)
    await b.unsubscribe("quiet")
    await b.unsubscribe("quiet")  # idempotent
    await a.publish("quiet", [b"after"])
    await asyncio.sleep(0.2)
    assert [p.data for p in inbox.got] == [b"before"]


async def test_viewer_counts_add_up_over_nodes_and_a_silent_node_stops_counting(
    nodes: tuple[Broker, Broker], clock: FakeClock
) -> None:
    a, b = nodes

    def viewers(totals: dict[str, Totals]) -> dict[str, int]:
        return {room: t.viewers for room, t in totals.items()}

    assert viewers(await a.report("node-a", {"show": (120, 0), "other": (3, 0)}, ttl=5)) == {
        "show": 120,
        "other": 3,
    }
    assert viewers(await b.report("node-b", {"show": (80, 0)}, ttl=5)) == {"show": 200}
    clock.advance(3)
    assert viewers(await a.report("node-a", {"show": (100, 0)}, ttl=5)) == {"show": 180}
    clock.advance(3)  # node-b said nothing for 6 s > its 5 s: its viewers stop counting
    assert viewers(await a.report("node-a", {"show": (100, 0), "other": (0, 0)}, ttl=5)) == {
        "show": 100,
        "other": 0,
    }
    assert viewers(await b.report("node-b", {"show": (7, 0)}, ttl=5)) == {"show": 107}
    assert viewers(await b.report("node-b", {"show": (0, 0)}, ttl=5)) == {"show": 100}


async def test_likes_add_up_over_nodes_and_outlive_the_viewers(
    nodes: tuple[Broker, Broker],
) -> None:
    a, b = nodes
    assert await a.report("node-a", {"show": (5, 30)}, ttl=5) == {"show": Totals(5, 30)}
    assert await b.report("node-b", {"show": (2, 12)}, ttl=5) == {"show": Totals(7, 42)}
    assert await a.report("node-a", {"show": (0, 0)}, ttl=5) == {"show": Totals(2, 42)}
    assert await b.report("node-b", {"show": (0, 1)}, ttl=5) == {"show": Totals(0, 43)}
    assert (await a.snapshot("show", 10)).state["likes"] == b"43"


async def test_state_goes_with_its_publication_and_once_publishes_once(
    nodes: tuple[Broker, Broker],
) -> None:
    a, b = nodes
    inbox = Inbox()
    await b.subscribe("st", inbox)
    first = await a.publish("st", [b"pin"], state={"pin": b"P1", "x": b"1"})
    snap = await b.snapshot("st", 10)
    assert snap.position == Position(first[0].epoch, 1)
    assert [p.data for p in snap.publications] == [b"pin"]
    assert {k: v for k, v in snap.state.items() if k != "likes"} == {"pin": b"P1", "x": b"1"}
    await a.publish("st", [b"unpin"], state={"pin": None})
    assert "pin" not in (await b.snapshot("st", 10)).state
    # Every node may try a once-only event; exactly one publishes it.
    tries = await asyncio.gather(
        a.publish("st", [b"closed"], once="closed:s1"),
        b.publish("st", [b"closed"], once="closed:s1"),
        a.publish("st", [b"closed"], once="closed:s1"),
    )
    assert sorted(len(t) for t in tries) == [0, 0, 1]
    await wait_for_condition(lambda: len(inbox.got) == 3)
    await asyncio.sleep(0.1)
    assert [p.data for p in inbox.got] == [b"pin", b"unpin", b"closed"]
    snap = await a.snapshot("st", 2)
    assert [p.offset for p in snap.publications] == [2, 3]


async def test_a_closed_broker_raises_broker_unavailable(nodes: tuple[Broker, Broker]) -> None:
    a, _ = nodes
    await a.close()
    with pytest.raises(BrokerUnavailable):
        await a.publish("r", [b"x"])


# --- Redis only ------------------------------------------------------------------------


async def test_a_room_whose_history_was_flushed_starts_a_new_epoch(redis_url: str) -> None:
    broker = await connect(redis_url, history_size=HISTORY)
    try:
        old = await broker.publish("f", [b"a", b"b"])
        await broker._client.flushall()
        new = await broker.publish("f", [b"c"])
        assert new[0].offset == 1 and new[0].epoch != old[0].epoch
        resume = await broker.history("f", after=2, epoch=old[0].epoch, limit=10)
        assert not resume.complete and [p.data for p in resume.publications] == [b"c"]
    finally:
        await broker.close()


async def test_a_lost_meta_hash_drops_the_leftover_stream(redis_url: str) -> None:
    broker = await connect(redis_url, history_size=HISTORY)
    try:
        old = await broker.publish("m", [b"a", b"b", b"c"])
        meta, stream, _ = broker.keys("m")
        await broker._client.delete(meta)  # evicted, say
        position = await broker.position("m")
        assert position.offset == 0 and position.epoch != old[0].epoch
        assert await broker._client.exists(stream) == 0
        assert (await broker.publish("m", [b"d"]))[0].offset == 1
    finally:
        await broker.close()


async def test_keys_of_a_room_share_one_hash_tag_and_subscriptions_go_away(
    redis_url: str,
) -> None:
    a = await connect(redis_url, history_size=HISTORY)
    b = await connect(redis_url, history_size=HISTORY)
    watcher = aioredis.Redis.from_url(redis_url)
    try:
        meta, stream, channel = b.keys("直播间-1")
        assert all(k.startswith("lr:{room:直播间-1}:") for k in (meta, stream, channel))
        inbox = Inbox()
        await b.subscribe("直播间-1", inbox)
        assert (await watcher.pubsub_numsub(channel))[0][1] == 1
        await a.publish("直播间-1", [b"hi"])
        await inbox.wait(1)
        await b.unsubscribe("直播间-1")
        for _ in range(500):  # the command is sent; Redis acts on it when it arrives
            if (await watcher.pubsub_numsub(channel))[0][1] == 0:
                break
            await asyncio.sleep(0.01)
        assert (await watcher.pubsub_numsub(channel))[0][1] == 0
    finally:
        await a.close()
        await b.close()
        await watcher.aclose()


async def test_many_first_subscriptions_at_once_share_one_connection(redis_url: str) -> None:
    broker = await connect(redis_url, history_size=HISTORY)
    watcher = aioredis.Redis.from_url(redis_url)
    try:
        inbox = Inbox()
        rooms = [f"r{i}" for i in range(20)]
        await asyncio.gather(*(broker.subscribe(room, inbox) for room in rooms))
        clients = await watcher.client_list(_type="pubsub")
        assert len(clients) == 1, clients  # none left subscribed and unread
        await broker.publish("r7", [b"x"])
        await inbox.wait(1)
        await asyncio.gather(*(broker.unsubscribe(room) for room in rooms))
        channels = [broker.keys(room)[2] for room in rooms]
        for _ in range(500):
            if all(n == 0 for _, n in await watcher.pubsub_numsub(*channels)):
                break
            await asyncio.sleep(0.01)
        assert all(n == 0 for _, n in await watcher.pubsub_numsub(*channels))
    finally:
        await broker.close()
        await watcher.aclose()


async def test_a_rooms_keys_expire_after_its_last_event(redis_url: str) -> None:
    broker = await connect(redis_url, history_size=HISTORY, room_ttl=60)
    watcher = aioredis.Redis.from_url(redis_url)
    try:
        meta, stream, _ = broker.keys("quiet-room")
        await broker.snapshot("never-used", 10)  # a room only looked at: forgotten too
        assert 0 < await watcher.pttl(broker.keys("never-used")[0]) <= 60_000
        await broker.publish("quiet-room", [b"x"], state={"pin": b"p"})
        await broker.report("n1", {"quiet-room": (1, 3)}, ttl=5)
        for key in (meta, stream, broker.state_key("quiet-room")):
            assert 0 < await watcher.pttl(key) <= 60_000, key
    finally:
        await broker.close()
        await watcher.aclose()


async def test_an_unreachable_redis_raises_broker_unavailable_in_bounded_time(
    own_redis: RedisServer,
) -> None:
    broker = await connect(own_redis.url, history_size=HISTORY, timeout=0.5)
    try:
        await broker.publish("u", [b"a"])
        own_redis.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BrokerUnavailable):
            await broker.publish("u", [b"b"])
        assert loop.time() - started < 3.0
    finally:
        await broker.close()
    assert isinstance(broker, RedisBroker)


# --- Redis Cluster only -----------------------------------------------------------------


async def test_rooms_on_every_shard_deliver_and_shard_subscriptions_go_away(
    redis_cluster_url: str,
) -> None:
    a = await connect(redis_cluster_url, history_size=HISTORY, cluster=True)
    b = await connect(redis_cluster_url, history_size=HISTORY, cluster=True)
    try:
        client = b._client
        assert isinstance(client, RedisCluster)
        rooms: dict[str, str] = {}  # node name -> a room whose keys it holds
        for i in range(100):
            node = client.get_node_from_key(b.keys(f"show-{i}")[2])
            assert node is not None
            rooms.setdefault(node.name, f"show-{i}")
        assert len(rooms) == 3
        inboxes = {room: Inbox() for room in rooms.values()}
        for room, inbox in inboxes.items():
            await b.subscribe(room, inbox)
        for room in inboxes:
            for i in range(3):
                await a.publish(room, [f"{room}/{i}".encode()])
        for room, inbox in inboxes.items():
            got = await inbox.wait(3)
            assert [(p.offset, p.data) for p in got] == [
                (i + 1, f"{room}/{i}".encode()) for i in range(3)
            ]
        for room in inboxes:
            channel = b.keys(room)[2]
            node = client.get_node_from_key(channel)
            assert node is not None
            shard = aioredis.Redis(host=node.host, port=int(node.port))
            try:
                assert (await shard.pubsub_shardnumsub(channel))[0][1] == 1
                await b.unsubscribe(room)
                for _ in range(500):  # the command is sent; the shard acts when it arrives
                    if (await shard.pubsub_shardnumsub(channel))[0][1] == 0:
                        break
                    await asyncio.sleep(0.01)
                assert (await shard.pubsub_shardnumsub(channel))[0][1] == 0
            finally:
                await shard.aclose()
    finally:
        await a.close()
        await b.close()
