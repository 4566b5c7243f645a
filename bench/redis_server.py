"""A private redis-server for the benchmarks (scale-out, purchase): start, read its figures, stop.

The server listens on a free loopback port, keeps its files in a temporary directory and
persists nothing (``save ""``, ``appendonly no``): the benchmarks measure the broker's
and the stock store's cost, not durability. :meth:`RedisServer.stats` reads what a phase
needs in one go: the process's CPU seconds, user and system (``INFO cpu``: getrusage, precise to the
microsecond, unlike the 10 ms ticks of ``/proc/PID/stat``), its time spent runnable but
waiting for a core (``/proc/PID/schedstat``), the calls and time of each command (``INFO
commandstats``; commands a Lua script runs are counted too; the time is wall time, so it
grows when Redis is preempted mid-command) and the bytes in and out (``INFO stats``).
:meth:`RedisServer.stop` always ends the process (SIGTERM, then SIGKILL) and removes the
directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import redis

__all__ = ["RedisServer", "RedisStats", "run_delay"]


def run_delay(pid: int) -> float:
    """Seconds the process's main thread was runnable but waited for a core (schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as fp:
            return int(fp.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when this process dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True, slots=True)
class RedisStats:
    """Cumulative figures of the server at one moment (differences make a phase's rates)."""

    cpu: float  # CPU seconds, user + system (every thread)
    user: float  # main thread: user CPU seconds (Lua, commands, the event loop)
    sys: float  # main thread: system CPU seconds (socket reads and writes: loopback TCP)
    wait: float  # seconds runnable but waiting for a core
    calls: dict[str, int] = field(default_factory=dict)  # command -> calls
    usec: dict[str, int] = field(default_factory=dict)  # command -> microseconds inside it
    net_in: int = 0  # total_net_input_bytes
    net_out: int = 0  # total_net_output_bytes


class RedisServer:
    """One redis-server process on ``host``, persistence off.

    Args:
        binary: the ``redis-server`` executable.
        host: the loopback address to bind.
    """

    def __init__(self, binary: str = "redis-server", host: str = "127.0.0.1") -> None:
        self.binary = binary
        self.host = host
        self.port = 0
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def options(self) -> dict[str, str]:
        """The configuration it runs with (everything else: redis-server's defaults)."""
        return {
            "port": str(self.port),
            "bind": self.host,
            "protected-mode": "yes",
            "save": "",
            "appendonly": "no",
            "daemonize": "no",
            "loglevel": "warning",
            "dir": self.dir,
        }

    def start(self, timeout: float = 5.0) -> None:
        """Start it (up to three free ports tried); raises RuntimeError if it never answers.

        Blocks for the ~0.1 s redis-server takes to answer: call it before any load runs.
        """
        self.dir = tempfile.mkdtemp(prefix="scaleout-bench-redis-")
        last = ""
        for _attempt in range(3):
            self.port = _free_port(self.host)
            argv = [self.binary, *(x for k, v in self.options().items() for x in (f"--{k}", v))]
            with open(os.path.join(self.dir, "redis.log"), "wb") as log_file:
                self.proc = subprocess.Popen(
                    argv,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    client = redis.Redis(host=self.host, port=self.port, socket_timeout=2.0)
                    client.ping()
                    self._client = client
                    return
                except redis.RedisError as exc:
                    last = repr(exc)
                    time.sleep(0.05)
            self._end_process()
        raise RuntimeError(f"redis-server did not start: {last} {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.dir, "redis.log")) as fp:
            return " | ".join(fp.read().splitlines()[-5:])
        return ""

    def _redis(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError("redis-server is not running")
        return self._client

    def version(self) -> str:
        info: dict[str, Any] = self._redis().info("server")
        return str(info.get("redis_version", "?"))

    def pin(self, cpus: set[int] | None) -> None:
        """Run on these CPUs (None: on every CPU this process may use)."""
        with contextlib.suppress(OSError):
            os.sched_setaffinity(self.pid, cpus or os.sched_getaffinity(0))

    def flush(self) -> None:
        """Drop every key (between runs: each run starts with an empty broker)."""
        self._redis().flushall()

    def used_memory(self) -> str:
        info: dict[str, Any] = self._redis().info("memory")
        return str(info.get("used_memory_human", "?"))

    def stats(self) -> RedisStats:
        """CPU, wait, command calls and bytes now (one INFO: a blocking round trip, < 1 ms)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log_tail()}")
        wait = run_delay(self.pid)
        info: dict[str, Any] = self._redis().info("commandstats", "stats", "cpu")
        calls: dict[str, int] = {}
        usec: dict[str, int] = {}
        for key, value in info.items():
            if key.startswith("cmdstat_"):
                name = key.removeprefix("cmdstat_")
                calls[name] = int(value["calls"])
                usec[name] = int(value["usec"])
        return RedisStats(
            cpu=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            user=float(info.get("used_cpu_user_main_thread", info["used_cpu_user"])),
            sys=float(info.get("used_cpu_sys_main_thread", info["used_cpu_sys"])),
            wait=wait,
            calls=calls,
            usec=usec,
            net_in=int(info.get("total_net_input_bytes", 0)),
            net_out=int(info.get("total_net_output_bytes", 0)),
        )

    def publish_baseline(
        self, script: str, runs: int, payload: bytes, *, subscribers: int = 2, history: int = 1000
    ) -> dict[str, Any]:
        """Redis's own cost of ``publish.lua`` with no other load: ``runs`` runs of one
        payload each from one plain client, one at a time, while ``subscribers``
        connections are subscribed to the channel (they do not read: Redis still writes
        every message to their sockets). Blocks for ``runs`` round trips."""
        base = "scaleout-baseline:{room:bench}:"
        channel = base + "channel"
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=5.0)
        listeners: list[socket.socket] = []
        try:
            sha = client.script_load(script)
            for _ in range(subscribers):
                listeners.append(self._subscriber(channel))
            keys = [base + "meta", base + "history", base + "state"]
            args: list[str | int | bytes] = [
                *(channel, history, "baseline", "PUBLISH", "", 0, 0, 1, payload)
            ]
            client.evalsha(sha, 3, *keys, *args)  # the first run creates the keys
            a = self.stats()
            t0 = time.perf_counter()
            for _ in range(runs):
                client.evalsha(sha, 3, *keys, *args)
            wall = time.perf_counter() - t0
            b = self.stats()
        finally:
            for listener in listeners:
                listener.close()
            client.close()
        busy = (b.user + b.sys) - (a.user + a.sys)
        return {
            "runs": runs,
            "subscribers": subscribers,
            "payload_bytes": len(payload),
            "runs_per_s": round(runs / wall),
            "wall_us_per_run": round(wall / runs * 1e6, 1),
            "cpu_us_per_run": round((b.cpu - a.cpu) / runs * 1e6, 1),
            "usec_in_evalsha": round(
                (b.usec.get("evalsha", 0) - a.usec.get("evalsha", 0)) / runs, 1
            ),
            "sys_share": round((b.sys - a.sys) / busy, 2) if busy > 0 else None,
            "out_bytes_per_run": round((b.net_out - a.net_out) / runs),
        }

    def _subscriber(self, channel: str) -> socket.socket:
        """A bare connection subscribed to ``channel`` (RESP by hand), never read again."""
        sock = socket.create_connection((self.host, self.port), timeout=5.0)
        name = channel.encode()
        sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))
        reply = b""
        while reply.count(b"\r\n") < 6:  # *3, $9, subscribe, $n, channel, :1
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError("redis-server closed a subscriber connection")
            reply += chunk
        return sock

    def _end_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        if self._client is not None:
            with contextlib.suppress(redis.RedisError):
                self._client.close()
            self._client = None
        self._end_process()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
