"""A real ``redis-server`` for tests, started on a free loopback port, plus a fake clock.

- ``redis_server`` (session): one server for the whole run, AOF on (``appendfsync always``)
  in a temporary directory. ``redis_url`` (function) hands out its URL after making sure it
  runs (a test may have killed or paused it) and after FLUSHALL.
- :func:`start_redis` starts a private server (for tests that kill it); ``own_redis`` is a
  function-scoped fixture around it.
- :class:`RedisServer` can :meth:`~RedisServer.kill` (SIGKILL), :meth:`~RedisServer.restart`
  (same port and directory, so the AOF replays), :meth:`~RedisServer.pause` (SIGSTOP: a
  server that accepts nothing and answers nothing) and :meth:`~RedisServer.resume`.
- :class:`FakeClock` is an injectable store clock that moves only when told.

A missing ``redis-server`` fails the tests that need it (it does not skip them).

``tests/conftest.py`` imports the fixtures, so every test module can ask for them by the
names in quotes above.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from loadtest.deploy import free_port

__all__ = [
    "FakeClock",
    "RedisServer",
    "find_redis_server",
    "free_port",
    "own_redis_fixture",
    "redis_server_fixture",
    "redis_url_fixture",
    "start_redis",
]

T0 = 1_700_000_000.0


class FakeClock:
    """Unix seconds that move only when a test says so; call it to read the time."""

    __slots__ = ("now",)

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, now: float) -> None:
        self.now = now


def find_redis_server() -> str:
    """The ``redis-server`` binary; fails the test (loudly) when there is none."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if path is None:
        pytest.fail("redis-server not found: install it (apt-get install redis-server)")
    return path


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with AOF persistence in ``directory``."""

    def __init__(
        self, binary: str, directory: Path, port: int, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.extra_args = extra_args  # e.g. the cluster options of tests/redis_cluster.py
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING (AOF loaded)."""
        assert not self.alive(), "already running"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--protected-mode", "no",
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.paused = False
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    pytest.fail(f"redis-server exited ({self.process.returncode}):\n{self._log()}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:  # refused, or still loading the AOF
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server did not answer in {timeout} s:\n{self._log()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None and self.alive(), "not running"
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the server dies at once; what was acknowledged is in the AOF."""
        if self.paused:
            self.resume()
        self._signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def restart(self) -> None:
        """Start again on the same port and directory (the AOF replays)."""
        if self.alive():
            self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    def ensure_running(self) -> None:
        if self.paused and self.alive():
            self.resume()
        if not self.alive():
            self.start()

    def flushall(self) -> None:
        with redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5) as client:
            client.flushall()
            client.script_flush()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.alive():
            if self.paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def start_redis(directory: Path) -> Iterator[RedisServer]:
    """A started private server keeping its files in ``directory``; stopped on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(find_redis_server(), directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="redis_server")
def redis_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's shared server (use ``redis_url`` to get it clean)."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(name="redis_url")
def redis_url_fixture(redis_server: RedisServer) -> str:
    """The shared server's URL, the server running, empty and with no scripts loaded."""
    redis_server.ensure_running()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(name="own_redis")
def own_redis_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server for this test alone (kill it, pause it, restart it)."""
    with start_redis(tmp_path / "redis") as server:
        yield server
