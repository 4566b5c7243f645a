"""Several engine processes share rooms through one Redis (or a Redis Cluster).

Real ``liveroom serve`` processes (uvloop) on loopback, each its own node, all with the
Redis broker and the Redis stock store: viewers on different nodes see each other's
comments in one order with no duplicate and no gap; a pin and a sale opened through one
node's API reach viewers on another, and late joiners there see them in their snapshot;
a flash sale bought through every node keeps every invariant; a node killed mid-show: its
viewers reconnect to another and resume with no gap; Redis killed and restarted mid-show:
no duplicate, every gap filled or a resync told, no acked comment missing from the
history; the last viewer leaving a node takes its subscription away.

Every process a test starts is stopped by its PID, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import typing
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from engine.client import LiveroomClient
from engine.stock import check_invariants
from engine.stock import connect as connect_store
from protocol import (
    Ack,
    Batch,
    Buy,
    BuyResult,
    Comment,
    Error,
    Joined,
    Likes,
    Pinned,
    Purchase,
    RoomEvent,
    SaleOpened,
    SendComment,
    SoldOut,
    Stock,
    Viewers,
)
from tests.conftest import Peer, expect, token, wait_for_condition
from tests.processes import API_KEY, Engine
from tests.redis_fixture import RedisServer

PRICE = 9900
T = TypeVar("T")


@contextlib.contextmanager
def nodes(
    count: int, url: str, log_dir: Path, *, cluster: bool = False, **settings: str
) -> Iterator[list[Engine]]:
    """``count`` engine processes sharing rooms through the Redis at ``url``, started."""
    prefix = f"so{os.getpid()}"
    shared = {
        "BROKER_BACKEND": "redis",
        "BROKER_REDIS_URL": url,
        "BROKER_KEY_PREFIX": prefix,
        "BROKER_REDIS_TIMEOUT": "0.5",
        "BROKER_RECONNECT_MAX": "0.5",
        "STOCK_BACKEND": "redis",
        "STOCK_REDIS_URL": url,
        "STOCK_KEY_PREFIX": prefix,
        "STOCK_REDIS_TIMEOUT": "0.5",
        "ROOMS_CONFLATE_INTERVAL_MS": "100",
        "ROOMS_COMMENT_RATE": "1000",
        "ROOMS_COMMENT_BURST": "1000",
        **({"BROKER_CLUSTER": "true", "STOCK_CLUSTER": "true"} if cluster else {}),
        **settings,
    }
    engines = [
        Engine(log=log_dir / f"node{i}.log", SERVER_NODE_ID=f"node{i}") for i in range(count)
    ]
    for engine in engines:
        engine.env.update({f"LIVEROOM_{key}": value for key, value in shared.items()})
    try:
        for engine in engines:
            engine.start()
        yield engines
    finally:
        for engine in engines:
            engine.kill()


async def viewer(engine: Engine, user: str, room: str, **join: object) -> tuple[Peer, Joined]:
    peer = await Peer.open(engine.endpoint, token(user, [room]))
    joined = await peer.join(room, **join)  # type: ignore[arg-type]
    return peer, joined


async def comment_offsets(peer: Peer, n: int, timeout: float = 10.0) -> list[tuple[int, str]]:
    return [(c.offset, c.text) for c in await peer.comments(n, timeout)]


async def next_of(peer: Peer, cls: type[T], timeout: float = 10.0) -> T:
    """The next message of type ``cls`` (room events are kept in ``peer.events``)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await peer._recv_keeping_events(timeout)
            if isinstance(msg, cls):
                return msg
            if msg is not None:
                peer.others.append(msg)


async def metrics(engine: Engine) -> dict[str, float]:
    """The node's unlabelled metrics (Prometheus text), by name."""
    reader, writer = await asyncio.open_connection("127.0.0.1", engine.api_port)
    writer.write(
        f"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    out = {}
    for line in raw.decode().split("\r\n\r\n", 1)[1].splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


async def next_offset_event(peer: Peer) -> RoomEvent:
    """The next room event that carries an offset (conflated ones are skipped)."""
    while True:
        _, event = await peer.next_event()
        if not isinstance(event, Likes | Viewers | Stock):
            return event


async def eventually(read: Callable[[], Awaitable[object]], value: object) -> None:
    """Poll ``read`` until it returns ``value`` (5 s at most)."""
    got: object = None
    for _ in range(100):
        got = await read()
        if got == value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {value!r}, still {got!r}")


def rooms_on_every_shard(count: int) -> list[str]:
    """Room names whose keys fall on different slots (so on different cluster shards)."""
    from redis.crc import key_slot

    names: list[str] = []
    slots: list[int] = []
    for i in range(2000):
        name = f"show-{i}"
        slot = key_slot(f"x:{{room:{name}}}".encode())
        if all(abs(slot - s) > 4000 for s in slots):
            names.append(name)
            slots.append(slot)
        if len(names) == count:
            return names
    raise AssertionError("no rooms spread over the slots")


# --- comments across nodes ------------------------------------------------------------


async def _comments_in_one_order(engines: Sequence[Engine], room: str) -> None:
    peers = [(await viewer(e, f"u{i}", room))[0] for i, e in enumerate(engines)]
    per_peer = 10
    # Everyone comments at once, through their own node; every ack carries Redis's offset.
    sends = [
        peer.send(SendComment(room=room, text=f"{i}-{k}", rid=f"c{k}"))
        for k in range(per_peer)
        for i, peer in enumerate(peers)
    ]
    await asyncio.gather(*sends)
    total = per_peer * len(peers)
    seen = [await comment_offsets(peer, total) for peer in peers]
    assert seen[0] == sorted(seen[0])
    assert [o for o, _ in seen[0]] == list(range(1, total + 1))  # no gap, no duplicate
    assert all(s == seen[0] for s in seen)  # one order on every node
    texts = dict(seen[0])
    for i, peer in enumerate(peers):
        acks = {m.rid: m.offset for m in peer.others if isinstance(m, Ack)}
        while len(acks) < per_peer:
            ack = expect(await peer.recv(), Ack)
            acks[ack.rid] = ack.offset
        # Each ack carries the offset Redis gave that very comment.
        assert {texts[o] for o in acks.values() if o is not None} == {
            f"{i}-{k}" for k in range(per_peer)
        }
    await peers[0].assert_no_comment()
    for peer in peers:
        await peer.close()
    for engine in engines:  # each node counts what it published and follows the room
        figures = await metrics(engine)
        assert figures["liveroom_broker_published_total"] >= per_peer
        assert figures["liveroom_broker_up"] == 1


@pytest.mark.parametrize("count", [2, 3])
async def test_viewers_on_different_nodes_see_each_others_comments_in_one_order(
    redis_url: str, tmp_path: Path, count: int
) -> None:
    async with asyncio.timeout(60):
        with nodes(count, redis_url, tmp_path) as engines:
            await _comments_in_one_order(engines, "show-order")


# --- pins and sales across nodes ------------------------------------------------------


def sale_body(sale_id: str, room: str, stock: int, limit: int) -> dict[str, object]:
    return {
        "sale_id": sale_id,
        "room": room,
        "product_id": "p1",
        "stock": stock,
        "price": PRICE,
        "per_user_limit": limit,
        "duration": 600,
    }


async def _pin_and_sale_reach_other_nodes(engines: Sequence[Engine], room: str) -> None:
    a, b = engines[0], engines[1]
    sale = f"{room}-sale"
    on_b, _ = await viewer(b, "early-b", room)
    # Node A holds no viewer of the room: its API still answers for it.
    product = {"id": "cup", "title": "保温杯 500ml", "price": PRICE, "currency": "CNY"}
    status, body = await a.api("POST", f"/v1/rooms/{room}/pin", product)
    assert status == 200, body
    status, opened = await a.api("POST", "/v1/sales", sale_body(sale, room, 5, 2))
    assert status == 201, opened
    pinned = await next_offset_event(on_b)
    assert isinstance(pinned, Pinned) and pinned.product.id == "cup"
    event = await next_offset_event(on_b)
    assert isinstance(event, SaleOpened) and event.sale.id == sale
    # A buy on B for the sale opened through A; the stock count reaches a viewer on A.
    on_a, joined_a = await viewer(a, "late-a", room)
    assert joined_a.pin is not None and joined_a.pin.id == "cup"
    assert joined_a.sale is not None and joined_a.sale.id == sale
    answer = expect(await on_b.call(Buy(room=room, sale=sale, qty=2, rid="b1")), BuyResult)
    assert answer.status == "ok" and answer.remaining == 3
    await conflated(on_a, Stock(sale_id=sale, remaining=3))
    # The "someone bought" event is published after the answer; once B's viewer has it,
    # B's room holds it for late joiners too.
    bought = await next_offset_event(on_b)
    assert isinstance(bought, Purchase) and bought.qty == 2
    # Late joiners on B (which never saw the pin happen) get both in their snapshot.
    late_b, joined_b = await viewer(b, "late-b", room)
    assert joined_b.pin is not None and joined_b.pin.title == "保温杯 500ml"
    assert joined_b.sale is not None and joined_b.sale.id == sale
    assert [type(e) for e in joined_b.recent[-3:]] == [Pinned, SaleOpened, Purchase]
    status, body = await b.api("DELETE", f"/v1/rooms/{room}/pin")
    assert status == 200 and body == {"room": room, "unpinned": True}
    status, message = await b.api("POST", f"/v1/rooms/{room}/messages", {"text": "谢谢"})
    assert isinstance(message, dict) and message["offset"] == joined_b.offset + 2, message
    for peer in (on_a, on_b, late_b):
        await peer.close()


async def conflated(peer: Peer, value: Viewers | Likes | Stock, timeout: float = 10.0) -> None:
    """Wait until the room's conflated value (viewers, likes, a sale's stock) is ``value``."""
    async with asyncio.timeout(timeout):
        while True:
            _, event = await peer.next_event(timeout)
            if event == value:
                return


async def test_a_pin_and_a_sale_opened_through_one_node_reach_viewers_on_another(
    redis_url: str, tmp_path: Path
) -> None:
    async with asyncio.timeout(60):
        with nodes(2, redis_url, tmp_path) as engines:
            await _pin_and_sale_reach_other_nodes(engines, "show-pin")


async def _flash_sale_over_every_node(
    engines: Sequence[Engine], room: str, url: str, *, cluster: bool = False
) -> None:
    stock, limit, users = 20, 2, 18
    sale = f"{room}-flash"
    host, _ = await viewer(engines[0], "host", room)
    status, _ = await engines[-1].api(
        "POST", "/v1/sales", sale_body(f"{room}-flash", room, stock, limit)
    )
    assert status == 201
    peers = [(await viewer(engines[i % len(engines)], f"u{i}", room))[0] for i in range(users)]
    # Every user presses 3 times (one over the limit), all at once, then retries each press.
    for peer in peers:
        for k in range(3):
            await peer.send(Buy(room=room, sale=sale, rid=f"p{k}"))
    answers: dict[tuple[int, str], BuyResult] = {}
    for i, peer in enumerate(peers):
        while sum(1 for key in answers if key[0] == i) < 3:
            answer = await next_of(peer, BuyResult)
            answers[i, str(answer.rid)] = answer
    for i, peer in enumerate(peers):
        for k in range(3):
            again = expect(
                await peer.call(Buy(room=room, sale=sale, rid=f"p{k}", retry=True)),
                BuyResult,
            )
            first = answers[i, f"p{k}"]
            assert (again.status, again.order) == (first.status, first.order), (first, again)
    ok = [a for a in answers.values() if a.status == "ok"]
    assert len(ok) == stock and {a.status for a in answers.values()} <= {
        "ok",
        "sold_out",
        "limit_reached",
    }
    # Every viewer sees sold out once, from whichever node decided it.
    _, sold_out = await host.next_event()
    while not isinstance(sold_out, SoldOut):
        _, sold_out = await host.next_event()
    store = await connect_store(url, key_prefix=f"so{os.getpid()}", cluster=cluster)
    try:
        report = await check_invariants(store, sale)
    finally:
        await store.close()
    assert report.state.remaining == 0 and report.state.sold == stock
    assert {o.order_id for o in report.orders} == {a.order for a in ok}
    for peer in [host, *peers]:
        await peer.close()


async def test_a_flash_sale_bought_through_every_node_keeps_every_invariant(
    redis_url: str, tmp_path: Path
) -> None:
    async with asyncio.timeout(90):
        with nodes(3, redis_url, tmp_path) as engines:
            await _flash_sale_over_every_node(engines, "show-flash", redis_url)


# --- subscriptions ----------------------------------------------------------------------


async def test_the_last_viewer_leaving_a_node_takes_its_subscription_away(
    redis_url: str, tmp_path: Path
) -> None:
    room = "show-sub"
    channel = f"so{os.getpid()}:{{room:{room}}}:channel"
    client = aioredis.Redis.from_url(redis_url)

    async def subscribers() -> int:
        return int(dict(await client.pubsub_numsub(channel))[channel.encode()])

    try:
        async with asyncio.timeout(60):
            with nodes(2, redis_url, tmp_path) as engines:
                a1, _ = await viewer(engines[0], "a1", room)
                a2, _ = await viewer(engines[0], "a2", room)
                b1, _ = await viewer(engines[1], "b1", room)
                assert await subscribers() == 2  # one per node, not per viewer
                await a1.leave(room)
                await asyncio.sleep(0.2)
                assert await subscribers() == 2
                await a2.close()  # the node's last viewer of the room
                await eventually(subscribers, 1)
                await b1.leave(room)
                await eventually(subscribers, 0)
                # Coming back subscribes again, and the room resumes where it was.
                back, joined = await viewer(engines[1], "b1", room)
                assert await subscribers() == 1 and joined.resync is False
                await back.close()
                await a1.close()
    finally:
        await client.aclose()


# --- faults -------------------------------------------------------------------------------


class Watcher:
    """A viewer keeping its view by the SPEC §8 rules, in a task of its own.

    It counts what a client could see go wrong: a comment at or below the stored offset (a
    duplicate), a comment past the next offset (a gap), and resyncs (the unsolicited
    ``joined``, or a resume answered with ``resync``).
    """

    def __init__(self, peer: Peer, room: str, joined: Joined) -> None:
        self.peer, self.room = peer, room
        self.epoch, self.offset = joined.epoch, joined.offset
        self.comments: list[tuple[str, int, str]] = []
        self.duplicates: list[int] = []
        self.gaps: list[tuple[int, int]] = []
        self.resyncs = 0
        self._task = asyncio.ensure_future(self._run())

    def take(self, joined: Joined) -> None:
        if joined.resync or joined.epoch != self.epoch:
            self.resyncs += 1
            self.epoch, self.offset = joined.epoch, 0
        for event in joined.recent:
            self._see(event)
        self.epoch, self.offset = joined.epoch, joined.offset

    def _see(self, event: object) -> None:
        if not isinstance(event, Comment):
            return
        if event.offset <= self.offset:
            self.duplicates.append(event.offset)
            return
        if event.offset != self.offset + 1:
            self.gaps.append((self.offset, event.offset))
        self.offset = event.offset
        self.comments.append((self.epoch, event.offset, event.text))

    async def _run(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                msg = await self.peer.recv(60)
                if isinstance(msg, Batch):
                    for event in msg.events:
                        self._see(event)
                elif isinstance(msg, Joined) and msg.rid is None:
                    self.take(msg)  # the room's history was reset under us

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def resume_on(self, engine: Engine, user: str) -> Joined:
        """Reconnect to ``engine`` and resume from the stored offset and epoch."""
        await self.stop()
        self.peer = await Peer.open(engine.endpoint, token(user, [self.room]))
        joined = await self.peer.join(self.room, offset=self.offset, epoch=self.epoch)
        self.take(joined)
        self._task = asyncio.ensure_future(self._run())
        return joined


async def watch(engine: Engine, user: str, room: str) -> Watcher:
    peer, joined = await viewer(engine, user, room)
    return Watcher(peer, room, joined)


class Commenter:
    """Sends comments with request ids; keeps which were acked (with offset) and refused."""

    def __init__(self, peer: Peer, room: str, name: str) -> None:
        self.peer, self.room, self.name = peer, room, name
        self.acked: dict[str, int] = {}
        self.refused: dict[str, str] = {}
        self.sent = 0

    async def send(self, n: int, interval: float = 0.0) -> None:
        for _ in range(n):
            rid = f"{self.name}-{self.sent}"
            self.sent += 1
            try:
                answer = await self.peer.call(SendComment(room=self.room, text=rid, rid=rid), 5)
            except TimeoutError:
                self.refused[rid] = "no answer"
                continue
            if isinstance(answer, Ack) and answer.offset is not None:
                self.acked[rid] = answer.offset
            else:
                self.refused[rid] = expect(answer, Error).code
            await asyncio.sleep(interval)


async def test_a_node_killed_mid_show_its_viewers_resume_on_another_with_no_gap(
    redis_url: str, tmp_path: Path
) -> None:
    room = "show-kill"
    async with asyncio.timeout(60):
        with nodes(2, redis_url, tmp_path) as engines:
            doomed, survivor = engines
            watcher = await watch(doomed, "w", room)
            talker = Commenter((await viewer(survivor, "t", room))[0], room, "t")
            await talker.send(20)
            await wait_for_condition(lambda: len(watcher.comments) == 20)
            doomed.kill()  # SIGKILL: no goodbye to its viewers
            await talker.send(15)  # while the watcher is away
            joined = await watcher.resume_on(survivor, "w")
            assert joined.resync is False and len(joined.recent) == 15
            await talker.send(15)
            await wait_for_condition(lambda: len(watcher.comments) == 50)
            await watcher.stop()
    assert [o for _, o, _ in watcher.comments] == list(range(1, 51))
    assert watcher.duplicates == [] and watcher.gaps == [] and watcher.resyncs == 0
    assert len(talker.acked) == 50 and not talker.refused


async def _show_through_a_redis_restart(
    own_redis: RedisServer, tmp_path: Path, *, keep_data: bool
) -> tuple[list[Watcher], list[Commenter], LiveroomClient]:
    room = "show-redis"
    with nodes(2, own_redis.url, tmp_path) as engines:
        watchers = [await watch(e, f"w{i}", room) for i, e in enumerate(engines)]
        client = await LiveroomClient.connect(engines[0].endpoint.url, token("lc", [room]))
        await client.join(room)
        talkers = [
            Commenter((await viewer(e, f"t{i}", room))[0], room, f"t{i}")
            for i, e in enumerate(engines)
        ]

        async def restart() -> None:
            await asyncio.sleep(0.5)
            own_redis.kill()
            if not keep_data:
                wipe(own_redis.directory)
            # Backends are told to retry too, with a clear error and no side effect.
            status, body = await engines[1].api("POST", f"/v1/rooms/{room}/messages", {"text": "x"})
            assert status == 503 and isinstance(body, dict), body
            assert body["error"]["code"] == "broker_unavailable"
            await asyncio.sleep(0.3)
            own_redis.start()

        await asyncio.gather(restart(), *(t.send(60, interval=0.03) for t in talkers))
        assert all(t.refused for t in talkers), "Redis was down: some comments were refused"
        assert {code for t in talkers for code in t.refused.values()} <= {"unavailable"}
        await asyncio.sleep(0.5)  # the nodes' pub/sub connections come back
        for t in talkers:
            await t.send(5)  # after the restart, comments flow again
            assert len(t.refused) < t.sent - 5
        newest = max(o for t in talkers for o in t.acked.values() if o)
        await wait_for_condition(
            lambda: all(w.comments and w.comments[-1][1] >= newest for w in watchers), 10
        )
        for w in watchers:
            await w.stop()
        await client.close()
        return watchers, talkers, client


def wipe(directory: Path) -> None:
    """Remove a stopped Redis's AOF files, as if it came back without its data."""
    for path in directory.glob("appendonly*"):
        if path.is_dir():
            for part in path.iterdir():
                part.unlink()
            path.rmdir()
        else:
            path.unlink()


async def test_redis_killed_and_restarted_mid_show_gaps_are_filled_and_no_acked_comment_is_lost(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    async with asyncio.timeout(90):
        watchers, talkers, client = await _show_through_a_redis_restart(
            own_redis, tmp_path, keep_data=True
        )
    assert client.resyncs == 0  # the history survived: nothing to resync
    history = aioredis.Redis.from_url(own_redis.url)
    try:
        stream = f"so{os.getpid()}:{{room:show-redis}}:history"
        entries = typing.cast(list[tuple[bytes, dict[bytes, bytes]]], await history.xrange(stream))
    finally:
        await history.aclose()
    kept = {int(i.decode().split("-")[0]): f[b"d"] for i, f in entries}
    for t in talkers:
        for rid, offset in t.acked.items():
            assert rid.encode() in kept[offset], (rid, offset)  # acked = in the history
    for w in watchers:
        assert w.duplicates == [] and w.resyncs == 0
        assert w.gaps == []  # every gap was filled from the history
        offsets = [o for _, o, _ in w.comments]
        assert offsets == list(range(1, len(offsets) + 1))
        seen = {text for _, _, text in w.comments}
        assert all(rid in seen for t in talkers for rid in t.acked)


async def test_redis_restarted_without_its_data_viewers_are_told_to_resync(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    async with asyncio.timeout(90):
        watchers, _, client = await _show_through_a_redis_restart(
            own_redis, tmp_path, keep_data=False
        )
    # The library client follows the reset too: the new epoch, the offset after it.
    assert client.resyncs >= 1
    assert client.offsets["show-redis"][0] == watchers[0].epoch
    for w in watchers:
        assert w.duplicates == []
        assert w.resyncs >= 1  # the history was lost: the viewers were told
        epochs = [e for e, _, _ in w.comments]
        assert len(set(epochs)) == 2 and epochs == sorted(epochs, key=epochs.index)
        after = [o for e, o, _ in w.comments if e == epochs[-1]]
        assert after == sorted(after) and len(set(after)) == len(after)


# --- Redis Cluster ----------------------------------------------------------------------


async def test_on_a_redis_cluster_rooms_on_every_shard_share_comments_pins_and_sales(
    redis_cluster_url: str, tmp_path: Path
) -> None:
    rooms = rooms_on_every_shard(3)
    async with asyncio.timeout(120):
        with nodes(3, redis_cluster_url, tmp_path, cluster=True) as engines:
            await asyncio.gather(*(_comments_in_one_order(engines, room) for room in rooms))
            for room in rooms:
                await _pin_and_sale_reach_other_nodes(engines, room)
            await _flash_sale_over_every_node(engines, rooms[0], redis_cluster_url, cluster=True)
            # Sharded subscriptions: one per node with viewers, on the room's own shard.
            client = RedisCluster.from_url(redis_cluster_url)
            try:
                await client.initialize()
                channel = f"so{os.getpid()}:{{room:{rooms[1]}}}:channel"
                node = client.get_node_from_key(channel)
                assert node is not None
                shard = aioredis.Redis(host=node.host, port=int(node.port))

                async def subscribers() -> int:
                    reply = await shard.execute_command(  # type: ignore[no-untyped-call]
                        "PUBSUB", "SHARDNUMSUB", channel
                    )
                    return int(reply[1])

                peers = [(await viewer(e, f"s{i}", rooms[1]))[0] for i, e in enumerate(engines)]
                await eventually(subscribers, 3)
                for peer in peers:
                    await peer.close()
                await eventually(subscribers, 0)
                await shard.aclose()
            finally:
                await client.aclose()


async def test_viewer_counts_add_up_over_nodes_and_a_dead_nodes_viewers_stop_counting(
    redis_url: str, tmp_path: Path
) -> None:
    room = "show-count"

    async with asyncio.timeout(60):
        with nodes(2, redis_url, tmp_path, BROKER_VIEWERS_TTL="1") as engines:
            on_a = [(await viewer(engines[0], f"a{i}", room))[0] for i in range(3)]
            on_b = [(await viewer(engines[1], f"b{i}", room))[0] for i in range(3)]
            await conflated(on_a[0], Viewers(count=6))  # 3 here + 3 on the other node
            await conflated(on_b[0], Viewers(count=6))
            # Likes add up over nodes too, including those of a viewer who then leaves.
            expect(await on_a[1].like(room, 3), Ack)
            expect(await on_b[1].like(room, 4), Ack)
            await on_b[1].close()
            await conflated(on_a[0], Likes(total=7))
            await conflated(on_b[0], Likes(total=7))
            _, joined = await viewer(engines[1], "late", room)
            assert joined.viewers >= 5 and joined.likes == 7  # the room's, not this node's
            engines[1].kill()  # its viewers stop counting within the TTL
            await conflated(on_a[0], Viewers(count=3))
            for peer in on_a:
                await peer.close()


async def test_a_node_stopped_gracefully_withdraws_its_viewers_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    room = "show-drain"
    async with asyncio.timeout(60):
        with nodes(2, redis_url, tmp_path, BROKER_VIEWERS_TTL="60") as engines:
            watcher, _ = await viewer(engines[0], "w", room)
            leaving = [(await viewer(engines[1], f"b{i}", room))[0] for i in range(2)]
            await conflated(watcher, Viewers(count=3))
            engines[1].stop(signal.SIGTERM)  # well before its counts' 60 s expiry
            await conflated(watcher, Viewers(count=1), timeout=5)
            for peer in leaving:
                assert await peer.close_code() == 1001
