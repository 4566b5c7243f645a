"""In-process broker with the Redis broker's semantics (tests, and nodes in one process).

Every call completes without awaiting anything but itself, so on one event loop each
publish is atomic. Handlers are called on a later loop turn (``call_soon``, in offset
order), as a network broker would call them, never inside ``publish``. The epoch of a
room is made when the room is first used and never changes while the process lives.
:meth:`MemoryBroker.peer` gives another node's view of the same rooms: its own
subscriptions (one per room, as with Redis), the same offsets, history, state and totals.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from engine.broker.base import (
    Broker,
    BrokerUnavailable,
    Handler,
    History,
    Position,
    Publication,
    Snapshot,
    Totals,
)

__all__ = ["MemoryBroker"]

_epochs = itertools.count(1)
_PREFIX = os.urandom(3).hex()


@dataclass(slots=True)
class _Room:
    epoch: str
    history: deque[Publication]
    offset: int = 0
    handlers: dict[MemoryBroker, Handler] = field(default_factory=dict)  # per node
    state: dict[str, bytes] = field(default_factory=dict)
    likes: int = 0


class MemoryBroker(Broker):
    """A :class:`~engine.broker.base.Broker` in this process's memory.

    Args:
        history_size: publications kept per room (at least 1).
        clock: unix seconds now, for viewer-count expiry (inject a fake one in tests).
    """

    def __init__(self, history_size: int, *, clock: Callable[[], float] = time.time) -> None:
        self._size = history_size
        self._rooms: dict[str, _Room] = {}
        self._viewers: dict[str, dict[str, tuple[int, float]]] = {}  # room -> node -> (n, exp)
        self._clock = clock
        self._closed = False
        self._reconnected: list[Callable[[], None]] = []  # never called: nothing to lose

    def peer(self) -> MemoryBroker:
        """Another node's broker on the same rooms (its own subscriptions)."""
        other = MemoryBroker(self._size, clock=self._clock)
        other._rooms, other._viewers = self._rooms, self._viewers
        return other

    def _room(self, name: str) -> _Room:
        if self._closed:
            raise BrokerUnavailable("broker is closed")
        room = self._rooms.get(name)
        if room is None:
            epoch = f"m{_PREFIX}{next(_epochs):x}"
            room = self._rooms[name] = _Room(epoch, deque(maxlen=self._size))
        return room

    async def publish(
        self,
        room: str,
        data: Sequence[bytes],
        *,
        state: Mapping[str, bytes | None] | None = None,
        once: str | None = None,
    ) -> list[Publication]:
        r = self._room(room)
        if once is not None:
            if once in r.state:
                return []
            r.state[once] = b"1"
        for key, value in (state or {}).items():
            if value is None:
                r.state.pop(key, None)
            else:
                r.state[key] = bytes(value)
        out = []
        for payload in data:
            r.offset += 1
            publication = Publication(room, r.epoch, r.offset, bytes(payload))
            r.history.append(publication)
            out.append(publication)
        if r.handlers and out:
            loop = asyncio.get_running_loop()
            for handler in list(r.handlers.values()):
                for publication in out:
                    loop.call_soon(handler, publication)
        return out

    async def subscribe(self, room: str, handler: Handler) -> Position:
        r = self._room(room)
        r.handlers[self] = handler
        return Position(r.epoch, r.offset)

    async def unsubscribe(self, room: str) -> None:
        r = self._rooms.get(room)
        if r is not None:
            r.handlers.pop(self, None)

    def subscribed(self, room: str) -> bool:
        """Whether this node is subscribed to ``room``."""
        r = self._rooms.get(room)
        return r is not None and self in r.handlers

    async def history(self, room: str, *, after: int, epoch: str | None, limit: int) -> History:
        r = self._room(room)
        position = Position(r.epoch, r.offset)
        held = r.history
        oldest = held[0].offset if held else r.offset + 1
        if epoch == r.epoch and oldest - 1 <= after <= r.offset:
            start = after - oldest + 1
            return History(position, tuple(itertools.islice(held, start, start + limit)), True)
        newest = tuple(itertools.islice(held, max(0, len(held) - limit), None))
        return History(position, newest, False)

    async def position(self, room: str) -> Position:
        r = self._room(room)
        return Position(r.epoch, r.offset)

    async def snapshot(self, room: str, limit: int) -> Snapshot:
        r = self._room(room)
        held = r.history
        newest = tuple(itertools.islice(held, max(0, len(held) - limit), None))
        state = dict(r.state)
        if r.likes:
            state["likes"] = str(r.likes).encode()  # as Redis keeps it
        return Snapshot(Position(r.epoch, r.offset), newest, state)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnected.append(callback)

    async def report(
        self, node: str, rooms: Mapping[str, tuple[int, int]], ttl: float
    ) -> dict[str, Totals]:
        if self._closed:
            raise BrokerUnavailable("broker is closed")
        now = self._clock()
        totals = {}
        for room, (count, likes) in rooms.items():
            r = self._room(room)
            r.likes += likes
            nodes = self._viewers.setdefault(room, {})
            if count > 0:
                nodes[node] = (count, now + ttl)
            else:
                nodes.pop(node, None)
            for other, (_n, expires) in list(nodes.items()):
                if expires <= now:
                    del nodes[other]
            totals[room] = Totals(sum(n for n, _ in nodes.values()), r.likes)
            if not nodes:
                del self._viewers[room]
        return totals

    async def close(self) -> None:
        self._closed = True
        for r in self._rooms.values():
            r.handlers.pop(self, None)
