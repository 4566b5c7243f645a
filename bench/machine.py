"""What every benchmark records about the machine and the code it measured.

Results in ``bench/results/`` are only comparable with the machine and code beside them:
``describe()`` gives the platform, CPU, memory, Python and library versions, the load at
start, and a fingerprint of the server code (``engine/`` and ``protocol/`` sources);
``one_line()`` says the same in one line for a report's header.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import os
import platform
import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "code_fingerprint", "describe", "one_line", "read_first"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def read_first(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a /proc file, or "?"."""
    with contextlib.suppress(OSError), open(path) as fp:
        for line in fp:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return "?"


def code_fingerprint() -> str:
    """sha256 (12 hex digits) of the server code: engine/ (Python and Lua) and protocol/."""
    digest = hashlib.sha256()
    files = [
        *REPO_ROOT.glob("engine/**/*.py"),
        *REPO_ROOT.glob("engine/**/*.lua"),
        *REPO_ROOT.glob("protocol/**/*.py"),
    ]
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def describe(packages: Sequence[str]) -> dict[str, Any]:
    """The machine, the versions of ``packages``, the load now and the code fingerprint."""
    versions = {}
    for dist in packages:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "?"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": read_first("/proc/cpuinfo", "model name"),
        "cpu_mhz": read_first("/proc/cpuinfo", "cpu MHz"),
        "cpus": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "memory": read_first("/proc/meminfo", "MemTotal"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "server_code_sha256": code_fingerprint(),
    }


def one_line(meta: dict[str, Any]) -> str:
    """``describe()``'s figures as one Markdown sentence."""
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    return (
        f"Machine: {meta['platform']}; {meta['cpu_model']}; {meta['cpus']} CPUs; "
        f"{meta['python']}; {versions}; load average at start {meta['loadavg_start']}; "
        f"server code {meta['server_code_sha256']}; {meta['date']}."
    )
