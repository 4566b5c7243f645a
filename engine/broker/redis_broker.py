"""Redis broker: a room's order, history and delivery live in Redis (pub/sub + streams).

Guarantees (beyond those of :mod:`engine.broker.base`):

* One ``publish.lua`` run per :meth:`RedisBroker.publish` call (N payloads): it reads or
  starts the room's epoch, takes N offsets from the meta hash, appends each payload to the
  room's capped stream (MAXLEN = history size, entry id ``<offset>-1``) and publishes one
  message carrying them all, so each batch crosses the network once per node. The pattern
  of Centrifugo's Redis engine (meta hash with epoch and top offset, XADD MAXLEN, PUBLISH
  in one script). Scripts are loaded at start, run with EVALSHA, reloaded on NOSCRIPT.
* Keys of a room share the hash tag ``{room:NAME}`` (Redis Cluster ready)::

      <prefix>:{room:NAME}:meta      hash    e = epoch, s = top offset
      <prefix>:{room:NAME}:history   stream  d = payload, id "<offset>-1"
      <prefix>:{room:NAME}:channel   the pub/sub channel (msgpack [epoch, first, [payloads]])
      <prefix>:{room:NAME}:viewers   hash    node id -> "count|expires_ms" (viewers.lua)
      <prefix>:{room:NAME}:state     hash    the room's state (publish.lua), likes total

  A room whose meta hash is lost starts a new epoch and drops any stream left over, so
  offsets of different epochs never mix. Every publish renews the room's keys for
  ``room_ttl`` (default a day); a room silent for longer is forgotten (its next event
  starts a new epoch), so Redis does not keep every room ever opened.
* On a Redis Cluster (:func:`connect` with ``cluster=True``) the script publishes with
  SPUBLISH and nodes subscribe with SSUBSCRIBE: a room's messages stay on its shard.
* One pub/sub connection per broker (per shard on a cluster); a reader task (started by
  the first subscription) calls each room's handler in offset order. Bounded time: every
  call other than the reader's wait raises :class:`BrokerUnavailable` within ``timeout``
  seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import importlib.resources
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.broker.base import (
    Broker,
    BrokerError,
    BrokerUnavailable,
    Handler,
    History,
    Position,
    Publication,
    Snapshot,
    Totals,
)

__all__ = ["RedisBroker", "connect"]

log = logging.getLogger("liveroom.broker")
T = TypeVar("T")

SCRIPT_NAMES: Final = ("publish", "position", "history", "snapshot", "viewers")
_epochs = itertools.count(1)
_NODE = os.urandom(3).hex()


def _new_epoch() -> str:
    """An epoch no earlier history of any room has used (at most 32 characters)."""
    return f"r{_NODE}{int(time.time()):x}{next(_epochs):x}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisBroker(Broker):
    """A :class:`~engine.broker.base.Broker` on one Redis server.

    Args:
        client: an asyncio Redis client with socket timeouts and no retries (see
            :func:`connect`); closed by :meth:`close`.
        history_size: publications kept per room.
        key_prefix: first part of every key (no braces).
        timeout: seconds within which every call answers or raises BrokerUnavailable.
        clock: unix seconds now, for viewer-count expiry.
        reconnect_max: longest wait between a lost pub/sub connection's reconnect attempts
            (the wait doubles from 0.1 s).
        room_ttl: seconds a room's keys live after its last publish (a room silent that
            long is forgotten: its next event starts a new epoch).
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        history_size: int,
        key_prefix: str = "lr",
        timeout: float = 1.0,
        clock: Callable[[], float] = time.time,
        reconnect_max: float = 5.0,
        room_ttl: float = 86400.0,
    ) -> None:
        self._client = client
        self._ttl_ms = max(1, int(room_ttl * 1000))
        self._reconnect_max = reconnect_max
        self._clock = clock
        self._size = history_size
        self._prefix = key_prefix
        self._timeout = timeout
        self._scripts: dict[str, tuple[str, str]] = {}  # name -> (source, sha)
        folder = importlib.resources.files("engine.broker") / "lua"
        for name in SCRIPT_NAMES:
            source = (folder / f"{name}.lua").read_text(encoding="utf-8")
            self._scripts[name] = (source, hashlib.sha1(source.encode()).hexdigest())
        self._cluster = isinstance(client, RedisCluster)  # sharded pub/sub on a cluster
        self._feeds: dict[str, _Feed] = {}  # shard (node name) -> its pub/sub feed
        self._handlers: dict[str, tuple[str, Handler]] = {}  # channel -> (room, handler)
        self._reconnected: list[Callable[[], None]] = []
        self._closed = False

    # --- keys and plumbing -----------------------------------------------------------

    def keys(self, room: str) -> tuple[str, str, str]:
        """The room's meta key, history key and channel."""
        base = f"{self._prefix}:{{room:{room}}}:"
        return base + "meta", base + "history", base + "channel"

    def viewers_key(self, room: str) -> str:
        """The room's viewer counts per node (hash node -> "count|expires_ms")."""
        return f"{self._prefix}:{{room:{room}}}:viewers"

    def state_key(self, room: str) -> str:
        """The room's state (hash of named values, and its likes total)."""
        return f"{self._prefix}:{{room:{room}}}:state"

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._closed:
            raise BrokerUnavailable("broker is closed")
        try:
            async with asyncio.timeout(self._timeout):
                return await call()
        except TimeoutError as exc:
            raise BrokerUnavailable(f"redis did not answer within {self._timeout} s") from exc
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
        except RedisError as exc:
            raise BrokerError(f"redis error: {exc}") from exc

    async def load(self) -> None:
        """SCRIPT LOAD every script (at start; EVALSHA reloads on NOSCRIPT anyway)."""

        async def load_all() -> None:
            for source, _sha in self._scripts.values():
                await self._client.script_load(source)

        await self._run(load_all)

    async def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        source, sha = self._scripts[name]
        try:
            return await self._client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:  # not run: load it and run it once more
            await self._client.script_load(source)
            return await self._client.evalsha(sha, len(keys), *keys, *args)

    # --- publishing and reading ------------------------------------------------------

    async def publish(
        self,
        room: str,
        data: Sequence[bytes],
        *,
        state: Mapping[str, bytes | None] | None = None,
        once: str | None = None,
    ) -> list[Publication]:
        if not data and not state:
            return []
        meta, history, channel = self.keys(room)
        command = "SPUBLISH" if self._cluster else "PUBLISH"
        sets = [(k, v) for k, v in (state or {}).items() if v is not None]
        deletes = [k for k, v in (state or {}).items() if v is None]
        args: list[Any] = [
            channel,
            self._size,
            _new_epoch(),
            command,
            self._ttl_ms,
            once or "",
            len(sets),
        ]
        for key, value in sets:
            args += [key, value]
        args += [len(deletes), *deletes, len(data), *data]
        keys = [meta, history, self.state_key(room)]
        reply = await self._run(lambda: self._eval("publish", keys, args))
        epoch, first = _text(reply[0]), int(reply[1])
        if first == 0:  # a once-only event that was published already
            return []
        return [
            Publication(room, epoch, first + i, bytes(payload)) for i, payload in enumerate(data)
        ]

    async def position(self, room: str) -> Position:
        meta, history, _ = self.keys(room)
        args = [_new_epoch(), self._ttl_ms]
        reply = await self._run(lambda: self._eval("position", [meta, history], args))
        return Position(_text(reply[0]), int(reply[1]))

    async def snapshot(self, room: str, limit: int) -> Snapshot:
        meta, history, _ = self.keys(room)
        keys = [meta, history, self.state_key(room)]
        args = [_new_epoch(), limit, self._ttl_ms]
        reply = await self._run(lambda: self._eval("snapshot", keys, args))
        raw_epoch, raw_top, newest, flat = reply
        position = Position(_text(raw_epoch), int(raw_top))
        pubs = tuple(self._entry(room, position.epoch, e) for e in reversed(newest))
        state = {
            _text(flat[i]): flat[i + 1] if isinstance(flat[i + 1], bytes) else flat[i + 1].encode()
            for i in range(0, len(flat), 2)
        }
        return Snapshot(position, pubs, state)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnected.append(callback)

    async def report(
        self, node: str, rooms: Mapping[str, tuple[int, int]], ttl: float
    ) -> dict[str, Totals]:
        now_ms, ttl_ms = int(self._clock() * 1000), max(1, int(ttl * 1000))
        names = list(rooms)

        async def run() -> list[Any]:
            # One script run per room (each in its room's slot), concurrently.
            calls = (
                self._eval(
                    "viewers",
                    [self.viewers_key(r), self.state_key(r)],
                    [node, rooms[r][0], now_ms, ttl_ms, rooms[r][1], self._ttl_ms],
                )
                for r in names
            )
            return list(await asyncio.gather(*calls))

        replies = await self._run(run)
        return {
            room: Totals(int(reply[0]), int(reply[1]))
            for room, reply in zip(names, replies, strict=True)
        }

    async def history(self, room: str, *, after: int, epoch: str | None, limit: int) -> History:
        meta, stream, _ = self.keys(room)
        reply = await self._run(lambda: self._eval("history", [meta, stream], [after, limit]))
        raw_epoch, raw_top, entries, newest = reply
        if raw_epoch is None:  # no room yet: start its epoch, nothing to resume
            return History(await self.position(room), (), epoch is None and after == 0)
        position = Position(_text(raw_epoch), int(raw_top))
        pubs = tuple(self._entry(room, position.epoch, e) for e in entries)
        complete = (
            epoch == position.epoch
            and after <= position.offset
            and (after == position.offset or (bool(pubs) and pubs[0].offset == after + 1))
        )
        if complete:
            return History(position, pubs, True)
        snapshot = tuple(self._entry(room, position.epoch, e) for e in reversed(newest))
        return History(position, snapshot, False)

    @staticmethod
    def _entry(room: str, epoch: str, entry: Any) -> Publication:
        """A stream entry as the script returns it: ``[id, [b"d", payload]]``."""
        entry_id, fields = entry
        offset = int(_text(entry_id).split("-", 1)[0])
        data = fields[1]
        return Publication(room, epoch, offset, data if isinstance(data, bytes) else data.encode())

    # --- subscriptions ---------------------------------------------------------------

    async def subscribe(self, room: str, handler: Handler) -> Position:
        _, _, channel = self.keys(room)
        feed = self._feed_for(channel)
        self._handlers[channel] = (room, handler)
        pubsub = feed.pubsub
        # One (un)subscribe at a time per connection: redis-py's PubSub takes a connection
        # on its first command, and two first commands at once would take two (the first
        # one left subscribed, never read).
        async with feed.lock:
            await self._run(
                functools.partial(pubsub.ssubscribe if self._cluster else pubsub.subscribe, channel)
            )
            feed.channels.add(channel)
        return await self.position(room)

    async def unsubscribe(self, room: str) -> None:
        _, _, channel = self.keys(room)
        self._handlers.pop(channel, None)
        for feed in self._feeds.values():
            async with feed.lock:
                if channel in feed.channels and channel not in self._handlers:
                    feed.channels.discard(channel)
                    await self._run(
                        functools.partial(
                            feed.pubsub.sunsubscribe if self._cluster else feed.pubsub.unsubscribe,
                            channel,
                        )
                    )

    def _feed_for(self, channel: str) -> _Feed:
        """The pub/sub connection (and its reader task) of the shard that holds ``channel``."""
        client = self._client
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(channel)
            if node is None:
                raise BrokerUnavailable(f"no cluster node holds {channel!r}")
            name = node.name
        else:
            name = "redis"
        feed = self._feeds.get(name)
        if feed is None:
            if isinstance(client, RedisCluster):
                # A plain client per shard: redis-py's ClusterPubSub round-robins over its
                # shards with blocking reads, which would delay one shard behind another.
                assert node is not None
                shard = aioredis.Redis(
                    host=node.host,
                    port=int(node.port),
                    socket_timeout=None,
                    retry=Retry(NoBackoff(), 0),
                )
                pubsub = shard.pubsub()
            else:
                shard, pubsub = None, client.pubsub()
            task = asyncio.get_running_loop().create_task(self._read(pubsub))
            feed = self._feeds[name] = _Feed(pubsub, task, shard)
        return feed

    async def _read(self, pubsub: PubSub) -> None:
        """Deliver one shard's pub/sub messages to their rooms' handlers until closed."""
        loop = asyncio.get_running_loop()
        lost = False
        wait = 0.1
        while not self._closed:
            started = loop.time()
            if pubsub.connection is None:  # the first subscribe has not taken a connection yet
                await asyncio.sleep(0.05)
                continue
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: the caller fills gaps by offset
                if not lost:
                    log.warning("broker pub/sub read failed (%s); reconnecting", exc)
                lost = True
                await asyncio.sleep(wait)
                wait = min(wait * 2, self._reconnect_max)
                continue
            if lost and pubsub.connection is not None and pubsub.connection.is_connected:
                lost, wait = False, 0.1  # resubscribed: publications may have been missed
                log.info("broker pub/sub connection is back")
                for callback in self._reconnected:
                    try:
                        callback()
                    except Exception:
                        log.exception("a reconnect callback failed")
            if message is None:
                if loop.time() - started < 0.01:  # returned at once (nothing subscribed)
                    await asyncio.sleep(0.05)
                continue
            if _text(message.get("type", "")) not in ("message", "smessage"):
                continue
            target = self._handlers.get(_text(message["channel"]))
            if target is None:
                continue
            room, handler = target
            try:
                epoch, first, payloads = msgpack.unpackb(message["data"], raw=True)
                for i, payload in enumerate(payloads):
                    handler(Publication(room, _text(epoch), int(first) + i, bytes(payload)))
            except Exception:
                log.exception("delivering a publication of room %r failed", room)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for feed in self._feeds.values():
            feed.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed.task
            with contextlib.suppress(Exception):
                await feed.pubsub.aclose()  # type: ignore[no-untyped-call]
            if feed.shard is not None:
                with contextlib.suppress(Exception):
                    await feed.shard.aclose()
        self._feeds.clear()
        await self._client.aclose()


@dataclasses.dataclass(slots=True)
class _Feed:
    """One shard's pub/sub connection, its reader task and the channels subscribed there."""

    pubsub: PubSub
    task: asyncio.Task[None]
    shard: aioredis.Redis | None  # the shard's own client (cluster), closed with the feed
    channels: set[str] = dataclasses.field(default_factory=set)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


async def connect(
    url: str,
    *,
    history_size: int,
    key_prefix: str = "lr",
    timeout: float = 1.0,
    cluster: bool = False,
    clock: Callable[[], float] = time.time,
    reconnect_max: float = 5.0,
    room_ttl: float = 86400.0,
) -> RedisBroker:
    """A :class:`RedisBroker` on its own time-bounded client, its scripts loaded.

    With ``cluster``, ``url`` names a node of a Redis Cluster: redis-py's cluster client
    finds the others, and rooms use sharded pub/sub (SPUBLISH / SSUBSCRIBE) on the shard
    that holds their keys.

    Raises:
        BrokerUnavailable: Redis cannot be reached within ``timeout``.
    """
    options: dict[str, Any] = {
        "socket_timeout": None,  # the pub/sub reader waits; calls are bounded by _run
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    client: aioredis.Redis | RedisCluster = (
        RedisCluster.from_url(url, **options)
        if cluster
        else aioredis.Redis.from_url(url, **options)
    )
    broker = RedisBroker(
        client,
        history_size=history_size,
        key_prefix=key_prefix,
        timeout=timeout,
        clock=clock,
        reconnect_max=reconnect_max,
        room_ttl=room_ttl,
    )
    try:
        await broker.load()
    except BaseException:
        await broker.close()
        raise
    return broker
