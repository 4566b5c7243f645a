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

  A room whose meta hash is lost starts a new epoch and drops any stream left over, so
  offsets of different epochs never mix.
* One pub/sub connection per broker; a reader task (started by the first subscription)
  calls each room's handler in offset order. Bounded time: every call other than the
  reader's wait raises :class:`BrokerUnavailable` within ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
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
)

__all__ = ["RedisBroker", "connect"]

log = logging.getLogger("liveroom.broker")
T = TypeVar("T")

SCRIPT_NAMES: Final = ("publish", "position")
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
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        history_size: int,
        key_prefix: str = "lr",
        timeout: float = 1.0,
    ) -> None:
        self._client = client
        self._size = history_size
        self._prefix = key_prefix
        self._timeout = timeout
        self._scripts: dict[str, tuple[str, str]] = {}  # name -> (source, sha)
        folder = importlib.resources.files("engine.broker") / "lua"
        for name in SCRIPT_NAMES:
            source = (folder / f"{name}.lua").read_text(encoding="utf-8")
            self._scripts[name] = (source, hashlib.sha1(source.encode()).hexdigest())
        self._pubsub: PubSub | None = None
        self._handlers: dict[str, tuple[str, Handler]] = {}  # channel -> (room, handler)
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    # --- keys and plumbing -----------------------------------------------------------

    def keys(self, room: str) -> tuple[str, str, str]:
        """The room's meta key, history key and channel."""
        base = f"{self._prefix}:{{room:{room}}}:"
        return base + "meta", base + "history", base + "channel"

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

    async def publish(self, room: str, data: Sequence[bytes]) -> list[Publication]:
        if not data:
            return []
        meta, history, channel = self.keys(room)
        args = [channel, self._size, _new_epoch(), "PUBLISH", len(data), *data]
        reply = await self._run(lambda: self._eval("publish", [meta, history], args))
        epoch, first = _text(reply[0]), int(reply[1])
        return [
            Publication(room, epoch, first + i, bytes(payload)) for i, payload in enumerate(data)
        ]

    async def position(self, room: str) -> Position:
        meta, history, _ = self.keys(room)
        reply = await self._run(lambda: self._eval("position", [meta, history], [_new_epoch()]))
        return Position(_text(reply[0]), int(reply[1]))

    async def history(self, room: str, *, after: int, epoch: str | None, limit: int) -> History:
        meta, stream, _ = self.keys(room)

        async def read() -> tuple[Any, Any, Any]:
            pipe = self._client.pipeline(transaction=True)  # one slot: one MULTI
            pipe.hmget(meta, "e", "s")
            pipe.xrange(stream, f"{after + 1}-1", "+", count=limit)
            pipe.xrevrange(stream, "+", "-", count=limit)
            top_epoch, entries, newest = await pipe.execute()
            return top_epoch, entries, newest

        (raw_epoch, raw_top), entries, newest = await self._run(read)
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
        entry_id, fields = entry
        offset = int(_text(entry_id).split("-", 1)[0])
        data = fields.get(b"d", fields.get("d", b""))
        return Publication(room, epoch, offset, data if isinstance(data, bytes) else data.encode())

    # --- subscriptions ---------------------------------------------------------------

    async def subscribe(self, room: str, handler: Handler) -> Position:
        _, _, channel = self.keys(room)
        if self._pubsub is None:
            self._pubsub = self._client.pubsub()
        pubsub = self._pubsub
        self._handlers[channel] = (room, handler)
        await self._run(lambda: pubsub.subscribe(channel))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        return await self.position(room)

    async def unsubscribe(self, room: str) -> None:
        _, _, channel = self.keys(room)
        if self._handlers.pop(channel, None) is not None and self._pubsub is not None:
            pubsub = self._pubsub
            await self._run(lambda: pubsub.unsubscribe(channel))

    async def _read(self) -> None:
        """Deliver pub/sub messages to their rooms' handlers until closed."""
        pubsub = self._pubsub
        assert pubsub is not None
        while not self._closed:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: the caller fills gaps by offset
                log.warning("broker pub/sub read failed (%s); retrying", exc)
                await asyncio.sleep(0.2)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = _text(message["channel"])
            target = self._handlers.get(channel)
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
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._client.aclose()


async def connect(
    url: str, *, history_size: int, key_prefix: str = "lr", timeout: float = 1.0
) -> RedisBroker:
    """A :class:`RedisBroker` on its own time-bounded client, its scripts loaded.

    Raises:
        BrokerUnavailable: Redis cannot be reached within ``timeout``.
    """
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=None,  # the pub/sub reader waits; calls are bounded by _run
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    broker = RedisBroker(client, history_size=history_size, key_prefix=key_prefix, timeout=timeout)
    try:
        await broker.load()
    except BaseException:
        await broker.close()
        raise
    return broker
