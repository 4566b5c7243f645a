"""A small asyncio client for liveroom, on the ``websockets`` client library.

For tests, benchmarks, load tests and scripts. It speaks protocol v1 in either codec,
matches answers to commands by request id, queues room events in arrival order, and
remembers each room's latest offset and epoch so that :meth:`LiveroomClient.join` can
resume after a reconnect. An unsolicited ``joined`` (the room's history was reset under
the client, SPEC §8) replaces the room's epoch and offset, queues its ``recent`` events
and counts in :attr:`LiveroomClient.resyncs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from protocol import (
    CODECS,
    Ack,
    Batch,
    Buy,
    BuyResult,
    ClientMessage,
    Codec,
    Comment,
    Error,
    Join,
    Joined,
    Leave,
    Left,
    Like,
    Ping,
    Pong,
    Refresh,
    Refreshed,
    RoomEvent,
    SendComment,
    ServerMessage,
    Welcome,
)
from protocol.messages import OFFSET_EVENT_TYPES

__all__ = ["CommandError", "LiveroomClient"]

_OFFSET_EVENTS = tuple(OFFSET_EVENT_TYPES.values())
"""Events that carry the room's offset (comments, system messages, pins, sale events):
each one moves the offset a resume starts from (SPEC §8)."""


class CommandError(Exception):
    """The server refused a command with an ``error`` answer."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code
        self.error = error


class LiveroomClient:
    """One connection. Create with :meth:`connect`; close with :meth:`close` or ``async with``."""

    def __init__(self, ws: ClientConnection, codec: Codec, welcome: Welcome) -> None:
        self.ws = ws
        self.codec = codec
        self.welcome = welcome
        self.events: asyncio.Queue[tuple[str, RoomEvent]] = asyncio.Queue()
        self.offsets: dict[str, tuple[str, int]] = {}  # room -> (epoch, last offset seen)
        self.unsolicited: list[ServerMessage] = []  # errors without rid, unknown answers
        self.resyncs = 0  # unsolicited joined: a room's history was reset under us
        self._rids = itertools.count(1)
        self._waiting: dict[str | int, asyncio.Future[ServerMessage]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | None = None,
        *,
        codec: str = "msgpack",
        **ws_options: Any,
    ) -> LiveroomClient:
        """Open a connection and wait for ``welcome``.

        Raises:
            websockets.exceptions.ConnectionClosed: the server closed it (bad token…).
        """
        subprotocol = f"liveroom.v1.{codec}"
        if token is not None:
            url += ("&" if "?" in url else "?") + f"token={token}"
        ws = await connect(url, subprotocols=[subprotocol], **ws_options)  # type: ignore[list-item]
        c = CODECS[subprotocol]
        try:
            first = c.decode_server(_as_bytes(await ws.recv()))
        except BaseException:
            await ws.close()
            raise
        if not isinstance(first, Welcome):
            await ws.close()
            raise RuntimeError(f"expected welcome, got {first!r}")
        return cls(ws, c, first)

    async def __aenter__(self) -> LiveroomClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    # --- commands -----------------------------------------------------------------------

    async def send_raw(self, message: ClientMessage) -> None:
        data = self.codec.encode(message)
        await self.ws.send(data if self.codec.binary else data.decode())

    async def _request(
        self, make: Any, timeout: float = 10.0, rid: str | int | None = None
    ) -> ServerMessage:
        if rid is None:
            rid = next(self._rids)
        fut: asyncio.Future[ServerMessage] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await self.send_raw(make(rid))
            answer = await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(rid, None)
        if isinstance(answer, Error):
            raise CommandError(answer)
        return answer

    async def join(self, room: str, *, resume: bool = False) -> Joined:
        """Join ``room``; with ``resume``, ask for the events missed since the last one seen."""
        epoch, offset = self.offsets.get(room, (None, None)) if resume else (None, None)
        answer = await self._request(
            lambda rid: Join(room=room, offset=offset, epoch=epoch, rid=rid)
        )
        assert isinstance(answer, Joined)
        last = max((e.offset for e in answer.recent if isinstance(e, _OFFSET_EVENTS)), default=None)
        if answer.resync or room not in self.offsets or last is not None:
            self.offsets[room] = (answer.epoch, last if last is not None else answer.offset)
        return answer

    async def leave(self, room: str) -> Left:
        answer = await self._request(lambda rid: Leave(room=room, rid=rid))
        assert isinstance(answer, Left)
        return answer

    async def comment(self, room: str, text: str) -> Ack:
        answer = await self._request(lambda rid: SendComment(room=room, text=text, rid=rid))
        assert isinstance(answer, Ack)
        return answer

    async def like(self, room: str, count: int = 1) -> Ack:
        answer = await self._request(lambda rid: Like(room=room, count=count, rid=rid))
        assert isinstance(answer, Ack)
        return answer

    async def buy(
        self, room: str, sale: str, qty: int = 1, *, rid: str | None = None, retry: bool = False
    ) -> BuyResult:
        """Press Buy; ``rid`` is the attempt's idempotency key (a fresh one by default).

        To retry an attempt whose answer was lost, call again with the same ``rid`` and
        ``retry=True``: it is never charged twice and returns the first answer.
        """
        key = rid if rid is not None else uuid.uuid4().hex
        answer = await self._request(
            lambda _rid: Buy(room=room, sale=sale, qty=qty, rid=key, retry=retry or None),
            rid=key,
        )
        assert isinstance(answer, BuyResult)
        return answer

    async def ping(self) -> Pong:
        answer = await self._request(lambda rid: Ping(rid=rid))
        assert isinstance(answer, Pong)
        return answer

    async def refresh(self, token: str) -> Refreshed:
        """Put a fresh token for the same user in force before ``welcome.expires``.

        Raises:
            CommandError: ``token_invalid``, ``token_expired`` or ``forbidden_room``; the
                old token stays in force (and the server closes with 4002 when it expires).
        """
        answer = await self._request(lambda rid: Refresh(token=token, rid=rid))
        assert isinstance(answer, Refreshed)
        return answer

    # --- events -------------------------------------------------------------------------

    async def next_event(self, timeout: float = 5.0) -> tuple[str, RoomEvent]:
        """The next room event as ``(room, event)``; raises TimeoutError."""
        return await asyncio.wait_for(self.events.get(), timeout)

    async def comments(self, timeout: float = 5.0) -> AsyncIterator[tuple[str, Comment]]:
        """Yield comments (skipping conflated events) until none arrives within ``timeout``."""
        while True:
            try:
                room, event = await self.next_event(timeout)
            except TimeoutError:
                return
            if isinstance(event, Comment):
                yield room, event

    async def _read(self) -> None:
        async for data in self.ws:
            message = self.codec.decode_server(_as_bytes(data))
            if isinstance(message, Batch):
                for event in message.events:
                    if isinstance(event, _OFFSET_EVENTS):
                        epoch = self.offsets.get(message.room, ("", 0))[0]
                        self.offsets[message.room] = (epoch, event.offset)
                    self.events.put_nowait((message.room, event))
                continue
            rid = getattr(message, "rid", None)
            if isinstance(message, Joined) and rid is None:  # a resync told by the server
                self.resyncs += 1
                self.offsets[message.room] = (message.epoch, message.offset)
                for event in message.recent:
                    self.events.put_nowait((message.room, event))
                continue
            fut = self._waiting.get(rid) if rid is not None else None
            if fut is not None and not fut.done():
                fut.set_result(message)
            else:
                self.unsolicited.append(message)


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data
