"""A liveroom deployment on this machine for rehearsals: Redis and N engine workers.

:class:`LocalDeployment` starts a ``redis-server`` (loopback, a free port, AOF with
``appendfsync always``, as production runs it) and ``liveroom serve --workers N`` with the
Redis broker and stock store, on free loopback ports, and can do a scenario's faults to
them: kill Redis (SIGKILL, then start it again on the same port and directory so its AOF
replays), pause it (SIGSTOP / SIGCONT), or kill one engine worker (SIGKILL; its supervisor
restarts it). :meth:`LocalDeployment.stop` stops everything by PID (the supervisor with
SIGTERM, so its workers drain), also after a failure; every wait is bounded.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["DeployError", "LocalDeployment", "free_port"]


class DeployError(Exception):
    """The deployment could not be started (the message says what and where its log is)."""


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux; else 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_RANDOM = random.Random()  # its own, so tests seeding the global generator do not repeat ports
_GIVEN: set[int] = set()  # ports this process handed out: never twice (two servers' ports)


def free_port() -> int:
    """A loopback TCP port nobody listens on, chosen below the ephemeral range.

    A port the kernel gave out for ``bind(0)`` lies in the ephemeral range, where any
    outgoing connection (a Redis client's, say) may take it as its local port between
    this check and the server's own bind: "address already in use" at start. Ports below
    the range are never handed out that way. A port is not handed out twice by one
    process (until half the range has been), so the ports of one setup differ."""
    low = min(_ephemeral_low(), 65536)
    if len(_GIVEN) > (low - 20000) // 2:
        _GIVEN.clear()
    for _ in range(200):
        port = _RANDOM.randrange(20000, low) if low > 21000 else 0
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
        _GIVEN.add(found)
        return found
    raise OSError("no free loopback port below the ephemeral range")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise DeployError(f"{what} exited ({proc.returncode}); see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise DeployError(f"{what} did not listen on {port} in 30 s; see {log}") from None
            time.sleep(0.05)


class LocalDeployment:
    """Redis plus ``liveroom serve --workers N``; see the module docstring.

    Args:
        directory: where Redis keeps its AOF and both write their logs.
        workers: engine worker processes.
        settings: extra ``LIVEROOM_<KEY>`` settings for the engine (e.g. rate limits).
    """

    def __init__(self, directory: Path, workers: int = 2, **settings: str) -> None:
        self.directory = directory
        self.workers = workers
        self.secret = secrets.token_hex(16)
        self.api_key = secrets.token_hex(16)
        self.redis_port, self.ws_port, self.api_port = free_port(), free_port(), free_port()
        self.settings = settings
        self.redis: subprocess.Popen[bytes] | None = None
        self.engine: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def service(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        """Start Redis, then the engine; raises :class:`DeployError` when one fails."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIVEROOM_")},
            "LIVEROOM_SERVER_PORT": str(self.ws_port),
            "LIVEROOM_SERVICE_PORT": str(self.api_port),
            "LIVEROOM_AUTH_SECRET": self.secret,
            "LIVEROOM_SERVICE_API_KEYS": self.api_key,
            "LIVEROOM_BROKER_BACKEND": "redis",
            "LIVEROOM_BROKER_REDIS_URL": redis_url,
            "LIVEROOM_STOCK_BACKEND": "redis",
            "LIVEROOM_STOCK_REDIS_URL": redis_url,
            "LIVEROOM_LOG_LEVEL": "warning",
            **{f"LIVEROOM_{key}": value for key, value in self.settings.items()},
        }
        log = self.directory / "engine.log"
        with log.open("ab") as err:
            self.engine = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "serve", "--workers", str(self.workers)],
                env=env,
                stdout=err,
                stderr=err,
            )
        _wait_port(self.ws_port, self.engine, "liveroom serve", log)
        _wait_port(self.api_port, self.engine, "liveroom service API", log)

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DeployError("redis-server not found (apt-get install redis-server)")
        log = self.directory / "redis.log"
        args = [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.directory), "--save", "", "--protected-mode", "no"]
        args += ["--appendonly", "yes", "--appendfsync", "always"]
        with log.open("ab") as out:
            self.redis = subprocess.Popen(args, stdout=out, stderr=out)
        _wait_port(self.redis_port, self.redis, "redis-server", log)

    # --- faults -----------------------------------------------------------------------

    def kill_redis(self, down: float) -> str:
        """SIGKILL Redis, wait ``down`` seconds, start it again (its AOF replays)."""
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait(10)
        time.sleep(down)
        self._start_redis()
        return f"redis killed, back after {down:g} s"

    def pause_redis(self, down: float) -> str:
        """SIGSTOP Redis for ``down`` seconds: it accepts nothing and answers nothing."""
        assert self.redis is not None
        os.kill(self.redis.pid, signal.SIGSTOP)
        try:
            time.sleep(down)
        finally:
            os.kill(self.redis.pid, signal.SIGCONT)
        return f"redis paused for {down:g} s"

    def worker_pids(self) -> list[int]:
        """The engine supervisor's live children."""
        assert self.engine is not None
        pid = self.engine.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def usage(self) -> dict[str, float]:
        """The live workers' CPU seconds and resident memory (KB), summed, from /proc."""
        cpu, rss = 0.0, 0
        ticks = os.sysconf("SC_CLK_TCK")
        for pid in self.worker_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
            rss += next(int(line.split()[1]) for line in status.splitlines()
                        if line.startswith("VmRSS:"))  # fmt: skip
        return {"workers": len(self.worker_pids()), "cpu_s": round(cpu, 2), "rss_kb": rss}

    def kill_worker(self) -> str:
        """SIGKILL one engine worker (the first); its supervisor restarts it."""
        pids = self.worker_pids()
        if not pids:
            return "no worker to kill"
        os.kill(pids[0], signal.SIGKILL)
        return f"worker {pids[0]} killed"

    def stop(self) -> None:
        """Stop the engine (SIGTERM: it drains; SIGKILL after 20 s) and Redis, by PID."""
        if self.engine is not None and self.engine.poll() is None:
            self.engine.terminate()
            try:
                self.engine.wait(20)
            except subprocess.TimeoutExpired:
                self.engine.kill()
                self.engine.wait(10)
            for pid in self.worker_pids():  # none left, unless the supervisor was killed
                os.kill(pid, signal.SIGKILL)
        if self.redis is not None and self.redis.poll() is None:
            os.kill(self.redis.pid, signal.SIGCONT)  # in case it was paused
            self.redis.kill()
            self.redis.wait(10)
