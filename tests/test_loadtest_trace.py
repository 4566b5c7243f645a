"""Record a live room's trace on a real engine, then replay it scaled in viewers and time.

A ``liveroom serve`` with ``rooms.trace_dir`` records what two viewers do (join, comment,
like, leave), pseudonymised; ``python -m loadtest.replay`` plays the trace into another
engine's room at twice the viewers and twice the speed, and a watcher there sees twice
the comments.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from protocol import Ack, Comment, Like
from tests.conftest import SECRET, Peer, expect, token
from tests.processes import Engine


async def test_a_recorded_trace_is_pseudonymised_and_replays_scaled(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    with Engine(ROOMS_TRACE_DIR=str(traces), SERVER_NODE_ID="rec") as recorder:
        alice = await Peer.open(recorder.endpoint, token("alice", ["show"]))
        bob = await Peer.open(recorder.endpoint, token("bob", ["show"]))
        await alice.join("show")
        await bob.join("show")
        for text in ("hello", "多少钱?"):
            expect(await alice.comment("show", text), Ack)
        expect(await bob.call(Like(room="show", count=3, rid="l1")), Ack)
        await bob.leave("show")
        await alice.close()
        await asyncio.sleep(0.5)  # a conflation tick flushes the trace
    path = traces / "show.rec.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    actions = [(line["action"], line.get("len"), line.get("n")) for line in lines]
    assert actions == [
        ("join", None, None),
        ("join", None, None),
        ("comment", 5, None),
        ("comment", 4, None),
        ("like", None, 3),
        ("leave", None, None),
        ("leave", None, None),
    ]
    text = path.read_text()
    assert "alice" not in text and "bob" not in text and "hello" not in text  # pseudonymised
    assert len({line["viewer"] for line in lines}) == 2

    with Engine() as player:
        watcher = await Peer.open(player.endpoint, token("watcher", ["rehearsal"]))
        await watcher.join("rehearsal")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.replay", "--trace", str(path), "--room",
            "rehearsal", "--url", f"ws://127.0.0.1:{player.ws_port}/", "--secret", SECRET,
            "--viewers", "2", "--time", "2", "--out", str(tmp_path / "summary.json"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, output.decode()
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["played_viewers"] == 4 and summary["connections"] == 4
        # bob's leave and alice's disconnect, each played by two viewers
        assert summary["played"] == {"join": 4, "comment": 4, "like": 2, "leave": 4}
        assert summary["refused"] == {}
        comments = await watcher.comments(4)
        assert sorted(len(c.text) for c in comments) == [4, 4, 5, 5]
        assert all(isinstance(c, Comment) and c.user_id.startswith("r-") for c in comments)
