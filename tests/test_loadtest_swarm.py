"""The viewer swarm (``python -m loadtest.swarm``): against a real ``liveroom serve`` on
127.0.0.1 it follows the join curve, counts every event exactly, churns, reconnects and
resumes, spreads over source addresses, refuses what it cannot hold, and stops on time;
its viewer counts the same events from frame headers as from a full decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest

from engine.wsframe import data_frame
from loadtest.swarm import DRAIN, LAT_BUCKETS, hist_percentile, merge_hist
from loadtest.swarm_conn import LIVE, Tally, Viewer, Wire, lat_index
from protocol import (
    MSGPACK,
    Ack,
    Comment,
    Joined,
    Likes,
    Message,
    Stock,
    SystemMessage,
    Viewers,
    Welcome,
)
from tests.conftest import SECRET, Peer, bounded, expect, token
from tests.processes import Engine

REPO = Path(__file__).resolve().parent.parent
ROOM = "swarm-room"
START_IN = 1.5  # seconds from launch to the show's start: the interpreter's start-up
EXIT_SLACK = 1.5  # interpreter exit after the run's bound


# --- helpers -----------------------------------------------------------------------------


def write_scenario(
    tmp_path: Path,
    name: str,
    duration: float,
    *,
    faults: Sequence[tuple[float, str, float]] = (),
    **viewers: float,
) -> Path:
    """A scenario file: ``viewers`` settings, and ``faults`` as ``(at, kind, share)``."""
    path = tmp_path / f"{name}.toml"
    lines = [f'name = "{name}"', f'room = "{ROOM}"', f"duration = {duration}", "seed = 5"]
    lines.append("[viewers]")
    lines += [f"{key} = {value}" for key, value in viewers.items()]
    for at, kind, share in faults:
        lines += ["[[faults]]", f"at = {at}", f'kind = "{kind}"', f"share = {share}"]
    path.write_text("\n".join(lines) + "\n")
    return path


class SwarmProcess:
    """One ``python -m loadtest.swarm`` subprocess and its output files."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], start_at: float) -> None:
        self.start_at = start_at
        self.out = tmp_path / f"{name}.jsonl"
        self.err = tmp_path / f"{name}.err"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loadtest.swarm", *args],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.exited_at = 0.0

    async def wait(self, timeout: float) -> int:
        rc = await asyncio.to_thread(self.proc.wait, timeout)
        self.exited_at = time.time()
        return rc

    def records(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [orjson.loads(line) for line in self.out.read_bytes().splitlines()]

    def seconds(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["kind"] == "swarm"]

    def summary(self) -> dict[str, Any]:
        last = self.records()[-1]
        assert last["kind"] == "swarm_summary", last
        return last

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


Launch = Callable[..., SwarmProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start swarm subprocesses (killed at teardown if still running)."""
    started: list[SwarmProcess] = []

    def start(
        scenario: Path, url: str, *extra: str, name: str = "swarm", start_in: float = START_IN
    ) -> SwarmProcess:
        start_at = time.time() + start_in
        out = tmp_path / f"{name}.jsonl"
        args = ["--scenario", str(scenario), "--url", url, "--secret", SECRET]
        args += ["--start-at", repr(start_at), "--out", str(out), "--progress", *extra]
        run = SwarmProcess(tmp_path, name, args, start_at)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            run.kill()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A real ``liveroom serve`` on loopback ports, killed at teardown."""
    with Engine(log=tmp_path / "engine.log") as eng:
        yield eng


def url_of(engine: Engine) -> str:
    return f"ws://127.0.0.1:{engine.ws_port}/"


@contextlib.asynccontextmanager
async def watcher(engine: Engine, user: str) -> AsyncIterator[Peer]:
    peer = await Peer.open(engine.endpoint, token(user, (ROOM,)))
    try:
        yield peer
    finally:
        with contextlib.suppress(Exception):
            await peer.close()


async def wait_viewers(peer: Peer, count: int, timeout: float) -> None:
    """Until the room's viewer count (joined, then ``viewers`` events) reaches ``count``."""
    joined = expect(await peer.join(ROOM), Joined)
    if joined.viewers >= count:
        return
    async with asyncio.timeout(timeout):
        while True:
            _, event = await peer.next_event(timeout)
            if isinstance(event, Viewers) and event.count >= count:
                return


def established_from(port: int) -> Counter[str]:
    """Remote addresses of the established TCP connections to local ``port`` (the server's
    side, from /proc/net/tcp)."""
    seen: Counter[str] = Counter()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state != "01" or int(local.split(":")[1], 16) != port:
            continue
        seen[socket.inet_ntoa(bytes.fromhex(remote.split(":")[0])[::-1])] += 1
    return seen


def assert_on_time(run: SwarmProcess, duration: float) -> None:
    bound = run.start_at + duration + DRAIN + EXIT_SLACK
    assert run.exited_at <= bound, f"exited {run.exited_at - bound:.2f} s after its bound"


def assert_one_record_per_second(run: SwarmProcess, duration: float) -> None:
    records = run.records()
    seconds = [r for r in records if r["kind"] == "swarm"]
    assert [r["t"] for r in seconds] == list(range(math.ceil(duration))), records
    assert records[-1]["kind"] == "swarm_summary" and len(records) == len(seconds) + 1


# --- against a real engine ---------------------------------------------------------------


@bounded(25)
async def test_swarm_follows_the_join_curve_and_every_viewer_gets_every_event(
    tmp_path: Path, engine: Engine, launch: Launch
) -> None:
    duration = 3.0
    scenario = write_scenario(tmp_path, "curve", duration, peak=60, join_rate=60.0, sampled=0.25)
    comments, notices = 8, 3
    async with watcher(engine, "commenter") as peer:
        run = launch(scenario, url_of(engine))
        await wait_viewers(peer, 61, timeout=START_IN + 2.0)  # 60 viewers and the commenter
        assert time.time() < run.start_at + duration - 1.0, "too late to post in the show"
        for i in range(comments):
            await peer.comment(ROOM, f"comment {i}")
        for i in range(notices):
            status, _ = await engine.api("POST", f"/v1/rooms/{ROOM}/messages", {"text": f"n{i}"})
            assert status == 200
        assert await run.wait(duration + DRAIN + 5) == 0, run.stderr()
    assert_on_time(run, duration)
    assert_one_record_per_second(run, duration)
    seconds, summary = run.seconds(), run.summary()

    assert max(r["connections"] for r in seconds) == 60 == summary["peak_connections"]
    assert sum(r["joins"] for r in seconds) == 60 == summary["joins"] == summary["viewers_total"]
    assert seconds[0]["connections"] >= 45  # 60/s: all but the last few within the first second
    sent = comments + notices
    assert summary["events"] == sent * 60 == sum(r["events"] for r in seconds)
    sampled = summary["sampled"]
    assert 0 < sampled < 60
    assert summary["sampled_events"] == sent * sampled
    assert (summary["lost"], summary["dups"], summary["resyncs"]) == (0, 0, 0)
    assert summary["connect_failures"] == 0 and summary["closes"] == {}
    latencies = summary["lat_hist"]
    assert sum(latencies.values()) == comments * sampled  # comments only, each sampled viewer
    p99 = hist_percentile(latencies, 99)
    assert p99 is not None and p99 < 1000
    assert merge_hist({}, latencies) == latencies
    merged: dict[str, int] = {}
    for r in seconds:
        merged = merge_hist(merged, r["lat_hist"])
    assert merged == latencies
    assert summary["frames"] >= 60 * (2 + sent) // 2  # welcome + joined, and batches
    assert summary["bytes"] > 0 and summary["cpu_s"] > 0 and summary["rss_kb"] > 0
    assert summary["drain_s"] < DRAIN  # every close handshake done before the bound
    assert "t=2s conn=" in run.stderr()  # --progress


@bounded(25)
async def test_churn_replaces_viewers_who_leave_and_keeps_the_curve(
    tmp_path: Path, engine: Engine, launch: Launch
) -> None:
    duration = 3.0
    scenario = write_scenario(
        tmp_path, "churn", duration, peak=40, join_rate=80.0, watch_time=0.5, sampled=0.25
    )
    run = launch(scenario, url_of(engine))
    assert await run.wait(START_IN + duration + DRAIN + 5) == 0, run.stderr()
    assert_on_time(run, duration)
    assert_one_record_per_second(run, duration)
    seconds, summary = run.seconds(), run.summary()

    assert summary["joins"] > 2 * 40, summary  # ~40 + 40 x 2.5 s / 0.5 s
    assert summary["leaves"] > 40
    assert summary["viewers_total"] >= summary["joins"]
    assert summary["peak_connections"] <= 40
    for r in seconds[1:]:
        assert 28 <= r["connections"] <= 40, seconds  # the curve, less those in transit
    assert summary["connect_failures"] == 0 and summary["closes"] == {}
    assert (summary["lost"], summary["dups"]) == (0, 0)


@bounded(35)
async def test_viewers_closed_by_a_restart_reconnect_and_resume(
    tmp_path: Path, engine: Engine, launch: Launch
) -> None:
    duration = 6.0
    scenario = write_scenario(tmp_path, "restart", duration, peak=30, join_rate=100.0, sampled=0.5)
    run = launch(scenario, url_of(engine))
    async with watcher(engine, "watcher-1") as peer:
        await wait_viewers(peer, 31, timeout=START_IN + 2.0)
        for i in range(3):
            status, _ = await engine.api("POST", f"/v1/rooms/{ROOM}/messages", {"text": f"a{i}"})
            assert status == 200
        await asyncio.to_thread(engine.stop, signal.SIGTERM)  # 1001 to everyone
    await asyncio.to_thread(engine.start)
    async with watcher(engine, "watcher-2") as peer:
        await wait_viewers(peer, 31, timeout=5.0)  # all 30 back (backoff 0.5 s doubling)
        assert time.time() < run.start_at + duration - 0.5, "too late to post in the show"
        for i in range(2):
            status, _ = await engine.api("POST", f"/v1/rooms/{ROOM}/messages", {"text": f"b{i}"})
            assert status == 200
    assert await run.wait(duration + DRAIN + 5) == 0, run.stderr()
    assert_on_time(run, duration)
    assert_one_record_per_second(run, duration)
    summary = run.summary()

    assert summary["closes"] == {"1001": 30}
    assert summary["reconnects"] == 30
    assert summary["joins"] == 30 == summary["viewers_total"]  # the same viewers, resumed
    # The restart began a new epoch: every resume is a resync, nothing is counted as lost.
    assert summary["resyncs"] == 30
    assert (summary["lost"], summary["dups"]) == (0, 0)
    assert summary["events"] == 5 * 30
    assert summary["sampled_events"] == 5 * summary["sampled"]
    assert summary["peak_connections"] == 30


@bounded(25)
async def test_dropped_viewers_reconnect_in_a_storm_and_resume_without_loss(
    tmp_path: Path, engine: Engine, launch: Launch
) -> None:
    duration = 4.0
    scenario = write_scenario(
        tmp_path,
        "storm",
        duration,
        faults=[(1.5, "drop_viewers", 0.5), (2.5, "kill_worker", 0.3)],  # the 2nd: runner's
        peak=60,
        join_rate=120.0,
        sampled=0.5,
    )
    async with watcher(engine, "commenter") as peer:
        run = launch(scenario, url_of(engine))
        await wait_viewers(peer, 61, timeout=START_IN + 2.0)  # 60 viewers and the commenter
        comments = 0
        while time.time() < run.start_at + duration - 0.5:  # 4/s, through the storm
            expect(await peer.comment(ROOM, f"comment {comments}"), Ack)
            comments += 1
            await asyncio.sleep(0.25)
        assert await run.wait(duration + DRAIN + 5) == 0, run.stderr()
    assert_on_time(run, duration)
    assert_one_record_per_second(run, duration)
    seconds, summary = run.seconds(), run.summary()
    assert comments >= 8

    # Half of the 60 live viewers cut at 1.5 s, in that second's record only.
    assert [r["dropped"] for r in seconds] == [0, 30, 0, 0] and summary["dropped"] == 30
    assert seconds[0]["connections"] == 60
    assert seconds[1]["connections_min"] == 30  # the dip right after the cut
    [drop] = summary["drops"]
    assert drop["fault"] == 0 and drop["at"] == 1.5
    assert (drop["connected"], drop["dropped"]) == (60, 30)
    # Backoff 0.25..0.5 s, then connect and resume: back to 60 well within 2 s.
    assert drop["recovered_s"] is not None and drop["recovered_s"] < 2.0
    assert seconds[2]["connections"] == seconds[3]["connections"] == 60
    assert seconds[3]["connections_min"] == 60
    # The same viewers came back: reconnects, not joins; no close frame from the server.
    assert summary["reconnects"] == 30 == sum(r["reconnects"] for r in seconds)
    assert summary["joins"] == 60 == summary["viewers_total"]
    assert summary["closes"] == {} and summary["connect_failures"] == 0
    # Every resume got the comments missed while away: none lost, none twice, no resync.
    assert (summary["lost"], summary["dups"], summary["resyncs"]) == (0, 0, 0)
    assert summary["events"] == comments * 60
    assert summary["sampled_events"] == comments * summary["sampled"]
    assert summary["peak_connections"] == 60
    assert "drop_viewers: dropped 30 of 60" in run.stderr()


@bounded(25)
async def test_connections_come_from_the_source_addresses_given(
    tmp_path: Path, engine: Engine, launch: Launch
) -> None:
    duration = 3.0
    scenario = write_scenario(tmp_path, "sources", duration, peak=40, join_rate=80.0)
    run = launch(scenario, url_of(engine), "--sources", "2")
    seen: Counter[str] = Counter()
    async with asyncio.timeout(START_IN + duration):
        while sum(seen.values()) < 40:
            await asyncio.sleep(0.1)
            seen = established_from(engine.ws_port)
    assert seen == {"127.0.0.1": 20, "127.0.0.2": 20}  # round-robin over the two
    assert await run.wait(duration + DRAIN + 5) == 0, run.stderr()
    summary = run.summary()
    assert summary["sources"] == ["127.0.0.1", "127.0.0.2"]
    assert summary["peak_connections"] == 40


@bounded(20)
async def test_swarm_stops_on_time_when_the_engine_is_down(tmp_path: Path, launch: Launch) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    duration = 2.0
    scenario = write_scenario(tmp_path, "down", duration, peak=20, join_rate=40.0)
    run = launch(scenario, f"ws://127.0.0.1:{port}/")
    assert await run.wait(START_IN + duration + DRAIN + 5) == 0, run.stderr()
    assert_on_time(run, duration)
    assert_one_record_per_second(run, duration)
    summary = run.summary()
    assert summary["peak_connections"] == 0 and summary["joins"] == 0
    assert summary["connect_failures"] >= 20
    assert summary["errors"].get("ECONNREFUSED", 0) == summary["connect_failures"]


def _open_files_300() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no such scenario", "cannot read"),
        ("more viewers than open files", "needs 1000 connections at its peak"),
        ("bad slice", "--slice: '2/2' is not I/N"),
        ("bad url", "only ws:// URLs"),
    ],
)
def test_what_cannot_run_exits_2_with_a_clear_message(
    tmp_path: Path, case: str, message: str
) -> None:
    scenario = write_scenario(tmp_path, "big", 2.0, peak=1000, join_rate=100.0)
    args = ["--scenario", str(scenario), "--url", "ws://127.0.0.1:9/", "--secret", "s"]
    preexec = None
    if case == "no such scenario":
        args[1] = str(tmp_path / "nope.toml")
    elif case == "more viewers than open files":
        preexec = _open_files_300
    elif case == "bad slice":
        args += ["--slice", "2/2"]
    else:
        args[3] = "wss://127.0.0.1:9/"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.swarm", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=preexec,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "swarm: error:" in done.stderr, done.stderr
    if case == "more viewers than open files":
        assert "open-files limit 300" in done.stderr


# --- the histogram helpers -----------------------------------------------------------


def test_latency_buckets_are_inclusive_upper_bounds() -> None:
    assert LAT_BUCKETS[0] == 1 and LAT_BUCKETS[-1] == math.inf and len(LAT_BUCKETS) == 23
    assert lat_index(-3) == 0 and lat_index(1) == 0 and lat_index(1.01) == 1
    assert lat_index(5000) == len(LAT_BUCKETS) - 2 and lat_index(5000.5) == len(LAT_BUCKETS) - 1


def test_histograms_merge_exactly_and_give_bucket_percentiles() -> None:
    a = {"1": 90, "10": 5}
    b = {"10": 4, "inf": 1}
    merged = merge_hist(a, b)
    assert merged == {"1": 90, "10": 9, "inf": 1} == merge_hist(b, a)
    assert hist_percentile(merged, 50) == 1
    assert hist_percentile(merged, 90) == 1  # 90 of 100 samples are under 1 ms
    assert hist_percentile(merged, 91) == 10
    assert hist_percentile(merged, 99) == 10
    assert hist_percentile(merged, 100) == math.inf
    assert hist_percentile({}, 99) is None
    with pytest.raises(ValueError):
        merge_hist({"4": 1}, {})
    with pytest.raises(ValueError):
        hist_percentile(a, 101)


# --- one viewer, fed bytes by hand --------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> None:
        return None


class FakeHost:
    def __init__(self) -> None:
        self.tally = Tally()
        self.wire = Wire(ROOM, "127.0.0.1:1", "/")
        self.joins: list[bool] = []
        self.ended_count = 0

    def joined(self, viewer: Viewer, first: bool) -> None:
        self.joins.append(first)

    def ended(self, viewer: Viewer) -> None:
        self.ended_count += 1

    def check_later(self, viewer: Viewer, delay: float) -> None:
        pass


def server_frame(message: Message) -> bytes:
    return data_frame(MSGPACK.encode(message), binary=True)


def live_viewer(*, sampled: bool) -> tuple[Viewer, FakeHost, FakeTransport]:
    host = FakeHost()
    viewer = Viewer(host, 0, "v0-0", sampled=sampled, watch=0.0, source="")
    viewer.token = "t"
    transport = FakeTransport()
    viewer.connection_made(transport)  # type: ignore[arg-type]
    assert transport.written[0].startswith(b"GET /?token=t HTTP/1.1\r\n")
    welcome = Welcome(session="s1", user_id="v0-0", name="v0-0", role="viewer", heartbeat_ms=1,
                      server_time=1)  # fmt: skip
    viewer.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + server_frame(welcome))
    join = msgpack.unpackb(transport.written[-1][6:])
    assert join == {"t": "join", "room": ROOM, "rid": 1}
    joined = Joined(room=ROOM, epoch="e1", offset=0, viewers=1, likes=0, resync=False,
                    recent=(), rid=1)  # fmt: skip
    viewer.data_received(server_frame(joined))
    assert viewer.state == LIVE and host.joins == [True]
    return viewer, host, transport


def batches(offsets: list[int], ts: int) -> tuple[list[bytes], int, int]:
    """Server frames holding comments / system messages at ``offsets`` mixed with conflated
    events, some frames over 125 and 65535 bytes; also the offset and comment counts."""
    rng = random.Random(4)
    texts = ["t likes", "tviewers off", "£off", "x" * 2000]  # signature look-alikes, large
    frames = []
    comments = 0
    pos = 0
    while pos < len(offsets):
        parts = []
        first = pos == 0 and len(offsets) > 40  # one frame over 65535 bytes
        for off in offsets[pos : pos + (40 if first else rng.randint(1, 40))]:
            if first or rng.random() < 0.7:
                text = "y" * 2000 if first else rng.choice(texts)[: rng.randint(0, 2000)]
                event: Message = Comment(
                    id=f"c{off}", user_id="u", name="n", text=text, ts=ts, offset=off
                )
                comments += 1
            else:
                event = SystemMessage(id=f"m{off}", text="hi", ts=ts, offset=off)
            parts.append(MSGPACK.encode(event))
            pos += 1
        parts += [MSGPACK.encode_event(Likes(total=pos)), MSGPACK.encode_event(Viewers(count=3))]
        parts.append(MSGPACK.encode_event(Stock(sale_id="s", remaining=7)))
        frames.append(data_frame(MSGPACK.encode_batch(ROOM, parts), binary=True))
    return frames, len(offsets), comments


def feed_in_pieces(viewer: Viewer, data: bytes, seed: int) -> None:
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 100, 1500, 70000])
        viewer.data_received(data[pos : pos + step])
        pos += step


@pytest.mark.parametrize("sampled", [False, True])
def test_a_viewer_counts_offset_events_whatever_the_read_boundaries(sampled: bool) -> None:
    viewer, host, transport = live_viewer(sampled=sampled)
    frames, n_events, n_comments = batches(list(range(1, 301)), ts=int(time.time() * 1000))
    assert max(len(f) for f in frames) > 65535
    ping = bytes((0x89, 2)) + b"hb"
    mid = len(frames) // 2
    feed_in_pieces(viewer, b"".join([*frames[:mid], ping, *frames[mid:]]), seed=1)
    tally = host.tally
    # A ping between frames is answered with a pong carrying its payload.
    assert transport.written[-1] == bytes((0x8A, 0x82)) + b"\x00\x00\x00\x00hb"
    assert tally.events == n_events and viewer.offset == 300
    assert tally.frames == 2 + len(frames)  # welcome, joined, batches
    assert tally.lost == 0 and tally.dups == 0
    if sampled:
        assert tally.sampled_events == n_events
        assert sum(tally.lat) == n_comments
    else:
        assert tally.sampled_events == 0 and sum(tally.lat) == 0


def test_a_sampled_viewer_counts_gaps_as_lost_and_repeats_as_duplicates() -> None:
    viewer, host, _ = live_viewer(sampled=True)
    frames, _, _ = batches([1, 2, 5, 5, 3, 6], ts=1)
    viewer.data_received(b"".join(frames))
    assert (host.tally.lost, host.tally.dups, viewer.offset) == (2, 2, 6)
    assert host.tally.lat[-1] > 0  # ts 1: decades late


def test_a_resume_sends_the_last_offset_and_a_resync_excuses_the_gap() -> None:
    viewer, host, transport = live_viewer(sampled=True)
    frames, _, _ = batches([1, 2, 3], ts=1)
    viewer.data_received(b"".join(frames))
    viewer.data_received(bytes((0x88, 2)) + (1001).to_bytes(2, "big"))  # server going away
    assert transport.written[-1] == bytes((0x88, 0x82)) + b"\x00\x00\x00\x00\x03\xe9"
    assert host.tally.closes == {1001: 1} and host.tally.connections == 0
    viewer.connection_lost(None)
    assert host.ended_count == 1
    transport = FakeTransport()
    viewer.connection_made(transport)  # type: ignore[arg-type]
    welcome = Welcome(session="s2", user_id="v0-0", name="v0-0", role="viewer", heartbeat_ms=1,
                      server_time=1)  # fmt: skip
    viewer.data_received(b"HTTP/1.1 101 OK\r\n\r\n" + server_frame(welcome))
    join = msgpack.unpackb(transport.written[-1][6:])
    assert join == {"t": "join", "room": ROOM, "off": 3, "ep": "e1", "rid": 2}
    joined = Joined(room=ROOM, epoch="e2", offset=9, viewers=1, likes=0, resync=True,
                    recent=(), rid=2)  # fmt: skip
    viewer.data_received(server_frame(joined))
    frames, _, _ = batches([10, 11], ts=1)
    viewer.data_received(b"".join(frames))
    tally = host.tally
    assert (tally.reconnects, tally.resyncs, tally.lost, tally.dups) == (1, 1, 0, 0)
    assert host.joins == [True, False] and viewer.offset == 11 and tally.connections == 1


def test_the_conflated_signatures_match_the_codec() -> None:
    wire = Wire(ROOM, "h:1", "/")
    events: list[Message] = [Likes(total=1), Viewers(count=2), Stock(sale_id="s", remaining=3)]
    for event, signature in zip(events, wire.conflated, strict=True):
        assert signature in MSGPACK.encode(event)
    assert MSGPACK.encode_batch(ROOM, [b"\xc0"]).startswith(wire.prefix)
