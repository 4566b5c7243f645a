"""Replay a recorded room trace against a server, scaled in viewers and in time.

``python -m loadtest.replay --trace ROOM.NODE.jsonl [--trace …] --room ROOM --url
ws://127.0.0.1:8765/ --secret S [--viewers K] [--time F] [--start-at T] [--sale ID]
[--buys-out buys.jsonl] [--out summary.json]``

A trace is what a node records with ``rooms.trace_dir`` (:mod:`engine.trace`): one JSON
line per viewer action (``t``, pseudonymous ``viewer``, ``action``: join, leave, comment
with ``len``, like with ``n``, buy with ``sale`` and ``qty``). Traces of several nodes of
one show are merged by time.

* **Viewers:** ``K >= 1`` plays every recorded viewer ``floor(K)`` times (plus one more for
  a share ``K - floor(K)`` of them); ``K < 1`` plays the share ``K`` of them. Which
  viewers are chosen depends only on their pseudonym, so the sample is the same every time.
* **Time:** an action recorded ``s`` seconds after the trace's first one is played
  ``s / F`` seconds after the replay's start (``F = 2``: twice as fast).
* Each played viewer is its own connection (:class:`engine.client.LiveroomClient`),
  opened at its first action, with a token for a user id made from its pseudonym; a
  comment is replayed as a text of the recorded length.
* A Buy is pressed with a fresh request id, in the recorded sale or in ``--sale`` (a
  rehearsal's own sale), and retried with the same id (up to :data:`BUY_RETRIES` times,
  backing off from :data:`RETRY_BACKOFF` s) while its answer is lost or "try again"; its
  final answer is appended to ``--buys-out`` in the load test's buys format
  (:mod:`loadtest.reconcile` checks them against the store's orders).
* Bounded: the replay ends by itself at the trace's last action (scaled) plus a grace,
  closes every connection, and writes a summary: actions played and refused per kind,
  connections, connect failures. Exit 0 when every connection opened, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.auth import Claims, Role, mint_token
from engine.client import CommandError, LiveroomClient
from protocol import BUY_TRY_AGAIN, BuyResult

__all__ = ["Action", "load_trace", "main", "replay", "select"]

GRACE = 5.0  # seconds after the last action before the replay stops waiting
COMMAND_TIMEOUT = 5.0
BUY_RETRIES = 2
RETRY_BACKOFF = 1.0  # seconds before a Buy's first retry; doubled for each next one


@dataclass(frozen=True, slots=True)
class Action:
    t: float  # seconds after the trace's first action
    viewer: str
    action: str
    fields: dict[str, Any] = field(default_factory=dict)


def load_trace(paths: Sequence[Path]) -> list[Action]:
    """Every action of the trace files, merged by time, ``t`` from the first one.

    Raises:
        ValueError: a line that is not a trace action (naming the file and line).
    """
    raw: list[tuple[float, str, str, dict[str, Any]]] = []
    for path in paths:
        with path.open(encoding="utf-8") as fp:
            for number, line in enumerate(fp, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    t, viewer, action = (
                        float(record.pop("t")),
                        record.pop("viewer"),
                        record.pop("action"),
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: not a trace action ({exc})") from None
                raw.append((t, str(viewer), str(action), record))
    raw.sort(key=lambda r: r[0])
    first = raw[0][0] if raw else 0.0
    return [Action(t - first, viewer, action, fields) for t, viewer, action, fields in raw]


def select(viewers: Sequence[str], scale: float) -> list[tuple[str, int]]:
    """The (viewer, copy) pairs played at viewer scale ``scale`` (see the module docstring)."""
    out: list[tuple[str, int]] = []
    whole, part = math.floor(scale), scale - math.floor(scale)
    for viewer in viewers:
        # A fixed point in [0, 1) per pseudonym: the same sample on every replay.
        point = int(hashlib.sha256(viewer.encode()).hexdigest()[:12], 16) / 16**12
        copies = whole + (1 if point < part else 0)
        out.extend((viewer, copy) for copy in range(copies))
    return out


@dataclass
class _Tally:
    played: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)  # final buy answers by status
    buyers: set[str] = field(default_factory=set)  # users who pressed Buy
    connections: int = 0
    connect_failures: int = 0
    buys_log: Path | None = None
    start: float = 0.0

    def answered(
        self, user: str, rid: str, answer: BuyResult | CommandError | None, attempts: int, sale: str
    ) -> None:
        """Count a Buy's final answer (a refusal is ``refused``, none ``lost``) and append
        it to the buys log."""
        record: dict[str, Any] = {"user": user, "rid": rid, "status": "lost", "order": None,
                                  "qty": None, "attempts": attempts, "sale": sale}  # fmt: skip
        if isinstance(answer, BuyResult):
            record.update(status=answer.status, order=answer.order, qty=answer.qty)
        elif isinstance(answer, CommandError):
            record.update(status="refused", msg=str(answer))
        self.answers[record["status"]] += 1
        if self.buys_log is not None:
            record.update(t=round(time.time() - self.start, 3), replay=True)
            with self.buys_log.open("a", encoding="utf-8") as fp:
                fp.write(json.dumps(record) + "\n")


async def _buy(
    client: LiveroomClient, room: str, sale: str, qty: int, user: str, tally: _Tally
) -> None:
    """One press, retried with its request id while lost or "try again"; its final answer
    goes to the tally (a refusal raises :class:`CommandError`, as any command's)."""
    rid = f"r-{uuid.uuid4().hex}"
    tally.buyers.add(user)
    answer: BuyResult | None = None
    attempts = 0
    while attempts <= BUY_RETRIES:
        if attempts:
            await asyncio.sleep(RETRY_BACKOFF * 2 ** (attempts - 1))
        attempts += 1
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                answer = await client.buy(room, sale, qty, rid=rid, retry=attempts > 1)
        except TimeoutError:
            answer = None
            continue
        except CommandError as exc:
            tally.answered(user, rid, exc, attempts, sale)
            raise
        if not (answer.status == "error" and answer.msg == BUY_TRY_AGAIN):
            break
    tally.answered(user, rid, answer, attempts, sale)


async def _play(
    actions: list[Action],
    viewer: str,
    copy: int,
    *,
    room: str,
    url: str,
    secret: str,
    start: float,
    time_scale: float,
    sale: str | None,
    tally: _Tally,
) -> None:
    user = f"r-{viewer}-{copy}"
    claims = Claims(
        user_id=user,
        name=user,
        rooms=(room,),
        role=Role.VIEWER,
        expires_at=time.time() + 3600 + actions[-1].t / time_scale,
    )
    await asyncio.sleep(max(0.0, start + actions[0].t / time_scale - time.time()))
    try:
        client = await LiveroomClient.connect(url, mint_token(secret, claims))
    except (OSError, TimeoutError, Exception):
        tally.connect_failures += 1
        return
    tally.connections += 1
    try:
        for action in actions:
            await asyncio.sleep(max(0.0, start + action.t / time_scale - time.time()))
            kind = action.action
            try:
                # A Buy's retries take longer than one command's timeout.
                limit = COMMAND_TIMEOUT * (1 + BUY_RETRIES) + RETRY_BACKOFF * 2**BUY_RETRIES
                async with asyncio.timeout(limit if kind == "buy" else COMMAND_TIMEOUT):
                    if kind == "join":
                        await client.join(room)
                    elif kind == "leave":
                        await client.leave(room)
                    elif kind == "comment":
                        await client.comment(room, "x" * max(1, int(action.fields.get("len", 1))))
                    elif kind == "like":
                        await client.like(room, max(1, int(action.fields.get("n", 1))))
                    elif kind == "buy":
                        qty = int(action.fields.get("qty", 1))
                        target = sale or str(action.fields["sale"])
                        await _buy(client, room, target, qty, user, tally)
                    else:
                        tally.refused[f"unknown:{kind}"] += 1
                        continue
                tally.played[kind] += 1
            except (CommandError, TimeoutError, KeyError, ValueError):
                tally.refused[kind] += 1
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def replay(
    actions: list[Action],
    *,
    room: str,
    url: str,
    secret: str,
    viewers: float = 1.0,
    time_scale: float = 1.0,
    start_at: float | None = None,
    sale: str | None = None,
    buys_log: Path | None = None,
) -> dict[str, Any]:
    """Play ``actions`` from ``start_at`` (a Unix time; default: in 1 s); return the
    summary (see the module docstring)."""
    by_viewer: dict[str, list[Action]] = {}
    for action in actions:
        by_viewer.setdefault(action.viewer, []).append(action)
    chosen = select(sorted(by_viewer), viewers)
    start = time.time() + 1.0 if start_at is None else start_at
    tally = _Tally(buys_log=buys_log, start=start)
    last = actions[-1].t / time_scale if actions else 0.0
    tasks = [
        asyncio.create_task(
            _play(
                by_viewer[v],
                v,
                copy,
                room=room,
                url=url,
                secret=secret,
                start=start,
                time_scale=time_scale,
                sale=sale,
                tally=tally,
            )
        )
        for v, copy in chosen
    ]
    if tasks:
        ends = start + last + GRACE + COMMAND_TIMEOUT * (1 + BUY_RETRIES) + 4 * RETRY_BACKOFF
        _, late = await asyncio.wait(tasks, timeout=max(0.0, ends - time.time()))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    return {
        "recorded_viewers": len(by_viewer),
        "played_viewers": len(chosen),
        "recorded_actions": len(actions),
        "seconds": round(last, 3),
        "connections": tally.connections,
        "connect_failures": tally.connect_failures,
        "played": dict(tally.played),
        "refused": dict(tally.refused),
        "buyers": len(tally.buyers),
        "buy_answers": dict(tally.answers),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.replay", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--trace", type=Path, action="append", required=True)
    parser.add_argument("--room", required=True, help="the room to replay into")
    parser.add_argument("--url", required=True, help="the engine's websocket URL")
    parser.add_argument("--secret", default=os.environ.get("LIVEROOM_AUTH_SECRET", ""))
    parser.add_argument("--viewers", type=float, default=1.0, help="viewer scale (0.1, 2, …)")
    parser.add_argument("--time", type=float, default=1.0, help="speed (2: twice as fast)")
    parser.add_argument("--start-at", type=float, help="Unix time of the first action")
    parser.add_argument("--sale", help="press Buy in this sale instead of the recorded one")
    parser.add_argument("--buys-out", type=Path, help="append every Buy's final answer here")
    parser.add_argument("--out", type=Path, help="write the summary (JSON) here")
    args = parser.parse_args(argv)
    if not args.secret:
        parser.error("--secret (or LIVEROOM_AUTH_SECRET) is needed")
    if not (args.viewers > 0 and args.time > 0):
        parser.error("--viewers and --time must be > 0")
    try:
        actions = load_trace(args.trace)
    except (OSError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    summary = asyncio.run(
        replay(
            actions,
            room=args.room,
            url=args.url,
            secret=args.secret,
            viewers=args.viewers,
            time_scale=args.time,
            start_at=args.start_at,
            sale=args.sale,
            buys_log=args.buys_out,
        )
    )
    text = json.dumps(summary, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    raise SystemExit(0 if summary["connect_failures"] == 0 else 1)


if __name__ == "__main__":
    main()
