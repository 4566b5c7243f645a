"""Tests for engine.config: defaults, TOML file, env overrides, validation, rendering."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from engine.config import (
    SECRET_KEYS,
    AuthConfig,
    BrokerConfig,
    Config,
    ConfigError,
    DemoConfig,
    RoomsConfig,
    ServerConfig,
    ServiceConfig,
    StockConfig,
    env_var_name,
    load_config,
    render_config,
    validate_config,
)

__all__: list[str] = []

SECTIONS: tuple[tuple[str, type], ...] = (
    ("server", ServerConfig),
    ("auth", AuthConfig),
    ("rooms", RoomsConfig),
    ("service", ServiceConfig),
    ("stock", StockConfig),
    ("broker", BrokerConfig),
    ("demo", DemoConfig),
)
DEFAULT_TOML = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "liveroom.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------- defaults and file


def test_defaults_need_no_file_and_are_valid() -> None:
    assert load_config(env={}) == Config()
    validate_config(Config())


def test_default_toml_loads_to_exactly_the_builtin_defaults() -> None:
    assert load_config(DEFAULT_TOML, env={}) == Config()


def test_default_toml_spells_out_every_setting() -> None:
    document = tomllib.loads(DEFAULT_TOML.read_text(encoding="utf-8"))
    assert document["log_level"] == "info"
    for section, cls in SECTIONS:
        assert set(document[section]) == {f.name for f in dataclasses.fields(cls)}


def test_default_toml_names_every_env_var() -> None:
    text = DEFAULT_TOML.read_text(encoding="utf-8")
    settings = ["log_level"] + [
        f"{section}.{f.name}" for section, cls in SECTIONS for f in dataclasses.fields(cls)
    ]
    for setting in settings:
        assert f"[{env_var_name(setting)}]" in text, setting


def test_toml_file_overrides_defaults_and_keeps_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'log_level = "debug"\n[server]\nport = 9000\nheartbeat_interval = 5\n'
        "[rooms]\nhistory_size = 10\nsnapshot_size = 10\n",
    )
    config = load_config(path, env={})
    assert config.log_level == "debug"
    assert config.server.port == 9000
    assert config.server.heartbeat_interval == 5.0
    assert isinstance(config.server.heartbeat_interval, float)
    assert config.rooms.history_size == 10
    assert config.server.host == ServerConfig().host
    assert config.auth == AuthConfig()


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(missing, env={})


def test_unparsable_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = ")
    with pytest.raises(ConfigError, match=r"liveroom\.toml: not a valid TOML file"):
        load_config(path, env={})


def test_unknown_key_in_toml_is_named_with_its_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nprot = 9000\n")
    with pytest.raises(ConfigError, match=r"^server\.prot: unknown setting.*server\.port"):
        load_config(path, env={})


def test_unknown_section_in_toml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[redis]\nurl = 'x'\n")
    with pytest.raises(ConfigError, match=r"^redis: unknown setting"):
        load_config(path, env={})


def test_section_that_is_not_a_table_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "server = 1\n")
    with pytest.raises(ConfigError, match=r"^server: must be a table"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ('[server]\nport = "9000"', "server.port"),
        ("[server]\nport = 9000.0", "server.port"),
        ("[server]\nport = true", "server.port"),
        ('[server]\nuvloop = "yes"', "server.uvloop"),
        ("[server]\nheartbeat_interval = true", "server.heartbeat_interval"),
        ("[server]\nhost = 1", "server.host"),
        ("log_level = 3", "log_level"),
    ],
)
def test_wrong_type_in_toml_names_the_setting(tmp_path: Path, toml: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{setting}: must be "):
        load_config(write(tmp_path, toml + "\n"), env={})


# ----------------------------------------------------------------- environment


def test_env_overrides_are_parsed_per_field_type() -> None:
    config = load_config(
        env={
            "LIVEROOM_SERVER_PORT": "9000",
            "LIVEROOM_SERVER_IDLE_TIMEOUT": "2.5",
            "LIVEROOM_SERVER_UVLOOP": "no",
            "LIVEROOM_SERVER_REUSE_PORT": "TRUE",
            "LIVEROOM_AUTH_SECRET": "s3cret",
            "LIVEROOM_AUTH_ALLOW_ANONYMOUS": "1",
            "LIVEROOM_ROOMS_HISTORY_SIZE": "500",
            "LIVEROOM_LOG_LEVEL": "warning",
        }
    )
    assert config.server.port == 9000
    assert config.server.idle_timeout == 2.5
    assert config.server.uvloop is False
    assert config.server.reuse_port is True
    assert config.auth.secret == "s3cret"
    assert config.auth.allow_anonymous is True
    assert config.rooms.history_size == 500
    assert config.log_level == "warning"


def test_env_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\nhost = '0.0.0.0'\n")
    config = load_config(path, env={"LIVEROOM_SERVER_PORT": "9100"})
    assert config.server.port == 9100
    assert config.server.host == "0.0.0.0"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEROOM_ROOMS_SNAPSHOT_SIZE", "7")
    assert load_config().rooms.snapshot_size == 7


@pytest.mark.parametrize(
    ("var", "value", "setting"),
    [
        ("LIVEROOM_SERVER_PORT", "abc", "server.port"),
        ("LIVEROOM_SERVER_PORT", "80.5", "server.port"),
        ("LIVEROOM_SERVER_CLOSE_TIMEOUT", "soon", "server.close_timeout"),
        ("LIVEROOM_SERVER_UVLOOP", "maybe", "server.uvloop"),
    ],
)
def test_unparsable_env_value_names_setting_and_variable(
    var: str, value: str, setting: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^{setting}: must be .*{value!r}.*{var}"):
        load_config(env={var: value})


def test_unknown_liveroom_env_var_is_named() -> None:
    with pytest.raises(ConfigError, match=r"LIVEROOM_SERVER_PROT.*LIVEROOM_SERVER_PORT"):
        load_config(env={"LIVEROOM_SERVER_PROT": "1"})


def test_liveroom_config_and_other_variables_are_ignored() -> None:
    env = {"LIVEROOM_CONFIG": "/does/not/matter.toml", "PATH": "/bin", "LIVEROOMX": "1"}
    assert load_config(env=env) == Config()


# ----------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"LIVEROOM_SERVER_PORT": "65536"}, "server.port"),
        ({"LIVEROOM_SERVER_PORT": "-1"}, "server.port"),
        ({"LIVEROOM_SERVER_HOST": ""}, "server.host"),
        ({"LIVEROOM_SERVER_MAX_CONNECTIONS": "0"}, "server.max_connections"),
        ({"LIVEROOM_SERVER_NODE_ID": "edge 7"}, "server.node_id"),
        ({"LIVEROOM_SERVER_NODE_ID": "x" * 65}, "server.node_id"),
        ({"LIVEROOM_SERVER_MAX_MESSAGE_SIZE": "-5"}, "server.max_message_size"),
        ({"LIVEROOM_SERVER_WRITE_BUFFER_LIMIT": "0"}, "server.write_buffer_limit"),
        ({"LIVEROOM_SERVER_HEARTBEAT_INTERVAL": "0"}, "server.heartbeat_interval"),
        ({"LIVEROOM_SERVER_IDLE_TIMEOUT": "nan"}, "server.idle_timeout"),
        ({"LIVEROOM_SERVER_HANDSHAKE_TIMEOUT": "inf"}, "server.handshake_timeout"),
        ({"LIVEROOM_SERVER_CLOSE_TIMEOUT": "-1"}, "server.close_timeout"),
        ({"LIVEROOM_AUTH_SECRET": ""}, "auth.secret"),
        ({"LIVEROOM_AUTH_TOKEN_TTL": "0"}, "auth.token_ttl"),
        ({"LIVEROOM_ROOMS_HISTORY_SIZE": "0"}, "rooms.history_size"),
        ({"LIVEROOM_ROOMS_SNAPSHOT_SIZE": "0"}, "rooms.snapshot_size"),
        ({"LIVEROOM_ROOMS_SNAPSHOT_SIZE": "1001"}, "rooms.snapshot_size"),
        ({"LIVEROOM_ROOMS_MIN_FLUSH_INTERVAL_MS": "-1"}, "rooms.min_flush_interval_ms"),
        ({"LIVEROOM_ROOMS_MAX_COMMENT_LENGTH": "0"}, "rooms.max_comment_length"),
        ({"LIVEROOM_ROOMS_MAX_ROOMS_PER_CONNECTION": "0"}, "rooms.max_rooms_per_connection"),
        ({"LIVEROOM_LOG_LEVEL": "verbose"}, "log_level"),
        ({"LIVEROOM_SERVER_TLS_CERT": "cert.pem"}, "server.tls_key"),
        ({"LIVEROOM_SERVER_TLS_KEY": "key.pem"}, "server.tls_cert"),
        ({"LIVEROOM_DEMO_ROOM": "a b"}, "demo.room"),
        ({"LIVEROOM_DEMO_ROOM": ""}, "demo.room"),
        ({"LIVEROOM_DEMO_WS_URL": "http://127.0.0.1:8765/"}, "demo.ws_url"),
        ({"LIVEROOM_DEMO_TOKEN_TTL": "0"}, "demo.token_ttl"),
    ],
)
def test_out_of_range_value_names_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{setting}: "):
        load_config(env=env)


def test_port_zero_picks_a_free_port_and_is_allowed() -> None:
    assert load_config(env={"LIVEROOM_SERVER_PORT": "0"}).server.port == 0


def test_snapshot_may_equal_history() -> None:
    env = {"LIVEROOM_ROOMS_HISTORY_SIZE": "20", "LIVEROOM_ROOMS_SNAPSHOT_SIZE": "20"}
    assert load_config(env=env).rooms.snapshot_size == 20


def test_tls_files_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    env = {
        "LIVEROOM_SERVER_TLS_CERT": str(cert),
        "LIVEROOM_SERVER_TLS_KEY": str(tmp_path / "missing-key.pem"),
    }
    with pytest.raises(ConfigError, match=r"^server\.tls_key: file not found"):
        load_config(env=env)


def test_tls_is_on_when_both_files_exist(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("y")
    env = {"LIVEROOM_SERVER_TLS_CERT": str(cert), "LIVEROOM_SERVER_TLS_KEY": str(key)}
    config = load_config(env=env)
    assert config.server.tls
    assert not Config().server.tls


def test_errors_never_echo_the_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "[auth]\nsecret = 123456789\n")
    with pytest.raises(ConfigError, match=r"^auth\.secret: must be a string") as info:
        load_config(path, env={})
    assert "123456789" not in str(info.value)


# ----------------------------------------------------------------- rendering


def test_render_masks_the_secret() -> None:
    config = load_config(env={"LIVEROOM_AUTH_SECRET": "hunter2-very-secret"})
    text = render_config(config)
    assert "hunter2-very-secret" not in text
    assert 'secret = "***"' in text
    assert "auth.secret" in SECRET_KEYS


def test_rendered_config_loads_back_with_the_secret_masked(tmp_path: Path) -> None:
    config = load_config(
        env={
            "LIVEROOM_SERVER_PORT": "9001",
            "LIVEROOM_SERVER_HOST": "::1",
            "LIVEROOM_SERVER_IDLE_TIMEOUT": "1e-3",
            "LIVEROOM_AUTH_SECRET": "real",
            "LIVEROOM_ROOMS_MIN_FLUSH_INTERVAL_MS": "12.5",
            "LIVEROOM_LOG_LEVEL": "error",
        }
    )
    reloaded = load_config(write(tmp_path, render_config(config)), env={})
    expected = dataclasses.replace(
        config,
        auth=dataclasses.replace(config.auth, secret="***"),
        service=dataclasses.replace(config.service, api_keys="***"),
    )
    assert reloaded == expected


def test_rendered_config_with_revealed_secrets_loads_back_exactly(tmp_path: Path) -> None:
    weird = 'quote " backslash \\ newline \n tab \t bell \x07 del \x7f emoji 🎥'
    config = dataclasses.replace(
        Config(),
        server=dataclasses.replace(Config().server, host="example.org", port=0),
        auth=AuthConfig(secret=weird, allow_anonymous=True, token_ttl=60.0),
    )
    text = render_config(config, reveal_secrets=True)
    assert load_config(write(tmp_path, text), env={}) == config


def test_several_workers_need_the_redis_broker_and_store() -> None:
    env = {"LIVEROOM_SERVER_WORKERS": "2"}
    with pytest.raises(ConfigError, match=r"^server\.workers: 2 workers need broker\.backend"):
        load_config(env=env)
    env["LIVEROOM_BROKER_BACKEND"] = "redis"
    with pytest.raises(ConfigError, match=r"^server\.workers: 2 workers need stock\.backend"):
        load_config(env=env)
    env["LIVEROOM_STOCK_BACKEND"] = "redis"
    assert load_config(env=env).server.workers == 2
    with pytest.raises(ConfigError, match=r"^broker\.backend: must be one of memory, redis"):
        load_config(env={"LIVEROOM_BROKER_BACKEND": "kafka"})


def test_the_example_configs_load() -> None:
    configs = DEFAULT_TOML.parent
    redis = load_config(configs / "redis.toml", env={})
    assert redis.stock.backend == "redis" and redis.broker.backend == "memory"
    cluster = load_config(configs / "cluster.toml", env={})
    assert cluster.server.workers == 2
    assert (cluster.broker.backend, cluster.stock.backend) == ("redis", "redis")
    assert Config().demo.enabled  # the embedded defaults are the dev setup: demo on
    assert not redis.demo.enabled and not cluster.demo.enabled
