"""Show scenarios: the timeline a load test follows, read from TOML and checked.

A scenario describes one room's show for ``duration`` seconds from the run's start time:

* **viewers** (the swarm: passive websocket viewers): they join at ``join_rate`` per
  second up to ``peak``; each watches for a random time (exponential, mean
  ``watch_time``; 0 = to the end) and, while the show lasts, a viewer who left is
  replaced by a new one (churn), so the room stays at the join curve;
* **active users** (Locust users): ``commenters`` commenting ``comment_rate`` times per
  second each, ``likers`` liking ``like_rate`` times per second each (``like_count``
  likes a message), and the sale's ``buyers``; they join with the same curve;
* **pins** at given times (through the service API);
* a **sale** at ``sale.at``: ``stock`` units, ``per_user_limit``; every buyer presses Buy
  once at a random moment of the ``jitter`` window, retrying (same request id) up to
  ``retries`` times when the answer is lost or "try again";
* **faults** at given times: Redis killed or paused, an engine worker killed, a share of
  the viewers dropped at once (a reconnect storm); the report shows the recovery;
* **SLOs** judged on the run: p99 delivery latency, share of events lost, units oversold;
* a recorded **trace** (optional): a real show's viewer actions, recorded by the engine
  (``rooms.trace_dir``), replayed into the room from ``trace.at`` by
  :mod:`loadtest.replay`, scaled in viewers and speed, beside (or instead of) the
  scenario's Locust users; its buys go to the scenario's sale.

Guarantees: :func:`load_scenario` returns a valid :class:`Scenario` or raises
:class:`ScenarioError` naming the file and the setting at fault (unknown settings are
errors). Everything random in a run derives from ``seed`` (:meth:`Scenario.rng`): the
same scenario gives the same actions at the same offsets from the start time.
:meth:`Scenario.slice` splits the viewers over several swarm processes or machines,
each of which follows the same timeline from the same absolute start time.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Annotated

import msgspec

__all__ = [
    "FAULT_KINDS",
    "SCENARIOS_DIR",
    "Fault",
    "Pin",
    "Sale",
    "Scenario",
    "ScenarioError",
    "Slo",
    "Trace",
    "Users",
    "Viewers",
    "load_scenario",
]

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
"""Where the shipped scenarios live (``smoke``, ``show-scaled``, ``million-viewers``)."""

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Share = Annotated[float, msgspec.Meta(ge=0, le=1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ScenarioError(Exception):
    """The scenario cannot be used; the message names the file and the setting."""


class Viewers(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """The passive audience (the swarm)."""

    peak: Annotated[int, msgspec.Meta(ge=1)]
    join_rate: Positive  # viewers per second joining until peak
    watch_time: NonNegative = 0.0  # mean seconds a viewer stays (exponential); 0: to the end
    sampled: Share = 0.05  # share of viewers that decode every frame (latency, offsets)


class Users(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """Active users (Locust): commenters and likers."""

    commenters: Count = 0
    comment_rate: NonNegative = 0.2  # comments per second per commenter
    likers: Count = 0
    like_rate: NonNegative = 1.0  # like messages per second per liker
    like_count: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class Pin(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """A product pinned at ``at`` seconds into the show."""

    at: NonNegative
    id: Name
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    price: Annotated[int, msgspec.Meta(ge=0)]
    currency: str = "CNY"


class Sale(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """A flash sale opened at ``at`` seconds into the show."""

    at: NonNegative
    sale_id: Annotated[
        str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    ]
    product_id: str = "p1"
    price: Annotated[int, msgspec.Meta(ge=0)] = 9900
    stock: Annotated[int, msgspec.Meta(ge=1)]
    per_user_limit: Annotated[int, msgspec.Meta(ge=1)] = 1
    buyers: Count  # Locust users that press Buy (each once, at a random moment of jitter)
    jitter: NonNegative = 1.0  # seconds over which the buyers' presses are spread
    retries: Count = 2  # retries of a press whose answer is lost or "try again"
    duration: Positive = 300.0  # seconds the sale stays open


FAULT_KINDS = ("kill_redis", "pause_redis", "kill_worker", "drop_viewers")


class Fault(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """Something going wrong at ``at`` seconds into the show.

    ``kill_redis``: SIGKILL the deployment's Redis, start it again ``down`` seconds later
    (its AOF replays); ``pause_redis``: SIGSTOP it for ``down`` seconds; ``kill_worker``:
    SIGKILL one engine worker (its supervisor restarts it); ``drop_viewers``: a ``share`` of
    the swarm's viewers lose their connection at once and reconnect (a reconnect storm).
    The first three need a deployment the runner started (``--deploy``).
    """

    at: NonNegative
    kind: str
    down: NonNegative = 2.0
    share: Share = 0.3


class Slo(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """What the run must achieve; any miss fails it."""

    p99_ms: Positive = 200.0  # delivery latency (event's server ts to receipt), p99
    loss: Share = 0.0  # share of events a viewer may miss (offset gaps, no resync)
    oversell: Count = 0  # units sold beyond stock (never anything but 0 in a real show)


class Trace(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """A recorded show replayed into the room (:mod:`loadtest.replay`).

    ``files`` are trace files (JSONL, merged by time), relative to the scenario file;
    ``viewers`` scales the recorded viewers (2: each twice; 0.1: a fixed tenth), ``speed``
    the time (2: twice as fast); the first action is played ``at`` seconds into the show.
    """

    files: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]
    viewers: Positive = 1.0
    speed: Positive = 1.0
    at: NonNegative = 0.0


class Scenario(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """One show; see the module docstring."""

    name: Name
    room: Name
    duration: Positive
    seed: int = 1
    viewers: Viewers
    users: Users = Users()
    pins: tuple[Pin, ...] = ()
    sale: Sale | None = None
    faults: tuple[Fault, ...] = ()
    slo: Slo = Slo()
    trace: Trace | None = None

    @property
    def active_users(self) -> int:
        """Locust users: commenters, likers and buyers."""
        buyers = self.sale.buyers if self.sale is not None else 0
        return self.users.commenters + self.users.likers + buyers

    def viewers_at(self, t: float) -> int:
        """Viewers the join curve wants connected ``t`` seconds into the show."""
        if t < 0 or t >= self.duration:
            return 0
        return min(self.viewers.peak, math.floor(self.viewers.join_rate * t) + 1)

    def join_time(self, k: int, peak: int | None = None) -> float:
        """Seconds into the show at which the ``k``-th viewer (0-based) of ``peak`` joins."""
        peak = self.viewers.peak if peak is None else peak
        return k * (self.viewers.peak / peak) / self.viewers.join_rate

    def rng(self, *stream: object) -> random.Random:
        """A random generator for one stream of decisions (e.g. ``("viewer", 17)``),
        the same for the same seed and stream on every machine."""
        return random.Random(f"{self.seed}:" + ":".join(str(s) for s in stream))

    def scaled(self, factor: float) -> Scenario:
        """The same show with ``factor`` times the people (viewers, join rate, active
        users, buyers) and the stock: a 1/100 rehearsal of a big show keeps its shape.
        Counts round up, so nothing scales to zero that was not zero."""
        if not factor > 0:
            raise ValueError(f"scale factor must be > 0, got {factor}")

        def up(n: int) -> int:
            return math.ceil(n * factor) if n else 0

        viewers = msgspec.structs.replace(
            self.viewers,
            peak=max(1, up(self.viewers.peak)),
            join_rate=self.viewers.join_rate * factor,
        )
        users = msgspec.structs.replace(
            self.users, commenters=up(self.users.commenters), likers=up(self.users.likers)
        )
        sale = self.sale
        if sale is not None:
            sale = msgspec.structs.replace(
                sale, stock=max(1, up(sale.stock)), buyers=up(sale.buyers)
            )
        trace = self.trace
        if trace is not None:
            trace = msgspec.structs.replace(trace, viewers=trace.viewers * factor)
        return msgspec.structs.replace(self, viewers=viewers, users=users, sale=sale, trace=trace)

    def to_toml(self) -> str:
        """The scenario as TOML that :func:`load_scenario` reads back to an equal one."""
        return msgspec.toml.encode(self).decode("utf-8")

    def slice(self, index: int, count: int) -> Scenario:
        """The part of the audience swarm process ``index`` of ``count`` holds: a
        ``1/count`` share of the peak and join rate (the first ones take the remainder)."""
        if not 0 <= index < count:
            raise ValueError(f"slice {index} of {count}")
        peak = self.viewers.peak // count + (1 if index < self.viewers.peak % count else 0)
        share = peak / self.viewers.peak
        viewers = msgspec.structs.replace(
            self.viewers, peak=max(1, peak), join_rate=self.viewers.join_rate * share
        )
        return msgspec.structs.replace(self, viewers=viewers)


def load_scenario(source: str | Path) -> Scenario:
    """Read a scenario: a path, or a name under :data:`SCENARIOS_DIR` (``"smoke"``).

    Raises:
        ScenarioError: unreadable file, bad TOML, an unknown or invalid setting (named).
    """
    path = Path(source)
    if not path.suffix and not path.exists():
        path = SCENARIOS_DIR / f"{source}.toml"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        scenario = msgspec.toml.decode(data, type=Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{path}: {_where(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    for pin in scenario.pins:
        if pin.at >= scenario.duration:
            raise ScenarioError(f"{path}: pins.at: {pin.at} is after the show's end")
    if scenario.sale is not None and scenario.sale.at >= scenario.duration:
        raise ScenarioError(f"{path}: sale.at: {scenario.sale.at} is after the show's end")
    for fault in scenario.faults:
        if fault.kind not in FAULT_KINDS:
            raise ScenarioError(
                f"{path}: faults.kind: {fault.kind!r} is not one of {', '.join(FAULT_KINDS)}"
            )
        if fault.at >= scenario.duration:
            raise ScenarioError(f"{path}: faults.at: {fault.at} is after the show's end")
    if scenario.trace is not None:
        # Resolved against the scenario's folder, so the scenario as run (written
        # elsewhere by the runner) still finds them.
        files = tuple(str((path.parent / f).resolve()) for f in scenario.trace.files)
        for file in files:
            if not Path(file).is_file():
                raise ScenarioError(f"{path}: trace.files: no trace file {file}")
        if scenario.trace.at >= scenario.duration:
            raise ScenarioError(f"{path}: trace.at: {scenario.trace.at} is after the show's end")
        scenario = msgspec.structs.replace(
            scenario, trace=msgspec.structs.replace(scenario.trace, files=files)
        )
    return scenario


def _where(message: str) -> str:
    """msgspec's ``... - at `$.viewers.peak``` as ``viewers.peak: ...``."""
    text, sep, where = message.rpartition(" - at `")
    if not sep:
        return message
    setting = where.rstrip("`").removeprefix("$").lstrip(".") or "scenario"
    return f"{setting}: {text}"
