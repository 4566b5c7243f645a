"""Node-wide limits (engine/limits.py): open files, connection refusals, the write budget.

- The connection guard's arithmetic and its rate-limited warnings, with a fake clock.
- The write budget end to end: a real in-process server, raw viewers that never read and
  one that does; the most-behind stalled viewers are cut off, the reader is not.
- The open-files limit end to end: a real ``liveroom serve`` process (uvloop) started with
  a low RLIMIT_NOFILE: it raises the limit, prints the effective connection limit, answers
  1013 past it, aborts new sockets when descriptors run short, and /health keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from engine.gateway import Connection
from engine.limits import ConnectionGuard, RateLimitedCount, effective_max_connections
from engine.server import LiveroomServer
from protocol import MSGPACK, Batch, CloseCode, Comment, Joined, Welcome
from protocol import Join as JoinMsg
from tests.conftest import (
    Peer,
    RawClient,
    ServerFactory,
    bounded,
    expect,
    token,
    wait_for_condition,
)
from tests.processes import Engine

ROOM = "show"


# --- the connection guard ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSocket:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class FakeTransport(asyncio.BaseTransport):
    def __init__(self, fd: int) -> None:
        super().__init__()
        self.sock = FakeSocket(fd)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


def test_effective_max_connections_is_the_setting_capped_by_open_files_less_the_reserve() -> None:
    assert effective_max_connections(20_000, 20_000, 256) == 19_744
    assert effective_max_connections(500, 20_000, 256) == 500
    assert effective_max_connections(500, None, 256) == 500  # no open-files limit
    assert effective_max_connections(500, 100, 256) == 0  # refuse everyone, never negative


def test_new_sockets_within_half_the_reserve_of_the_limit_are_aborted_and_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    guard = ConnectionGuard(744, soft_limit=1000, fd_reserve=256, configured=20_000, clock=clock)
    assert guard.ceiling == 872
    caplog.set_level(logging.WARNING, logger="liveroom.limits")
    assert guard.admit(FakeTransport(871), held=700)
    assert not guard.admit(FakeTransport(872), held=700)
    assert not guard.admit(FakeTransport(900), held=700)
    clock.now += 11
    assert not guard.admit(FakeTransport(880), held=616)
    assert guard.aborted == 3
    # Far from the limit (more than fd_reserve below the ceiling) the socket is not read:
    # uvloop would make and keep a socket object per transport for it.
    assert guard.admit(FakeTransport(900), held=615)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the first at once, the next after the 10 s period
    assert "open-files limit nearly reached: 1 new connection(s)" in lines[0]
    assert "at most 744 connections" in lines[0] and "soft limit 1000" in lines[0]
    assert "2 new connection(s)" in lines[1]  # the one held back, and this one


def test_failed_accepts_become_one_warning_and_other_loop_errors_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    guard = ConnectionGuard(744, soft_limit=1000, fd_reserve=256, clock=clock)
    loop = asyncio.new_event_loop()
    others: list[dict[str, Any]] = []
    try:
        loop.set_exception_handler(lambda _loop, context: others.append(context))
        guard.install(loop)
        caplog.set_level(logging.WARNING, logger="liveroom.limits")
        emfile = OSError(errno.EMFILE, "Too many open files")
        for _ in range(50):  # what asyncio's selector loop reports, many times a second
            loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": emfile}
            )
        loop.call_exception_handler({"message": "something else", "exception": ValueError()})
        guard.uninstall(loop)
        loop.call_exception_handler({"message": "after", "exception": emfile})
    finally:
        loop.close()
    assert guard.exhausted == 50
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "open-files limit reached (socket.accept() out of system resource" in lines[0]
    assert "at most 744 connections" in lines[0]
    assert [c["message"] for c in others] == ["something else", "after"]


def test_the_probe_reports_a_process_that_has_no_descriptor_left() -> None:
    # In a child process: lowering this process's own limit could hurt other tests.
    script = """
import logging, resource, sys
from engine.limits import ConnectionGuard
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
guard = ConnectionGuard(10, soft_limit=64, fd_reserve=16)
assert guard.probe()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(open("/dev/null"))
except OSError:
    pass
assert not guard.probe() and not guard.probe()
for f in held[:4]:
    f.close()
assert guard.probe()
print("exhausted", guard.exhausted)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["exhausted", "2"]
    warnings = [ln for ln in done.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1, done.stderr
    assert "open-files limit reached (no descriptor free" in warnings[0]
    assert "at most 10 connections" in warnings[0]


def test_a_rate_limited_count_reports_what_happened_since_its_last_report() -> None:
    clock = FakeClock()
    count = RateLimitedCount(period=10.0, clock=clock)
    assert count.add() == 1
    assert count.add() is None and count.add(3) is None
    clock.now += 10
    assert count.add() == 5
    assert count.total == 6


# --- the write budget, in a real server ------------------------------------------------


def _connection_of(srv: LiveroomServer, user: str) -> Connection:
    assert srv.gateway is not None
    found = [c for c in srv.gateway.connections if c.claims and c.claims.user_id == user]
    assert len(found) == 1, found
    return found[0]


def _unsent(conn: Connection) -> int:
    assert conn.transport is not None
    return conn.transport.get_write_buffer_size()


async def _stalled_viewer(srv: LiveroomServer, user: str) -> tuple[RawClient, Connection]:
    """A raw viewer in ROOM that will never read again, with small kernel buffers."""
    client = await RawClient.connect(srv, token(user), rcvbuf=4096)
    expect(await client.next_message(), Welcome)
    await client.send(JoinMsg(room=ROOM, rid="j"))
    expect(await client.next_message(), Joined)
    conn = _connection_of(srv, user)
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client, conn


@bounded(60)
async def test_over_the_write_budget_the_most_behind_stalled_viewers_are_cut_off(
    start_server: ServerFactory,
) -> None:
    budget = 512 * 1024
    srv = await start_server(
        server={"write_budget": budget, "write_buffer_limit": 8 * 1024 * 1024},
        rooms={"max_comment_length": 200},
        service={"enabled": False},
    )
    assert srv.gateway is not None and srv.hub is not None
    gateway, hub = srv.gateway, srv.hub

    reader = await Peer.open(srv, token("reader"), max_queue=None)
    await reader.join(ROOM)
    room = hub.get(ROOM)
    assert room is not None
    got: list[Comment] = []

    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                msg = await reader.recv(timeout=60)
                if isinstance(msg, Batch):
                    got.extend(e for e in msg.events if isinstance(e, Comment))

    published = 0

    async def publish_until(done: Any, cap: int = 40_000) -> None:
        nonlocal published
        while not done():
            assert published < cap, "published a lot and the condition never held"
            for _ in range(20):
                room.publish_comment(user_id="host", name="Host", text=f"{published:06d}" * 33)
                published += 1
            await asyncio.sleep(0)  # the room writes; the reader reads

    stalled: list[tuple[RawClient, Connection]] = []
    draining = asyncio.create_task(drain())
    try:
        # Four stalled viewers join one after another, so each is further behind than the
        # next: about 250, 150, 80 and 30 KiB unsent when the node passes 512 KiB.
        for user, behind in (("s1", 100_000), ("s2", 75_000), ("s3", 50_000), ("s4", None)):
            stalled.append(await _stalled_viewer(srv, user))
            newest = stalled[-1][1]
            if behind is not None:
                await publish_until(lambda c=newest, b=behind: _unsent(c) >= b)
        await publish_until(lambda: hub.statistics().budget_cuts > 0)
        conns = [conn for _, conn in stalled]
        cut = [conn for conn in conns if conn.closing_since is not None]
        await wait_for_condition(lambda: all(c not in gateway.connections for c in cut))

        # The most behind went first, and only as many as needed: the newest stayed.
        assert cut and cut == conns[: len(cut)] and conns[-1] not in cut
        assert all(c.ws.close_sent is not None for c in cut)
        assert gateway.statistics().closed_by_code.get(CloseCode.SLOW_CONSUMER) == len(cut)
        assert hub.statistics().budget_cuts == len(cut)
        assert gateway.statistics().unsent_bytes < budget
        # Their sockets were aborted at once (no close handshake to wait for).
        for client, conn in stalled:
            if conn in cut:
                await client.read_until(lambda _: False, timeout=10)
                assert client.eof

        # The reader was never cut and has every comment, in order.
        assert _connection_of(srv, "reader").open
        await wait_for_condition(lambda: len(got) == published, timeout=20)
        assert [c.offset for c in got] == list(range(1, published + 1))
    finally:
        for client, _ in stalled:
            client.close()
        draining.cancel()
        await asyncio.gather(draining, return_exceptions=True)
    await reader.close()


# --- the open-files limit, in a real `liveroom serve` process --------------------------


SOFT, HARD, RESERVE = 150, 300, 200
EFFECTIVE = HARD - RESERVE  # the limit is raised to HARD; max_connections (20000) is higher


def _low_open_files_limit() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


@pytest.fixture
def low_nofile(tmp_path: Path) -> Iterator[Engine]:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < HARD:
        pytest.skip(f"the hard open-files limit here is below {HARD}")
    engine = Engine(
        log=tmp_path / "liveroom.stderr",
        preexec=_low_open_files_limit,
        SERVER_FD_RESERVE=str(RESERVE),
        SERVER_HANDSHAKE_TIMEOUT="30",
    )
    try:
        engine.start()
        yield engine
    finally:
        engine.kill()


async def _viewer(port: int, user: str) -> ClientConnection:
    url = f"ws://127.0.0.1:{port}/?token={token(user, [ROOM])}"
    return await connect(url, subprotocols=[Subprotocol(MSGPACK.subprotocol)], open_timeout=10)


async def _close_code(ws: ClientConnection) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()
    return ws.close_code


async def _health(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = await reader.read()
    writer.close()
    return body


def _server_closed(sock: socket.socket) -> bool:
    """Whether the server closed or reset this never-handshaken socket."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@bounded(120)
async def test_with_few_open_files_the_node_refuses_with_1013_aborts_early_and_stays_up(
    low_nofile: Engine,
) -> None:
    served = low_nofile
    out = served.output()
    line = f"# effective max connections: {EFFECTIVE} (open-files limit {HARD}, fd_reserve"
    assert line in out, out

    viewers: list[ClientConnection] = []
    raw: list[socket.socket] = []
    try:
        for i in range(EFFECTIVE):
            ws = await _viewer(served.ws_port, f"v{i}")
            assert isinstance(MSGPACK.decode_server(bytes(await ws.recv())), Welcome)  # type: ignore[arg-type]
            viewers.append(ws)

        # Full: the next ones complete their handshake and are told to come back later.
        for i in range(3):
            extra = await _viewer(served.ws_port, f"extra{i}")
            assert await _close_code(extra) == CloseCode.TRY_AGAIN_LATER
        health = await _health(served.api_port)
        assert b" 200 " in health.split(b"\r\n")[0], health
        assert f'"connections":{EFFECTIVE}'.encode() in health

        # A flood of sockets that never handshake: up to the reserve they wait for their
        # handshake; past half of it they are aborted at once, and the service still works.
        loop = asyncio.get_running_loop()
        for _ in range(150):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", served.ws_port))
            raw.append(sock)
        await wait_for_condition(lambda: sum(map(_server_closed, raw)) > 0, timeout=10)
        health = await _health(served.api_port)
        assert b" 200 " in health.split(b"\r\n")[0], health
        await wait_for_condition(lambda: "open-files limit nearly reached" in served.output())
        warning = next(
            ln for ln in served.output().splitlines() if "open-files limit nearly reached" in ln
        )
        assert "WARNING" in warning and f"at most {EFFECTIVE} connections" in warning

        # Once the flood is gone, refusals are 1013 again and the viewers never noticed.
        for sock in raw:
            sock.close()
        raw.clear()
        await asyncio.sleep(0.5)
        extra = await _viewer(served.ws_port, "late")
        assert await _close_code(extra) == CloseCode.TRY_AGAIN_LATER
        for ws in viewers[:5]:
            pong = await ws.ping()
            await asyncio.wait_for(pong, 5)
        assert served.proc is not None and served.proc.poll() is None
        out = served.output()
        assert "Traceback" not in out and "ERROR" not in out
    finally:
        for sock in raw:
            sock.close()
        for ws in viewers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
