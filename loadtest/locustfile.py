"""Locust load test of one liveroom show: the active users of a scenario, on its timeline.

Run from the repository's root, alone or distributed::

    LIVEROOM_SCENARIO=smoke LIVEROOM_URL=ws://127.0.0.1:8765/ LIVEROOM_AUTH_SECRET=… \\
    LIVEROOM_START_AT=$(date +%s) LIVEROOM_BUYS_OUT=out/buys.jsonl \\
        locust -f loadtest/locustfile.py --headless --csv out/run --html out/run.html

    locust -f loadtest/locustfile.py --master --headless --expect-workers 2 --csv … --html …
    locust -f loadtest/locustfile.py --worker            # twice, same environment

The :class:`ScenarioShape` follows the scenario (:mod:`loadtest.scenario`) and stops the
run at its ``duration``; each :class:`LiveroomUser` is one active user: a commenter, a
liker or one of the sale's buyers, who connects (msgpack, ``?token=``), joins the room and
acts on the scenario's schedule (see :class:`LiveroomUser`). The passive audience is the
swarm's job, not Locust's.

Configuration, read from the environment by every process (master and workers agree):

* ``LIVEROOM_SCENARIO``: a scenario name (``smoke``) or a path to its TOML file;
* ``LIVEROOM_URL``: the server's websocket URL (``ws://host:port/``), users' processes;
* ``LIVEROOM_AUTH_SECRET``: the server's ``auth.secret``, to mint the users' tokens;
* ``LIVEROOM_START_AT``: the show's start, absolute unix seconds (also
  ``--liveroom-start-at``); default: when the test starts. The master's value (given or
  chosen) is handed to the workers with their first spawn message, so all processes
  follow one timeline; so is a digest of its scenario, which a worker checks against its own;
* ``LIVEROOM_BUYS_OUT``: a JSONL file for the buyers' final answers (optional), one line
  a press: ``user``, ``rid``, ``status`` (the ``buy_result`` status; ``refused`` for an
  ``error`` answer, with ``msg``; ``lost`` when no answer came), ``order``, ``qty``,
  ``attempts``, ``t`` (show seconds of the final answer) and ``sale``. A worker writes
  ``<stem>.worker<index><suffix>`` beside it instead, so no two processes share a file;
  lines are appended and flushed one by one.

Locust request events: type ``WS`` named ``connect`` (time to ``welcome``), ``join`` (to
``joined``), ``comment`` and ``like`` (to ``ack``), ``buy`` (first press to the final
answer, retries included; ``response_length`` is the units bought, the ``context`` holds
the status, order, attempts and rid), ``close`` and ``decode`` (an unexpected close, a
server message the protocol decoder refused); type ``PUSH`` named ``comment``: a
comment's delivery latency (local receipt time minus the event's ``ts``, so it assumes
synchronised clocks), reported by the sampled share of users (``viewers.sampled``).
Timeouts, ``error`` answers and closes are failures (with ``exception``); so is a
``buy_result`` with status ``error``. ``sold_out``, ``limit_reached`` and ``not_open``
are answers, not failures.

Guarantees:

* The cast is exact: indices ``0 … active_users-1`` go to users in the order they start
  (Locust's user count order), each index once, across every worker (see
  :class:`LiveroomUser`); the index alone decides the role, the user id and every
  random choice (``Scenario.rng``), so a run's actions are the same on any layout (only
  the buys' rids are fresh, random, for every run).
* A buyer presses Buy once, with a fresh rid, and resends that same rid with ``retry:
  true`` only when the answer is lost (timeout or closed connection) or is ``error`` "try
  again", ``sale.retries`` times at most; it writes one JSONL line for its press: the
  final answer, or ``lost`` (no answer, or the run ended first).
* Every wait is bounded (connect, answers, index claims), every user loop is paced by the
  scenario's rates, and the shape ends the run at ``start_at + duration``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Final, Literal

# Locust puts the working directory and this file's directory on sys.path; the packages
# below live in the repository's root, so make that work from anywhere.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import gevent  # type: ignore[import-untyped]  # noqa: E402  # gevent ships no type information
import msgspec  # noqa: E402
import orjson  # noqa: E402
from gevent.event import AsyncResult  # type: ignore[import-untyped]  # noqa: E402
from locust import LoadTestShape, User, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.exception import StopUser  # noqa: E402
from locust.runners import MasterRunner, Runner, WorkerRunner  # noqa: E402

from engine.auth import Claims, Role, mint_token  # noqa: E402
from loadtest.locust_client import AnswerTimeout, ConnectionClosed, LiveroomConnection  # noqa: E402
from loadtest.scenario import Scenario, ScenarioError, load_scenario  # noqa: E402
from protocol import (  # noqa: E402
    BUY_TRY_AGAIN,
    Ack,
    Buy,
    BuyResult,
    ClientMessage,
    Error,
    Join,
    Joined,
    Like,
    SendComment,
    ServerMessage,
)

__all__ = [
    "Cast",
    "ConfigError",
    "LiveroomUser",
    "Part",
    "ScenarioShape",
    "Settings",
]

log = logging.getLogger("liveroom.locust")

CONNECT_TIMEOUT: Final = 10.0
"""Seconds for the websocket handshake and ``welcome``."""
ANSWER_TIMEOUT: Final = 5.0
"""Seconds to wait for ``joined`` or an ``ack``; later, the command failed."""
BUY_TIMEOUT: Final = 5.0
"""Seconds to wait for a ``buy_result`` before the answer counts as lost (and is retried)."""
RETRY_BACKOFF: Final = 1.0
"""Seconds before a buyer's first retry; doubled for each next one."""
PRESS_DELAY: Final = 0.2
"""Seconds after ``sale.at`` before the first buyer may press: the sale has opened by then."""
BUYERS_LEAD: Final = 2.0
"""Seconds before ``sale.at`` from which every buyer is kept spawned (a shape tick, a
spawn and a connection fit in them)."""
TICK: Final = 1.0
"""Locust asks the shape for a new target about once a second; the shape looks that far ahead."""
MAX_IDLE: Final = 1.0
"""Longest sleep of a user between two looks at its schedule and connection."""
RECONNECT_BACKOFF: Final = (0.5, 1.0, 2.0, 5.0)
"""Seconds before the 1st, 2nd, 3rd and later new attempts to connect after a failure."""
CLAIM_TIMEOUT: Final = 10.0
"""Seconds a worker's user waits for the master to grant its cast index."""

_CLAIM: Final = "liveroom:claim"  # worker -> master: {"seq": n}
_GRANT: Final = "liveroom:grant"  # master -> worker: {"seq": n, "index": i}
_PHRASES: Final = ("666", "主播好！", "上链接", "🔥🔥🔥", "已拍", "这个多少钱？", "好看", "求讲解")


# --- configuration ---------------------------------------------------------------------


class ConfigError(Exception):
    """The environment does not describe a usable run; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What every process reads from its environment (see the module docstring)."""

    scenario: Scenario
    url: str  # "" on a master, which runs no users
    secret: str  # "" on a master
    buys_out: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, users_here: bool) -> Settings:
        """Read and check the ``LIVEROOM_*`` variables.

        Args:
            env: the environment.
            users_here: whether this process runs users (then the URL and the secret
                are required).

        Raises:
            ConfigError: a variable is missing or invalid (named in the message).
        """
        source = env.get("LIVEROOM_SCENARIO", "")
        if not source:
            raise ConfigError("LIVEROOM_SCENARIO: missing (a scenario name or a TOML path)")
        try:
            scenario = load_scenario(source)
        except ScenarioError as exc:
            raise ConfigError(f"LIVEROOM_SCENARIO: {exc}") from None
        url = env.get("LIVEROOM_URL", "")
        secret = env.get("LIVEROOM_AUTH_SECRET", "")
        if users_here:
            if not url.startswith(("ws://", "wss://")) or "?" in url or "#" in url:
                raise ConfigError(
                    f"LIVEROOM_URL: {url!r} is not a ws:// or wss:// URL without query string"
                )
            if not secret:
                raise ConfigError("LIVEROOM_AUTH_SECRET: missing (the server's auth.secret)")
        out = env.get("LIVEROOM_BUYS_OUT", "")
        return cls(scenario, url, secret, Path(out) if out else None)


def _digest(scenario: Scenario) -> str:
    """A short fingerprint of a scenario, to check that workers run the master's."""
    return hashlib.sha256(msgspec.json.encode(scenario)).hexdigest()[:16]


# --- the cast: who the i-th active user is ----------------------------------------------

RoleName = Literal["commenter", "liker", "buyer"]


@dataclass(frozen=True, slots=True)
class Part:
    """The role of the user holding cast index ``index``."""

    index: int  # 0-based, in the order users start (Locust's user count order)
    role: RoleName
    number: int  # 0-based among the users of its role: buyer ``number`` of ``sale.buyers``
    sampled: bool  # reports the delivery latency of the comments it receives


class Cast:
    """The scenario's active users in the order they join, and how many the curve wants.

    The roles are interleaved evenly (member ``k`` of a role of ``n`` members sits at
    ``(k + ½) / n`` of the way), so any prefix of the cast, i.e. the users spawned so far,
    holds every role in proportion. The sampled share ``viewers.sampled`` is spread evenly
    over the indices the same way.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        buyers = scenario.sale.buyers if scenario.sale is not None else 0
        roles: tuple[tuple[RoleName, int], ...] = (
            ("commenter", scenario.users.commenters),
            ("liker", scenario.users.likers),
            ("buyer", buyers),
        )
        seats = sorted(
            (Fraction(2 * k + 1, 2 * n), rank, role, k)
            for rank, (role, n) in enumerate(roles)
            for k in range(n)
        )
        share = scenario.viewers.sampled
        self.parts = tuple(
            Part(i, role, k, math.floor((i + 1) * share) > math.floor(i * share))
            for i, (_, _, role, k) in enumerate(seats)
        )
        self.buyers_cover = 1 + max((p.index for p in self.parts if p.role == "buyer"), default=-1)
        """Users to spawn so that every buyer is among them."""

    def __len__(self) -> int:
        return len(self.parts)

    def part(self, index: int) -> Part | None:
        """The part of cast index ``index``; None past the cast (a spare user: only watches)."""
        return self.parts[index] if 0 <= index < len(self.parts) else None

    def users_at(self, t: float) -> int:
        """Active users wanted ``t`` seconds into the show: the viewers' join curve scaled
        to the cast (rounded up), and every buyer from :data:`BUYERS_LEAD` before the sale."""
        s = self.scenario
        if t < 0 or t >= s.duration:
            return 0
        wanted = -(-s.viewers_at(t) * len(self.parts) // s.viewers.peak)  # ceiling, exact
        if s.sale is not None and t >= s.sale.at - BUYERS_LEAD:
            wanted = max(wanted, self.buyers_cover)
        return min(len(self.parts), wanted)


# --- the run: settings, timeline, cast indices, buys log ------------------------------


class _Run:
    """This process's view of the run; built by the ``init`` listener."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scenario = settings.scenario
        self.cast = Cast(settings.scenario)
        self.digest = _digest(settings.scenario)
        self.start_at: float | None = None  # absolute unix seconds of the show's start
        self.mismatch = ""  # why this worker must not run the master's test
        self.buys = _BuysLog(settings.buys_out)
        self._next_index = itertools.count()
        self._seq = itertools.count()
        self._claims: dict[int, Any] = {}  # seq -> AsyncResult of the granted index

    def lead(self, environment: Environment) -> float:
        """On a master or a lone process: fix the start (given, or now) and publish it,
        with the scenario's digest, in the options the master sends to its workers."""
        options = environment.parsed_options
        if self.start_at is None:
            given = getattr(options, "liveroom_start_at", None) if options else None
            self.start_at = float(given) if given is not None else time.time()
            if self.start_at + self.scenario.duration < time.time():
                log.warning("LIVEROOM_START_AT is over a show's duration ago: nothing to run")
        if options is not None:
            options.liveroom_start_at = self.start_at
            options.liveroom_digest = self.digest
        return self.start_at

    def follow(self, environment: Environment) -> None:
        """On a worker: take the master's start and check that its scenario is ours."""
        options = environment.parsed_options
        given = getattr(options, "liveroom_start_at", None) if options else None
        digest = getattr(options, "liveroom_digest", "") if options else ""
        if given is None:
            log.warning("the master sent no start time: this worker starts the show now")
        self.start_at = float(given) if given is not None else time.time()
        if digest and digest != self.digest:
            self.mismatch = (
                f"this worker's scenario ({self.scenario.name}, {self.digest}) is not the "
                f"master's ({digest}): check LIVEROOM_SCENARIO on every process"
            )
            log.error("%s", self.mismatch)

    def show_time(self) -> float:
        """Seconds since the show's start (negative before it)."""
        return time.time() - (self.start_at if self.start_at is not None else time.time())

    # Cast indices: a lone process counts its users; a master counts its workers' users,
    # granting each worker's claim in the order the claims arrive.

    def reset_indices(self) -> None:
        self._next_index = itertools.count()

    def claim_index(self, runner: Runner | None) -> int:
        """The next cast index (blocking on a worker until the master grants it).

        Raises:
            ConfigError: the master did not answer within :data:`CLAIM_TIMEOUT`.
        """
        if not isinstance(runner, WorkerRunner):
            return next(self._next_index)
        seq = next(self._seq)
        slot = self._claims[seq] = AsyncResult()
        try:
            runner.send_message(_CLAIM, {"seq": seq})
            return int(slot.get(timeout=CLAIM_TIMEOUT))
        except gevent.Timeout:
            raise ConfigError(f"the master granted no cast index in {CLAIM_TIMEOUT:g} s") from None
        finally:
            self._claims.pop(seq, None)

    def on_claim(self, environment: Environment, msg: Any, **_: Any) -> None:
        """Master: grant the next index to the worker that asked."""
        runner = environment.runner
        if runner is not None and isinstance(msg.data, dict):
            grant = {"seq": msg.data.get("seq"), "index": next(self._next_index)}
            runner.send_message(_GRANT, grant, client_id=msg.node_id)

    def on_grant(self, environment: Environment, msg: Any, **_: Any) -> None:
        """Worker: hand a granted index to the user waiting for it."""
        if isinstance(msg.data, dict):
            slot = self._claims.get(msg.data.get("seq", -1))
            if slot is not None:
                slot.set(msg.data.get("index"))


class _BuysLog:
    """The buyers' final answers, one JSON object a line, appended and flushed at once."""

    def __init__(self, path: Path | None) -> None:
        self.base = path
        self.path: Path | None = None
        self.lines = 0
        self._file: IO[bytes] | None = None

    def write(self, record: dict[str, Any], runner: Runner | None) -> None:
        if self.base is None:
            return
        if self._file is None:
            self.path = self.base
            if isinstance(runner, WorkerRunner):  # one file per worker: its index, else its pid
                index = runner.worker_index
                tag = f"worker{index}" if index >= 0 else f"pid{os.getpid()}"
                self.path = self.base.with_name(f"{self.base.stem}.{tag}{self.base.suffix}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115  # kept open for the whole run
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


_RUN: _Run | None = None


def _run() -> _Run:
    if _RUN is None:
        raise ConfigError("the locustfile's init listener has not run")
    return _RUN


# --- the user --------------------------------------------------------------------------


class CommandRefused(Exception):
    """The server answered ``error`` (SPEC §6.6); ``code`` is its error code."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code


class UnexpectedAnswer(Exception):
    """The answer to a command was of a type the command does not get (a server bug)."""


class BuyFailed(Exception):
    """A press ended with ``buy_result`` status ``error``; the message is its ``msg``."""


@dataclass(slots=True)
class _Press:
    """A buyer's one press: its rid, when it began (perf_counter), attempts so far."""

    rid: str
    started: float
    attempts: int = 0
    done: bool = False


def _try_again(answer: ServerMessage) -> bool:
    """Whether a buy answer asks for a retry with the same rid (the store was unreachable)."""
    return (
        isinstance(answer, BuyResult) and answer.status == "error" and answer.msg == BUY_TRY_AGAIN
    )


class LiveroomUser(User):
    """One active user of the scenario: connects, joins the room, acts on schedule.

    **Who it is.** On start the user claims the next *cast index*: a lone process counts
    its users; on a worker the user asks the master (a Locust custom message), which
    counts the claims of all its workers and grants ``0, 1, 2, …`` in the order they
    arrive, i.e. the order users start. So indices are never repeated or skipped, whatever
    the number of workers and however the master's dispatcher spreads users over them
    (the dispatcher orders workers by host and random id, not by ``worker_index``, so
    ``worker_index + k * workers`` would not be exact), and the shape's ``active_users``
    users hold exactly the cast's roles. :class:`Cast` maps the index to a role (commenter,
    liker, buyer) and its number within the role; the user id is
    ``lt-<scenario>-<index>``. An index past the cast (only if workers rebalance users) is
    a spare user that only watches.

    **What it does.** Commenters comment ``users.comment_rate`` times a second and likers
    like ``users.like_rate`` times a second (``users.like_count`` likes each), on a fixed
    period with a seeded phase; a slot missed (slow answer, reconnect) is skipped, not
    made up. Buyer ``b`` presses Buy once at ``start_at + sale.at + 0.2 + r * sale.jitter``
    (``r`` from ``scenario.rng("buyer", b)``), then only watches. A connection lost is
    reopened (with backoff) and the room joined again.
    """

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.part: Part | None = None
        self.user_id = ""
        self._conn: LiveroomConnection | None = None
        self._token = ""
        self._next_at = math.inf  # the next scheduled action (unix s)
        self._reconnect_at = 0.0
        self._failures = 0  # connection attempts failed in a row
        self._slot: tuple[float, float] | None = None  # (first slot, period) for periodic roles
        self._texts = random.Random()  # chooses comment texts; seeded per commenter
        self._comments = 0
        self._press: _Press | None = None

    # --- lifecycle

    def wait_time(self) -> float:
        """Locust's pause between two :meth:`act`: until the next thing to do."""
        wake = self._next_at
        if self._conn is None or self._conn.closed:
            wake = min(wake, self._reconnect_at)
        return min(MAX_IDLE, max(0.0, wake - time.time()))

    def on_start(self) -> None:
        run = _run()
        if run.mismatch:
            self._fire("config", time.perf_counter(), ConfigError(run.mismatch))
            raise StopUser()
        index = run.claim_index(self.environment.runner)
        self.part = run.cast.part(index)
        self.user_id = f"lt-{run.scenario.name}-{index}"
        start_at = run.start_at if run.start_at is not None else time.time()
        name = f"{self.part.role}{self.part.number}" if self.part else f"spare{index}"
        self._token = mint_token(
            run.settings.secret,
            Claims(
                user_id=self.user_id,
                name=name,
                rooms=(run.scenario.room,),
                role=Role.VIEWER,
                expires_at=max(time.time(), start_at) + run.scenario.duration + 3600,
            ),
        )
        self._next_at = self._first_action(run, start_at)

    def on_stop(self) -> None:
        press = self._press
        if press is not None and not press.done:  # the run ended before the final answer
            press.done = True
            self._record(press, None)
        if self._conn is not None:
            self._conn.close()

    @task
    def act(self) -> None:
        """Keep connected; do the scheduled action once it is due."""
        now = time.time()
        disconnected = self._conn is None or self._conn.closed
        if disconnected and (now < self._reconnect_at or not self._connect()):
            return
        if now < self._next_at or self.part is None:
            return
        if self.part.role == "buyer":
            self._next_at = math.inf
            self._buy()
        elif self.part.role == "commenter":
            self._comment()
            self._next_at = self._next_slot(time.time())
        else:
            self._like()
            self._next_at = self._next_slot(time.time())

    # --- schedule

    def _first_action(self, run: _Run, start_at: float) -> float:
        part, s = self.part, run.scenario
        if part is None:
            return math.inf
        if part.role == "buyer":
            if s.sale is None:
                return math.inf
            r = s.rng("buyer", part.number).random()
            return start_at + s.sale.at + PRESS_DELAY + r * s.sale.jitter
        rate = s.users.comment_rate if part.role == "commenter" else s.users.like_rate
        if rate <= 0:
            return math.inf
        period = 1.0 / rate
        self._slot = (start_at + s.rng(part.role, part.number).random() * period, period)
        self._texts = s.rng("comment-text", part.number)
        return self._next_slot(time.time())

    def _next_slot(self, after: float) -> float:
        """The first slot of this user's period strictly after ``after``."""
        if self._slot is None:
            return math.inf
        first, period = self._slot
        if after < first:
            return first
        return first + (math.floor((after - first) / period) + 1) * period

    # --- connection

    def _connect(self) -> bool:
        """Connect and join; on failure, schedule the next attempt (backoff). Never raises."""
        run = _run()
        part = self.part
        if self._conn is not None:  # the lost one: release its socket first
            self._conn.close()
            self._conn = None
        started = time.perf_counter()
        try:
            conn = LiveroomConnection.open(
                run.settings.url,
                self._token,
                timeout=CONNECT_TIMEOUT,
                on_comment=self._delivered if part is not None and part.sampled else None,
                on_problem=self._problem,
            )
        except Exception as exc:  # refused, closed, timed out: the attempt failed
            self._fire("connect", started, exc)
            return self._connect_failed()
        self._fire("connect", started)
        joined = self._request("join", conn, Join(room=run.scenario.room, rid=conn.next_rid()))
        if not isinstance(joined, Joined):
            conn.close()
            return self._connect_failed()
        self._conn = conn
        self._failures = 0
        return True

    def _connect_failed(self) -> bool:
        delay = RECONNECT_BACKOFF[min(self._failures, len(RECONNECT_BACKOFF) - 1)]
        self._failures += 1
        self._reconnect_at = time.time() + delay
        return False

    def _connected(self) -> LiveroomConnection | None:
        """The open connection, reconnecting once now if it was lost; None if that failed."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        return self._conn if self._connect() else None

    # --- actions

    def _comment(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._comments += 1
        text = f"{self._texts.choice(_PHRASES)} #{self._comments}"
        room = _run().scenario.room
        self._request("comment", conn, SendComment(room=room, text=text, rid=conn.next_rid()))

    def _like(self) -> None:
        conn = self._conn
        if conn is None:
            return
        users = _run().scenario.users
        message = Like(room=_run().scenario.room, count=users.like_count, rid=conn.next_rid())
        self._request("like", conn, message)

    def _buy(self) -> None:
        """Press Buy once; retry the same rid while the answer is lost or "try again"."""
        run = _run()
        sale = run.scenario.sale
        if sale is None:
            return
        press = self._press = _Press(rid=f"b-{uuid.uuid4().hex}", started=time.perf_counter())
        answer: ServerMessage | None = None
        while True:
            press.attempts += 1
            retry = True if press.attempts > 1 else None
            message = Buy(
                room=run.scenario.room, sale=sale.sale_id, qty=1, rid=press.rid, retry=retry
            )
            conn = self._connected()
            try:
                if conn is None:
                    raise ConnectionClosed(None, "not connected")
                answer = conn.call(message, BUY_TIMEOUT, keep_on_timeout=True)
            except (AnswerTimeout, ConnectionClosed):
                answer = None  # lost: retry
            else:
                if not _try_again(answer):
                    break
            if press.attempts > sale.retries:
                break
            gevent.sleep(RETRY_BACKOFF * 2 ** (press.attempts - 1))
        if self._conn is not None:
            self._conn.forget(press.rid)
        press.done = True
        self._record(press, answer)

    def _record(self, press: _Press, answer: ServerMessage | None) -> None:
        """Write the press's final answer to the buys log and fire its ``buy`` event."""
        run = _run()
        record: dict[str, Any] = {
            "user": self.user_id,
            "rid": press.rid,
            "status": "lost",
            "order": None,
            "qty": None,
            "attempts": press.attempts,
            "t": round(run.show_time(), 3),
            "sale": run.scenario.sale.sale_id if run.scenario.sale else None,
        }
        failure: Exception | None = None
        bought = 0
        if isinstance(answer, BuyResult):
            record.update(status=answer.status, order=answer.order, qty=answer.qty)
            if answer.status == "ok":
                bought = answer.qty or 0
            elif answer.status == "error":
                record["msg"] = answer.msg
                failure = BuyFailed(answer.msg or "error")
        elif isinstance(answer, Error):
            record.update(status="refused", msg=f"{answer.code}: {answer.message}")
            failure = CommandRefused(answer)
        elif answer is not None:
            failure = UnexpectedAnswer(f"buy answered by {answer.TYPE}")
        else:
            failure = AnswerTimeout(f"no answer to {press.attempts} attempt(s)")
        run.buys.write(record, self.environment.runner)
        context = {k: record[k] for k in ("status", "order", "attempts", "rid")}
        self._fire("buy", press.started, failure, length=bought, context=context)

    # --- events

    def _request(self, name: str, conn: LiveroomConnection, message: ClientMessage) -> Any:
        """Send a command, wait for its answer, fire its event; the answer, or None."""
        started = time.perf_counter()
        try:
            answer = conn.call(message, ANSWER_TIMEOUT)
        except (AnswerTimeout, ConnectionClosed) as exc:
            self._fire(name, started, exc)
            return None
        if isinstance(answer, Error):
            self._fire(name, started, CommandRefused(answer))
            return None
        expected = Joined if isinstance(message, Join) else Ack
        if not isinstance(answer, expected):
            self._fire(name, started, UnexpectedAnswer(f"{name} answered by {answer.TYPE}"))
            return None
        self._fire(name, started)
        return answer

    def _fire(
        self,
        name: str,
        started: float,
        exception: Exception | None = None,
        *,
        length: int = 0,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exception,
            context=context or {},
        )

    def _delivered(self, ts_ms: int, received: float) -> None:
        """A comment reached this (sampled) user: fire its delivery latency."""
        self.environment.events.request.fire(
            request_type="PUSH",
            name="comment",
            response_time=max(0.0, received * 1000.0 - ts_ms),
            response_length=0,
            exception=None,
            context={},
        )

    def _problem(self, name: str, exc: Exception) -> None:
        """An unexpected close, or a server message the decoder refused."""
        self._fire(name, time.perf_counter(), exc)


# --- the shape -------------------------------------------------------------------------


class ScenarioShape(LoadTestShape):
    """The scenario's timeline: no user before ``start_at``; then the active users follow
    the viewers' join curve (:meth:`Cast.users_at`, one tick ahead, never fewer than
    before); every buyer from :data:`BUYERS_LEAD` before the sale; ``None`` (the run
    stops) at ``start_at + duration``.

    Each tick's new users start within the tick (:func:`_spawn_rate`).
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # LoadTestShape.__init__ has no hints
        self._tick: tuple[int, float] = (0, 1.0)

    def tick(self) -> tuple[int, float] | None:
        run = _RUN
        if run is None or self.runner is None:
            return None
        start_at = run.lead(self.runner.environment)
        now = time.time()
        if now < start_at:
            if start_at - now > TICK:
                return self._tick
            gevent.sleep(start_at - now)  # start on time rather than up to a tick late
            now = time.time()
        t = now - start_at
        if t >= run.scenario.duration:
            return None
        ahead = min(t + TICK, run.scenario.duration - 1e-6)
        users = max(self._tick[0], run.cast.users_at(ahead))
        if users != self._tick[0]:
            self._tick = (users, _spawn_rate(users - self._tick[0]))
        return self._tick


def _spawn_rate(new: int) -> float:
    """Users per second to start ``new`` users: within half a tick, unless that is over
    Locust's advice of 100/s (then within the tick; a larger jump needs more anyway)."""
    return float(max(1, min(2 * new, 100), new))


# --- Locust event listeners ------------------------------------------------------------


def _add_options(parser: Any, **_: Any) -> None:
    parser.add_argument(
        "--liveroom-start-at",
        type=float,
        default=None,
        env_var="LIVEROOM_START_AT",
        include_in_web_ui=False,
        help="the show's start, unix seconds (default: when the test starts)",
    )
    parser.add_argument(  # set by the master for its workers
        "--liveroom-digest", default="", include_in_web_ui=False, help=argparse.SUPPRESS
    )


def _init(environment: Environment, runner: Runner | None = None, **_: Any) -> None:
    global _RUN
    users_here = not isinstance(runner, MasterRunner)
    try:
        settings = Settings.from_env(os.environ, users_here=users_here)
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    _RUN = run = _Run(settings)
    if isinstance(runner, MasterRunner):
        runner.register_message(_CLAIM, run.on_claim)
    elif isinstance(runner, WorkerRunner):
        runner.register_message(_GRANT, run.on_grant)
    log.info(
        "scenario %s: %d active users (%s), room %s",
        settings.scenario.name,
        len(run.cast),
        ", ".join(f"{n} {r}s" for r, n in _role_counts(run.cast).items()),
        settings.scenario.room,
    )


def _role_counts(cast: Cast) -> dict[str, int]:
    counts: dict[str, int] = {}
    for part in cast.parts:
        counts[part.role] = counts.get(part.role, 0) + 1
    return counts


def _test_start(environment: Environment, **_: Any) -> None:
    run = _run()
    if isinstance(environment.runner, WorkerRunner):
        run.follow(environment)
    else:
        run.lead(environment)
        run.reset_indices()


def _test_stop(environment: Environment, **_: Any) -> None:
    run = _RUN
    if run is not None:
        if run.buys.path is not None:
            log.info("%d buy answers written to %s", run.buys.lines, run.buys.path)
        run.buys.close()


# EventHook.add_listener carries no type hints.
events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_init)  # type: ignore[no-untyped-call]
events.test_start.add_listener(_test_start)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_test_stop)  # type: ignore[no-untyped-call]
