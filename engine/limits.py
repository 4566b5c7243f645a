"""Node-wide limits: open files (descriptors) and unsent bytes (the write budget).

A node must keep working when it is full: refuse what it cannot hold with a clear answer,
keep descriptors for its service API, Redis and logs, and bound the memory that viewers
who never read can pin.

Guarantees:

Open files
- :func:`raise_open_files_limit` raises the soft ``RLIMIT_NOFILE`` to the hard limit; when
  it cannot, it logs one WARNING and the lower limit stands.
- :func:`effective_max_connections` is ``min(server.max_connections, soft limit -
  server.fd_reserve)``: the connections a node holds (those still in their handshake
  count too); later ones are refused with 1013 after their handshake.
- :class:`ConnectionGuard` aborts a new TCP connection at once, before any handshake, when
  its descriptor lies within ``fd_reserve / 2`` of the soft limit: descriptors are given
  out lowest first, so descriptor *n* means *n* others are open. Refusals therefore cannot
  use up the descriptors the rest of the process needs.
- Aborts, failed accepts and 1013 refusals are each reported in one WARNING at most every
  10 s, with counts, naming the limit and the effective connection limit.

  What the event loops do when ``accept()`` fails with EMFILE (measured here, soft limit
  64): asyncio's selector loop calls the loop's exception handler for every failed
  accept (an ERROR with a traceback, ~90 a second) and pauses that listener for 1 s; the
  guard's exception handler turns those into its rate-limited warning. uvloop 0.23 never
  tells Python: libuv's "EMFILE trick" accepts and closes at once whatever waits in the
  backlog (clients see EOF) and the listener goes on. So :meth:`ConnectionGuard.probe`,
  run every second, opens ``/dev/null`` to find out whether the process is out of
  descriptors and reports it in the same warning.

Unsent bytes
- :class:`WriteBudget` is the node-wide account of unsent bytes (``server.write_budget``).
  Rooms keep it as a cheap estimate: after writing a slice they add the change of that
  slice's summed write-buffer sizes (one addition per slice, none per recipient). When the
  estimate passes the budget, an exact pass (the hub's, throttled to one per
  ``interval``) measures every subscriber, and if the node really is over budget it cuts
  off the subscribers with the most unsent bytes first until the total is at most 3/4 of
  the budget.
- After a pass that cut connections, freed memory is handed back to the OS with glibc's
  ``malloc_trim(0)`` (shortly after, once the aborted transports have let go of their
  buffers); elsewhere (musl, macOS) that step is a no-op.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConnectionGuard",
    "OpenFiles",
    "RateLimitedCount",
    "WriteBudget",
    "effective_max_connections",
    "malloc_trim",
    "open_files_limit",
    "raise_open_files_limit",
]

log = logging.getLogger("liveroom.limits")

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None  # type: ignore[assignment]

_NO_DESCRIPTOR = frozenset({errno.EMFILE, errno.ENFILE})

REPORT_PERIOD = 10.0
"""Seconds between two warnings of the same kind."""


# --------------------------------------------------------------------------- open files


@dataclass(frozen=True, slots=True)
class OpenFiles:
    """The process's open-files limit (``RLIMIT_NOFILE``); None where there is none."""

    soft: int | None
    hard: int | None


def _limit(value: int) -> int | None:
    return None if resource is None or value == resource.RLIM_INFINITY else value


def open_files_limit() -> OpenFiles:
    """The current soft and hard open-files limits of this process."""
    if resource is None:  # pragma: no cover
        return OpenFiles(None, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFiles(_limit(soft), _limit(hard))


def raise_open_files_limit() -> OpenFiles:
    """Raise the soft open-files limit to the hard limit; return the limits now in force.

    Idempotent. When the soft limit cannot be raised, one WARNING says so and the lower
    limit stands (the connection limit follows from it).
    """
    if resource is None:  # pragma: no cover
        return OpenFiles(None, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning(
                "cannot raise the open-files limit from %s to its hard limit %s: %s",
                soft,
                "unlimited" if hard == resource.RLIM_INFINITY else hard,
                exc,
            )
    return open_files_limit()


def effective_max_connections(max_connections: int, soft_limit: int | None, fd_reserve: int) -> int:
    """Connections a node holds: ``server.max_connections``, capped by the open files.

    Args:
        max_connections: ``server.max_connections``.
        soft_limit: the soft open-files limit (None: unlimited).
        fd_reserve: ``server.fd_reserve``, descriptors kept for everything else.

    Returns:
        ``min(max_connections, soft_limit - fd_reserve)``, never below 0.
    """
    if soft_limit is None:
        return max_connections
    return max(0, min(max_connections, soft_limit - fd_reserve))


class RateLimitedCount:
    """Counts occurrences and says when to report them: at most once per ``period``.

    :meth:`add` returns the count to report (everything since the last report) when a
    report is due, else None.
    """

    __slots__ = ("_clock", "_last", "_pending", "period", "total")

    def __init__(
        self, period: float = REPORT_PERIOD, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.period = period
        self.total = 0
        self._pending = 0
        self._last: float | None = None
        self._clock = clock

    def add(self, n: int = 1) -> int | None:
        self.total += n
        self._pending += n
        now = self._clock()
        if self._last is not None and now - self._last < self.period:
            return None
        self._last = now
        pending, self._pending = self._pending, 0
        return pending


class ConnectionGuard:
    """How many connections a node takes, and what it does when it is full.

    Args:
        max_connections: the effective limit (:func:`effective_max_connections`).
        soft_limit: the soft open-files limit; None disables the descriptor checks.
        fd_reserve: ``server.fd_reserve``; new sockets whose descriptor is at or above
            ``soft_limit - fd_reserve // 2`` are aborted at once.
        configured: ``server.max_connections``, for the warnings.
        clock: for the rate-limited warnings (tests pass a fake one).
    """

    __slots__ = (
        "_exhausted",
        "_near_limit",
        "_previous_handler",
        "_refusals",
        "ceiling",
        "configured",
        "fd_reserve",
        "max_connections",
        "soft_limit",
    )

    def __init__(
        self,
        max_connections: int,
        *,
        soft_limit: int | None = None,
        fd_reserve: int = 0,
        configured: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.configured = max_connections if configured is None else configured
        self.soft_limit = soft_limit
        self.fd_reserve = fd_reserve
        self.ceiling = None if soft_limit is None else soft_limit - fd_reserve // 2
        self._near_limit = RateLimitedCount(clock=clock)  # aborted in connection_made
        self._exhausted = RateLimitedCount(clock=clock)  # accepts failed / probes failed
        self._refusals = RateLimitedCount(clock=clock)  # 1013 after the handshake
        self._previous_handler: Any = None

    @property
    def aborted(self) -> int:
        """New connections aborted at once because descriptors were nearly used up."""
        return self._near_limit.total

    @property
    def exhausted(self) -> int:
        """Failed accepts reported by the loop plus probes that found no descriptor free."""
        return self._exhausted.total

    @property
    def refused(self) -> int:
        """Connections refused with 1013 because the node held ``max_connections``."""
        return self._refusals.total

    def describe(self) -> str:
        """The effective limit and where it comes from, for the start-up print."""
        if self.soft_limit is None:
            return f"{self.max_connections} (open-files limit: none)"
        return (
            f"{self.max_connections} (open-files limit {self.soft_limit}, "
            f"fd_reserve {self.fd_reserve})"
        )

    def admit(self, transport: asyncio.BaseTransport, held: int = 0) -> bool:
        """Whether a new TCP connection may go on to its handshake (else: abort it now).

        ``held``: connections open now. While they leave more than ``fd_reserve``
        descriptors below the ceiling the answer is yes at once: the reserve covers the
        process's other descriptors, and reading the socket is not free (uvloop makes and
        keeps a socket object per transport on first ask: about 0.3 KB per connection).
        """
        ceiling = self.ceiling
        if ceiling is None or held < ceiling - self.fd_reserve:
            return True
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd < ceiling:
            return True
        due = self._near_limit.add()
        if due is not None:
            log.warning(
                "open-files limit nearly reached: %d new connection(s) aborted at once "
                "(descriptor %d, soft limit %s, fd_reserve %d); the node holds at most "
                "%d connections",
                due,
                fd,
                self.soft_limit,
                self.fd_reserve,
                self.max_connections,
            )
        return False

    def refusal(self) -> None:
        """Count a 1013 refusal; warn at most once per period."""
        due = self._refusals.add()
        if due is not None:
            log.warning(
                "server full: %d connection(s) refused with 1013; effective max connections "
                "%s (server.max_connections %d)",
                due,
                self.describe(),
                self.configured,
            )

    def _no_descriptor(self, what: str) -> None:
        due = self._exhausted.add()
        if due is not None:
            log.warning(
                "open-files limit reached (%s, %d time(s)): new connections fail; the soft "
                "limit is %s and the node holds at most %d connections; raise the limit "
                "(ulimit -n, LimitNOFILE) or server.fd_reserve",
                what,
                due,
                self.soft_limit,
                self.max_connections,
            )

    def probe(self) -> bool:
        """Whether a descriptor can be opened now; report when none can."""
        try:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in _NO_DESCRIPTOR:
                self._no_descriptor("no descriptor free")
                return False
            raise
        os.close(fd)
        return True

    # The loop's exception handler: asyncio reports failed accepts through it.

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take over the loop's exception handler for failed accepts (others go on)."""
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self.handle_exception)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.get_exception_handler() == self.handle_exception:
            loop.set_exception_handler(self._previous_handler)

    def handle_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTOR:
            said = context.get("message") or "the event loop"
            self._no_descriptor(f"{said}: {os.strerror(exc.errno or 0)}")
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)


# --------------------------------------------------------------------------- write budget


def _load_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return typing.cast("Callable[[int], int]", trim)


_MALLOC_TRIM = _load_malloc_trim()


def malloc_trim() -> bool:
    """Hand free heap memory back to the OS (glibc); False where that is not possible."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


PassResult = tuple[int, int, int]
"""What an exact pass found: (unsent bytes before, unsent bytes after, connections cut)."""


class WriteBudget:
    """The node's unsent bytes against ``server.write_budget``.

    Rooms update :attr:`estimate` after each slice they write (see ``Room._write``) and
    call :meth:`over` when it passes :attr:`limit`; :meth:`over` schedules the exact pass
    that the hub registered with :meth:`attach`, on the next loop turn, or ``interval``
    after the previous pass.

    Args:
        limit: ``server.write_budget``, in bytes.
        interval: least time between two exact passes, in seconds.
        trim_delay: seconds between a pass that cut connections and ``malloc_trim``.
    """

    __slots__ = (
        "_cuts_report",
        "_handle",
        "_last",
        "_loop",
        "_run",
        "_trim_handle",
        "cuts",
        "estimate",
        "interval",
        "limit",
        "passes",
        "target",
        "trim_delay",
        "trims",
        "unsent",
    )

    def __init__(self, limit: int, *, interval: float = 0.25, trim_delay: float = 0.1) -> None:
        self.limit = limit
        self.target = limit * 3 // 4  # an over-budget pass cuts until unsent <= target
        self.interval = interval
        self.trim_delay = trim_delay
        self.estimate = 0  # sum over slices of their last measured unsent bytes
        self.unsent = 0  # exact unsent bytes of room subscribers after the last pass
        self.passes = 0
        self.cuts = 0
        self.trims = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run: Callable[[], PassResult] | None = None
        self._handle: asyncio.Handle | None = None
        self._trim_handle: asyncio.Handle | None = None
        self._last = -1e9
        self._cuts_report = RateLimitedCount()

    def attach(self, loop: asyncio.AbstractEventLoop, run: Callable[[], PassResult]) -> None:
        """Register the exact pass (the hub's) and the loop it runs on."""
        self._loop = loop
        self._run = run

    def over(self) -> None:
        """The estimate passed the limit: make sure an exact pass is coming."""
        loop = self._loop
        if self._handle is not None or loop is None:
            return
        wait = self._last + self.interval - loop.time()
        if wait > 0:
            self._handle = loop.call_later(wait, self.run_pass)
        else:
            self._handle = loop.call_soon(self.run_pass)

    def run_pass(self) -> PassResult:
        """Run the exact pass now; log and schedule a trim if it cut connections."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        assert self._run is not None and self._loop is not None, "WriteBudget not attached"
        self._last = self._loop.time()
        self.passes += 1
        before, after, cut = result = self._run()
        self.unsent = after
        if cut:
            self.cuts += cut
            due = self._cuts_report.add(cut)
            if due is not None:
                log.warning(
                    "node write budget exceeded: %d bytes unsent > server.write_budget %d; "
                    "cut off the %d connection(s) with the most unsent bytes (4008), now %d "
                    "bytes (%d cut since the last such line)",
                    before,
                    self.limit,
                    cut,
                    after,
                    due,
                )
            if self._trim_handle is None:
                self._trim_handle = self._loop.call_later(self.trim_delay, self._trim)
        return result

    def _trim(self) -> None:
        self._trim_handle = None
        if malloc_trim():
            self.trims += 1

    def close(self) -> None:
        for handle in (self._handle, self._trim_handle):
            if handle is not None:
                handle.cancel()
        self._handle = self._trim_handle = None
