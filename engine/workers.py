"""``liveroom serve --workers N``: a supervisor running N worker processes on the same ports.

The supervisor serves nothing itself. It starts N ``liveroom serve`` processes with the
same configuration file and environment, each with ``server.workers = 1`` and
``server.reuse_port = true``, and the kernel (SO_REUSEPORT) spreads the websocket and
service API connections over them. Rooms and stock are shared through Redis, which is why
:func:`engine.config.validate_config` demands the Redis broker and store for N > 1.

Guarantees:

* Ports: every worker listens on the same websocket and service ports. A port configured as
  0 is picked once by the supervisor and stays reserved (a bound, never-listening
  SO_REUSEPORT socket, which the kernel never hands a connection) until the supervisor
  exits, so a restarted worker gets the same port back.
* Node ids: with ``server.node_id`` set, worker *i* (1..N) is ``<node_id>-w<i>``; otherwise
  each worker has its default ``<hostname>-<pid>``. A worker configuration that would be
  invalid (a node id too long once suffixed) is a :class:`~engine.config.ConfigError`
  before any process starts.
* Ready: ``liveroom supervisor: N workers on ws://HOST:PORT/ (service http://HOST:PORT)``
  goes to stderr once every worker has printed its ``liveroom listening on`` line. Worker
  stderr is relayed to the supervisor's stderr line by line, unchanged.
* Restarts: a worker that exits while the supervisor is not stopping is started again and
  ``worker <i> (pid P) exited with status S; restarting`` is logged at warning level (S is
  the Python return code: ``-9`` for SIGKILL). A worker that dies within
  :data:`STABLE_AFTER` seconds of its start is restarted after a delay doubling from
  :data:`FIRST_BACKOFF` to :data:`MAX_BACKOFF`; one that ran longer is restarted at once.
  A worker that exits with status 2 (configuration error) before listening is not
  restarted: the supervisor stops the others and exits 2.
* Stop: on SIGTERM or SIGINT every worker gets SIGTERM (it closes its clients with 1001);
  workers still running ``2 * server.close_timeout +`` :data:`STOP_GRACE` seconds later
  (the service API and the websocket connections may each take ``close_timeout``) get
  SIGKILL. The supervisor exits 0 once all of them have exited. Workers run in their own
  process group, so a Ctrl-C in a terminal reaches them only through the supervisor.
* No orphans: on Linux every worker asks the kernel for SIGTERM when the supervisor dies,
  even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``), and exits at once if it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from engine.config import Config, ConfigError, env_var_name, validate_config

__all__ = [
    "FIRST_BACKOFF",
    "MAX_BACKOFF",
    "STABLE_AFTER",
    "STOP_GRACE",
    "Supervisor",
    "check_workers",
    "reserve_port",
    "supervise",
    "worker_command",
    "worker_config",
]

log = logging.getLogger("liveroom.workers")

STABLE_AFTER = 5.0
"""Seconds a worker must run for its next exit to be restarted without delay."""
FIRST_BACKOFF = 0.5
"""Seconds before restarting a worker that died soon after its start; doubles each time."""
MAX_BACKOFF = 10.0
"""Longest delay before restarting a worker."""
STOP_GRACE = 5.0
"""Seconds allowed on top of twice ``server.close_timeout`` before workers are killed."""

EXIT_CONFIG = 2
READY_LINE = b"liveroom listening on "
_LINE_LIMIT = 1 << 20  # a longer stderr line from a worker is cut, not fatal
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_command(config_path: str | None) -> list[str]:
    """The command line of one worker: this interpreter running ``liveroom serve``."""
    return [
        sys.executable,
        "-m",
        "engine.cli",
        "serve",
        *(["--config", config_path] if config_path else []),
    ]


def worker_config(config: Config, index: int) -> Config:
    """The configuration worker ``index`` (1..N) runs with: one process, shared ports."""
    server = config.server
    return dataclasses.replace(
        config,
        server=dataclasses.replace(
            server,
            workers=1,
            reuse_port=True,
            node_id=f"{server.node_id}-w{index}" if server.node_id else "",
        ),
    )


def check_workers(config: Config) -> None:
    """Check that the workers of ``config`` can run, before anything starts.

    Raises:
        ConfigError: a worker's configuration is invalid (``server.node_id`` too long once
            ``-w<i>`` is added), or this system has no SO_REUSEPORT (``server.workers``).
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("server.workers: more than 1 needs SO_REUSEPORT, which this system lacks")
    for index in range(1, config.server.workers + 1):
        validate_config(worker_config(config, index))


def reserve_port(host: str) -> socket.socket:
    """Bind a SO_REUSEPORT socket to a free port of ``host``, without listening; return it.

    While it stays open no other program gets the port, yet processes binding it with
    SO_REUSEPORT (as the same user) can listen on it; the kernel gives connections only to
    listening sockets.

    Raises:
        OSError: the host does not resolve or nothing can be bound.
    """
    family, _, _, _, address = socket.getaddrinfo(
        host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _reserve_ports(config: Config, held: list[socket.socket]) -> Config:
    """``config`` with every port 0 replaced by a reserved port (sockets added to ``held``)."""
    server, service = config.server, config.service
    if server.port == 0:
        held.append(reserve_port(server.host))
        server = dataclasses.replace(server, port=_port(held[-1]))
    if service.enabled and service.port == 0:
        held.append(reserve_port(service.host))
        while _port(held[-1]) == server.port:  # SO_REUSEPORT may allow it: never share
            held.append(reserve_port(service.host))
        service = dataclasses.replace(service, port=_port(held[-1]))
    return dataclasses.replace(config, server=server, service=service)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGTERM when this process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not after
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


def _signal(proc: asyncio.subprocess.Process | None, sig: signal.Signals) -> None:
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _relay_line(line: bytes) -> None:
    """Write a worker's stderr line to ours unchanged; a closed stderr is ignored."""
    with contextlib.suppress(OSError, ValueError):
        buffer = getattr(sys.stderr, "buffer", None)
        sys.stderr.flush()
        if buffer is not None:
            buffer.write(line)
            buffer.flush()
        else:
            sys.stderr.write(line.decode(errors="replace"))
            sys.stderr.flush()


@dataclasses.dataclass(eq=False)
class _Slot:
    """Worker ``index`` and its current process."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    listening: bool = False  # the current process printed its ready line
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # ever listened


class Supervisor:
    """Keeps ``config.server.workers`` worker processes running until :meth:`stop`.

    Args:
        config: the node's configuration, its ports already resolved (not 0).
        command: the worker command line (see :func:`worker_command`).
        env: the environment workers inherit; the supervisor adds the ``LIVEROOM_*``
            variables of :func:`worker_config`.
        stop_timeout: seconds workers get after SIGTERM before SIGKILL (default
            ``2 * server.close_timeout + STOP_GRACE``).
    """

    def __init__(
        self,
        config: Config,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        stop_timeout: float | None = None,
    ) -> None:
        self.config = config
        self.command = list(command)
        self.env = dict(env)
        self.stop_timeout = (
            2 * config.server.close_timeout + STOP_GRACE if stop_timeout is None else stop_timeout
        )
        self._slots = [_Slot(i) for i in range(1, config.server.workers + 1)]
        self._stopping = asyncio.Event()
        self._status = 0
        self._preexec = _die_with_parent()

    @property
    def pids(self) -> list[int]:
        """The pids of the worker processes running now."""
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.returncode is None]

    def worker_env(self, index: int) -> dict[str, str]:
        """The environment of worker ``index``: ours plus its one-process, shared-port settings."""
        config = worker_config(self.config, index)
        env = dict(self.env)
        env.update(
            {
                env_var_name("server.workers"): "1",
                env_var_name("server.reuse_port"): "true",
                env_var_name("server.host"): config.server.host,
                env_var_name("server.port"): str(config.server.port),
                env_var_name("service.port"): str(config.service.port),
            }
        )
        if config.server.node_id:
            env[env_var_name("server.node_id")] = config.server.node_id
        else:
            env.pop(env_var_name("server.node_id"), None)
        return env

    def stop(self) -> None:
        """Stop every worker and make :meth:`run` return (idempotent; signal-safe)."""
        self._stopping.set()

    async def run(self) -> int:
        """Run the workers until SIGTERM, SIGINT or :meth:`stop`; return the exit status.

        Returns:
            0 after a stop, 2 when a worker exited with a configuration error at start.
        """
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        try:
            async with asyncio.TaskGroup() as tasks:
                keepers = [tasks.create_task(self._keep(slot)) for slot in self._slots]
                announcer = tasks.create_task(self._announce())
                await self._stopping.wait()
                announcer.cancel()
                await self._stop_all(keepers)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            for slot in self._slots:  # only after a crash of the supervisor itself
                _signal(slot.proc, signal.SIGKILL)
        return self._status

    async def _stop_all(self, keepers: list[asyncio.Task[None]]) -> None:
        print(
            f"liveroom supervisor: stopping {len(self.pids)} workers", file=sys.stderr, flush=True
        )
        for slot in self._slots:
            _signal(slot.proc, signal.SIGTERM)
        _, running = await asyncio.wait(keepers, timeout=self.stop_timeout)
        if running:
            log.warning(
                "workers still running after %.1f s: killing %s", self.stop_timeout, self.pids
            )
            for slot in self._slots:
                _signal(slot.proc, signal.SIGKILL)
            await asyncio.wait(running)
        print("liveroom supervisor: stopped", file=sys.stderr, flush=True)

    async def _announce(self) -> None:
        for slot in self._slots:
            await slot.ready.wait()
        server, service = self.config.server, self.config.service
        scheme = "wss" if server.tls else "ws"
        api = f" (service http://{service.host}:{service.port})" if service.enabled else ""
        print(
            f"liveroom supervisor: {len(self._slots)} workers on "
            f"{scheme}://{server.host}:{server.port}/{api}",
            file=sys.stderr,
            flush=True,
        )

    async def _keep(self, slot: _Slot) -> None:
        """Run worker ``slot`` again and again until the supervisor stops."""
        loop = asyncio.get_running_loop()
        delay = 0.0
        while not self._stopping.is_set():
            started = loop.time()
            try:
                status = await self._run_once(slot)
            except OSError as exc:
                what = f"worker {slot.index} could not be started ({exc})"
            else:
                if self._stopping.is_set():
                    return
                assert slot.proc is not None
                if status == EXIT_CONFIG and not slot.listening:
                    log.error(
                        "worker %d (pid %d) exited with status 2 (configuration error) at "
                        "start; stopping",
                        slot.index,
                        slot.proc.pid,
                    )
                    self._status = EXIT_CONFIG
                    self.stop()
                    return
                what = f"worker {slot.index} (pid {slot.proc.pid}) exited with status {status}"
            if loop.time() - started < STABLE_AFTER:
                delay = min(max(2 * delay, FIRST_BACKOFF), MAX_BACKOFF)
            else:
                delay = 0.0
            log.warning("%s; restarting%s", what, f" in {delay:g} s" if delay else "")
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, slot: _Slot) -> int:
        """Start worker ``slot``, relay its stderr until it exits; return its exit status."""
        slot.listening = False
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            env=self.worker_env(slot.index),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            limit=_LINE_LIMIT,
            preexec_fn=self._preexec,
            process_group=0,
        )
        slot.proc = proc
        if self._stopping.is_set():  # the stop began while this one was being started
            _signal(proc, signal.SIGTERM)
        assert proc.stderr is not None
        relay = asyncio.create_task(self._relay(slot, proc.stderr))
        try:
            status = await proc.wait()
            # Whatever the worker wrote last is read before its exit is reported.
            await asyncio.wait({relay}, timeout=1.0)
        finally:
            relay.cancel()
        return status

    async def _relay(self, slot: _Slot, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than _LINE_LIMIT: asyncio dropped it
                line = b"[line too long, dropped]\n"
            if not line:
                return
            if line.startswith(READY_LINE):
                slot.listening = True
                slot.ready.set()
            _relay_line(line)


def supervise(
    config: Config, *, config_path: str | None = None, env: Mapping[str, str] | None = None
) -> int:
    """Run ``config.server.workers`` workers until SIGTERM or SIGINT; return the exit status.

    Args:
        config: the node's effective (validated) configuration.
        config_path: the TOML file workers load (``--config``), if any.
        env: the environment workers inherit (default: ``os.environ``).

    Returns:
        0 after a stop by signal, 2 when a worker failed at start with a configuration
        error, 1 when a port 0 could not be reserved.

    Raises:
        ConfigError: see :func:`check_workers`.
    """
    check_workers(config)
    held: list[socket.socket] = []
    try:
        try:
            config = _reserve_ports(config, held)
        except OSError as exc:
            print(f"liveroom: cannot start: {exc}", file=sys.stderr)
            return 1
        command = worker_command(config_path)
        supervisor = Supervisor(config, command, os.environ if env is None else env)
        return asyncio.run(supervisor.run())
    finally:
        for sock in held:
            sock.close()
