"""A liveroom server process for the purchase benchmark, driven over stdin/stdout.

Run by :mod:`bench.purchase` as ``python -m bench.purchase_server``. It does what
``liveroom serve`` does (configuration from the ``LIVEROOM_*`` variables through
:func:`engine.config.load_config`, :class:`engine.server.LiveroomServer` on uvloop,
``gc.freeze()`` once started) and adds a line-based JSON control channel, so that the
benchmark opens its sales through ``SaleDesk.open_sale`` (the service API's own call) and
reads the desk's statistics without an HTTP round trip:

- stdout, once listening: ``{"port": P}``;
- stdin ``{"op": "open", "sales": [{"sale_id", "room", "stock", "limit"}, ...]}`` ->
  ``{"ok": true}`` or ``{"error": "..."}`` (a room needs a joined viewer first);
- stdin ``{"op": "stats"}`` -> the sale desk's and the gateway's statistics;
- stdin EOF, ``{"op": "quit"}``, SIGTERM or SIGINT: graceful shutdown, exit 0.

The process never outlives its parent for long: EOF on stdin (the parent died or closed
the pipe) stops it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import signal
import sys
import time
from typing import Any

from engine.config import load_config
from engine.server import LiveroomServer
from engine.stock import SaleSpec, StockError

__all__ = ["main"]


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _open(srv: LiveroomServer, sales: list[dict[str, Any]]) -> dict[str, Any]:
    desk = srv.desk
    assert desk is not None
    now = time.time()
    for sale in sales:
        spec = SaleSpec(
            sale_id=str(sale["sale_id"]),
            room=str(sale["room"]),
            product_id="bench-product",
            stock=int(sale["stock"]),
            price=9900,
            per_user_limit=int(sale["limit"]),
            starts_at=now - 1.0,
            ends_at=now + 3600.0,
        )
        await desk.open_sale(spec)
    return {"ok": True, "opened": len(sales)}


def _stats(srv: LiveroomServer) -> dict[str, Any]:
    assert srv.desk is not None and srv.gateway is not None
    return {
        "desk": dataclasses.asdict(srv.desk.statistics()),
        "gateway": dataclasses.asdict(srv.gateway.statistics()),
    }


async def _serve() -> None:
    config = load_config()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with LiveroomServer(config) as srv:
        gc.freeze()  # as `liveroom serve` does once started
        _reply({"port": srv.port})

        async def control() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    return
                try:
                    cmd = json.loads(line)
                    op = cmd.get("op")
                    if op == "quit":
                        return
                    if op == "open":
                        _reply(await _open(srv, list(cmd["sales"])))
                    elif op == "stats":
                        _reply(_stats(srv))
                    else:
                        _reply({"error": f"unknown op {op!r}"})
                except (ValueError, KeyError, TypeError, StockError) as exc:
                    _reply({"error": f"{type(exc).__name__}: {exc}"})

        controller = asyncio.create_task(control())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({controller, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (controller, stopper):
            task.cancel()
        await asyncio.gather(controller, stopper, return_exceptions=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())


if __name__ == "__main__":
    main()
