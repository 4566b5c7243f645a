"""`liveroom serve` as operators run it: a real process, uvloop, real sockets, signals.

The in-process tests run on the default asyncio loop; these start the console script so
that the production event loop (uvloop), config loading from the environment, the
effective-config print, the service port and graceful shutdown on SIGTERM are covered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from protocol import MSGPACK, Batch, Comment, Join, Joined, SendComment, Welcome
from tests.conftest import SECRET, token
from tests.redis_fixture import free_port

LIVEROOM = Path(sys.executable).with_name("liveroom")


def _b(data: str | bytes) -> bytes:
    assert isinstance(data, bytes), "msgpack frames are binary"
    return data


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    ws_port, api_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIVEROOM_")},
        "LIVEROOM_SERVER_PORT": str(ws_port),
        "LIVEROOM_SERVICE_PORT": str(api_port),
        "LIVEROOM_AUTH_SECRET": SECRET,
        "LIVEROOM_SERVICE_API_KEYS": "k-test",
    }
    proc = subprocess.Popen([str(LIVEROOM), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", ws_port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
        yield proc, ws_port, api_port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_served_process_on_uvloop_delivers_comments_and_shuts_down_with_1001(
    served: tuple[subprocess.Popen[str], int, int],
) -> None:
    proc, ws_port, api_port = served
    url = f"ws://127.0.0.1:{ws_port}/?token={token('ann', ['show'])}"
    async with asyncio.timeout(20):
        async with connect(url, subprotocols=["liveroom.v1.msgpack"]) as a:  # type: ignore[list-item]
            assert isinstance(MSGPACK.decode_server(_b(await a.recv())), Welcome)
            await a.send(MSGPACK.encode(Join(room="show", rid=1)))
            assert isinstance(MSGPACK.decode_server(_b(await a.recv())), Joined)
            await a.send(MSGPACK.encode(SendComment(room="show", text="你好")))
            batch = MSGPACK.decode_server(_b(await a.recv()))
            assert isinstance(batch, Batch)
            assert isinstance(batch.events[0], Comment) and batch.events[0].text == "你好"

            reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            health = await reader.read()
            writer.close()
            assert b" 200 " in health.split(b"\r\n")[0] and b'"connections":1' in health

            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await a.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        rc = await asyncio.to_thread(proc.wait, 15)
    assert rc == 0
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "liveroom effective config:" in err and 'secret = "***"' in err
    assert SECRET not in err and "k-test" not in err
    assert "uvloop" not in err.lower() or "not installed" not in err.lower()
    assert "Traceback" not in err and "ERROR" not in err
    assert f"[{socket.gethostname()}-{proc.pid}] liveroom." in err  # log lines name the node


def test_serve_with_bad_setting_exits_2_naming_it() -> None:
    env = {**os.environ, "LIVEROOM_SERVER_PORT": "70000"}
    done = subprocess.run(
        [str(LIVEROOM), "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "server.port" in done.stderr


def test_serve_with_unreachable_redis_exits_1_with_a_clear_error() -> None:
    env = {
        **os.environ,
        "LIVEROOM_SERVER_PORT": str(free_port()),
        "LIVEROOM_SERVICE_PORT": str(free_port()),
        "LIVEROOM_STOCK_BACKEND": "redis",
        "LIVEROOM_STOCK_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "LIVEROOM_STOCK_REDIS_TIMEOUT": "0.5",
    }
    done = subprocess.run(
        [str(LIVEROOM), "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "cannot start" in done.stderr and "Traceback" not in done.stderr
