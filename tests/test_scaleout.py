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
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from protocol import (
    Ack,
    Joined,
    SendComment,
)
from tests.conftest import Peer, expect, token
from tests.processes import Engine

PRICE = 9900


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


@pytest.mark.parametrize("count", [2, 3])
async def test_viewers_on_different_nodes_see_each_others_comments_in_one_order(
    redis_url: str, tmp_path: Path, count: int
) -> None:
    async with asyncio.timeout(60):
        with nodes(count, redis_url, tmp_path) as engines:
            await _comments_in_one_order(engines, "show-order")
