"""The Locust load test (``loadtest/locustfile.py``) against a real ``liveroom serve``.

Importing Locust monkeypatches the process with gevent, so nothing here imports it (nor
the locustfile): every run is a ``locust`` subprocess, headless on its own or as a master
with two workers on loopback, against an :class:`~tests.processes.Engine` started by the
test, following a small scenario written to ``tmp_path`` (3 commenters, 2 likers and 10
buyers racing for 5 units in a 4.5 s show). The test plays the host: it opens the flash
sale through the service API (``POST /v1/sales``) as soon as the room exists, starting at
the scenario's ``sale.at``. A buyer's retries are checked against a stand-in server (in
the test's event loop) that loses the first answers. Every process is stopped by its PID
in ``finally``, and each run is bounded by the show's end plus a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from engine.auth import verify_token
from loadtest.run import sale_body
from loadtest.scenario import Scenario, load_scenario
from protocol import (
    MSGPACK,
    Ack,
    Buy,
    BuyResult,
    Join,
    Joined,
    Like,
    SendComment,
    ServerMessage,
    Welcome,
)
from tests.conftest import SECRET
from tests.processes import Engine
from tests.redis_fixture import free_port

LOCUST = Path(sys.executable).with_name("locust")
ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = "loadtest/locustfile.py"
EXIT_GRACE = 6.0
"""Seconds after the show's end by which every Locust process must have exited."""

SCENARIO = """\
name = "{name}"
room = "{name}-room"
duration = 4.5
seed = 11

[viewers]
peak = 15
join_rate = 30.0
sampled = 1.0

[users]
commenters = 3
comment_rate = 2.0
likers = 2
like_rate = 2.0
like_count = 2

[sale]
at = 2.0
sale_id = "{name}-sale"
stock = 5
per_user_limit = 1
buyers = 10
jitter = 0.5
retries = 2
"""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine(log=tmp_path / "engine.log") as eng:
        yield eng


def write_scenario(directory: Path, name: str) -> tuple[Path, Scenario]:
    path = directory / f"{name}.toml"
    path.write_text(SCENARIO.format(name=name))
    return path, load_scenario(path)


def locust_env(url: str, scenario: Path, start_at: float, buys: Path) -> dict[str, str]:
    """This environment without ``LIVEROOM_*`` / ``LOCUST_*``, plus the locustfile's contract."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LIVEROOM_", "LOCUST_"))},
        "LIVEROOM_SCENARIO": str(scenario),
        "LIVEROOM_URL": url,
        "LIVEROOM_AUTH_SECRET": SECRET,
        "LIVEROOM_START_AT": repr(start_at),
        "LIVEROOM_BUYS_OUT": str(buys),
    }


def ws_url(engine: Engine) -> str:
    return f"ws://127.0.0.1:{engine.ws_port}/"


class Locusts:
    """``locust`` processes started in the repository's root, each logging to a file."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        with open(self.directory / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(LOCUST), "-f", LOCUSTFILE, "--only-summary", *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def exits(self, deadline: float) -> dict[str, int | None]:
        """Each process's exit code once all have exited, or at ``deadline`` (None: running)."""
        return await asyncio.to_thread(self._wait, deadline)

    def _wait(self, deadline: float) -> dict[str, int | None]:
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.time()))
        return {name: proc.poll() for name, proc in self.procs.items()}

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)


async def open_sale(engine: Engine, scenario: Scenario, start_at: float) -> None:
    """Open the scenario's sale, starting at ``start_at + sale.at``, once the room exists
    (with the memory broker the API knows a room from its first viewer's join)."""
    sale = scenario.sale
    assert sale is not None
    body = sale_body(scenario) | {"starts_at": start_at + sale.at, "duration": 60}
    while True:
        status, answer = await engine.api("POST", "/v1/sales", body)
        if status == 201:
            return
        assert status == 404, answer  # room_not_found: no viewer has joined yet
        assert time.time() < start_at + sale.at, "no user joined the room before the sale"
        await asyncio.sleep(0.05)


async def run_show(
    engine: Engine, scenario: Scenario, start_at: float, locusts: Locusts
) -> dict[str, int | None]:
    """Play the host while the Locust processes run the show; their exit codes."""
    host = asyncio.create_task(open_sale(engine, scenario, start_at))
    codes = await locusts.exits(start_at + scenario.duration + EXIT_GRACE)
    await host
    return codes


def stats(prefix: Path) -> dict[tuple[str, str], dict[str, str]]:
    """Locust's ``<prefix>_stats.csv`` rows by (type, name)."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def peak_users(prefix: Path) -> int:
    """The most users Locust ran at once (``<prefix>_stats_history.csv``)."""
    with open(f"{prefix}_stats_history.csv", newline="") as f:
        return max(int(row["User Count"]) for row in csv.DictReader(f))


def answer_files(directory: Path) -> list[Path]:
    """The buys logs the workers wrote beside ``buys.jsonl``."""
    return sorted(directory.glob("buys.worker*.jsonl"))


def read_answers(paths: Sequence[Path]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in paths for line in path.read_bytes().splitlines()]


async def store_orders(engine: Engine, sale_id: str) -> list[dict[str, Any]]:
    status, page = await engine.api("GET", f"/v1/sales/{sale_id}/orders?limit=1000")
    assert status == 200, page
    assert isinstance(page, dict) and page["next"] is None
    orders: list[dict[str, Any]] = page["orders"]
    return orders


def assert_clean_run(rows: dict[tuple[str, str], dict[str, str]], scenario: Scenario) -> None:
    """Every kind of request happened, none failed, and every user connected and joined once."""
    for key in (("WS", "connect"), ("WS", "join"), ("WS", "comment"), ("WS", "like")):
        assert key in rows, f"no {key} row in {sorted(rows)}"
    assert ("WS", "buy") in rows and ("PUSH", "comment") in rows, sorted(rows)
    assert all(row["Failure Count"] == "0" for row in rows.values()), rows
    assert int(rows["WS", "join"]["Request Count"]) == scenario.active_users
    assert int(rows["WS", "connect"]["Request Count"]) == scenario.active_users
    # 3 commenters and 2 likers at 2/s each, for most of the show
    assert int(rows["WS", "comment"]["Request Count"]) >= 3 * 2 * 2
    assert int(rows["WS", "like"]["Request Count"]) >= 2 * 2 * 2


def assert_one_answer_per_buyer(
    answers: list[dict[str, Any]], orders: list[dict[str, Any]], scenario: Scenario
) -> None:
    """One final answer per buyer; ``ok`` for the stock, ``sold_out`` for the rest; the
    ``ok`` answers are exactly the store's orders."""
    sale = scenario.sale
    assert sale is not None
    assert len(answers) == sale.buyers
    assert len({a["user"] for a in answers}) == sale.buyers
    indices = {int(a["user"].rpartition("-")[2]) for a in answers}  # lt-<scenario>-<index>
    assert indices <= set(range(scenario.active_users)), indices
    assert Counter(a["status"] for a in answers) == {
        "ok": sale.stock,
        "sold_out": sale.buyers - sale.stock,
    }
    assert all(a["attempts"] == 1 and a["sale"] == sale.sale_id for a in answers)
    ok = {a["order"]: a for a in answers if a["status"] == "ok"}
    assert {o["order_id"]: o["user_id"] for o in orders} == {k: a["user"] for k, a in ok.items()}
    for order in orders:  # the store keys a request by user and rid; the rid ends it
        assert order["request_id"].endswith(ok[order["order_id"]]["rid"])
        assert order["quantity"] == 1 and not order["cancelled"]


async def test_headless_run_follows_the_scenario_and_exits_by_itself(
    engine: Engine, tmp_path: Path
) -> None:
    path, scenario = write_scenario(tmp_path, "solo")
    start_at = time.time() + 2.5  # Locust starts in about a second
    buys = tmp_path / "buys.jsonl"
    locusts = Locusts(tmp_path, locust_env(ws_url(engine), path, start_at, buys))
    try:
        locusts.start("locust", "--headless", "--csv", str(tmp_path / "run"), "--html",
                      str(tmp_path / "run.html"))  # fmt: skip
        codes = await run_show(engine, scenario, start_at, locusts)
    finally:
        locusts.kill()
    assert codes == {"locust": 0}, locusts.log("locust")
    rows = stats(tmp_path / "run")
    assert_clean_run(rows, scenario)
    assert peak_users(tmp_path / "run") == scenario.active_users
    assert (tmp_path / "run.html").stat().st_size > 0
    orders = await store_orders(engine, "solo-sale")
    assert_one_answer_per_buyer(read_answers([buys]), orders, scenario)


async def test_master_and_two_workers_run_exactly_the_cast_between_them(
    engine: Engine, tmp_path: Path
) -> None:
    path, scenario = write_scenario(tmp_path, "duo")
    start_at = time.time() + 4.0  # three Locust processes start on two cores
    port = str(free_port())
    locusts = Locusts(tmp_path, locust_env(ws_url(engine), path, start_at, tmp_path / "buys.jsonl"))
    try:
        locusts.start("master", "--master", "--headless", "--expect-workers", "2",
                      "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
                      "--csv", str(tmp_path / "run"),
                      "--html", str(tmp_path / "run.html"))  # fmt: skip
        for name in ("worker0", "worker1"):
            locusts.start(name, "--worker", "--master-host", "127.0.0.1", "--master-port", port)
        codes = await run_show(engine, scenario, start_at, locusts)
    finally:
        locusts.kill()
    assert codes == {"master": 0, "worker0": 0, "worker1": 0}, {
        name: locusts.log(name) for name, code in codes.items() if code != 0
    }
    rows = stats(tmp_path / "run")
    assert_clean_run(rows, scenario)
    assert peak_users(tmp_path / "run") == scenario.active_users
    # Each worker wrote its own buyers' answers (each runs 7 or 8 of the 15 users, and
    # only 5 users are not buyers, so both have some); together, one per buyer.
    files = answer_files(tmp_path)
    assert [f.name for f in files] == ["buys.worker0.jsonl", "buys.worker1.jsonl"]
    orders = await store_orders(engine, "duo-sale")
    assert_one_answer_per_buyer(read_answers(files), orders, scenario)


# --- a buyer's retries, against a stand-in server that loses answers -------------------
# (the show lasts past the press (1.2 s) plus the retries' backoff: 1 s, then 2 s)

RETRY_SCENARIO = """\
name = "retry"
room = "retry-room"
duration = 6.0
seed = 5

[viewers]
peak = 4
join_rate = 100.0

[sale]
at = 1.0
sale_id = "retry-sale"
stock = 4
buyers = 4
jitter = 0.2
retries = 2
"""


class LosingShow:
    """A stand-in liveroom server that answers ``join`` and records every ``buy``.

    A user's first press is lost: users with an even index are disconnected (1011)
    instead of answered, the others get ``error`` "try again"; so are their second
    presses. The next press gets ``ok``.
    """

    def __init__(self) -> None:
        self.buys: dict[str, list[Buy]] = {}
        self.connections = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        assert ws.request is not None and ws.subprotocol == MSGPACK.subprotocol
        token = ws.request.path.partition("?token=")[2]
        uid = verify_token(SECRET, token, time.time()).user_id
        await self.send(
            ws,
            Welcome(
                session="s",
                user_id=uid,
                name="",
                role="viewer",
                heartbeat_ms=20_000,
                server_time=int(time.time() * 1000),
            ),
        )
        async for data in ws:
            assert isinstance(data, bytes)
            message = MSGPACK.decode_client(data)
            if isinstance(message, Join):
                await self.send(
                    ws,
                    Joined(
                        room=message.room,
                        epoch="e",
                        offset=0,
                        viewers=1,
                        likes=0,
                        resync=False,
                        recent=(),
                        rid=message.rid,
                    ),
                )
            elif isinstance(message, SendComment | Like) and message.rid is not None:
                await self.send(ws, Ack(rid=message.rid))
            elif isinstance(message, Buy):
                presses = self.buys.setdefault(uid, [])
                presses.append(message)
                if len(presses) > 2:
                    answer = BuyResult(
                        rid=message.rid, sale=message.sale, status="ok", order=f"order-{uid}", qty=1
                    )
                elif int(uid.rpartition("-")[2]) % 2 == 0:
                    await ws.close(1011, "answer lost")
                    return
                else:
                    answer = BuyResult(
                        rid=message.rid, sale=message.sale, status="error", msg="try again"
                    )
                await self.send(ws, answer)

    @staticmethod
    async def send(ws: ServerConnection, message: ServerMessage) -> None:
        await ws.send(MSGPACK.encode(message))


async def test_a_buyer_whose_answer_is_lost_retries_the_same_rid_and_answers_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "retry.toml"
    path.write_text(RETRY_SCENARIO)
    scenario = load_scenario(path)
    show = LosingShow()
    start_at = time.time() + 2.0
    async with serve(
        show.handler, "127.0.0.1", 0, subprotocols=[Subprotocol(MSGPACK.subprotocol)]
    ) as server:
        port = server.sockets[0].getsockname()[1]
        env = locust_env(f"ws://127.0.0.1:{port}/", path, start_at, tmp_path / "buys.jsonl")
        locusts = Locusts(tmp_path, env)
        try:
            locusts.start("locust", "--headless", "--csv", str(tmp_path / "run"))
            codes = await locusts.exits(start_at + scenario.duration + EXIT_GRACE)
        finally:
            locusts.kill()
    # the four closes (two per even buyer) are failures, so the exit code is 1; no other
    assert codes == {"locust": 1}, locusts.log("locust")
    rows = stats(tmp_path / "run")
    failed = {key: row["Failure Count"] for key, row in rows.items() if row["Failure Count"] != "0"}
    assert failed == {("WS", "close"): "4", ("", "Aggregated"): "4"}, failed
    assert int(rows["WS", "connect"]["Request Count"]) == 4 + 4  # a new connection each
    # every buyer pressed once: one rid, resent with retry: true, three times in all
    assert sorted(show.buys) == [f"lt-retry-{i}" for i in range(4)]
    for presses in show.buys.values():
        assert len({b.rid for b in presses}) == 1
        assert [b.retry for b in presses] == [None, True, True]
    # one final answer each, after three attempts, in the buys log
    answers = read_answers([tmp_path / "buys.jsonl"])
    assert sorted((a["user"], a["status"], a["attempts"]) for a in answers) == [
        (f"lt-retry-{i}", "ok", 3) for i in range(4)
    ]
    assert {a["user"]: a["rid"] for a in answers} == {
        uid: presses[0].rid for uid, presses in show.buys.items()
    }
