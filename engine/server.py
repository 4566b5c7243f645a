"""Process lifecycle: listen, serve, and shut down gracefully.

``LiveroomServer`` owns the listening socket, the gateway, the hub and their periodic
tasks (timer sweep, conflation tick, descriptor probe), all inside one
``asyncio.TaskGroup``: no task is left behind. Shutdown stops accepting, sends every peer a
1001 "going away" close frame, waits up to ``server.close_timeout`` for the closing
handshakes, then aborts the rest.

The node's limits (engine/limits.py) are set up at start: :func:`run` raises the soft
open-files limit to the hard one; the server holds at most ``min(server.max_connections,
soft limit - server.fd_reserve)`` connections (1013 beyond), aborts new sockets at once
when descriptors are nearly used up, and keeps the unsent bytes of all connections under
``server.write_budget``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import sys

from engine.broker import Broker, BrokerError
from engine.broker import connect as connect_redis_broker
from engine.config import AuthConfig, Config, node_id
from engine.demo import demo_line, demo_warning
from engine.gateway import Connection, Gateway
from engine.limits import (
    ConnectionGuard,
    WriteBudget,
    effective_max_connections,
    open_files_limit,
    raise_open_files_limit,
)
from engine.relay import Relay
from engine.room import Hub, Subscriber
from engine.sales import SaleDesk
from engine.service import ServiceRunner, start_service
from engine.stock import MemoryStockStore, StockError, StockStore
from engine.stock import connect as connect_redis_store
from engine.trace import TraceRecorder
from protocol import CloseCode

__all__ = ["LiveroomServer", "connection_guard", "limits_line", "run"]

log = logging.getLogger("liveroom.server")


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    srv = config.server
    if not (srv.tls_cert and srv.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(srv.tls_cert, srv.tls_key)
    return ctx


async def _open_store(config: Config) -> StockStore:
    stock = config.stock
    if stock.backend == "redis":
        return await connect_redis_store(
            stock.redis_url,
            timeout=stock.redis_timeout,
            key_prefix=stock.key_prefix,
            cluster=stock.cluster,
        )
    return MemoryStockStore()


async def _open_broker(config: Config) -> Broker | None:
    """The Redis broker when rooms are shared; None for the embedded memory path."""
    broker = config.broker
    if broker.backend != "redis":
        return None
    return await connect_redis_broker(
        broker.redis_url,
        history_size=config.rooms.history_size,
        key_prefix=broker.key_prefix,
        timeout=broker.redis_timeout,
        cluster=broker.cluster,
        reconnect_max=broker.reconnect_max,
        room_ttl=broker.room_ttl,
    )


def connection_guard(config: Config) -> ConnectionGuard:
    """The connection limits of a node started now, from the current open-files limit."""
    srv = config.server
    soft = open_files_limit().soft
    return ConnectionGuard(
        effective_max_connections(srv.max_connections, soft, srv.fd_reserve),
        soft_limit=soft,
        fd_reserve=srv.fd_reserve,
        configured=srv.max_connections,
    )


def limits_line(config: Config) -> str:
    """Raise the open-files limit (as :func:`run` does) and name the effective limit.

    Returns:
        A comment line for the start-up config print, e.g. ``# effective max connections:
        19744 (open-files limit 20000, fd_reserve 256)``.
    """
    raise_open_files_limit()
    return f"# effective max connections: {connection_guard(config).describe()}"


def _cut_over_budget(sub: Subscriber) -> None:
    assert isinstance(sub, Connection)
    sub.over_budget()


class LiveroomServer:
    """One liveroom process's server; use ``async with LiveroomServer(config) as s``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hub: Hub | None = None
        self.gateway: Gateway | None = None
        self.store: StockStore | None = None
        self.desk: SaleDesk | None = None
        self.broker: Broker | None = None
        self.relay: Relay | None = None
        self.service: ServiceRunner | None = None
        self._server: asyncio.Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stopping: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    def _ws_port(self) -> int:
        """The websocket port once listening (the demo pages ask for it), else the configured."""
        return self.port if self._server is not None else self.config.server.port

    @property
    def service_url(self) -> str:
        assert self.service is not None, "service API not started"
        return f"http://{self.config.service.host}:{self.service.port}"

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
            empty_room_ttl=rooms.empty_room_ttl,
            max_rooms=rooms.max_rooms,
            slice_size=rooms.fanout_slice,
            write_limit=self.config.server.write_buffer_limit,
            write_budget=WriteBudget(self.config.server.write_budget),
            cut_off=_cut_over_budget,
            loop=loop,
        )
        self.store = await _open_store(self.config)
        self.desk = SaleDesk(self.store, self.hub, self.config.stock)
        learnt = await self.desk.load()  # the sales of the rooms this node will hold
        if learnt:
            log.info("learnt %d recent sales from the stock store", learnt)
        self.gateway = Gateway(self.config, self.hub, self.desk)
        if rooms.trace_dir:
            self.gateway.trace = TraceRecorder(
                rooms.trace_dir, node_id(self.config), self.config.auth.secret
            )
        self.broker = await _open_broker(self.config)
        if self.broker is not None:
            self.relay = Relay(
                self.broker,
                self.hub,
                node=node_id(self.config),
                viewers_ttl=self.config.broker.viewers_ttl,
                adopt=self.desk.adopt,
                observe=self.desk.observe,
            )
            self.desk.relay = self.gateway.relay = self.relay
        self.gateway.guard = guard = connection_guard(self.config)
        guard.install(loop)
        if self.config.service.enabled:
            self.service = await start_service(
                self.config, self.hub, self.gateway, self.desk, ws_port=self._ws_port
            )
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
            assert self.desk is not None
            buyers = tasks.create_task(self.desk.run())
            prober = tasks.create_task(self._probe_descriptors())
            started.set()
            await self._stopping.wait()
            sweeper.cancel()
            ticker.cancel()
            buyers.cancel()
            prober.cancel()

    async def _probe_descriptors(self) -> None:
        """uvloop never reports failed accepts: look for descriptor exhaustion every second."""
        assert self.gateway is not None
        guard = self.gateway.guard
        if guard.soft_limit is None:
            return
        while True:
            await asyncio.sleep(1.0)
            guard.probe()

    async def _tick(self) -> None:
        assert self.hub is not None and self.desk is not None
        relay = self.relay
        while True:
            await asyncio.sleep(self.config.rooms.conflate_interval_ms / 1000)
            if relay is not None:  # totals over every node, stock from the store
                try:
                    await relay.tick()
                    await self.desk.poll(r for r in self.hub.rooms.values() if r.slices)
                except Exception:  # a bug must not stop the node's conflation ticks
                    log.exception("shared-room tick failed")
            self.hub.tick()
            if self.gateway is not None and self.gateway.trace is not None:
                self.gateway.trace.flush()

    async def close(self) -> None:
        """Stop accepting, close every connection with 1001, wait, abort stragglers."""
        if self._server is None or self.gateway is None or self.hub is None:
            return
        if self.service is not None:
            await self.service.close()
            self.service = None
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
        if self.gateway.trace is not None:
            self.gateway.trace.flush()
            self.gateway.trace.close()
        if self.relay is not None:
            await self.relay.close()
        if self.broker is not None:
            await self.broker.close()
        self.gateway.guard.uninstall(asyncio.get_running_loop())
        if self.desk is not None:
            self.desk.close()
        if self.store is not None:
            await self.store.close()
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
    if config.demo.enabled and config.service.enabled and (warning := demo_warning(config)):
        log.warning("%s", warning)
    async with LiveroomServer(config) as server:
        # Long-lived objects made so far (modules, config) need no more GC scans.
        gc.freeze()
        print(f"liveroom listening on {server.url}", file=sys.stderr, flush=True)
        if server.service is not None and config.demo.enabled:
            print(demo_line(config, server.service.port), file=sys.stderr, flush=True)
        await stop.wait()
        print("liveroom shutting down", file=sys.stderr, flush=True)
    print("liveroom stopped", file=sys.stderr, flush=True)


def run(config: Config) -> int:
    """Run a server process until signalled; return the process exit code.

    A store that cannot be reached or a port that cannot be bound at start is a clear
    one-line error and exit code 1, not a traceback.
    """
    try:
        return _run(config)
    except (OSError, StockError, BrokerError) as exc:
        print(f"liveroom: cannot start: {exc}", file=sys.stderr)
        return 1


def _run(config: Config) -> int:
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{node_id(config)}] %(name)s: %(message)s",
    )
    raise_open_files_limit()  # the CLI did it already, before printing the effective limit
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
