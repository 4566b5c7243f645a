"""The room broker: how a room's events reach every node that has viewers in the room.

A broker gives each room one order, cluster-wide: every published event gets the room's
next offset within the room's current epoch, is kept in a bounded per-room history, and
is delivered to every subscriber of the room (one per node) in offset order. Payloads are
opaque bytes to the broker (nodes put encoded room events in them).

Guarantees of every :class:`Broker` (one contract test suite runs against all):

* :meth:`Broker.publish` of N payloads gives them N consecutive offsets, in order, in one
  atomic step, and returns their :class:`Publication` s (the offsets are the ones every
  node sees). Offsets start at 1 in each epoch.
* A room's history keeps at least its last ``history_size`` publications.
  :meth:`Broker.history` returns the publications after an offset, or says the caller
  must resync: another epoch, an offset ahead of the room, or publications no longer held.
* The epoch changes exactly when the room's history is lost (for Redis: its keys flushed,
  evicted or lost in a failover), so an old offset is never mistaken for a new one.
* A subscriber's handler is called for each publication of its room, in offset order,
  from the event loop; a subscriber that misses publications (e.g. across a reconnect)
  notices the gap by offset and fills it with :meth:`Broker.history`.
* A room's state (small named values such as its pinned product) is set in the same
  atomic step as a publication (``publish(..., state=...)``), and read with the room's
  newest publications in one atomic :meth:`Broker.snapshot`, so a node that starts
  following a room sees a state and history that agree. ``once`` makes an event
  cluster-wide once-only (every node may try; one publishes).
* Viewer counts and likes: each node reports per room its viewer count (with an expiry)
  and the likes it took since its last report (:meth:`Broker.report`), and reads back
  each room's viewer total over the live nodes and its likes total; no per-viewer or
  per-like traffic crosses the network.
* A failure to reach the backend raises :class:`BrokerUnavailable` within a bounded time:
  whether a publish took effect is then unknown to the caller (it was not acknowledged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Handler",
    "History",
    "Position",
    "Publication",
    "Snapshot",
    "Totals",
]


class BrokerError(Exception):
    """Base class of every error a broker raises."""


class BrokerUnavailable(BrokerError):
    """The backend cannot be reached or did not answer in time (or the broker is closed)."""


@dataclass(frozen=True, slots=True)
class Publication:
    """One event of a room: its offset in the room's epoch and its payload."""

    room: str
    epoch: str
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Position:
    """Where a room stands: its epoch and the offset of its newest publication (0: none)."""

    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class History:
    """Publications after an offset, or a request to resync.

    Attributes:
        position: the room's position when read.
        publications: the publications after the asked offset, oldest first (up to the
            asked limit), when ``complete``; else the newest ones held (for a snapshot).
        complete: False when the asked offset cannot be resumed (other epoch, offset ahead
            of the room, or publications after it no longer held): the caller resyncs.
    """

    position: Position
    publications: tuple[Publication, ...]
    complete: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A room read in one atomic step: position, newest publications (oldest first), state."""

    position: Position
    publications: tuple[Publication, ...]
    state: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class Totals:
    """A room's viewers over every live node, and its likes ever."""

    viewers: int
    likes: int


Handler = Callable[[Publication], None]


class Broker(Protocol):
    """One order per room and delivery to subscribed nodes; see the module docstring."""

    async def publish(
        self,
        room: str,
        data: Sequence[bytes],
        *,
        state: Mapping[str, bytes | None] | None = None,
        once: str | None = None,
    ) -> list[Publication]:
        """Append ``data`` to the room in one atomic step; deliver to its subscribers.

        ``state``: fields of the room's state to set (``None``: delete) in the same step.
        ``once``: a state field; when it is already set nothing happens and ``[]`` is
        returned, else it is set with the rest.

        Raises:
            BrokerUnavailable: the backend could not be reached (nothing acknowledged).
        """
        ...

    async def subscribe(self, room: str, handler: Handler) -> Position:
        """Deliver the room's publications to ``handler`` from now on (one per room).

        Returns the room's position read after the subscription took effect, so that
        every publication after it reaches ``handler``.
        """
        ...

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering the room's publications (idempotent)."""
        ...

    async def history(self, room: str, *, after: int, epoch: str | None, limit: int) -> History:
        """The room's publications after offset ``after`` of ``epoch`` (at most ``limit``)."""
        ...

    async def position(self, room: str) -> Position:
        """The room's epoch and newest offset."""
        ...

    async def snapshot(self, room: str, limit: int) -> Snapshot:
        """The room's position, its newest ``limit`` publications and its state, at once."""
        ...

    async def report(
        self, node: str, rooms: Mapping[str, tuple[int, int]], ttl: float
    ) -> dict[str, Totals]:
        """Record per room this node's (viewer count, likes taken since its last report).

        A viewer count is valid for ``ttl`` seconds (0 withdraws the node); likes add to
        the room's total. Returns each room's totals: viewers over every node whose count
        has not expired (a dead node's viewers stop counting within ``ttl``), likes ever.
        """
        ...

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a subscription connection was lost and is back (the
        caller then checks its rooms for publications missed meanwhile)."""
        ...

    async def close(self) -> None:
        """Unsubscribe from everything and release connections."""
        ...
