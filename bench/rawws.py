"""Raw websocket client pieces shared by the benchmarks' cheap clients.

The benchmark clients are bare ``asyncio.Protocol`` objects (thousands per process), so
they speak the client side of RFC 6455 by hand: the upgrade request, zero-masked client
frames, and opening many connections with bounded concurrency and time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from loadtest.swarm_conn import client_frame  # one masking client framer for bench and swarm
from loadtest.swarm_conn import upgrade_request as swarm_upgrade_request
from protocol import MSGPACK

__all__ = ["SUBPROTOCOL", "ZERO_MASK", "OpenResult", "client_frame", "open_all", "upgrade_request"]

SUBPROTOCOL = MSGPACK.subprotocol
ZERO_MASK = b"\x00\x00\x00\x00"


def upgrade_request(host: str, port: int, token: str | None) -> bytes:
    """The HTTP upgrade request for the msgpack subprotocol, token in the query string."""
    return swarm_upgrade_request(f"{host}:{port}", token)


@dataclass(frozen=True, slots=True)
class OpenResult:
    opened: int
    failed: int
    seconds: float
    first_error: str


async def open_all(
    conns: Sequence[asyncio.Protocol],
    ready: Callable[[asyncio.Protocol], Awaitable[None]],
    host: str,
    port: int,
    *,
    concurrency: int,
    timeout: float,
    per_second: float,
) -> OpenResult:
    """Connect every protocol (``concurrency`` at a time) and wait until each is ``ready``.

    Each connection gets ``timeout`` to become ready; the whole call at most ``timeout``
    plus one second per ``per_second`` connections.
    """
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)

    async def one(conn: asyncio.Protocol) -> None:
        async with sem:
            await loop.create_connection(lambda: conn, host, port)
            await asyncio.wait_for(ready(conn), timeout)

    t0 = time.monotonic()
    async with asyncio.timeout(timeout + len(conns) / per_second):
        results = await asyncio.gather(*(one(c) for c in conns), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    return OpenResult(
        opened=len(conns) - len(failures),
        failed=len(failures),
        seconds=time.monotonic() - t0,
        first_error=repr(failures[0]) if failures else "",
    )
