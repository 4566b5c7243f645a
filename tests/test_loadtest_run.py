"""The load-test runner end to end: the smoke scenario against a real server, judged.

``python -m loadtest.run`` as a subprocess against a real ``liveroom serve`` (loopback):
the smoke scenario passes with a clean reconciliation and a complete report; a scenario
whose SLO cannot hold makes the run exit 1 naming it; a bad scenario exits 2; a recorded
trace replays as part of a run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.replay import load_trace
from loadtest.scenario import SCENARIOS_DIR
from tests.conftest import SECRET
from tests.processes import API_KEY, Engine


@pytest.fixture
def engine() -> Iterator[Engine]:
    with Engine(ROOMS_COMMENT_RATE="50", ROOMS_LIKE_RATE="50") as e:
        yield e


def run(engine: Engine, scenario: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "loadtest.run", "--scenario", scenario,
            "--url", f"ws://127.0.0.1:{engine.ws_port}/",
            "--service", f"http://127.0.0.1:{engine.api_port}",
            "--api-key", API_KEY, "--secret", SECRET, "--out", str(out),
            "--start-in", "1.5", *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_the_smoke_scenario_passes_against_a_real_server(engine: Engine, tmp_path: Path) -> None:
    done = run(engine, "smoke", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS: smoke" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and not report["failed"]
    assert {v["slo"] for v in report["verdicts"]} == {
        "p99 delivery",
        "loss",
        "oversell",
        "reconciliation",
    }
    totals = report["totals"]
    assert totals["peak_connections"] == 200 and totals["lost"] == 0 and totals["dups"] == 0
    assert totals["buy_answers"] == {"ok": 20, "sold_out": 10}
    sale = report["sale"]
    assert (sale["stock"], sale["sold"], sale["orders"], sale["problems"]) == (20, 20, 20, [])
    assert [a["action"] for a in report["host"]] == ["pin", "open_sale"]
    assert all(a["status"] in (200, 201) for a in report["host"])
    assert len(report["seconds"]) >= 8 and max(s["events"] for s in report["seconds"]) > 0
    page = (tmp_path / "report.html").read_text()
    assert "smoke: PASS" in page and "data:image/png;base64," in page
    for name in ("latency.png", "connections.png", "locust.html", "locust_stats.csv"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_a_failing_slo_fails_the_run_and_is_named(engine: Engine, tmp_path: Path) -> None:
    scenario = tmp_path / "strict.toml"
    scenario.write_text(
        'name = "strict"\nroom = "strict-room"\nduration = 3.0\n'
        "[viewers]\npeak = 20\njoin_rate = 40.0\nsampled = 1.0\n"
        "[users]\ncommenters = 2\ncomment_rate = 3.0\n"
        "[slo]\np99_ms = 0.5\n",  # no delivery is that fast: the bucket bounds start at 1 ms
        encoding="utf-8",
    )
    done = run(engine, str(scenario), tmp_path / "out")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL: strict: p99 delivery" in done.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["failed"] == ["p99 delivery"]  # the rest held


def test_a_bad_scenario_exits_2(engine: Engine, tmp_path: Path) -> None:
    done = run(engine, str(tmp_path / "missing.toml"), tmp_path / "out")
    assert done.returncode == 2 and "cannot read" in done.stderr


def test_a_deployed_run_survives_redis_killed_during_the_sale(tmp_path: Path) -> None:
    """--deploy: Redis and two workers started by the runner; Redis killed mid-sale."""
    scenario = tmp_path / "fault.toml"
    scenario.write_text(
        'name = "fault"\nroom = "fault-room"\nduration = 7.0\nseed = 3\n'
        "[viewers]\npeak = 60\njoin_rate = 60.0\nsampled = 0.5\n"
        "[users]\ncommenters = 2\ncomment_rate = 2.0\n"
        '[sale]\nat = 2.0\nsale_id = "f1"\nstock = 8\nbuyers = 12\njitter = 0.5\nretries = 3\n'
        '[[faults]]\nat = 2.4\nkind = "kill_redis"\ndown = 1.0\n'
        "[slo]\np99_ms = 5000.0\n",
        encoding="utf-8",
    )
    argv = [sys.executable, "-m", "loadtest.run", "--scenario", str(scenario), "--deploy", "2",
            "--out", str(tmp_path / "out"), "--start-in", "1.5"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (fault,) = report["faults"]
    assert fault["kind"] == "kill_redis" and fault["recovery_s"] is not None
    assert fault["lost"] == 0 and fault["dups"] == 0
    assert [a["action"] for a in report["host"]] == ["open_sale", "fault:kill_redis"]
    assert report["host"][1]["status"] == "done"
    sale = report["sale"]  # buyers retried through the outage; the store kept every sale
    assert sale["problems"] == [] and sale["oversold"] == 0
    assert sale["sold"] == 8 and sale["answers"].get("ok") == 8
    totals = report["totals"]  # what a viewer and an event cost the swarm and the engine
    assert totals["engine_workers"] == 2 and totals["engine_cpu_us_per_event"] > 0
    assert totals["swarm_kb_per_connection"] > 0 and totals["swarm_cpu_us_per_event"] > 0
    deploy = tmp_path / "out" / "deploy"
    assert (deploy / "appendonlydir").is_dir() and (deploy / "engine.log").exists()


def test_a_distributed_run_splits_the_viewers_and_the_cast(engine: Engine, tmp_path: Path) -> None:
    """Two swarm slices and a Locust master with two workers, one start time: the same
    show as one process each (every viewer, every buyer, one answer each)."""
    done = run(engine, "smoke", tmp_path, "--swarms", "2", "--locust-workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["peak_connections"] == 200  # 100 + 100 over two slices
    assert report["totals"]["buy_answers"] == {"ok": 20, "sold_out": 10}
    assert report["sale"]["problems"] == [] and report["sale"]["buyers"] == 30
    assert sorted(p.name for p in tmp_path.glob("swarm-*.jsonl")) == [
        "swarm-0.jsonl",
        "swarm-1.jsonl",
    ]
    assert len(list(tmp_path.glob("buys*.jsonl"))) == 2  # one file per Locust worker


def test_a_recorded_trace_replays_as_part_of_a_run(engine: Engine, tmp_path: Path) -> None:
    """``replay-smoke``: a trace a real engine recorded, replayed by the runner into its
    room beside a swarm; its Buy presses go to the scenario's sale and are reconciled."""
    trace = load_trace([SCENARIOS_DIR / "traces" / "smoke.jsonl"])
    recorded = Counter(a.action for a in trace)
    buyers = {a.viewer for a in trace if a.action == "buy"}
    assert recorded["comment"] > 0 and len(buyers) > 10  # the shipped trace is a real show

    done = run(engine, "replay-smoke", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "replay.log").read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert "replay" in {v["slo"] for v in report["verdicts"]} and report["passed"]
    replay = report["replay"]
    assert replay["connect_failures"] == 0
    assert replay["connections"] == replay["played_viewers"] == replay["recorded_viewers"]
    for kind in ("join", "comment", "like", "buy"):  # every recorded action was played
        assert replay["played"].get(kind) == recorded[kind], (kind, replay)
    assert replay["refused"] == {}
    # The recorded buyers outnumber the rehearsal's 10 units: 10 ok, the rest sold out,
    # every one answered and reconciled against the store's orders.
    assert replay["buyers"] == len(buyers)
    assert replay["buy_answers"] == {"ok": 10, "sold_out": recorded["buy"] - 10}
    sale = report["sale"]
    assert sale["problems"] == [] and (sale["sold"], sale["orders"]) == (10, 10)
    assert sale["buyers"] == len(buyers)
    assert report["totals"]["events"] > 0 and report["totals"]["lost"] == 0
    assert not (tmp_path / "locust.log").exists()  # no Locust users: the trace is the show
