"""Rooms of this process: subscribers, offsets, recent history, batched fan-out.

Guarantees:
- Every room event gets the next offset of its room (1, 2, 3 …) and is delivered to every
  subscriber in offset order, each subscriber getting every event exactly once from the
  moment its ``joined`` answer was written (the snapshot covers what was already sent;
  what is still pending goes out in the next batch).
- Each batch is encoded once per codec in use and the same frame bytes are handed to
  every subscriber with no await per recipient (``Subscriber.send_frame`` only buffers).
- Natural batching: an event schedules a flush on the next loop turn, so in a quiet room
  it leaves at once; everything that arrived meanwhile leaves in the same frame. An
  optional minimum interval spaces frames further.
- Conflated values (like total, viewer count) are sent at most once per tick, latest wins.
- A room's history is a bounded ring buffer; its epoch changes whenever history restarts,
  so clients can tell "resume from offset" apart from "resync".
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from engine.wsframe import data_frame
from protocol import Codec, Comment, Joined, Likes, Product, RoomEvent, SaleInfo, Viewers

__all__ = ["Hub", "HubStatistics", "JoinResult", "Room", "Subscriber"]


class Subscriber(Protocol):
    """What a room needs of a connection."""

    @property
    def codec(self) -> Codec: ...

    def send_frame(self, frame: bytes) -> None:
        """Buffer a complete websocket frame for the peer; never blocks, never raises."""
        ...


class _Entry:
    """One event in a room's history, with its encodings made on first use."""

    __slots__ = ("encoded", "event", "offset")

    def __init__(self, offset: int, event: RoomEvent) -> None:
        self.offset = offset
        self.event = event
        self.encoded: dict[Codec, bytes] = {}

    def encode(self, codec: Codec) -> bytes:
        data = self.encoded.get(codec)
        if data is None:
            data = self.encoded[codec] = codec.encode_event(self.event)
        return data


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What a joiner gets: the answer payload's parts, ready to encode."""

    joined: Joined  # with an empty ``recent``: the events travel pre-encoded in ``entries``
    entries: tuple[_Entry, ...]

    def payload(self, codec: Codec) -> bytes:
        return codec.encode_joined(self.joined, [e.encode(codec) for e in self.entries])


_epoch_counter = itertools.count(1)
_EPOCH_PREFIX = os.urandom(3).hex()


def _new_epoch() -> str:
    """A string that no earlier history of any room on any node has used."""
    return f"{_EPOCH_PREFIX}{int(time.time()):x}{next(_epoch_counter):x}"


class Room:
    """One room: subscribers by codec, history, pending events, counters."""

    __slots__ = (
        "_conflated",
        "_flush_handle",
        "_last_flush",
        "_loop",
        "_min_interval",
        "_pending",
        "_ready",
        "_sent_likes",
        "_sent_viewers",
        "empty_since",
        "epoch",
        "events_published",
        "flushed_offset",
        "frames_written",
        "history",
        "likes",
        "name",
        "offset",
        "pin",
        "sale",
        "snapshot_size",
        "subscribers",
    )

    def __init__(
        self,
        name: str,
        *,
        history_size: int,
        snapshot_size: int,
        min_flush_interval: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.name = name
        self.epoch = _new_epoch()
        self.offset = 0  # offset of the newest event
        self.flushed_offset = 0  # offset of the newest event already written to subscribers
        self.history: deque[_Entry] = deque(maxlen=history_size)
        self.snapshot_size = snapshot_size
        self.subscribers: dict[Codec, dict[Subscriber, None]] = {}
        self.likes = 0
        self.events_published = 0
        self.frames_written = 0
        self.empty_since: float | None = time.monotonic()
        self.pin: Product | None = None  # the pinned product card, for joiners' snapshots
        self.sale: SaleInfo | None = None  # the room's current sale, for joiners' snapshots
        self._sent_likes = 0
        self._sent_viewers = 0
        self._pending: list[_Entry] = []
        self._conflated: dict[str, RoomEvent] = {}  # key -> latest value, sent at the next tick
        self._ready: dict[str, RoomEvent] = {}  # conflated values due in the next flush
        self._flush_handle: asyncio.Handle | None = None
        self._last_flush = 0.0
        self._min_interval = min_flush_interval
        self._loop = loop

    # --- membership -------------------------------------------------------------------

    @property
    def viewers(self) -> int:
        return sum(len(subs) for subs in self.subscribers.values())

    def join(
        self, sub: Subscriber, *, offset: int | None, epoch: str | None, rid: str | int | None
    ) -> JoinResult:
        """Subscribe ``sub`` and return its ``joined`` answer.

        With ``offset`` and the current ``epoch``, the answer holds exactly the events after
        ``offset`` when the history still has them; otherwise ``resync`` is set and the answer
        holds the latest ``snapshot_size`` events. The caller must write the answer before
        control returns to the event loop, so that no batch overtakes it.
        """
        self.subscribers.setdefault(sub.codec, {})[sub] = None
        self.empty_since = None
        # Events still pending are not in the answer: they reach the joiner in the next batch.
        # (More pending events than the history holds: none of the history is flushed yet.)
        end = max(0, len(self.history) - (self.offset - self.flushed_offset))
        oldest = self.history[0].offset if end > 0 else self.flushed_offset + 1
        start = max(0, end - self.snapshot_size)
        resync = False
        if offset is not None:
            if epoch == self.epoch and oldest - 1 <= offset <= self.flushed_offset:
                start = offset - oldest + 1
            else:
                resync = True
        entries = tuple(itertools.islice(self.history, start, end))
        joined = Joined(
            room=self.name,
            epoch=self.epoch,
            offset=self.flushed_offset,
            viewers=self.viewers,
            likes=self.likes,
            resync=resync,
            recent=(),
            pin=self.pin,
            sale=self.sale,
            rid=rid,
        )
        return JoinResult(joined, entries)

    def leave(self, sub: Subscriber) -> None:
        subs = self.subscribers.get(sub.codec)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self.subscribers[sub.codec]
        if not self.subscribers:
            self.empty_since = time.monotonic()

    # --- publishing -------------------------------------------------------------------

    def publish(self, build: Callable[[int, int], RoomEvent]) -> int:
        """Append the event ``build(offset, ts_ms)`` to the room; return its offset.

        The event is kept in the history and goes out in the next batch.
        """
        self.offset += 1
        offset = self.offset
        entry = _Entry(offset, build(offset, int(time.time() * 1000)))
        self.history.append(entry)
        self._pending.append(entry)
        self.events_published += 1
        self._schedule()
        return offset

    def publish_comment(self, *, user_id: str, name: str, text: str) -> int:
        """Append a comment to the room and schedule its delivery; return its offset."""
        epoch = self.epoch
        return self.publish(
            lambda offset, ts: Comment(
                id=f"{epoch}.{offset}", user_id=user_id, name=name, text=text, ts=ts, offset=offset
            )
        )

    def add_likes(self, count: int) -> None:
        """Count likes; the total goes out with the next conflation tick."""
        self.likes += count

    def conflate(self, key: str, event: RoomEvent) -> None:
        """Set the latest value under ``key``; only the latest goes out, at the next tick."""
        self._conflated[key] = event

    def tick(self) -> None:
        """Queue the conflated values that changed since they were last sent."""
        if self.likes != self._sent_likes:
            self._sent_likes = self.likes
            self._conflated["likes"] = Likes(total=self.likes)
        viewers = self.viewers
        if viewers != self._sent_viewers:
            self._sent_viewers = viewers
            self._conflated["viewers"] = Viewers(count=viewers)
        if self._conflated:
            self._ready.update(self._conflated)
            self._conflated.clear()
            self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is not None:
            return
        wait = self._last_flush + self._min_interval - self._loop.time()
        if wait > 0:
            self._flush_handle = self._loop.call_later(wait, self.flush)
        else:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write everything pending as one batch frame per codec in use."""
        self._flush_handle = None
        pending, self._pending = self._pending, []
        ready = self._ready
        if not pending and not ready:
            return
        self._ready = {}
        self._last_flush = self._loop.time()
        if pending:
            self.flushed_offset = pending[-1].offset
        for codec, subs in list(self.subscribers.items()):
            parts = [entry.encode(codec) for entry in pending]
            parts.extend(codec.encode_event(event) for event in ready.values())
            frame = data_frame(codec.encode_batch(self.name, parts), binary=codec.binary)
            for sub in list(subs):
                sub.send_frame(frame)
            self.frames_written += len(subs)

    def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None


@dataclass(frozen=True, slots=True)
class HubStatistics:
    rooms: int
    subscriptions: int
    events_published: int
    frames_written: int


class Hub:
    """The rooms of this process, created on first join and dropped when empty for long."""

    def __init__(
        self,
        *,
        history_size: int,
        snapshot_size: int,
        min_flush_interval: float,
        empty_room_ttl: float = 300.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.rooms: dict[str, Room] = {}
        self._history_size = history_size
        self._snapshot_size = snapshot_size
        self._min_flush_interval = min_flush_interval
        self._empty_room_ttl = empty_room_ttl
        self._dropped_events = 0  # counters of forgotten rooms, so totals never go down
        self._dropped_frames = 0
        self._loop = loop or asyncio.get_running_loop()

    def room(self, name: str) -> Room:
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(
                name,
                history_size=self._history_size,
                snapshot_size=self._snapshot_size,
                min_flush_interval=self._min_flush_interval,
                loop=self._loop,
            )
        return room

    def get(self, name: str) -> Room | None:
        return self.rooms.get(name)

    def tick(self) -> None:
        """Send conflated values; forget rooms empty for longer than the TTL."""
        now = time.monotonic()
        for name, room in list(self.rooms.items()):
            room.tick()
            if room.empty_since is not None and now - room.empty_since > self._empty_room_ttl:
                room.close()
                self._dropped_events += room.events_published
                self._dropped_frames += room.frames_written
                del self.rooms[name]

    def rooms_of(self, names: Iterable[str]) -> list[Room]:
        return [r for r in (self.rooms.get(n) for n in names) if r is not None]

    def statistics(self) -> HubStatistics:
        rooms = self.rooms.values()
        return HubStatistics(
            rooms=len(self.rooms),
            subscriptions=sum(r.viewers for r in self.rooms.values()),
            events_published=self._dropped_events + sum(r.events_published for r in rooms),
            frames_written=self._dropped_frames + sum(r.frames_written for r in rooms),
        )

    def close(self) -> None:
        for room in self.rooms.values():
            room.close()
