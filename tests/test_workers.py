"""``liveroom serve --workers N``: the supervisor and its workers, as real processes on loopback.

The end-to-end tests run the console script with the Redis broker and stock store (a
``redis-server`` of the test session) and find the workers as the supervisor's children in
``/proc``. The supervisor's own rules (no restart loop on a config error, backoff, SIGKILL
after the stop timeout) are checked in-process with stand-in workers: tiny Python scripts
that print the ready line, crash or ignore SIGTERM on demand. Every process a test starts
is killed by PID in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from engine.cli import _run
from engine.config import Config
from engine.server import LiveroomServer
from engine.workers import Supervisor
from tests.conftest import Peer, token, wait_for_condition
from tests.processes import API_KEY, Endpoint, engine_env
from tests.redis_fixture import free_port

LIVEROOM = Path(sys.executable).with_name("liveroom")


# --- processes found through /proc ---------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may hold spaces and ")"
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _children(parent: int) -> set[int]:
    """The live child processes of ``parent``."""
    pids = {int(name) for name in os.listdir("/proc") if name.isdigit()}
    return {pid for pid in pids if (stat := _stat(pid)) and stat[1] == parent and stat[0] != "Z"}


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Supervised:
    """``liveroom serve ARGS`` with its stderr in a file; :meth:`kill` stops it and its workers."""

    def __init__(self, log: Path, *args: str, **settings: str) -> None:
        self.ws_port, self.api_port = free_port(), free_port()
        self.log = log
        self.args = args
        self.env = engine_env(self.ws_port, self.api_port, **settings)
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()  # every worker pid seen, for kill()

    def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(LIVEROOM), "serve", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def digest(self) -> str:
        """The last lines of stderr without the effective-config prints, for failures."""
        dump = re.compile(r"^(\w+ = .*|\[\w+\]|liveroom effective config:|)$")
        return "\n".join([ln for ln in self.output().splitlines() if not dump.match(ln)][-30:])

    async def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first match of ``pattern`` in the supervisor's stderr, once it appears."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.output())):
            assert self.proc.poll() is None, f"supervisor exited:\n{self.digest()}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.digest()}"
            await asyncio.sleep(0.05)
        return found

    def workers(self) -> set[int]:
        pids = _children(self.pid)
        self.seen |= pids
        return pids

    def kill(self) -> None:
        """SIGKILL the workers (the supervisor frozen first, so it starts no more), then it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGSTOP)
            _kill(self.workers())
            self.proc.kill()
        self.proc.wait(10)
        # Workers seen earlier, in case one outlived its supervisor (it should not).
        with contextlib.suppress(OSError):
            _kill({pid for pid in self.seen if _alive(pid) and _is_worker(pid)})


def _is_worker(pid: int) -> bool:
    return b"engine.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()


@contextlib.contextmanager
def supervised(log: Path, *args: str, **settings: str) -> Iterator[Supervised]:
    sup = Supervised(log, *args, **settings)
    try:
        sup.start()
        yield sup
    finally:
        sup.kill()


def redis_settings(url: str) -> dict[str, str]:
    return {
        "BROKER_BACKEND": "redis",
        "BROKER_REDIS_URL": url,
        "STOCK_BACKEND": "redis",
        "STOCK_REDIS_URL": url,
    }


async def health(port: int) -> dict[str, typing.Any]:
    """``GET /health`` on a new connection (so that the kernel may pick another worker)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Authorization: Bearer {API_KEY}\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", raw
    answer: dict[str, typing.Any] = orjson.loads(body)
    return answer


async def nodes_answering(port: int, want: int, tries: int = 300) -> set[str]:
    """The distinct ``node`` values of /health answers, asked until ``want`` have answered."""
    nodes: set[str] = set()
    for _ in range(tries):
        nodes.add((await health(port))["node"])
        if len(nodes) >= want:
            break
    return nodes


async def answered_by(port: int, pid: int, timeout: float = 10.0) -> None:
    """Ask /health until the worker ``pid`` answers (it may still be starting)."""
    deadline = time.monotonic() + timeout
    while pid_of((await health(port))["node"]) != pid:
        assert time.monotonic() < deadline, f"worker {pid} never answered /health"


def pid_of(node: str) -> int:
    """The pid in a default node id ``<hostname>-<pid>``."""
    return int(node.rsplit("-", 1)[1])


def endpoint(port: int) -> LiveroomServer:
    return typing.cast(LiveroomServer, Endpoint(f"ws://127.0.0.1:{port}/"))


# --- configuration errors: nothing starts ----------------------------------------------------


def test_workers_flag_is_validated_like_port(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "257"):
        assert _run(["serve", "--workers", bad], {}) == 2
        assert capsys.readouterr().err.startswith("liveroom: config error: server.workers: ")


def test_two_workers_with_the_memory_broker_exit_2_naming_server_workers(tmp_path: Path) -> None:
    with supervised(tmp_path / "err.log", "--workers", "2") as sup:
        assert sup.proc is not None
        assert sup.proc.wait(30) == 2
        err = sup.output()
        assert err.startswith("liveroom: config error: server.workers: ")
        assert 'broker.backend = "redis"' in err
        assert "liveroom listening" not in err  # no worker ever started


def test_a_node_id_too_long_for_its_worker_suffix_is_a_config_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {
        **{f"LIVEROOM_{k}": v for k, v in redis_settings("redis://127.0.0.1:1/0").items()},
        "LIVEROOM_SERVER_NODE_ID": "n" * 64,
    }
    assert _run(["serve", "--workers", "2"], env) == 2
    assert capsys.readouterr().err.startswith("liveroom: config error: server.node_id: ")


# --- real supervisor, real workers, one Redis ---------------------------------------------------


async def test_two_workers_share_both_ports_are_restarted_after_a_crash_and_stop_on_sigterm(
    tmp_path: Path, redis_url: str
) -> None:
    with supervised(tmp_path / "err.log", "--workers", "2", **redis_settings(redis_url)) as sup:
        async with asyncio.timeout(40):
            await sup.wait_for(
                rf"liveroom supervisor: 2 workers on ws://127\.0\.0\.1:{sup.ws_port}/ "
                rf"\(service http://127\.0\.0\.1:{sup.api_port}\)"
            )
            workers = sup.workers()
            assert len(workers) == 2

            # The shared service port reaches both workers, each with its own node id.
            nodes = await nodes_answering(sup.api_port, want=2)
            assert {pid_of(node) for node in nodes} == workers

            # A worker killed outright is replaced by a new process on the same ports.
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            await sup.wait_for(rf"worker [12] \(pid {victim}\) exited with status -9; restarting")
            await wait_for_condition(lambda: len(sup.workers() - {victim}) == 2, timeout=10)
            (newcomer,) = sup.workers() - workers
            await answered_by(sup.api_port, newcomer)

            # Websocket clients connect through the shared port.
            peers = [
                await Peer.open(endpoint(sup.ws_port), token(f"u{i}", ["show"])) for i in range(6)
            ]
            for peer in peers:
                await peer.ping()

            # SIGTERM: every worker drains its clients with 1001, then the supervisor exits 0.
            everyone = sup.workers() | workers
            assert sup.proc is not None
            sup.proc.send_signal(signal.SIGTERM)
            for peer in peers:
                assert await peer.close_code() == 1001
            assert await asyncio.to_thread(sup.proc.wait, 15) == 0
        assert not [pid for pid in everyone if _alive(pid)]
        err = sup.output()
        assert "liveroom supervisor: stopped" in err
        assert "Traceback" not in err and "ERROR" not in err


async def test_port_0_is_picked_once_for_all_workers_and_node_ids_get_a_worker_suffix(
    tmp_path: Path, redis_url: str
) -> None:
    settings = {
        **redis_settings(redis_url),
        "SERVER_NODE_ID": "edge",
        "SERVER_PORT": "0",
        "SERVICE_PORT": "0",
    }
    with supervised(tmp_path / "err.log", "--workers", "2", **settings) as sup:
        async with asyncio.timeout(30):
            ready = await sup.wait_for(
                r"liveroom supervisor: 2 workers on ws://127\.0\.0\.1:(\d+)/ "
                r"\(service http://127\.0\.0\.1:(\d+)\)"
            )
            ws_port, api_port = int(ready[1]), int(ready[2])
            assert ws_port != 0 and api_port not in (0, ws_port)
            assert await nodes_answering(api_port, want=2) == {"edge-w1", "edge-w2"}
            peer = await Peer.open(endpoint(ws_port), token("ann", ["show"]))
            await peer.ping()
            assert sup.proc is not None
            sup.proc.send_signal(signal.SIGINT)
            assert await peer.close_code() == 1001
            assert await asyncio.to_thread(sup.proc.wait, 15) == 0


# --- the supervisor's rules, with stand-in workers ---------------------------------------------

STAND_IN = """
import os, signal, sys, time
with open(sys.argv[1], "a") as starts:
    starts.write(f"{os.getpid()}\\n")
mode = sys.argv[2]
if mode == "config-error":
    print("liveroom: config error: server.tls_cert: file not found", file=sys.stderr)
    sys.exit(2)
if mode == "crash":
    sys.exit(1)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("liveroom listening on ws://stand-in/", file=sys.stderr, flush=True)
time.sleep(60)
"""


def _two_workers() -> Config:
    config = Config()
    return dataclasses.replace(config, server=dataclasses.replace(config.server, workers=2))


@contextlib.asynccontextmanager
async def stand_ins(
    tmp_path: Path, mode: str, stop_timeout: float | None = None
) -> typing.AsyncIterator[tuple[Supervisor, asyncio.Task[int], Path]]:
    """A supervisor running in this process over two stand-in workers; all killed at exit."""
    starts = tmp_path / "starts"
    command = [sys.executable, "-c", STAND_IN, str(starts), mode]
    supervisor = Supervisor(_two_workers(), command, os.environ, stop_timeout=stop_timeout)
    running = asyncio.create_task(supervisor.run())
    try:
        yield supervisor, running, starts
    finally:
        started = {int(p) for p in starts.read_text().split()} if starts.exists() else set()
        _kill({pid for pid in started if _alive(pid)})
        supervisor.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 10)


def _start_count(starts: Path) -> int:
    return len(starts.read_text().split()) if starts.exists() else 0


async def test_a_worker_exiting_2_at_start_stops_the_supervisor_with_2_and_is_not_restarted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async with stand_ins(tmp_path, "config-error") as (_, running, starts):
        assert await asyncio.wait_for(running, 10) == 2
        # One start per worker at most (the second may be stopped before it wrote its line).
        assert 1 <= _start_count(starts) <= 2
    assert "liveroom: config error: server.tls_cert" in capfd.readouterr().err


async def test_a_worker_dying_at_start_is_restarted_with_a_growing_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "liveroom.workers")
    async with stand_ins(tmp_path, "crash") as (supervisor, running, starts):
        await asyncio.sleep(2.2)  # starts at about 0, 0.5 and 1.5 s; the next at 3.5 s
        assert 4 <= _start_count(starts) <= 8
        supervisor.stop()
        assert await asyncio.wait_for(running, 10) == 0
    restarts = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert any(m.endswith("exited with status 1; restarting in 0.5 s") for m in restarts)
    assert any(m.endswith("exited with status 1; restarting in 1 s") for m in restarts)
    assert not any(m.endswith("restarting in 4 s") for m in restarts)


async def test_workers_ignoring_sigterm_are_killed_after_the_stop_timeout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async with stand_ins(tmp_path, "stubborn", stop_timeout=0.5) as (supervisor, running, _):
        err = ""
        while "liveroom supervisor: 2 workers on" not in err:
            await asyncio.sleep(0.05)
            err += capfd.readouterr().err
        pids = supervisor.pids
        supervisor.stop()
        assert await asyncio.wait_for(running, 5) == 0
        assert not [pid for pid in pids if _alive(pid)]
