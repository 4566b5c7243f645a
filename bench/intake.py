"""Comment intake cost: the server's Python time per comment, in one process, no sockets.

At maximum comment rate the fan-out server spends part of its core taking comments in
(websocket frame parsing, decoding and validation, publishing, the ack, encoding the event
once for the batch) instead of writing frames; ``bench/fanout.py`` measures the whole,
this measures that part alone and repeatably. A real ``engine.gateway.Connection`` is
driven through ``data_received`` with a stub transport that only counts bytes: it completes
the websocket handshake, joins a room, then gets reads of ``--per-read`` masked comment
frames each (what a fast commenter's socket delivers); the event loop turns after every
``--per-turn`` reads (a busy server reads several commenters per turn), so the room's
flush writes one batch frame per turn (to the same stub). Kernel time (the real send and
receive calls) is not included: that is what the fan-out benchmark adds.

Each stage is also timed alone, on the same inputs, with the functions the gateway calls.
Printed and saved (``bench/results/intake.{md,json}``) with the machine: the median over
``--repeats`` runs, ns per comment.

Usage: ``python -m bench.intake [--comments N] [--per-read 8] [--per-turn 8] [--repeats 7]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from bench.machine import describe, one_line
from bench.rawws import SUBPROTOCOL, client_frame, upgrade_request
from engine.auth import Claims, Role, mint_token
from engine.config import Config
from engine.gateway import Connection, Gateway
from engine.room import Hub, Room
from engine.wsframe import data_frame
from protocol import MSGPACK, Join, SendComment

__all__ = ["main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOM = "bench"
TEXT = "t=1764052800000000 c=00 great deal on the red jacket, buy two get"  # 64 chars


class StubTransport:
    """What ``Connection`` uses of a transport; writes are counted, never buffered."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def comment_frames(n: int) -> list[bytes]:
    """``n`` client frames of 64-character comments with integer request ids."""
    return [
        client_frame(MSGPACK.encode(SendComment(room=ROOM, text=TEXT, rid=i))) for i in range(n)
    ]


def open_connection() -> tuple[Connection, Room, StubTransport]:
    """A connection through handshake and join; its room; its transport. Needs a loop."""
    base = Config()
    # No rate limit: the benchmark sends far more than a viewer may.
    rooms = dataclasses.replace(base.rooms, comment_rate=1e9, comment_burst=1_000_000_000)
    config = dataclasses.replace(base, rooms=rooms)
    hub = Hub(history_size=1000, snapshot_size=50, min_flush_interval=0.0)
    gateway = Gateway(config, hub)
    conn = gateway()
    transport = StubTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    claims = Claims(
        user_id="u1",
        name="viewer one",
        rooms=(ROOM,),
        role=Role.VIEWER,
        expires_at=time.time() + 3600,
    )
    token = mint_token(config.auth.secret, claims)
    conn.data_received(upgrade_request("127.0.0.1", 8080, token))
    conn.data_received(client_frame(MSGPACK.encode(Join(room=ROOM, rid=0))))
    room = hub.get(ROOM)
    if room is None or not conn.open:
        raise RuntimeError("the bench connection did not join")
    return conn, room, transport


def _per_item(run: Callable[[], object], items: int) -> float:
    """Nanoseconds per item of one call of ``run``, the garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        run()
        return (time.perf_counter_ns() - t0) / items
    finally:
        gc.enable()


async def _whole_path(reads: list[bytes], per_read: int, per_turn: int) -> float:
    """ns per comment: the reads through ``data_received``, ``per_turn`` per loop turn.

    One loop turn per ``per_turn`` reads is what several commenters sending at once
    give a real server: every ready socket is read, then the room's flush runs once.
    """
    conn, room, transport = open_connection()
    offset0 = room.offset
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for i, chunk in enumerate(reads, 1):
            conn.data_received(chunk)
            if i % per_turn == 0:
                await asyncio.sleep(0)  # the room's flush runs here, as on a real loop
        await asyncio.sleep(0)
        elapsed = time.perf_counter_ns() - t0
    finally:
        gc.enable()
    comments = len(reads) * per_read
    if room.offset - offset0 != comments or not conn.open or transport.written == 0:
        raise RuntimeError(f"published {room.offset - offset0} of {comments} comments")
    return elapsed / comments


def _stages(frames: list[bytes], per_read: int) -> dict[str, float]:
    """ns per comment of each stage alone, on the inputs the gateway would give it."""
    n = len(frames)
    ws = ServerProtocol(subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=65536)
    ws.receive_data(upgrade_request("127.0.0.1", 8080, None))
    ws.send_response(ws.accept(ws.events_received()[0]))  # type: ignore[arg-type]
    ws.data_to_send()
    chunks = [b"".join(frames[i : i + per_read]) for i in range(0, n, per_read)]

    def parse() -> None:
        for chunk in chunks:
            ws.receive_data(chunk)
            ws.events_received()

    payloads = [f[6:] for f in frames]  # 2-byte header + zero mask
    decode = MSGPACK.decode_client
    messages = [decode(p) for p in payloads]
    loop = asyncio.new_event_loop()
    try:
        room = Room(ROOM, history_size=1000, snapshot_size=50, min_flush_interval=0, loop=loop)
        publish = room.publish_comment

        def publish_all() -> None:
            for m in messages:
                assert isinstance(m, SendComment)
                publish(user_id="u1", name="viewer one", text=m.text)

        figures = {
            "frame parsing (websockets)": _per_item(parse, n),
            "decode + validate": _per_item(lambda: [decode(p) for p in payloads], n),
            "publish (Comment + history)": _per_item(publish_all, n),
        }
        events = [entry.event for entry in room.history]
    finally:
        loop.close()
    encode_ack = MSGPACK.encode_ack
    figures["ack (encode + frame)"] = _per_item(
        lambda: [data_frame(encode_ack(i, i), binary=True) for i in range(n)], n
    )
    encode_event = MSGPACK.encode_event
    k = len(events)
    figures["event encode (once per batch)"] = _per_item(
        lambda: [encode_event(e) for _ in range(n // k) for e in events], (n // k) * k
    )
    return figures


def run(comments: int, per_read: int, per_turn: int, repeats: int) -> dict[str, Any]:
    frames = comment_frames(comments)
    reads = [b"".join(frames[i : i + per_read]) for i in range(0, comments, per_read)]
    whole = [asyncio.run(_whole_path(reads, per_read, per_turn)) for _ in range(repeats)]
    stage_runs = [_stages(frames, per_read) for _ in range(repeats)]
    stages = {k: statistics.median(r[k] for r in stage_runs) for k in stage_runs[0]}
    return {
        "comments": comments,
        "per_read": per_read,
        "reads_per_turn": per_turn,
        "repeats": repeats,
        "whole_path_ns": round(statistics.median(whole)),
        "whole_path_runs_ns": [round(x) for x in whole],
        "stages_ns": {k: round(v) for k, v in stages.items()},
        "stages_sum_ns": round(sum(stages.values())),
    }


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    r = report["result"]
    lines = [
        "# Comment intake benchmark",
        "",
        f"Run `{report['command']}`. {one_line(m)}",
        "",
        f"{r['comments']:,} comments of 64 characters, {r['per_read']} per read,"
        f" {r['reads_per_turn']} reads per event-loop turn (one flush), median of"
        f" {r['repeats']} runs; Python time only (the stub transport makes no system calls).",
        "",
        "| stage | ns per comment |",
        "|---|---:|",
        f"| **whole path** (data_received → ack, publish, batch frame) | "
        f"**{r['whole_path_ns']:,}** |",
    ]
    lines += [f"| {k} | {v:,} |" for k, v in r["stages_ns"].items()]
    lines += [
        f"| sum of the stages timed alone | {r['stages_sum_ns']:,} |",
        "",
        "The whole path minus the stages is the gateway's own work per comment (the read"
        " and cork, dispatch, checks, rate limit, the batch frame and loop turns).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__)
    parser.add_argument("--comments", type=int, default=20_000)
    parser.add_argument("--per-read", type=int, default=8)
    parser.add_argument("--per-turn", type=int, default=8, help="reads per loop turn")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.comments < args.per_read or args.comments % args.per_read:
        parser.error("--comments must be a positive multiple of --per-read")
    machine = describe(("liveroom", "websockets", "msgpack", "orjson"))
    result = run(args.comments, args.per_read, args.per_turn, args.repeats)
    command = "python -m bench.intake" + "".join(f" {a}" for a in (argv or []))
    report = {"command": command, "machine": machine, "result": result}
    text = _markdown(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "intake.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "intake.md").write_text(text)


if __name__ == "__main__":
    main()
