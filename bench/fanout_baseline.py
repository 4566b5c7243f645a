"""Raw fan-out baseline server: uvloop + ``asyncio.Protocol`` + a pre-encoded transport.write loop.

The floor liveroom's fan-out is compared against. Each connection completes the websocket
opening handshake with websockets' sans-I/O ``ServerProtocol`` (as ``engine/gateway.py``
does) and is then only a transport. On command, the server writes one pre-encoded frame
to every open transport, round after round, yielding to the event loop between rounds
(``await asyncio.sleep(0)``), for a bounded time and number of rounds.

Control is line-oriented JSON: the first stdout line is ``{"port": PORT}``; stdin takes
``{"cmd": "blast", "frame": HEX, "seconds": S, "max_rounds": R, "limit": BYTES}`` (the
answer is one stdout line with the blast's figures), ``{"cmd": "stats"}`` and
``{"cmd": "quit"}``. The process exits on ``quit``, on stdin EOF, or after ``--lifetime``
seconds, whichever comes first.

A transport whose unsent bytes exceed ``limit`` is skipped for that round (counted), so a
slow reader bounds memory instead of growing it (liveroom cuts such a peer off instead).

Usage: ``python -m bench.fanout_baseline [--host 127.0.0.1] [--port 0] [--lifetime 900]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from typing import Any, cast

import uvloop
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from bench.procs import raise_nofile

__all__ = ["RawServer", "main"]

SUBPROTOCOL = Subprotocol("liveroom.v1.msgpack")


class RawConn(asyncio.Protocol):
    """One peer: the handshake through ``ServerProtocol``, then a bare transport."""

    __slots__ = ("server", "transport", "ws")

    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.ws = ServerProtocol(subprotocols=[SUBPROTOCOL], max_size=4096)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        transport = self.transport
        assert transport is not None
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                response = ws.accept(event)
                ws.send_response(response)
                if response.status_code == 101:
                    self.server.open[transport] = None
        for chunk in ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.open.pop(self.transport, None)


class RawServer:
    """Open websocket transports and the blast loop."""

    def __init__(self) -> None:
        self.open: dict[asyncio.Transport, None] = {}

    def __call__(self) -> RawConn:
        return RawConn(self)

    async def blast(
        self, frame: bytes, *, seconds: float, max_rounds: int, limit: int
    ) -> dict[str, Any]:
        """Write ``frame`` to every open transport, round after round; return the figures."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + seconds
        cpu0 = os.times()
        rounds = skipped = 0
        transports = list(self.open)
        peers = len(transports)
        while rounds < max_rounds:
            for transport in transports:
                if transport.get_write_buffer_size() > limit:
                    skipped += 1
                    continue
                transport.write(frame)
            rounds += 1
            await asyncio.sleep(0)
            if loop.time() >= deadline:
                break
        elapsed = loop.time() - t0
        cpu1 = os.times()
        return {
            "peers": peers,
            "rounds": rounds,
            "writes": rounds * peers - skipped,
            "skipped": skipped,
            "seconds": elapsed,
            "cpu_seconds": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "frame_bytes": len(frame),
        }


async def _serve(host: str, port: int, lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    raw = RawServer()
    server = await loop.create_server(raw, host, port, backlog=4096)
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)  # commands carry whole frames
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    answer({"port": server.sockets[0].getsockname()[1]})
    try:
        async with asyncio.timeout(lifetime):
            while True:
                line = await reader.readline()
                if not line:
                    break
                cmd = json.loads(line)
                if cmd["cmd"] == "blast":
                    result = await raw.blast(
                        bytes.fromhex(cmd["frame"]),
                        seconds=float(cmd["seconds"]),
                        max_rounds=int(cmd.get("max_rounds", 10_000_000)),
                        limit=int(cmd.get("limit", 1 << 20)),
                    )
                    answer(result)
                elif cmd["cmd"] == "stats":
                    answer({"open": len(raw.open)})
                elif cmd["cmd"] == "quit":
                    break
    except TimeoutError:
        pass
    finally:
        server.close()
        for transport in list(raw.open):
            transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit after SECONDS")
    args = parser.parse_args(argv)
    raise_nofile()
    uvloop.run(_serve(args.host, args.port, args.lifetime))


if __name__ == "__main__":
    main()
