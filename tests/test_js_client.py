"""The JS client's own test suite (``clients/js/test/*.test.mjs``, Node's test runner), run
from pytest: the protocol vectors through its strict codecs, its logic against an
in-memory server, real ``liveroom serve`` processes (started and killed by the node tests
themselves), and the freshness of its generated files and browser bundle.

Passes only if node exits 0 AND its TAP summary reports tests run, none failed, cancelled
or skipped: a run that ran nothing fails. Node's output is printed on failure.
``./dev test`` has run ``npm ci`` in ``clients/js`` before (``ensure_npm``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

__all__: list[str] = []

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "clients" / "js"
TIMEOUT = 180.0  # seconds for the whole node suite (it takes well under a minute)
SUMMARY = re.compile(r"^# (tests|suites|pass|fail|cancelled|skipped|todo) (\d+)$", re.MULTILINE)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (./dev test installs nodejs and npm)")
    if not (JS / "node_modules" / "@msgpack" / "msgpack").is_dir():
        pytest.fail(f"{JS}/node_modules is missing: run `npm ci` in {JS} (./dev test does)")
    return node


def summary(output: str) -> dict[str, int]:
    """The counts of node's TAP summary (``# pass 12``…); the last of each wins."""
    return {name: int(count) for name, count in SUMMARY.findall(output)}


def test_summary_reads_the_tap_counts() -> None:
    counts = summary("ok 1 - a\n# tests 3\n# suites 0\n# pass 2\n# fail 1\n# cancelled 0\n")
    assert counts == {"tests": 3, "suites": 0, "pass": 2, "fail": 1, "cancelled": 0}
    assert summary("no summary at all") == {}


def test_js_client_suite_passes() -> None:
    node = _node()
    files = sorted(str(p.relative_to(JS)) for p in (JS / "test").glob("*.test.mjs"))
    assert len(files) >= 6, files
    env = {
        **os.environ,
        "LIVEROOM_BIN": str(Path(sys.executable).with_name("liveroom")),
        "LIVEROOM_PYTHON": sys.executable,
        "NODE_OPTIONS": "",
    }
    # Its own process group: on a timeout, node, its test-file processes and the servers
    # they started are all killed together.
    proc = subprocess.Popen(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=JS,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        print(stdout + stderr)
        pytest.fail(f"node --test did not finish in {TIMEOUT:g} s; output above")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left behind by a crashed test file
    output = stdout + stderr
    counts = summary(stdout)
    problems = []
    if proc.returncode != 0:
        problems.append(f"node exited {proc.returncode}")
    if counts.get("tests", 0) < 40 or counts.get("pass", 0) != counts.get("tests"):
        problems.append(f"counts {counts}")
    for bad in ("fail", "cancelled", "skipped", "todo"):
        if counts.get(bad, 0):
            problems.append(f"{counts[bad]} {bad}")
    if problems:
        print(output)
        pytest.fail(f"the JS client's suite failed ({'; '.join(problems)}); output above")
