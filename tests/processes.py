"""A real ``liveroom serve`` process for tests: started on free loopback ports, stopped by PID.

:class:`Engine` runs the console script (uvloop, config from the environment, as operators
run it), waits until both its ports accept, can be stopped with any signal and started
again on the same ports, and talks to its service API. :meth:`Engine.kill` is safe to call
at any time; fixtures call it in ``finally`` so no process outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.server import LiveroomServer
from tests.conftest import SECRET
from tests.redis_fixture import free_port

__all__ = ["API_KEY", "Endpoint", "Engine", "engine_env"]

API_KEY = "k-engine-process"

LIVEROOM = Path(sys.executable).with_name("liveroom")


@dataclass
class Endpoint:
    """What :meth:`Peer.open` reads of a server: its websocket URL."""

    url: str


def engine_env(ws_port: int, api_port: int, **settings: str) -> dict[str, str]:
    """The environment of a test's ``liveroom serve``: this one without ``LIVEROOM_*``, the
    two ports, the tests' secret and API key, a short close timeout, then ``settings``
    (``LIVEROOM_<KEY>`` each)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIVEROOM_")},
        "LIVEROOM_SERVER_PORT": str(ws_port),
        "LIVEROOM_SERVICE_PORT": str(api_port),
        "LIVEROOM_AUTH_SECRET": SECRET,
        "LIVEROOM_SERVICE_API_KEYS": API_KEY,
        "LIVEROOM_SERVER_CLOSE_TIMEOUT": "1",
        **{f"LIVEROOM_{key}": value for key, value in settings.items()},
    }


class Engine:
    """A ``liveroom serve`` process that can be stopped and started again on its ports."""

    def __init__(
        self,
        *,
        log: Path | None = None,
        preexec: Callable[[], None] | None = None,
        **settings: str,
    ) -> None:
        """``settings``: extra ``LIVEROOM_*`` variables, e.g. ``STOCK_BACKEND="redis"``.

        ``log``: a file for the process's stderr (else discarded; see :meth:`output`);
        ``preexec``: run in the child before it execs (e.g. to lower its rlimits).
        """
        self.ws_port, self.api_port = free_port(), free_port()
        self.log = log
        self._preexec = preexec
        self.env = engine_env(self.ws_port, self.api_port, **settings)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def endpoint(self) -> LiveroomServer:
        return typing.cast(LiveroomServer, Endpoint(f"ws://127.0.0.1:{self.ws_port}/"))

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with contextlib.ExitStack() as files:
            err = files.enter_context(open(self.log, "ab")) if self.log else subprocess.DEVNULL
            self.proc = subprocess.Popen(
                [str(LIVEROOM), "serve"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=self._preexec,
            )
        self.starts += 1
        deadline = time.monotonic() + 20
        for port in (self.ws_port, self.api_port):
            while True:
                assert self.proc.poll() is None, f"liveroom exited at start: {self.output()}"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"liveroom did not start: {self.output()}"
                    time.sleep(0.05)

    def __enter__(self) -> Engine:
        """Started (killed again if the start fails); :meth:`kill` on leaving."""
        try:
            self.start()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def output(self) -> str:
        """What the process wrote to stderr so far ("" without a ``log`` file)."""
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    async def api(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.api_port)
        data = b"" if body is None else orjson.dumps(body)
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        raw = await reader.read()
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), orjson.loads(payload)
