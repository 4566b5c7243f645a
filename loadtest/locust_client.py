"""A liveroom protocol v1 client for Locust users: blocking calls on gevent, one reader greenlet.

:class:`LiveroomConnection` is one websocket (``websocket-client``, msgpack subprotocol,
the token in ``?token=``) and a reader greenlet that decodes every server message with the
sans-I/O :mod:`protocol` codec. A command carrying a ``rid`` is answered by the message
carrying the same ``rid`` (SPEC §3), whatever arrives in between; pushed ``batch`` frames
are counted, and for a *sampled* connection each comment's delivery latency is handed to
a callback. It never imports Locust: the load test's user (``loadtest/locustfile.py``)
turns calls and callbacks into Locust request events.

Guarantees:

* :meth:`LiveroomConnection.open` returns a connection that has received ``welcome``, or
  raises (:class:`ConnectionClosed`, :class:`AnswerTimeout`, an ``OSError`` or a
  ``websocket`` error) within ``timeout`` seconds and leaves no socket or greenlet behind.
* :meth:`LiveroomConnection.call` returns the answer to its ``rid`` or raises
  :class:`AnswerTimeout` after ``timeout`` seconds, or :class:`ConnectionClosed` as soon as
  the connection ends; it never waits longer than ``timeout``.
* Once the connection ends, for any reason, every pending and later call fails with
  :class:`ConnectionClosed`; :meth:`LiveroomConnection.close` is idempotent, bounded in
  time, and ends the reader greenlet.
* Memory per connection is bounded: counters, not lists, record the pushed events.

Works only in a process that gevent has monkeypatched (as Locust does at import): the
socket calls then yield to other greenlets instead of blocking the process.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import gevent  # type: ignore[import-untyped]  # gevent ships no type information
from gevent.event import AsyncResult, Event  # type: ignore[import-untyped]
from websocket import ABNF, WebSocket, WebSocketTimeoutException, create_connection

from protocol import MSGPACK, Batch, ClientMessage, Joined, ProtocolError, ServerMessage, Welcome

__all__ = [
    "AnswerTimeout",
    "ConnectionClosed",
    "LiveroomConnection",
    "PushStats",
]

_BATCH_HEAD: Final = b"\xa1t\xa5batch"
"""What follows the map header of a ``batch`` written ``t`` first, as the server does (§2).

Only used to skip decoding batches that a connection does not sample: a payload with this
head is certainly a batch; one without it is decoded in full, so a server writing its keys
in another order costs time, never correctness."""


class ConnectionClosed(Exception):
    """The connection ended; ``code`` is the server's close code (None: no close frame)."""

    def __init__(self, code: int | None, reason: str) -> None:
        shown = "no close frame" if code is None else str(code)
        super().__init__(f"connection closed ({shown})" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class AnswerTimeout(Exception):
    """No answer to a command (or no ``welcome``) within the time allowed."""


class PushStats:
    """What one connection received besides answers: frames, events by type, comments."""

    __slots__ = ("batches", "comments", "decode_errors", "events", "resyncs", "unmatched")

    def __init__(self) -> None:
        self.batches = 0
        self.comments = 0  # comment events seen (sampled connections only)
        self.events: Counter[str] = Counter()  # event types seen (sampled connections only)
        self.decode_errors = 0  # server payloads the protocol decoder refused
        self.resyncs = 0  # unsolicited ``joined`` (the room's history was reset, §8)
        self.unmatched = 0  # answers whose rid no call waits for (late or duplicate)


CommentHook = Callable[[int, float], None]
"""Called with a comment's server ``ts`` (unix ms) and its local receipt time (unix s)."""
ProblemHook = Callable[[str, Exception], None]
"""Called by the reader with a short name (``decode``, ``close``) and what went wrong."""


class LiveroomConnection:
    """One open connection; create with :meth:`open`, end with :meth:`close`."""

    def __init__(
        self,
        ws: WebSocket,
        welcome: Welcome,
        *,
        on_comment: CommentHook | None = None,
        on_problem: ProblemHook | None = None,
    ) -> None:
        self.welcome = welcome
        self.push = PushStats()
        self._ws = ws
        self._on_comment = on_comment
        self._on_problem = on_problem
        self._pending: dict[str | int, Any] = {}  # rid -> AsyncResult of the answer
        self._rids = itertools.count(1)
        self._closing = False
        self._ended = Event()
        self._end: ConnectionClosed | None = None
        self._reader = gevent.spawn(self._read)

    @classmethod
    def open(
        cls,
        url: str,
        token: str,
        *,
        timeout: float,
        on_comment: CommentHook | None = None,
        on_problem: ProblemHook | None = None,
    ) -> LiveroomConnection:
        """Connect to ``url`` (``ws://`` or ``wss://``) with ``token``; wait for ``welcome``.

        Args:
            url: the server's websocket URL, without query string.
            token: a v1 token (URL-safe as minted, SPEC §1).
            timeout: seconds for the handshake and ``welcome`` together.
            on_comment: called for every comment event pushed to this connection (the
                connection then decodes every batch; without it, batches are only counted).
            on_problem: called for malformed server messages and unexpected closes.

        Raises:
            ConnectionClosed: the server closed the connection before ``welcome``
                (e.g. 4001 for a bad token).
            AnswerTimeout: no ``welcome`` within ``timeout``.
            ProtocolError: the first message is not a valid server message.
            OSError, websocket.WebSocketException: the handshake failed.
        """
        deadline = time.monotonic() + timeout
        ws = create_connection(
            f"{url}?token={token}",
            timeout=timeout,
            subprotocols=[MSGPACK.subprotocol],
            enable_multithread=True,  # a lock around sends: the reader answers pings too
        )
        try:
            chosen = ws.getsubprotocol()
            if chosen != MSGPACK.subprotocol:
                raise ConnectionClosed(None, f"server chose subprotocol {chosen!r}")
            while True:  # skip control frames; the first data frame must be welcome
                ws.settimeout(max(0.001, deadline - time.monotonic()))
                try:
                    opcode, data = ws.recv_data()
                except (WebSocketTimeoutException, TimeoutError):
                    raise AnswerTimeout(f"no welcome within {timeout:g} s") from None
                if opcode == ABNF.OPCODE_CLOSE:
                    raise ConnectionClosed(*_close_frame(data))
                if opcode == ABNF.OPCODE_BINARY:
                    break
            first = MSGPACK.decode_server(data)
            if not isinstance(first, Welcome):
                raise ConnectionClosed(
                    None, f"first message is {type(first).__name__}, not welcome"
                )
            ws.settimeout(None)  # from now on the reader greenlet blocks on the socket
        except BaseException:
            _shutdown(ws)
            raise
        return cls(ws, first, on_comment=on_comment, on_problem=on_problem)

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (calls fail with :class:`ConnectionClosed`)."""
        return bool(self._ended.is_set())

    def next_rid(self) -> str:
        """A request id unique on this connection (``c1``, ``c2``, …)."""
        return f"c{next(self._rids)}"

    def send(self, message: ClientMessage) -> None:
        """Send one message without waiting for anything.

        Raises:
            ConnectionClosed: the connection has ended.
        """
        if self._end is not None:
            raise self._end
        try:
            self._ws.send_binary(MSGPACK.encode(message))
        except Exception as exc:  # the socket broke under the send
            raise ConnectionClosed(None, f"send failed: {exc!r}") from None

    def call(
        self, message: ClientMessage, timeout: float, *, keep_on_timeout: bool = False
    ) -> ServerMessage:
        """Send ``message`` (it must carry a ``rid``) and return the answer with that ``rid``.

        Args:
            message: a client message with a ``rid``.
            timeout: seconds to wait for the answer.
            keep_on_timeout: leave the ``rid`` waiting after a timeout, so that a late
                answer is kept for the next call with the same ``rid`` (a retried
                ``buy``, SPEC §9.3): that call then returns it at once, without sending
                anything. Call :meth:`forget` when done with the ``rid``.

        Raises:
            AnswerTimeout: no answer within ``timeout``.
            ConnectionClosed: the connection ended before the answer came.
        """
        rid = getattr(message, "rid", None)
        if rid is None:
            raise ValueError("call() needs a message with a rid")
        slot = self._pending.get(rid)
        if slot is None:
            slot = self._pending[rid] = AsyncResult()
        try:
            if not slot.ready():  # else: the late answer to an earlier call with this rid
                self.send(message)
            answer: ServerMessage = slot.get(timeout=timeout)
        except gevent.Timeout:
            if not keep_on_timeout:
                self._pending.pop(rid, None)
            raise AnswerTimeout(f"no answer to {message.TYPE} within {timeout:g} s") from None
        except BaseException:
            self._pending.pop(rid, None)
            raise
        self._pending.pop(rid, None)
        return answer

    def forget(self, rid: str | int) -> None:
        """Stop waiting for answers to ``rid`` (a later one counts as unmatched)."""
        self._pending.pop(rid, None)

    def close(self, timeout: float = 1.0) -> None:
        """Close with 1000 and wait up to ``timeout`` for the server's close; idempotent."""
        if not self._closing:
            self._closing = True
            if not self._ended.is_set():
                with contextlib.suppress(Exception):  # already broken: the reader ends anyway
                    self._ws.send_close()
                self._ended.wait(timeout)
        self._reader.kill(block=True, timeout=timeout)
        _shutdown(self._ws)
        self._finish(ConnectionClosed(1000, "closed by the client"))

    # --- the reader greenlet ------------------------------------------------------------

    def _read(self) -> None:
        end = ConnectionClosed(None, "connection lost")
        try:
            while True:
                opcode, data = self._ws.recv_data()
                if opcode == ABNF.OPCODE_CLOSE:
                    end = ConnectionClosed(*_close_frame(data))
                    break
                if opcode == ABNF.OPCODE_BINARY:
                    self._received(data)
                # a text frame is not ours to read on msgpack; the server never sends one
        except Exception as exc:  # the socket broke, or close() shut it down
            end = ConnectionClosed(None, f"connection lost: {exc!r}")
        finally:
            if not self._closing and self._on_problem is not None:
                self._on_problem("close", end)
            self._finish(end)

    def _received(self, data: bytes) -> None:
        if data[1:9] == _BATCH_HEAD and data[0] & 0xF0 == 0x80:
            self.push.batches += 1
            if self._on_comment is not None:
                self._comments(data)
            return
        try:
            message = MSGPACK.decode_server(data)
        except ProtocolError as exc:
            self._problem(exc)
            return
        rid = getattr(message, "rid", None)
        if rid is not None:
            slot = self._pending.get(rid)
            if slot is None or slot.ready():  # nobody waits, or a second answer to the rid
                self.push.unmatched += 1
            else:
                slot.set(message)
        elif isinstance(message, Batch):  # a batch whose keys came in another order
            self.push.batches += 1
            if self._on_comment is not None:
                self._comments(data)
        elif isinstance(message, Joined):
            self.push.resyncs += 1
        # welcome again, an error without rid, a new message type: nothing to route

    def _comments(self, data: bytes) -> None:
        """Hand each comment of a batch to the hook (plain values: no typed decoding)."""
        received = time.time()
        try:
            batch = MSGPACK.loads(data, max_items=len(data))  # server messages: no item bound
            events = batch["ev"]
            for event in events:
                kind = event.get("t") if isinstance(event, dict) else None
                if not isinstance(kind, str):
                    continue
                self.push.events[kind] += 1
                if kind == "comment":
                    ts = event.get("ts")
                    if isinstance(ts, int) and self._on_comment is not None:
                        self.push.comments += 1
                        self._on_comment(ts, received)
        except (ProtocolError, KeyError, TypeError, AttributeError) as exc:
            self._problem(exc)

    def _problem(self, exc: Exception) -> None:
        self.push.decode_errors += 1
        if self._on_problem is not None:
            self._on_problem("decode", exc)

    def _finish(self, end: ConnectionClosed) -> None:
        """Fail every pending call with ``end`` (once) and mark the connection ended."""
        if self._end is None:
            self._end = end
        pending, self._pending = self._pending, {}
        for slot in pending.values():
            if not slot.ready():
                slot.set_exception(self._end)
        self._ended.set()


def _shutdown(ws: WebSocket) -> None:
    """Close the socket at once (``WebSocket.shutdown`` carries no type hints)."""
    ws.shutdown()  # type: ignore[no-untyped-call]


def _close_frame(data: bytes) -> tuple[int | None, str]:
    """The code and reason of a close frame's payload (RFC 6455 §5.5.1)."""
    if len(data) < 2:
        return None, ""
    return int.from_bytes(data[:2], "big"), data[2:].decode("utf-8", "replace")
