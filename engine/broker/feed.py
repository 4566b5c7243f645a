"""One room's publications, delivered to a node in offset order, exactly once, gaps filled.

Pub/sub can lose messages (a dropped connection, a Redis restart) and never repeats one;
the room's history in the broker holds the truth. A :class:`RoomFeed` subscribes to one
room and hands the node each publication once, in offset order:

* a publication at or below the last offset delivered is a duplicate and is dropped;
* the next offset is delivered at once;
* a publication past a gap is held, and the gap is filled from :meth:`Broker.history`
  (one fill at a time per room) before anything after it is delivered;
* when the history no longer holds the gap, or the room's epoch changed (its history was
  lost), the node is told to ``resync`` to the room's new position, and delivery goes on
  from there. So the node never shows a viewer an event twice or out of order, and every
  event it skips comes with a resync.

:meth:`RoomFeed.start` subscribes, then reads the room's snapshot; the node loads it
before any publication is delivered (those arriving meanwhile wait, and the ones the
snapshot already holds are dropped). :meth:`RoomFeed.check` reads the history after the
last offset delivered (after a pub/sub reconnect, when the last publications may have
been lost with nothing after them to reveal the gap).

The fill runs as a task the feed owns; :meth:`RoomFeed.close` cancels it and unsubscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from engine.broker.base import Broker, BrokerError, Position, Publication, Snapshot

__all__ = ["RoomFeed"]

log = logging.getLogger("liveroom.broker")


class RoomFeed:
    """Delivery of one room's publications to this node; see the module docstring.

    Args:
        broker: the broker the room lives in.
        room: the room.
        deliver: called with each publication, in offset order, exactly once.
        resync: called with the room's position and its newest publications held (up to
            ``history_limit``, oldest first; none after an epoch change seen on pub/sub)
            when publications were skipped (history lost, or the epoch changed); delivery
            continues after that position.
        history_limit: most publications read from the history in one fill.
        retry_delay: seconds before the first new fill attempt while the broker is
            unreachable (doubling up to 2 s; the first failure is logged).
    """

    def __init__(
        self,
        broker: Broker,
        room: str,
        *,
        deliver: Callable[[Publication], None],
        resync: Callable[[Position, tuple[Publication, ...]], None],
        history_limit: int = 1000,
        retry_delay: float = 0.2,
    ) -> None:
        self.broker = broker
        self.room = room
        self.epoch = ""
        self.offset = 0  # the newest offset delivered (or resynced to)
        self._deliver = deliver
        self._resync = resync
        self._limit = history_limit
        self._retry = retry_delay
        self._held: dict[int, Publication] = {}  # past a gap, waiting for the fill
        self._filling: asyncio.Task[None] | None = None
        self._early: list[Publication] | None = None  # arrived while starting
        self.fills = 0  # gaps filled from the history
        self.resyncs = 0

    async def start(self, limit: int, load: Callable[[Snapshot], None]) -> Snapshot:
        """Subscribe, read the room's snapshot (``limit`` newest publications) and hand it
        to ``load``; deliver every publication after it from then on.

        Raises:
            BrokerError: the broker could not be reached (the caller closes the feed).
        """
        self._early = []
        await self.broker.subscribe(self.room, self._on_publication)
        snapshot = await self.broker.snapshot(self.room, limit)
        self.epoch, self.offset = snapshot.position.epoch, snapshot.position.offset
        load(snapshot)
        early, self._early = self._early, None
        for publication in early:
            self._on_publication(publication)
        return snapshot

    def check(self) -> None:
        """Read the history after the last offset delivered; deliver or resync."""
        if self._early is None and (self._filling is None or self._filling.done()):
            self._filling = asyncio.get_running_loop().create_task(self._fill(check=True))

    async def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filling
        with contextlib.suppress(BrokerError):
            await self.broker.unsubscribe(self.room)

    def _on_publication(self, publication: Publication) -> None:
        if self._early is not None:
            self._early.append(publication)
            return
        if publication.epoch != self.epoch:
            # The room's history was lost and restarted: what came before is gone.
            self._resync_to(Position(publication.epoch, 0), ())
        offset = publication.offset
        if offset <= self.offset:
            return  # a duplicate (already delivered, or filled from the history)
        if offset == self.offset + 1 and not self._held:
            self.offset = offset
            self._deliver(publication)
            return
        self._held[offset] = publication
        if self._filling is None or self._filling.done():
            self._filling = asyncio.get_running_loop().create_task(self._fill())

    def _resync_to(self, position: Position, newest: tuple[Publication, ...]) -> None:
        self.resyncs += 1
        self.epoch, self.offset = position.epoch, position.offset
        self._held = {o: p for o, p in self._held.items() if p.epoch == position.epoch}
        self._resync(position, newest)

    def _drain(self) -> None:
        """Deliver held publications that now follow on; drop those already covered."""
        for offset in sorted(self._held):
            if offset <= self.offset:
                del self._held[offset]
            elif offset == self.offset + 1:
                self.offset = offset
                self._deliver(self._held.pop(offset))
            else:
                break

    async def _fill(self, *, check: bool = False) -> None:
        failures = 0  # reads failed in a row: the wait doubles, up to 2 s
        while self._held or check:
            self._drain()
            if not self._held and not check:
                return
            check = False
            try:
                history = await self.broker.history(
                    self.room, after=self.offset, epoch=self.epoch, limit=self._limit
                )
            except BrokerError as exc:
                if failures == 0:
                    log.warning("filling a gap in room %r failed (%s); retrying", self.room, exc)
                failures += 1
                await asyncio.sleep(min(self._retry * 2 ** min(failures - 1, 4), 2.0))
                check = True  # the read did not happen: do it again
                continue
            failures = 0
            if not history.complete:
                self._resync_to(history.position, history.publications)
            else:
                self.fills += 1
                for publication in history.publications:
                    if publication.offset == self.offset + 1:
                        self.offset = publication.offset
                        self._held.pop(publication.offset, None)
                        self._deliver(publication)
            self._drain()
