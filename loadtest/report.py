"""A load test's report: per-second series, SLO verdicts, the sale's reconciliation.

:func:`build_report` reads what a run left in its output directory:

* ``swarm-*.jsonl``: the viewer swarms' per-second records and summaries
  (:mod:`loadtest.swarm`), merged over slices (latency histograms add up exactly);
* ``locust_stats_history.csv`` / ``locust_stats.csv``: Locust's own figures;
* ``buys*.jsonl``: every buyer's final answer (:mod:`loadtest.locustfile`);
* ``sale.json``: the sale's state and orders read from the service API after the run;
* ``host.jsonl``: what the run's host did (pins, the sale, faults) and when;
* ``replay.json``: what a scenario's recorded trace replay played (:mod:`loadtest.replay`;
  its buyers' answers are in ``buys.replay.jsonl`` and reconciled with the others);

and returns a :class:`Report`: one row per second of show time (connections, events/s,
p50/p99/max delivery latency, events lost, resyncs, buy answers by kind), the whole run's
figures, the reconciliation (:mod:`loadtest.reconcile`) and one verdict per SLO.
:func:`write_report` writes ``report.json``, ``latency.png``, ``connections.png`` and one
self-contained ``report.html`` (user text escaped; plots embedded).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.reconcile import Reconciliation, reconcile
from loadtest.scenario import Scenario
from loadtest.swarm import hist_percentile, merge_hist

__all__ = ["Report", "Verdict", "build_report", "write_report"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One SLO: what it asks, what the run measured, whether it held."""

    slo: str
    target: str
    measured: str
    ok: bool


@dataclass(slots=True)
class Report:
    scenario: str
    seconds: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    locust: list[dict[str, Any]] = field(default_factory=list)  # Locust's per-request rows
    host: list[dict[str, Any]] = field(default_factory=list)
    sale: Reconciliation | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)  # recovery from each fault
    replay: dict[str, Any] | None = None  # the trace replay's summary
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def failed(self) -> list[str]:
        return [v.slo for v in self.verdicts if not v.ok]


def _jsonl(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with path.open(encoding="utf-8") as fp:
            for line in fp:
                if line.strip():
                    record: dict[str, Any] = json.loads(line)
                    yield record


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as fp:
        return list(csv.DictReader(fp))


_COUNTS = ("connections", "connections_min", "events", "sampled_events", "frames", "bytes",
           "lost", "dups", "resyncs", "reconnects", "dropped")  # fmt: skip
"""Per-second swarm figures that add up over slices (connections_min: a lower bound)."""


def build_report(out: Path, scenario: Scenario) -> Report:
    """Read a run's output directory; see the module docstring."""
    report = Report(scenario.name)
    per_second: dict[int, dict[str, Any]] = defaultdict(
        lambda: {**dict.fromkeys(_COUNTS, 0), "hist": {}, "cpu_s": 0.0}
    )
    summaries = []
    whole: dict[str, int] = {}
    for record in _jsonl(sorted(out.glob("swarm-*.jsonl"))):
        if record.get("kind") == "swarm_summary":
            summaries.append(record)
            continue
        if record.get("kind") != "swarm":
            continue
        row = per_second[int(record["t"])]
        for key in _COUNTS:
            row[key] += int(record.get(key, 0))
        row["cpu_s"] += float(record.get("cpu_s", 0.0))
        hist = record.get("lat_hist", {})
        row["hist"] = merge_hist(row["hist"], hist)
        whole = merge_hist(whole, hist)
    buys_by_second: dict[int, Counter[str]] = defaultdict(Counter)
    answers = list(_jsonl(sorted(out.glob("buys*.jsonl"))))
    for answer in answers:
        buys_by_second[int(float(answer.get("t", 0)))][str(answer.get("status"))] += 1
    for t in sorted(set(per_second) | set(buys_by_second)):
        row = per_second[t]
        hist = row.pop("hist")
        report.seconds.append(
            {
                "t": t,
                **{k: v for k, v in row.items() if k != "cpu_s"},
                "swarm_cpu_s": round(row["cpu_s"], 3),
                "p50_ms": _ms(hist_percentile(hist, 50)),
                "p99_ms": _ms(hist_percentile(hist, 99)),
                "max_ms": _ms(hist_percentile(hist, 100)),
                "buys": dict(buys_by_second.get(t, {})),
            }
        )
    events = sum(s["events"] for s in report.seconds)
    lost = sum(s["lost"] for s in report.seconds)
    report.totals = {
        "events": events,
        "sampled_events": sum(s["sampled_events"] for s in report.seconds),
        "lost": lost,
        "dups": sum(s["dups"] for s in report.seconds),
        "resyncs": sum(s["resyncs"] for s in report.seconds),
        "reconnects": sum(s["reconnects"] for s in report.seconds),
        "peak_connections": max((s["connections"] for s in report.seconds), default=0),
        "latency_samples": sum(whole.values()),
        "p50_ms": _ms(hist_percentile(whole, 50)),
        "p99_ms": _ms(hist_percentile(whole, 99)),
        "max_ms": _ms(hist_percentile(whole, 100)),
        "swarm_cpu_s": round(sum(float(s.get("cpu_s", 0.0)) for s in summaries), 2),
        "swarm_rss_kb": sum(int(s.get("rss_kb", 0)) for s in summaries),
        "buy_answers": dict(Counter(str(a.get("status")) for a in answers)),
    }
    report.totals.update(_costs(report.totals, out / "engine.json"))
    report.locust = [
        row for row in _csv(out / "locust_stats.csv") if row.get("Name") != "Aggregated"
    ]
    host_path = out / "host.jsonl"
    report.host = list(_jsonl([host_path])) if host_path.exists() else []
    replay_path = out / "replay.json"
    if scenario.trace is not None and replay_path.exists():
        report.replay = json.loads(replay_path.read_text(encoding="utf-8"))
    sale_path = out / "sale.json"
    if scenario.sale is not None and sale_path.exists():
        sale = json.loads(sale_path.read_text(encoding="utf-8"))
        buyers = scenario.sale.buyers + int((report.replay or {}).get("buyers", 0))
        report.sale = reconcile(sale["state"], sale["orders"], answers, buyers=buyers)
    report.faults = _recoveries(report, scenario)
    report.verdicts = _verdicts(report, scenario)
    return report


def _costs(totals: dict[str, Any], engine_path: Path) -> dict[str, Any]:
    """What a viewer and an event cost the swarm, and (with ``--deploy``) the engine.

    Per connection: resident memory over the peak of connections; per event: CPU over the
    events the viewers received. The engine's figures cover its whole process (its
    interpreter included) and every viewer and Locust user it served.
    """
    peak, events = int(totals["peak_connections"]), int(totals["events"])
    out: dict[str, Any] = {}
    if peak and events:
        out["swarm_kb_per_connection"] = round(totals["swarm_rss_kb"] / peak, 2)
        out["swarm_cpu_us_per_event"] = round(totals["swarm_cpu_s"] / events * 1e6, 3)
        if engine_path.exists():
            engine = json.loads(engine_path.read_text(encoding="utf-8"))
            out["engine_workers"] = engine["workers"]
            out["engine_cpu_s"] = engine["cpu_s"]
            out["engine_kb_per_viewer"] = round(engine["rss_kb"] / peak, 2)
            out["engine_cpu_us_per_event"] = round(engine["cpu_s"] / events * 1e6, 3)
    return out


def _recoveries(report: Report, scenario: Scenario) -> list[dict[str, Any]]:
    """For each fault: when the show was back to normal, and what it cost meanwhile.

    Back to normal: the first second, from the end of the fault (Redis back, the storm
    begun) on, with at least 95% of the viewers connected in the second before the fault
    and at least half the median events/s of the 3 seconds before it. ``recovery_s`` is
    from the fault's start to the end of that second (None: never within the run).
    """
    rows = {s["t"]: s for s in report.seconds}
    out = []
    for fault in scenario.faults:
        start = int(fault.at)
        before = [rows[t] for t in range(start - 3, start) if t in rows]
        down = fault.down if fault.kind in ("kill_redis", "pause_redis") else 0.0
        record: dict[str, Any] = {"kind": fault.kind, "at": fault.at, "down": down}
        if before:
            connected = before[-1]["connections"]
            flow = sorted(r["events"] for r in before)[len(before) // 2]
            back = next(
                (
                    t
                    for t in sorted(rows)
                    if t >= int(fault.at + down)
                    and rows[t]["connections"] >= 0.95 * connected
                    and rows[t]["events"] >= 0.5 * flow
                ),
                None,
            )
            record["recovered_at"] = back
            record["recovery_s"] = None if back is None else round(back + 1 - fault.at, 1)
            span = [rows[t] for t in rows if start <= t <= (back if back is not None else t)]
            for key in ("lost", "dups", "reconnects", "resyncs", "dropped"):
                record[key] = sum(int(r.get(key, 0)) for r in span)
        out.append(record)
    return out


OVER = 5000.0
"""The histograms' last finite bound: a latency past it is reported as ``OVER`` + 1."""


def _ms(value: float | None) -> float | None:
    """A percentile for JSON: the bucket's bound, or just over the last finite one."""
    if value is None or math.isfinite(value):
        return value
    return OVER + 1


def _shown(ms: float) -> str:
    return f"over {OVER:g} ms" if ms > OVER else f"{ms:g} ms (bucket bound)"


def _verdicts(report: Report, scenario: Scenario) -> list[Verdict]:
    slo = scenario.slo
    totals = report.totals
    out = []
    p99 = totals.get("p99_ms")
    out.append(
        Verdict(
            "p99 delivery",
            f"<= {slo.p99_ms:g} ms",
            "no latency sample" if p99 is None else _shown(p99),
            p99 is not None and p99 <= slo.p99_ms,
        )
    )
    # Offsets are checked by the sampled viewers: loss is a share of what they should have got.
    sampled, lost = int(totals.get("sampled_events", 0)), int(totals.get("lost", 0))
    share = lost / (sampled + lost) if sampled + lost else 0.0
    out.append(
        Verdict(
            "loss",
            f"<= {slo.loss:.4%}",
            f"{lost} of {sampled + lost} events sampled ({share:.4%})",
            share <= slo.loss and sampled > 0,
        )
    )
    if scenario.trace is not None:
        replay, target = report.replay, "every replayed viewer connected"
        if replay is None:
            out.append(Verdict("replay", target, "no replay.json", False))
        else:
            failures, played = int(replay["connect_failures"]), int(replay["played_viewers"])
            actions = sum(replay["played"].values())
            measured = (
                f"{played - failures} of {played} viewers connected, {actions} actions played, "
                f"{sum(replay['refused'].values())} refused"
            )
            out.append(Verdict("replay", target, measured, not failures))
    if scenario.sale is not None:
        sale = report.sale
        if sale is None:
            out.append(Verdict("oversell", f"<= {slo.oversell}", "sale not read", False))
            out.append(Verdict("reconciliation", "clean", "sale not read", False))
        else:
            out.append(
                Verdict(
                    "oversell",
                    f"<= {slo.oversell}",
                    f"{sale.oversold} units",
                    sale.oversold <= slo.oversell,
                )
            )
            out.append(
                Verdict(
                    "reconciliation",
                    "clean",
                    "clean" if sale.clean else "; ".join(sale.problems),
                    sale.clean,
                )
            )
    return out


# --- writing ---------------------------------------------------------------------------


def _plot(report: Report, which: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s["t"] for s in report.seconds]
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    if which == "latency":
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
            ax.plot(ts, [s[key] if s[key] is not None else float("nan") for s in report.seconds],
                    label=label)  # fmt: skip
        ax.set_ylabel("delivery latency, ms")
        ax.set_title(f"{report.scenario}: delivery latency per second")
    else:
        ax.plot(ts, [s["connections"] for s in report.seconds], label="viewers connected")
        ax.set_ylabel("connections")
        right = ax.twinx()
        right.plot(ts, [s["events"] for s in report.seconds], color="tab:orange",
                   label="events/s received")  # fmt: skip
        right.set_ylabel("events/s")
        ax.set_title(f"{report.scenario}: connections and events per second")
        right.legend(loc="lower right")
    for action in report.host:
        ax.axvline(float(action.get("t", 0)), color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("show time, s")
    ax.legend(loc="upper left")
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in keys) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(report: Report, out: Path) -> Path:
    """Write report.json, the PNG plots and report.html into ``out``; return the HTML path."""
    data = {
        "scenario": report.scenario,
        "passed": report.passed,
        "failed": report.failed(),
        "verdicts": [asdict(v) for v in report.verdicts],
        "totals": report.totals,
        "sale": asdict(report.sale) if report.sale is not None else None,
        "faults": report.faults,
        "replay": report.replay,
        "host": report.host,
        "locust": report.locust,
        "seconds": report.seconds,
    }
    (out / "report.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    images = {}
    for which in ("latency", "connections"):
        png = _plot(report, which)
        (out / f"{which}.png").write_bytes(png)
        images[which] = base64.b64encode(png).decode()
    verdict = "PASS" if report.passed else "FAIL: " + ", ".join(report.failed())
    sale_rows = [asdict(report.sale)] if report.sale is not None else []
    page = f"""<!doctype html>
<html lang="en"><meta charset="utf-8"><title>{html.escape(report.scenario)} load test</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style>
<h1>{html.escape(report.scenario)}: {html.escape(verdict)}</h1>
<h2>SLOs</h2>{_table([asdict(v) for v in report.verdicts], ["slo", "target", "measured", "ok"])}
<h2>Totals</h2>{_table([report.totals], list(report.totals))}
<h2>Sale reconciliation</h2>{_table(sale_rows, ["sale_id", "stock", "sold", "remaining",
    "oversold", "orders", "buyers", "answers", "problems"])}
<img alt="latency" src="data:image/png;base64,{images["latency"]}">
<img alt="connections" src="data:image/png;base64,{images["connections"]}">
<h2>Faults and recovery</h2>{_table(report.faults, ["kind", "at", "down", "recovered_at",
    "recovery_s", "lost", "dups", "reconnects", "resyncs", "dropped"])}
<h2>Trace replay</h2>{_table([report.replay] if report.replay else [], ["recorded_viewers",
    "played_viewers", "connections", "connect_failures", "seconds", "played", "refused",
    "buyers", "buy_answers"])}
<h2>Host actions</h2>{_table(report.host, ["t", "action", "status", "detail"])}
<h2>Locust requests</h2>{_table(report.locust, ["Type", "Name", "Request Count",
    "Failure Count", "Median Response Time", "99%", "Requests/s"])}
<h2>Per second</h2>{_table(report.seconds, ["t", "connections", "connections_min", "events",
    "lost", "resyncs", "reconnects", "dropped", "p50_ms", "p99_ms", "max_ms", "buys"])}
</html>
"""  # fmt: skip
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
