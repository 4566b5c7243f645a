"""Tests for engine.cli: ``token`` and configuration errors (``serve`` needs the server)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.auth import Role, verify_token
from engine.cli import _run, main
from engine.config import AuthConfig

__all__: list[str] = []

LIVEROOM = Path(sys.executable).parent / "liveroom"


def test_token_prints_a_token_the_configured_secret_verifies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"LIVEROOM_AUTH_SECRET": "cli-secret"}
    before = time.time()
    argv = [
        "token", "--user", "u7", "--name", "Seller", "--room", "r1", "--room", "r2",
        "--role", "host", "--ttl", "120",
    ]  # fmt: skip
    assert _run(argv, env) == 0
    token = capsys.readouterr().out.strip()
    claims = verify_token("cli-secret", token, now=time.time())
    assert claims.user_id == "u7"
    assert claims.name == "Seller"
    assert claims.rooms == ("r1", "r2")
    assert claims.role is Role.HOST
    assert before + 120 <= claims.expires_at <= time.time() + 120


def test_token_defaults_name_role_and_ttl(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["token", "--user", "u8", "--room", "*"], {}) == 0
    token = capsys.readouterr().out.strip()
    claims = verify_token(AuthConfig().secret, token, now=time.time())
    assert claims.name == "u8"
    assert claims.role is Role.VIEWER
    assert claims.can_join("any")
    assert claims.expires_at == pytest.approx(time.time() + AuthConfig().token_ttl, abs=5)


def test_token_reads_the_config_file_named_by_option_or_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nsecret = "from-file"\ntoken_ttl = 30\n')
    for argv, env in (
        (["token", "--user", "u", "--room", "r", "--config", str(path)], {}),
        (["token", "--user", "u", "--room", "r"], {"LIVEROOM_CONFIG": str(path)}),
    ):
        assert _run(argv, env) == 0
        claims = verify_token("from-file", capsys.readouterr().out.strip(), now=time.time())
        assert claims.expires_at == pytest.approx(time.time() + 30, abs=5)


def test_config_error_exits_2_and_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["token", "--user", "u", "--room", "r"], {"LIVEROOM_SERVER_PORT": "abc"}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("liveroom: config error: server.port: ")


def test_serve_config_error_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["serve", "--config", str(tmp_path / "missing.toml")], {}) == 2
    assert "liveroom: config error: " in capsys.readouterr().err
    assert _run(["serve", "--port", "70000"], {}) == 2
    assert "server.port" in capsys.readouterr().err


def test_claims_that_cannot_be_minted_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["token", "--user", "anon:x", "--room", "r"], {}) == 2
    assert "anon:" in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _run(["token", "--user", "u", "--room", "r", "--role", "admin"], {})
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        _run(["token", "--user", "u", "--room", "r", "--ttl", "-1"], {})
    assert info.value.code == 2
    assert _run([], {}) == 2


def test_main_exits_with_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["token", "--user", "u", "--room", "r"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("v1.")


@pytest.mark.skipif(not LIVEROOM.exists(), reason="console script not installed")
def test_console_script_mints_a_token(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nsecret = "script-secret"\n')
    result = subprocess.run(
        [str(LIVEROOM), "token", "--user", "u9", "--room", "r", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert verify_token("script-secret", result.stdout.strip(), now=time.time()).user_id == "u9"
