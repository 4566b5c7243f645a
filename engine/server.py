"""Process lifecycle: listen, serve, and shut down gracefully.

``LiveroomServer`` owns the listening socket, the gateway, the hub and their periodic
tasks (timer sweep, conflation tick), all inside one ``asyncio.TaskGroup``: no task is
left behind. Shutdown stops accepting, sends every peer a 1001 "going away" close frame,
waits up to ``server.close_timeout`` for the closing handshakes, then aborts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import sys

from engine.config import AuthConfig, Config
from engine.gateway import Gateway
from engine.room import Hub
from protocol import CloseCode

__all__ = ["LiveroomServer", "run"]

log = logging.getLogger("liveroom.server")


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    srv = config.server
    if not (srv.tls_cert and srv.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(srv.tls_cert, srv.tls_key)
    return ctx


class LiveroomServer:
    """One liveroom process's server; use ``async with LiveroomServer(config) as s``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hub: Hub | None = None
        self.gateway: Gateway | None = None
        self._server: asyncio.Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "wss" if _ssl_context(self.config) else "ws"
        return f"{scheme}://{self.config.server.host}:{self.port}/"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        rooms = self.config.rooms
        self.hub = Hub(
            history_size=rooms.history_size,
            snapshot_size=rooms.snapshot_size,
            min_flush_interval=rooms.min_flush_interval_ms / 1000,
            loop=loop,
        )
        self.gateway = Gateway(self.config, self.hub)
        srv = self.config.server
        self._server = await loop.create_server(
            self.gateway,
            srv.host,
            srv.port,
            ssl=_ssl_context(self.config),
            reuse_port=srv.reuse_port or None,
            backlog=4096,
        )
        self._stopping = asyncio.Event()
        started = asyncio.Event()
        self._runner = asyncio.create_task(self._run_tasks(started))
        await started.wait()

    async def _run_tasks(self, started: asyncio.Event) -> None:
        assert self.gateway is not None and self._stopping is not None
        async with asyncio.TaskGroup() as tasks:
            sweeper = tasks.create_task(self.gateway.run_sweeper())
            ticker = tasks.create_task(self._tick())
            started.set()
            await self._stopping.wait()
            sweeper.cancel()
            ticker.cancel()

    async def _tick(self) -> None:
        assert self.hub is not None
        while True:
            await asyncio.sleep(self.config.rooms.conflate_interval_ms / 1000)
            self.hub.tick()

    async def close(self) -> None:
        """Stop accepting, close every connection with 1001, wait, abort stragglers."""
        if self._server is None or self.gateway is None or self.hub is None:
            return
        self._server.close()
        self.gateway.close_all(CloseCode.GOING_AWAY, "server shutting down")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gateway.drained.wait(), self.config.server.close_timeout)
        for conn in list(self.gateway.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()
        await self._runner
        self.hub.close()
        self._server = None

    async def __aenter__(self) -> LiveroomServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def serve_until_signalled(config: Config) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if config.auth.secret == AuthConfig().secret:
        log.warning("auth.secret is the built-in development secret: set LIVEROOM_AUTH_SECRET")
    async with LiveroomServer(config) as server:
        # Long-lived objects made so far (modules, config) need no more GC scans.
        gc.freeze()
        print(f"liveroom listening on {server.url}", file=sys.stderr, flush=True)
        await stop.wait()
        print("liveroom shutting down", file=sys.stderr, flush=True)
    print("liveroom stopped", file=sys.stderr, flush=True)


def run(config: Config) -> int:
    """Run a server process until signalled; return the process exit code."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("liveroom.ws").setLevel(logging.WARNING)
    if config.server.uvloop:
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop not installed; using the default asyncio loop")
        else:
            uvloop.run(serve_until_signalled(config))
            return 0
    asyncio.run(serve_until_signalled(config))
    return 0
