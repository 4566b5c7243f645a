"""The ``liveroom`` command: ``serve`` runs a node, ``token`` mints a client token.

Guarantees: configuration comes from ``--config FILE`` (or ``$LIVEROOM_CONFIG``) plus the
``LIVEROOM_*`` environment variables, exactly as :func:`engine.config.load_config` reads
them; a configuration error prints ``liveroom: config error: <setting>: <problem>`` on
stderr and exits with status 2 before anything starts. Secrets are never printed.
``serve --workers N`` (or ``server.workers``) with N > 1 runs N worker processes on the same
ports under a supervisor (:mod:`engine.workers`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from engine.auth import Claims, Role, mint_token
from engine.config import (
    ENV_CONFIG_PATH,
    Config,
    ConfigError,
    load_config,
    node_id,
    render_config,
    validate_config,
)

__all__ = ["main"]

EXIT_OK = 0
EXIT_USAGE = 2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liveroom",
        description="Real-time websocket engine for live-stream commerce.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    config_help = f"TOML config file (default: ${ENV_CONFIG_PATH}, else built-in defaults)"

    serve = commands.add_parser("serve", help="run a liveroom node until interrupted")
    serve.add_argument("--config", metavar="FILE", help=config_help)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes sharing the ports (overrides server.workers; N > 1 needs the Redis "
        "broker and stock store)",
    )

    token = commands.add_parser("token", help="print a client token signed with auth.secret")
    token.add_argument("--user", required=True, help="user id (the token's sub)")
    token.add_argument("--name", help="display name (default: the user id)")
    token.add_argument(
        "--room",
        dest="rooms",
        action="append",
        required=True,
        metavar="ROOM",
        help="room the token admits; repeat for several, '*' for any",
    )
    token.add_argument("--role", choices=[role.value for role in Role], default=Role.VIEWER.value)
    token.add_argument(
        "--ttl",
        type=_positive_float,
        metavar="SECONDS",
        help="lifetime in seconds (default: auth.token_ttl)",
    )
    token.add_argument("--config", metavar="FILE", help=config_help)
    return parser


def _load(path: str | None, env: Mapping[str, str]) -> Config:
    return load_config(path or env.get(ENV_CONFIG_PATH) or None, env)


def _config_error(exc: ConfigError) -> int:
    print(f"liveroom: config error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        config = _load(args.config, env)
    except ConfigError as exc:
        return _config_error(exc)
    ttl: float = args.ttl if args.ttl is not None else config.auth.token_ttl
    claims = Claims(
        user_id=args.user,
        name=args.name if args.name is not None else args.user,
        rooms=tuple(args.rooms),
        role=Role(args.role),
        expires_at=time.time() + ttl,
    )
    try:
        token = mint_token(config.auth.secret, claims)
    except ValueError as exc:
        print(f"liveroom: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(token)
    return EXIT_OK


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        config = _load(args.config, env)
        overrides = {
            key: value
            for key, value in (
                ("host", args.host),
                ("port", args.port),
                ("workers", args.workers),
            )
            if value is not None
        }
        if overrides:
            config = dataclasses.replace(
                config, server=dataclasses.replace(config.server, **overrides)
            )
            validate_config(config)
        if config.server.workers > 1:
            from engine.workers import check_workers

            check_workers(config)
    except ConfigError as exc:
        return _config_error(exc)

    print("liveroom effective config:", file=sys.stderr)
    print(render_config(config), file=sys.stderr, end="")
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{node_id(config)}] %(name)s: %(message)s",
    )
    if config.server.workers > 1:
        # A supervisor: it serves nothing, its workers (``liveroom serve``) do.
        from engine import workers

        try:
            path = args.config or env.get(ENV_CONFIG_PATH) or None
            return workers.supervise(config, config_path=path, env=env)
        except KeyboardInterrupt:
            return 130
    # Imported late: the server pulls in asyncio, websockets and uvloop, which `token`
    # does not need.
    server = importlib.import_module("engine.server")
    print(server.limits_line(config), file=sys.stderr, flush=True)
    run: Callable[[Config], int] = server.run
    try:
        return run(config)
    except KeyboardInterrupt:
        return 130


def _run(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the command line and return the exit status.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
        env: environment for config path and overrides (default: ``os.environ``).

    Returns:
        0 on success, 2 on a usage or configuration error, else what the server returned.

    Raises:
        SystemExit: from argparse, for ``--help`` and malformed arguments (status 2).
    """
    parser = _parser()
    args = parser.parse_args(argv)
    environ: Mapping[str, str] = os.environ if env is None else env
    if args.command == "token":
        return _token(args, environ)
    if args.command == "serve":
        return _serve(args, environ)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the command line and exit with its status.

    Raises:
        SystemExit: always, with the exit status.
    """
    raise SystemExit(_run(argv))


if __name__ == "__main__":  # ``python -m engine.cli``: how the supervisor starts its workers
    main()
