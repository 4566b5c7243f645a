"""What the benchmarks share to report: the progress log, percentiles, markdown tables.

Progress lines go to stderr with the time of day; tables are GitHub markdown, one list
of lines each, so a report joins them with its own text.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["log", "percentile", "table", "targets_table", "verdict"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    index = min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))
    return float(values[index])


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def verdict(v: bool | None) -> str:
    return "n/a" if v is None else ("PASS" if v else "FAIL")


def targets_table(targets: Sequence[dict[str, Any]]) -> list[str]:
    """Rows of ``{"target", "measured", "pass"}`` as a target / measured / result table."""
    return table(
        ["target", "measured", "result"],
        [[t["target"], t["measured"], verdict(t["pass"])] for t in targets],
    )
