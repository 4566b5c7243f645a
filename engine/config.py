"""Configuration of a liveroom node: embedded defaults, an optional TOML file, env overrides.

Guarantees:

* ``Config()`` alone is a complete, valid configuration: no file is needed to start.
* :func:`load_config` applies, in this order, the defaults, the TOML file (if given) and the
  ``LIVEROOM_<SECTION>_<KEY>`` environment variables, then validates the result. It returns
  a valid :class:`Config` or raises :class:`ConfigError`, whose message always starts with
  the setting at fault (``server.port: ...``) or the file / variable that could not be used.
* Unknown settings are errors, never silently ignored: a typo cannot leave a default in force.
* :func:`render_config` never prints a secret (see :data:`SECRET_KEYS`), and its output
  (with secrets revealed) loads back to the same configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.names import ROOM_NAME_RULE, valid_room_name

__all__ = [
    "BROKER_BACKENDS",
    "ENV_CONFIG_PATH",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "SECRET_KEYS",
    "STOCK_BACKENDS",
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "DemoConfig",
    "RoomsConfig",
    "ServerConfig",
    "ServiceConfig",
    "StockConfig",
    "env_var_name",
    "load_config",
    "node_id",
    "render_config",
    "validate_config",
]

ENV_PREFIX = "LIVEROOM_"
"""Prefix of every environment variable that overrides a setting."""

ENV_CONFIG_PATH = "LIVEROOM_CONFIG"
"""Environment variable naming the config file (read by the CLI, ignored by load_config)."""

STOCK_BACKENDS = ("memory", "redis")
BROKER_BACKENDS = ("memory", "redis")
SECRET_KEYS = frozenset({"auth.secret", "service.api_keys"})
"""Settings whose values are never printed nor echoed in error messages."""

LOG_LEVELS = ("debug", "info", "warning", "error")

_MASK = "***"
_NODE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the setting, file or variable.

    Example: ``server.port: must be an integer in 0..65535, got 'abc'``.
    """


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The websocket listener and the limits it enforces per connection."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0 = pick a free port (tests)
    max_connections: int = 20000  # also capped by the open-files limit less fd_reserve
    fd_reserve: int = 256  # descriptors kept free for the service API, Redis, logs, refusals
    max_message_size: int = 4096  # bytes, largest client message accepted
    write_buffer_limit: int = 1048576  # bytes unsent to one client before it is cut off
    write_budget: int = 268435456  # bytes unsent to all clients together; most-behind cut first
    heartbeat_interval: float = 20.0  # seconds between server pings to a quiet client
    idle_timeout: float = 60.0  # seconds without any bytes from a client before closing it
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0  # seconds to wait for the closing handshake
    tls_cert: str = ""  # path; TLS (wss) is on when both tls_cert and tls_key are set
    tls_key: str = ""
    uvloop: bool = True
    reuse_port: bool = False
    node_id: str = ""  # this node's id in logs, /health and metrics; empty: <hostname>-<pid>
    workers: int = 1  # processes serving this port (SO_REUSEPORT); > 1 needs broker.backend redis

    @property
    def tls(self) -> bool:
        """Whether the listener serves TLS (wss): both certificate and key are set."""
        return bool(self.tls_cert and self.tls_key)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Token verification and minting."""

    secret: str = "dev-secret-change-me"  # HMAC key; masked when printed
    allow_anonymous: bool = False  # anonymous read-only viewers may connect without a token
    token_ttl: float = 3600.0  # default lifetime of tokens minted by `liveroom token`


@dataclass(frozen=True, slots=True)
class RoomsConfig:
    """Per-room buffers and per-connection room limits."""

    history_size: int = 1000  # events kept per room in the ring buffer (for reconnects)
    snapshot_size: int = 50  # recent events sent to a late joiner
    min_flush_interval_ms: float = 0.0  # minimum interval between two batch frames of a room
    max_comment_length: int = 200  # characters
    max_rooms_per_connection: int = 4
    comment_rate: float = 5.0  # comments per second one connection may sustain
    comment_burst: int = 10  # comments one connection may send at once before the rate applies
    conflate_interval_ms: float = 250.0  # like totals and viewer counts go out at most this often
    fanout_slice: int = 512  # subscribers written per event-loop step when a room fans out
    like_rate: float = 10.0  # like messages per second one connection may sustain
    like_burst: int = 20
    max_likes_per_message: int = 10  # a like message counts at most this many likes
    buy_rate: float = 5.0  # buy presses per second one connection may sustain
    buy_burst: int = 10
    ping_rate: float = 1.0  # application pings per second one connection may sustain
    ping_burst: int = 5
    join_rate: float = 2.0  # join / leave messages per second one connection may sustain
    join_burst: int = 10
    empty_room_ttl: float = 60.0  # seconds an empty room (with history) is kept
    max_rooms: int = 10000  # rooms one node holds at once; joins that would add more are refused
    trace_dir: str = ""  # record viewer actions (pseudonymised) here for load-test replay


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The internal HTTP API for backend services (pins, sales, orders, metrics)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8766  # 0 = pick a free port (tests)
    api_keys: str = "dev-service-key"  # comma-separated; SECRET: masked when printed
    body_timeout: float = 10.0  # seconds a request body may take to arrive

    def keys(self) -> tuple[str, ...]:
        """The accepted API keys, blanks dropped."""
        return tuple(k.strip() for k in self.api_keys.split(",") if k.strip())


@dataclass(frozen=True, slots=True)
class StockConfig:
    """The flash-sale stock store and how a node batches purchases into it."""

    backend: str = "memory"  # memory (one process, embedded) or redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout: float = 1.0  # seconds: a store call answers or fails within about this
    key_prefix: str = "lr"
    cluster: bool = False  # redis_url names a node of a Redis Cluster
    batch_window_ms: float = 2.0  # gather purchases this long (or batch_max) per store call
    batch_max: int = 100
    max_pending: int = 20000  # buy presses queued on a node before new ones get "busy"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """How a room's events reach every node with viewers in it (engine/broker/)."""

    backend: str = "memory"  # memory (one process, embedded) or redis (processes and machines)
    redis_url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False  # redis_url names a node of a Redis Cluster: sharded pub/sub
    redis_timeout: float = 1.0  # seconds: a publish answers or fails within about this
    key_prefix: str = "lr"
    viewers_ttl: float = 5.0  # seconds a node's reported viewer counts live without a refresh
    reconnect_max: float = 5.0  # seconds, longest wait between reconnect attempts
    room_ttl: float = 86400.0  # seconds a room's Redis keys live after its last event


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """The demo pages on the service port (engine/demo/): a viewer page and a host console."""

    enabled: bool = True  # serve /demo/ (no API key) on the service port; off in production
    room: str = "demo"  # the one room the demo pages, tokens and endpoints serve
    ws_url: str = ""  # websocket URL for the pages; empty: ws(s)://<page's host>:<server.port>/
    token_ttl: float = 600.0  # seconds a demo token lives (the pages fetch fresh ones)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of one node."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    stock: StockConfig = field(default_factory=StockConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    log_level: str = "info"  # one of LOG_LEVELS


# --------------------------------------------------------------------------- schema

_SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if dataclasses.is_dataclass(typing.get_type_hints(Config)[f.name])
}
"""Section name -> section dataclass (``server`` -> ServerConfig, ...)."""

_TOP_LEVEL: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name not in _SECTIONS
}
"""Top-level setting name -> type (``log_level`` -> str)."""

_SECTION_KEYS: dict[str, dict[str, type]] = {
    name: dict(typing.get_type_hints(cls)) for name, cls in _SECTIONS.items()
}
"""Section name -> {key -> type}."""


def _dotted(section: str | None, key: str) -> str:
    return key if section is None else f"{section}.{key}"


def env_var_name(setting: str) -> str:
    """Return the environment variable that overrides a setting.

    Args:
        setting: dotted setting name, e.g. ``"server.port"`` or ``"log_level"``.

    Returns:
        e.g. ``"LIVEROOM_SERVER_PORT"`` or ``"LIVEROOM_LOG_LEVEL"``.
    """
    return ENV_PREFIX + setting.replace(".", "_").upper()


_ENV_VARS: dict[str, tuple[str | None, str, type]] = {
    env_var_name(_dotted(None, key)): (None, key, typ) for key, typ in _TOP_LEVEL.items()
} | {
    env_var_name(_dotted(section, key)): (section, key, typ)
    for section, keys in _SECTION_KEYS.items()
    for key, typ in keys.items()
}
"""Environment variable -> (section or None, key, type)."""


# --------------------------------------------------------------------------- values


def _shown(setting: str, value: object) -> str:
    """The value as it may appear in an error message (secrets masked)."""
    return _MASK if setting in SECRET_KEYS else repr(value)


_TYPE_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    str: "a string",
}


def _from_toml(setting: str, typ: type, value: object) -> object:
    """Check a TOML value against the setting's type; ints are accepted for floats."""
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(typing.cast(float, value))
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"{setting}: must be {_TYPE_NAMES[typ]}, got {type(value).__name__} "
            f"{_shown(setting, value)}"
        )
    return value


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _from_env(setting: str, typ: type, raw: str, var: str) -> object:
    """Parse an environment variable's text as the setting's type."""
    text = raw.strip()
    try:
        if typ is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(raw)
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
    except ValueError:
        hint = " (true/false, 1/0, yes/no)" if typ is bool else ""
        raise ConfigError(
            f"{setting}: must be {_TYPE_NAMES[typ]}{hint}, got {_shown(setting, raw)} (from {var})"
        ) from None
    return raw


# --------------------------------------------------------------------------- loading


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    name = os.fspath(path)
    try:
        with open(name, "rb") as fp:
            return tomllib.load(fp)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read config file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: not a valid TOML file: {exc}") from None


def _unknown(setting: str, candidates: list[str]) -> ConfigError:
    close = difflib.get_close_matches(setting, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{setting}: unknown setting{hint}")


def _apply_toml(
    document: Mapping[str, Any],
    top: dict[str, object],
    sections: dict[str, dict[str, object]],
) -> None:
    all_settings = list(_TOP_LEVEL) + [
        _dotted(s, k) for s, keys in _SECTION_KEYS.items() for k in keys
    ]
    for name, value in document.items():
        if name in _TOP_LEVEL:
            top[name] = _from_toml(name, _TOP_LEVEL[name], value)
        elif name in _SECTION_KEYS:
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: must be a table ([{name}]), got {value!r}")
            keys = _SECTION_KEYS[name]
            for key, item in value.items():
                setting = _dotted(name, key)
                if key not in keys:
                    raise _unknown(setting, all_settings)
                sections[name][key] = _from_toml(setting, keys[key], item)
        else:
            raise _unknown(name, all_settings + list(_SECTION_KEYS))


def _apply_env(
    env: Mapping[str, str],
    top: dict[str, object],
    sections: dict[str, dict[str, object]],
) -> None:
    unknown = sorted(
        var
        for var in env
        if var.startswith(ENV_PREFIX) and var != ENV_CONFIG_PATH and var not in _ENV_VARS
    )
    if unknown:
        hints = []
        for var in unknown:
            close = difflib.get_close_matches(var, list(_ENV_VARS), n=1)
            hints.append(f"{var} (did you mean {close[0]}?)" if close else var)
        raise ConfigError(f"unknown environment variable(s): {', '.join(hints)}")
    for var, (section, key, typ) in _ENV_VARS.items():
        if var not in env:
            continue
        value = _from_env(_dotted(section, key), typ, env[var], var)
        if section is None:
            top[key] = value
        else:
            sections[section][key] = value


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration: defaults <- TOML file <- environment variables.

    Args:
        path: optional TOML file; its tables are the sections (``[server]``, ``[auth]``,
            ``[rooms]``) and ``log_level`` is a top-level key.
        env: environment to read ``LIVEROOM_<SECTION>_<KEY>`` overrides from (e.g.
            ``LIVEROOM_SERVER_PORT=9000``, ``LIVEROOM_LOG_LEVEL=debug``); defaults to
            ``os.environ``. ``LIVEROOM_CONFIG`` is ignored here (the CLI reads it).

    Returns:
        A validated :class:`Config`.

    Raises:
        ConfigError: the file is missing or not TOML; a key or ``LIVEROOM_*`` variable is
            unknown; a value has the wrong type or is out of range (see
            :func:`validate_config`).
    """
    top: dict[str, object] = {}
    sections: dict[str, dict[str, object]] = {name: {} for name in _SECTIONS}
    if path is not None:
        _apply_toml(_read_toml(path), top, sections)
    _apply_env(os.environ if env is None else env, top, sections)

    base = Config()
    changes: dict[str, Any] = dict(top)
    for name, values in sections.items():
        changes[name] = dataclasses.replace(getattr(base, name), **values)
    config = dataclasses.replace(base, **changes)
    validate_config(config)
    return config


def node_id(config: Config) -> str:
    """The node's id: ``server.node_id``, or ``<hostname>-<pid>`` when it is empty."""
    if config.server.node_id:
        return config.server.node_id
    host = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:50] or "node"
    return f"{host}-{os.getpid()}"


# --------------------------------------------------------------------------- validation


def _check_int(setting: str, value: int, lo: int, hi: int | None = None) -> None:
    if lo <= value and (hi is None or value <= hi):
        return
    bounds = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
    raise ConfigError(f"{setting}: must be an integer {bounds}, got {value!r}")


def _check_float(setting: str, value: float, *, allow_zero: bool = False) -> None:
    if math.isfinite(value) and (value > 0 or (allow_zero and value == 0)):
        return
    bounds = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"{setting}: must be a finite number {bounds}, got {value!r}")


def _check_redis_section(
    section: str,
    backend: str,
    backends: tuple[str, ...],
    redis_url: str,
    redis_timeout: float,
    key_prefix: str,
) -> None:
    """The settings ``[stock]`` and ``[broker]`` share: backend, Redis URL, timeout, prefix."""
    if backend not in backends:
        raise ConfigError(
            f"{section}.backend: must be one of {', '.join(backends)}, got {backend!r}"
        )
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{section}.redis_url: must be a redis://, rediss:// or unix:// URL")
    _check_float(f"{section}.redis_timeout", redis_timeout)
    if not key_prefix:
        raise ConfigError(f"{section}.key_prefix: must not be empty")


def validate_config(config: Config) -> None:
    """Check ranges and cross-setting rules of a configuration.

    Args:
        config: the configuration to check, e.g. after CLI overrides were applied.

    Raises:
        ConfigError: naming the first setting that is out of range: ports outside
            0..65535, sizes and limits not > 0, intervals not finite and > 0
            (``rooms.min_flush_interval_ms`` may be 0), ``rooms.snapshot_size`` above
            ``rooms.history_size``, only one of ``server.tls_cert`` / ``server.tls_key``
            set or a file missing, an empty ``auth.secret`` or ``server.host``, or a
            ``log_level`` not in :data:`LOG_LEVELS`.
    """
    s = config.server
    if not s.host:
        raise ConfigError("server.host: must not be empty")
    _check_int("server.port", s.port, 0, 65535)
    _check_int("server.max_connections", s.max_connections, 1)
    _check_int("server.max_message_size", s.max_message_size, 1)
    _check_int("server.write_buffer_limit", s.write_buffer_limit, 1)
    _check_int("server.write_budget", s.write_budget, 1)
    _check_int("server.fd_reserve", s.fd_reserve, 0)
    if s.node_id and not _NODE_ID.fullmatch(s.node_id):
        raise ConfigError(
            f"server.node_id: must be 1-64 characters of [A-Za-z0-9_.:-], got {s.node_id!r}"
        )
    _check_float("server.heartbeat_interval", s.heartbeat_interval)
    _check_float("server.idle_timeout", s.idle_timeout)
    _check_float("server.handshake_timeout", s.handshake_timeout)
    _check_float("server.close_timeout", s.close_timeout)
    if bool(s.tls_cert) != bool(s.tls_key):
        missing = "server.tls_key" if s.tls_cert else "server.tls_cert"
        raise ConfigError(
            f"{missing}: must be set together with "
            f"{'server.tls_cert' if s.tls_cert else 'server.tls_key'} (or both left empty)"
        )
    for setting, file in (("server.tls_cert", s.tls_cert), ("server.tls_key", s.tls_key)):
        if file and not os.path.isfile(file):
            raise ConfigError(f"{setting}: file not found: {file!r}")

    a = config.auth
    if not a.secret:
        raise ConfigError("auth.secret: must not be empty")
    _check_float("auth.token_ttl", a.token_ttl)

    r = config.rooms
    _check_int("rooms.history_size", r.history_size, 1)
    _check_int("rooms.snapshot_size", r.snapshot_size, 1)
    if r.snapshot_size > r.history_size:
        raise ConfigError(
            f"rooms.snapshot_size: must be <= rooms.history_size ({r.history_size}), "
            f"got {r.snapshot_size}"
        )
    _check_float("rooms.min_flush_interval_ms", r.min_flush_interval_ms, allow_zero=True)
    _check_int("rooms.max_comment_length", r.max_comment_length, 1)
    _check_int("rooms.max_rooms_per_connection", r.max_rooms_per_connection, 1)
    _check_float("rooms.comment_rate", r.comment_rate)
    _check_int("rooms.comment_burst", r.comment_burst, 1)
    _check_float("rooms.conflate_interval_ms", r.conflate_interval_ms)
    _check_int("rooms.fanout_slice", r.fanout_slice, 1)
    for kind in ("like", "buy", "ping", "join"):
        _check_float(f"rooms.{kind}_rate", getattr(r, f"{kind}_rate"))
        _check_int(f"rooms.{kind}_burst", getattr(r, f"{kind}_burst"), 1)
    _check_int("rooms.max_likes_per_message", r.max_likes_per_message, 1, 100)
    _check_float("rooms.empty_room_ttl", r.empty_room_ttl, allow_zero=True)
    _check_int("rooms.max_rooms", r.max_rooms, 1)
    if r.trace_dir and not os.path.isdir(r.trace_dir):
        raise ConfigError(f"rooms.trace_dir: not a directory: {r.trace_dir!r}")

    v = config.service
    if not v.host:
        raise ConfigError("service.host: must not be empty")
    _check_int("service.port", v.port, 0, 65535)
    _check_float("service.body_timeout", v.body_timeout)
    if v.enabled and not v.keys():
        raise ConfigError("service.api_keys: at least one key is needed when the service is on")

    k = config.stock
    _check_redis_section(
        "stock", k.backend, STOCK_BACKENDS, k.redis_url, k.redis_timeout, k.key_prefix
    )
    _check_float("stock.batch_window_ms", k.batch_window_ms, allow_zero=True)
    _check_int("stock.batch_max", k.batch_max, 1, 500)
    _check_int("stock.max_pending", k.max_pending, 1)

    b = config.broker
    _check_redis_section(
        "broker", b.backend, BROKER_BACKENDS, b.redis_url, b.redis_timeout, b.key_prefix
    )
    _check_float("broker.viewers_ttl", b.viewers_ttl)
    _check_float("broker.reconnect_max", b.reconnect_max)
    _check_float("broker.room_ttl", b.room_ttl)

    _check_int("server.workers", s.workers, 1, 256)
    if s.workers > 1 and b.backend != "redis":
        raise ConfigError(
            f'server.workers: {s.workers} workers need broker.backend = "redis" '
            f"(got {b.backend!r}): with the memory broker each process would hold its "
            "own copy of every room"
        )
    if s.workers > 1 and k.backend != "redis":
        raise ConfigError(
            f'server.workers: {s.workers} workers need stock.backend = "redis" '
            f"(got {k.backend!r}): with the memory store each process would sell its own stock"
        )

    d = config.demo
    if not valid_room_name(d.room):
        raise ConfigError(f"demo.room: must be {ROOM_NAME_RULE}, got {d.room!r}")
    if d.ws_url and not d.ws_url.startswith(("ws://", "wss://")):
        raise ConfigError(f"demo.ws_url: must be empty or a ws:// or wss:// URL, got {d.ws_url!r}")
    _check_float("demo.token_ttl", d.token_ttl)

    if config.log_level not in LOG_LEVELS:
        raise ConfigError(
            f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}"
        )


# --------------------------------------------------------------------------- rendering


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return _toml_string(str(value))


def render_config(config: Config, *, reveal_secrets: bool = False) -> str:
    """Render a configuration as TOML text, e.g. to print the effective config at start.

    Args:
        config: the configuration to render.
        reveal_secrets: print secrets as they are; by default every setting in
            :data:`SECRET_KEYS` is shown as ``"***"``.

    Returns:
        TOML text that :func:`load_config` reads back to ``config`` (with secrets revealed;
        masked, the secrets load back as ``"***"``).
    """
    lines: list[str] = []
    for key in _TOP_LEVEL:
        lines.append(f"{key} = {_toml_value(getattr(config, key))}")
    for section in _SECTIONS:
        lines.append("")
        lines.append(f"[{section}]")
        values = getattr(config, section)
        for key in _SECTION_KEYS[section]:
            value = getattr(values, key)
            if not reveal_secrets and _dotted(section, key) in SECRET_KEYS:
                value = _MASK
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
