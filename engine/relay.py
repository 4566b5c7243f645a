"""A node's rooms shared through a broker: publish in batches, follow rooms with viewers.

With ``broker.backend = "redis"`` every room is shared by the nodes that have viewers in
it. The :class:`Relay` is the node's side of it:

* **Publishing.** :meth:`Relay.submit` queues an event (made with offset 0) for a room;
  what a room gathers while its previous publish is in flight goes out in one broker call
  (one script run), so a busy room costs one round trip per batch, not per event. The
  sender's ``done`` gets the offset the broker gave, or ``None`` when the broker could not
  be reached (the event was then not acknowledged: the sender is told to retry). One
  publish per room is in flight at a time, so a room's events keep their senders' order.
  An event carrying ``state`` (a pin) or ``once`` (a cluster-wide once-only event) goes
  in a call of its own.
* **Following.** A room is linked (subscribed, :class:`~engine.broker.RoomFeed`) when its
  first viewer on this node joins and unlinked when its last one leaves. Linking reads
  the room's snapshot (epoch, offset, newest events, state: pin, current sale, likes)
  before the joiners are answered; then each publication is decoded, stamped with its
  offset and handed to the room (:meth:`~engine.room.Room.deliver`) in offset order,
  exactly once, gaps filled; a lost history restarts the room and tells its viewers to
  resync. Every delivered event also goes to ``observe`` (the sale desk follows pins and
  sales that other nodes published).
* **Totals.** :meth:`Relay.tick` reports each linked room's viewers here and the likes
  taken since the last report, and gives the rooms their totals over every node.
* **Faults.** :attr:`Relay.healthy` is False from a failed broker call until the next
  successful one; after a pub/sub reconnect every linked room reads what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from engine.broker import (
    Broker,
    BrokerError,
    Position,
    Publication,
    RoomFeed,
    Snapshot,
)
from engine.room import Hub, Room, stamp
from protocol import MSGPACK, ProtocolError, RoomEvent
from protocol.wire import event_from_wire

__all__ = ["Relay", "decode_event", "encode_event"]

log = logging.getLogger("liveroom.relay")

Done = Callable[[int | None], None]
"""Told the offset a publish got, or None when it was not acknowledged."""
Adopt = Callable[[Room, Mapping[str, bytes]], Awaitable[None]]
"""Takes a room's state from its snapshot (pin, current sale) before joiners are answered."""
Observe = Callable[[Room, RoomEvent], None]


def encode_event(event: RoomEvent) -> bytes:
    """The broker payload of an event: its msgpack wire form (offset 0 until stamped)."""
    return MSGPACK.encode_event(event)


def decode_event(data: bytes) -> RoomEvent:
    """The event of a broker payload; raises ProtocolError for bytes no node wrote."""
    return event_from_wire(MSGPACK.loads(data))


@dataclass(slots=True)
class _Item:
    payload: bytes
    done: Done | None
    state: Mapping[str, bytes | None] | None = None
    once: str | None = None
    future: asyncio.Future[int | None] | None = None  # for Relay.publish

    def settle(self, outcome: int | BrokerError | None) -> None:
        """Tell the sender: its offset, None (a once-only event already out), or the error."""
        future = self.future
        if future is not None:
            if not future.done():
                if isinstance(outcome, BrokerError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
            return
        if self.done is not None:
            try:
                self.done(None if isinstance(outcome, BrokerError) else outcome)
            except Exception:
                log.exception("answering a publish failed")


@dataclass(slots=True)
class _Outbox:
    """A room's events waiting to be published; one publish in flight at a time."""

    items: deque[_Item] = field(default_factory=deque)
    busy: bool = False


@dataclass(slots=True)
class _Link:
    """A room this node follows: its feed, and the joins waiting for its snapshot."""

    room: Room
    feed: RoomFeed
    ready: bool = False
    waiters: list[Callable[[BaseException | None], None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class Relay:
    """The node's rooms on a shared broker; see the module docstring.

    Args:
        broker: the broker every node of the deployment uses.
        hub: this node's rooms.
        node: this node's id (its viewer counts are reported under it).
        viewers_ttl: seconds a reported viewer count lives without a refresh.
        adopt: takes a linking room's state (see :data:`Adopt`).
        observe: told of every event delivered to a room of this node.
    """

    def __init__(
        self,
        broker: Broker,
        hub: Hub,
        *,
        node: str,
        viewers_ttl: float,
        adopt: Adopt | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.broker = broker
        self.hub = hub
        self.node = node
        self.healthy = True
        self.published = 0  # events acknowledged by the broker
        self.publish_failures = 0  # events whose sender was told to retry
        self.publish_calls = 0
        self.resyncs = 0
        self._ttl = viewers_ttl
        self._adopt = adopt
        self._observe = observe
        self._outboxes: dict[str, _Outbox] = {}
        self._links: dict[str, _Link] = {}
        self._reported: set[str] = set()  # rooms whose count this node reported last tick
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: dict[str, asyncio.Task[None]] = {}  # room -> its old feed closing
        self._history = hub.history_size
        hub.on_vacated = self.unlink
        broker.on_reconnect(self._reconnected)

    # --- publishing -------------------------------------------------------------------

    def submit(
        self,
        room: str,
        event: RoomEvent,
        done: Done | None = None,
        *,
        state: Mapping[str, bytes | None] | None = None,
        once: str | None = None,
    ) -> None:
        """Publish ``event`` (offset 0) to ``room`` with the room's next batch."""
        self._queue(room, _Item(encode_event(event), done, state, once))

    def _queue(self, room: str, item: _Item) -> None:
        outbox = self._outboxes.get(room)
        if outbox is None:
            outbox = self._outboxes[room] = _Outbox()
        outbox.items.append(item)
        if not outbox.busy:
            outbox.busy = True
            self._spawn(self._drain(room, outbox))

    async def publish(
        self,
        room: str,
        event: RoomEvent,
        *,
        state: Mapping[str, bytes | None] | None = None,
        once: str | None = None,
    ) -> int | None:
        """Publish one event and wait for its offset (None: a ``once`` event that another
        node published first).

        Raises:
            BrokerError: the broker could not be reached; the event was not acknowledged.
        """
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._queue(room, _Item(encode_event(event), None, state, once, future))
        return await future

    async def _drain(self, room: str, outbox: _Outbox) -> None:
        """Publish the room's waiting events, a batch per call, until none is left."""
        items = outbox.items
        try:
            while items:
                batch = [items.popleft()]
                if batch[0].state is None and batch[0].once is None:
                    while items and items[0].state is None and items[0].once is None:
                        batch.append(items.popleft())
                head = batch[0]
                self.publish_calls += 1
                try:
                    publications = await self.broker.publish(
                        room, [i.payload for i in batch], state=head.state, once=head.once
                    )
                except BrokerError as exc:
                    self._failed(exc)
                    self.publish_failures += len(batch)
                    for item in batch:
                        item.settle(exc)
                    continue
                self._ok()
                if not publications:  # a once-only event published before
                    head.settle(None)
                    continue
                self.published += len(publications)
                for item, publication in zip(batch, publications, strict=True):
                    item.settle(publication.offset)
        finally:
            outbox.busy = False
            if not items:
                self._outboxes.pop(room, None)

    def _failed(self, exc: BrokerError) -> None:
        if self.healthy:
            log.warning("broker unreachable (%s): senders are told to retry", exc)
        self.healthy = False

    def _ok(self) -> None:
        if not self.healthy:
            log.info("broker reachable again")
        self.healthy = True

    # --- following rooms ----------------------------------------------------------------

    @property
    def followed(self) -> int:
        """Rooms this node is subscribed to."""
        return len(self._links)

    def linked(self, room: Room) -> bool:
        link = self._links.get(room.name)
        return link is not None and link.ready and link.room is room

    def link(self, room: Room, then: Callable[[BaseException | None], None]) -> None:
        """Follow ``room`` (if not yet); ``then`` is called once its snapshot is loaded
        (with None) or the broker could not be reached (with the error)."""
        link = self._links.get(room.name)
        if link is not None and link.room is not room:  # a dropped room's old link
            self._close_link(link)
            link = None
        if link is None:
            room.shared = True
            feed = RoomFeed(
                self.broker,
                room.name,
                deliver=lambda p: self._deliver(room, p),
                resync=lambda position, newest: self._resync(room, position, newest),
                history_limit=self._history,
            )
            link = self._links[room.name] = _Link(room, feed)
            link.waiters.append(then)
            link.task = self._spawn(self._start(link))
            return
        if link.ready:
            then(None)
        else:
            link.waiters.append(then)

    async def _start(self, link: _Link) -> None:
        room = link.room
        error: BaseException | None = None
        closing = self._closing.get(room.name)
        if closing is not None:  # the room's previous feed first unsubscribes
            await asyncio.wait([closing])
        try:
            snapshot = await link.feed.start(self._history, lambda s: self._load(room, s))
            if self._adopt is not None:
                await self._adopt(room, snapshot.state)
            self._ok()
        except BrokerError as exc:
            self._failed(exc)
            error = exc
        except Exception as exc:  # a bug: the joiners get an error, the node goes on
            log.exception("linking room %r failed", room.name)
            error = exc
        if self._links.get(room.name) is not link:
            return  # unlinked meanwhile (every waiter left)
        if error is not None:
            self._close_link(link)
        else:
            link.ready = True
        waiters, link.waiters = link.waiters, []
        for then in waiters:
            try:
                then(error)
            except Exception:
                log.exception("answering a join after linking room %r failed", room.name)
        if error is None and not room.slices:
            self.unlink(room)  # every joiner left (or failed) meanwhile

    def _load(self, room: Room, snapshot: Snapshot) -> None:
        position = snapshot.position
        room.restart(
            position.epoch,
            position.offset,
            _decoded(room, snapshot.publications),
            tell=False,  # nobody has joined yet: the joiners wait for this snapshot
        )
        likes = snapshot.state.get("likes")
        if likes is not None and likes.isdigit():
            room.likes = int(likes) + room.pending_likes

    def unlink(self, room: Room) -> None:
        """Stop following ``room`` (its last viewer here left)."""
        link = self._links.get(room.name)
        if link is None or link.room is not room or not link.ready:
            return  # a link still starting unlinks itself if nobody waits
        self._close_link(link)

    def _close_link(self, link: _Link) -> None:
        name = link.room.name
        del self._links[name]
        task = self._closing[name] = self._spawn(link.feed.close())
        task.add_done_callback(
            lambda _: self._closing.pop(name, None) if self._closing.get(name) is task else None
        )

    def _deliver(self, room: Room, publication: Publication) -> None:
        try:
            event = stamp(decode_event(publication.data), publication.epoch, publication.offset)
        except ProtocolError as exc:
            log.error(
                "room %r: publication %d is not an event (%s)", room.name, publication.offset, exc
            )
            return
        room.deliver(publication.offset, event)
        if self._observe is not None:
            self._observe(room, event)

    def _resync(self, room: Room, position: Position, newest: tuple[Publication, ...]) -> None:
        self.resyncs += 1
        log.warning(
            "room %r: history lost or epoch changed; viewers resync at %s/%d",
            room.name,
            position.epoch,
            position.offset,
        )
        room.restart(position.epoch, position.offset, _decoded(room, newest), tell=True)

    def _reconnected(self) -> None:
        for link in self._links.values():
            if link.ready:
                link.feed.check()

    # --- totals ----------------------------------------------------------------------

    async def tick(self) -> None:
        """Report viewers and likes of the rooms followed here; set their totals."""
        rooms = {name: link.room for name, link in self._links.items() if link.ready}
        report: dict[str, tuple[int, int]] = {}
        for name, room in rooms.items():
            report[name] = (room.viewers, room.pending_likes)
        for name in self._reported - rooms.keys():
            left = self.hub.get(name)  # its last viewer here left: withdraw the count at once
            if left is not None:
                rooms[name] = left  # with the likes its viewers gave before leaving
            report[name] = (0, left.pending_likes if left is not None else 0)
        if not report:
            return
        taken = {name: room.pending_likes for name, room in rooms.items()}
        for room in rooms.values():
            room.pending_likes = 0
        try:
            totals = await self.broker.report(self.node, report, self._ttl)
        except BrokerError as exc:
            self._failed(exc)
            for name, room in rooms.items():
                room.pending_likes += taken[name]  # reported with the next tick
            return
        self._ok()
        self._reported = {name for name, count in report.items() if count[0] > 0}
        for name, room in rooms.items():
            total = totals.get(name)
            if total is not None:
                room.set_totals(total.viewers, total.likes)

    # --- plumbing ----------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay task failed", exc_info=task.exception())

    async def close(self) -> None:
        """Stop following every room (publishes in flight finish or fail); withdraw this
        node's viewer counts at once, with the likes not reported yet (best effort)."""
        for link in list(self._links.values()):
            self._close_link(link)
        withdraw = {
            name: (0, room.pending_likes if (room := self.hub.get(name)) is not None else 0)
            for name in self._reported
        }
        if withdraw:
            with contextlib.suppress(BrokerError):
                await self.broker.report(self.node, withdraw, self._ttl)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _decoded(room: Room, publications: tuple[Publication, ...]) -> list[tuple[int, RoomEvent]]:
    out = []
    for p in publications:
        try:
            out.append((p.offset, stamp(decode_event(p.data), p.epoch, p.offset)))
        except ProtocolError as exc:
            log.error("room %r: publication %d is not an event (%s)", room.name, p.offset, exc)
    return out
