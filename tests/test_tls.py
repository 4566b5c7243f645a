"""wss: with ``server.tls_cert`` and ``server.tls_key`` set, the gateway speaks TLS only."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from engine.server import LiveroomServer
from protocol import MSGPACK, Welcome
from tests.conftest import ServerFactory, bounded, token


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 (openssl, installed by ./dev)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@bounded(15)
async def test_wss_client_trusting_the_certificate_gets_welcome_and_plain_ws_is_refused(
    start_server: ServerFactory, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    srv: LiveroomServer = await start_server(server={"tls_cert": str(cert), "tls_key": str(key)})
    assert srv.url.startswith("wss://")
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"{srv.url}?token={token('ann', ['r'])}"
    async with connect(url, ssl=trust, subprotocols=["liveroom.v1.msgpack"]) as ws:  # type: ignore[list-item]
        data = await ws.recv()
        assert isinstance(data, bytes)
        assert isinstance(MSGPACK.decode_server(data), Welcome)
    with pytest.raises(Exception):  # noqa: B017 - any failure: the server does not speak plain ws
        async with connect(
            url.replace("wss://", "ws://"),
            open_timeout=3,
            subprotocols=["liveroom.v1.msgpack"],  # type: ignore[list-item]
        ) as ws:
            await ws.recv()
    untrusted = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        async with connect(url, ssl=untrusted, open_timeout=3):
            pass
