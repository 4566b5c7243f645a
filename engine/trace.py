"""Recording a live room's viewer actions, pseudonymised, for load-test replay.

With ``rooms.trace_dir`` set, the gateway hands every accepted viewer action to a
:class:`TraceRecorder`, which appends one JSON line per action to
``<trace_dir>/<room>.<node>.jsonl``::

    {"t": 1796130000.123, "viewer": "3f9a…", "action": "comment", "len": 12}

Guarantees:

* No user id, name or comment text is written: a viewer is ``HMAC-SHA256(auth.secret,
  user id)`` cut to 16 hex digits (the same viewer has the same pseudonym on every node
  of a deployment, and nobody without the secret can tell who it is); a comment is its
  length. Actions: ``join``, ``leave``, ``comment`` (``len``), ``like`` (``n``), ``buy``
  (``sale``, ``qty``).
* Recording never blocks nor fails a viewer's command: lines are buffered and written at
  each :meth:`TraceRecorder.flush` (the server's conflation tick); a write error is
  logged once and recording stops. At most :data:`MAX_OPEN` room files are open at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import IO, Final

import orjson

__all__ = ["MAX_OPEN", "TraceRecorder"]

log = logging.getLogger("liveroom.trace")

MAX_OPEN: Final = 64
"""Room files kept open at once; the least recently written is closed first."""


class TraceRecorder:
    """Appends pseudonymised viewer actions per room; see the module docstring."""

    def __init__(self, directory: str | Path, node: str, secret: str) -> None:
        self.directory = Path(directory)
        self.node = node
        self._key = secret.encode()
        self._pending: dict[str, list[bytes]] = {}
        self._files: OrderedDict[str, IO[bytes]] = OrderedDict()
        self._names: dict[str, str] = {}  # user id -> pseudonym (bounded by flush)
        self.failed = False
        self.lines = 0

    def pseudonym(self, user_id: str) -> str:
        name = self._names.get(user_id)
        if name is None:
            digest = hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()
            name = self._names[user_id] = digest[:16]
        return name

    def record(self, room: str, user_id: str, action: str, **fields: str | int) -> None:
        """Queue one action of ``user_id`` in ``room`` (written at the next flush)."""
        if self.failed:
            return
        line = {"t": round(time.time(), 3), "viewer": self.pseudonym(user_id), "action": action}
        line.update(fields)
        self._pending.setdefault(room, []).append(orjson.dumps(line) + b"\n")

    def flush(self) -> None:
        """Write what was recorded since the last flush."""
        pending, self._pending = self._pending, {}
        if len(self._names) > 100_000:
            self._names.clear()
        if self.failed:
            return
        try:
            for room, lines in pending.items():
                self._file(room).write(b"".join(lines))
                self.lines += len(lines)
            for fp in self._files.values():
                fp.flush()
        except OSError as exc:
            log.error("recording the room trace failed (%s); trace recording stops", exc)
            self.failed = True
            self.close()

    def _file(self, room: str) -> IO[bytes]:
        fp = self._files.get(room)
        if fp is not None:
            self._files.move_to_end(room)
            return fp
        while len(self._files) >= MAX_OPEN:
            self._files.popitem(last=False)[1].close()
        fp = self._files[room] = (self.directory / f"{room}.{self.node}.jsonl").open("ab")
        return fp

    def close(self) -> None:
        for fp in self._files.values():
            fp.close()
        self._files.clear()
