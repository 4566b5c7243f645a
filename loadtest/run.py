"""Run a show scenario against a liveroom deployment and judge it.

``python -m loadtest.run --scenario smoke --url ws://127.0.0.1:8765/ --service
http://127.0.0.1:8766 --out DIR`` does, from one absolute start time a few seconds ahead:

* the audience: ``--swarms N`` viewer-swarm processes (:mod:`loadtest.swarm`), each a slice
  of the scenario's viewers;
* the active users: a headless Locust run (:mod:`loadtest.locustfile`), local or with
  ``--locust-workers N`` workers under a master, following the scenario's shape;
* the host: the scenario's pins and its flash sale through the service API, on time
  (recorded in ``host.jsonl``);
* a recorded trace, when the scenario has one: :mod:`loadtest.replay` plays it into the
  room from ``trace.at``, its buys in the scenario's sale (``replay.json``,
  ``buys.replay.jsonl``);

(``--scale F`` runs the same show with F times the people and stock; the scenario as run
is written to ``scenario.toml`` in the output directory, and every tool reads that file)

then reads the sale's state and orders back (``sale.json``), builds the report
(:mod:`loadtest.report`: ``report.json``, plots, ``report.html``) and exits 0 when every
SLO held, 1 naming the failed ones, 2 on a usage or scenario error. Every process it
starts is stopped by its PID, and the whole run is bounded by the scenario's duration
plus a grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from loadtest.deploy import DeployError, LocalDeployment
from loadtest.report import build_report, write_report
from loadtest.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["main", "run", "sale_body"]

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
GRACE = 30.0  # seconds after the show's end before stragglers are killed


def sale_body(scenario: Scenario) -> dict[str, Any]:
    """The service API's ``POST /v1/sales`` body that opens the scenario's sale."""
    sale = scenario.sale
    if sale is None:
        raise ValueError(f"scenario {scenario.name!r} has no sale")
    return {
        "sale_id": sale.sale_id,
        "room": scenario.room,
        "product_id": sale.product_id,
        "stock": sale.stock,
        "price": sale.price,
        "per_user_limit": sale.per_user_limit,
        "duration": sale.duration,
    }


async def _post(http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> tuple[int, str]:
    """POST, retrying for up to 3 s while the engine answers 404 (a room not held yet, with
    the memory broker) or 503 (its Redis unreachable); the last answer."""
    status, detail = 0, ""
    for _ in range(15):
        try:
            async with http.post(path, json=body) as response:
                status, detail = response.status, (await response.text())[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, detail = 0, f"{type(exc).__name__}: {exc}"
        if status not in (0, 404, 503):
            break
        await asyncio.sleep(0.2)
    return status, detail


async def _host(
    scenario: Scenario,
    service: str,
    api_key: str,
    start_at: float,
    log: Path,
    deployment: LocalDeployment | None,
) -> None:
    """Pin, open the sale and do the faults on the scenario's schedule; every action goes
    to ``log`` (``t`` is when it was done, in show seconds)."""
    actions: list[tuple[float, str, str, dict[str, Any]]] = [
        (
            pin.at,
            "pin",
            f"/v1/rooms/{scenario.room}/pin",
            {"id": pin.id, "title": pin.title, "price": pin.price, "currency": pin.currency},
        )
        for pin in scenario.pins
    ]
    if scenario.sale is not None:
        actions.append((scenario.sale.at, "open_sale", "/v1/sales", sale_body(scenario)))
    for fault in scenario.faults:
        if fault.kind != "drop_viewers":  # the swarm drops its own viewers
            actions.append((fault.at, f"fault:{fault.kind}", "", {"down": fault.down}))
    headers = {"Authorization": f"Bearer {api_key}"}
    timeout = aiohttp.ClientTimeout(total=10)
    pending: list[asyncio.Task[None]] = []

    def write(record: dict[str, Any]) -> None:
        with log.open("a", encoding="utf-8") as fp:
            fp.write(json.dumps(record, ensure_ascii=False) + "\n")

    async def do_fault(kind: str, down: float, at: float) -> None:
        record: dict[str, Any] = {"t": at, "action": f"fault:{kind}"}
        if deployment is None:
            record["status"], record["detail"] = "skipped", "needs --deploy"
        else:
            do = {
                "kill_redis": lambda: deployment.kill_redis(down),
                "pause_redis": lambda: deployment.pause_redis(down),
                "kill_worker": deployment.kill_worker,
            }[kind]
            record["detail"] = await asyncio.to_thread(do)
            record["status"] = "done"
            record["done_t"] = round(time.time() - start_at, 3)
        write(record)

    async with aiohttp.ClientSession(service, headers=headers, timeout=timeout) as http:
        for at, action, path, body in sorted(actions, key=lambda a: a[0]):
            await asyncio.sleep(max(0.0, start_at + at - time.time()))
            now = round(time.time() - start_at, 3)
            if action.startswith("fault:"):  # in the background: the show goes on
                pending.append(asyncio.create_task(do_fault(action[6:], float(body["down"]), now)))
                continue
            status, detail = await _post(http, path, body)
            write({"t": now, "action": action, "status": status, "detail": detail})
        if pending:
            await asyncio.gather(*pending)


async def _read_sale(scenario: Scenario, service: str, api_key: str, out: Path) -> None:
    """The sale's state and every order, as the report reconciles them (``sale.json``)."""
    if scenario.sale is None:
        return
    sale_id = scenario.sale.sale_id
    headers = {"Authorization": f"Bearer {api_key}"}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(service, headers=headers, timeout=timeout) as http:
        async with http.get(f"/v1/sales/{sale_id}") as response:
            if response.status != 200:
                return  # the report says the sale could not be read
            state = await response.json()
        orders: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100_000):  # bounded: pages of 1,000
            params = {"limit": "1000", **({"after": cursor} if cursor else {})}
            async with http.get(f"/v1/sales/{sale_id}/orders", params=params) as response:
                page = await response.json()
            orders.extend(page["orders"])
            cursor = page.get("next")
            if not cursor:
                break
    (out / "sale.json").write_text(json.dumps({"state": state, "orders": orders}) + "\n")


async def _spawn(argv: Sequence[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=err, stderr=asyncio.subprocess.STDOUT
        )


async def run(
    scenario: Scenario,
    *,
    source: str,
    url: str,
    service: str,
    api_key: str,
    secret: str,
    out: Path,
    swarms: int = 1,
    locust_workers: int = 0,
    start_in: float = 3.0,
    deployment: LocalDeployment | None = None,
) -> int:
    """Run ``scenario`` (read from ``source``) and write its report into ``out``.

    Returns:
        0 when every SLO held, 1 otherwise.
    """
    start_at = time.time() + start_in
    env = {
        **os.environ,
        "LIVEROOM_SCENARIO": source,
        "LIVEROOM_URL": url,
        "LIVEROOM_AUTH_SECRET": secret,
        "LIVEROOM_START_AT": repr(start_at),
        "LIVEROOM_BUYS_OUT": str(out / "buys.jsonl"),
    }
    py = sys.executable
    procs: list[asyncio.subprocess.Process] = []
    try:
        for i in range(swarms):
            argv = [py, "-m", "loadtest.swarm", "--scenario", source, "--url", url,
                    "--secret", secret, "--start-at", repr(start_at), "--slice", f"{i}/{swarms}",
                    "--out", str(out / f"swarm-{i}.jsonl"),
                    "--progress" if i == 0 else "--no-progress"]  # fmt: skip
            procs.append(await _spawn(argv, env, out / f"swarm-{i}.log"))
        if scenario.trace is not None:
            trace = scenario.trace
            argv = [py, "-m", "loadtest.replay", "--room", scenario.room, "--url", url,
                    "--secret", secret, "--viewers", repr(trace.viewers),
                    "--time", repr(trace.speed), "--start-at", repr(start_at + trace.at),
                    "--buys-out", str(out / "buys.replay.jsonl"),
                    "--out", str(out / "replay.json")]  # fmt: skip
            argv += [a for f in trace.files for a in ("--trace", f)]
            argv += ["--sale", scenario.sale.sale_id] if scenario.sale is not None else []
            procs.append(await _spawn(argv, env, out / "replay.log"))
        locust = [py, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                  "--csv", str(out / "locust"), "--csv-full-history",
                  "--html", str(out / "locust.html"), "--loglevel", "WARNING"]  # fmt: skip
        if not scenario.active_users:
            pass  # a trace's replay may be the only active part of the show
        elif locust_workers:
            master = [*locust, "--master", "--expect-workers", str(locust_workers)]
            master += ["--master-bind-host", "127.0.0.1"]
            procs.append(await _spawn(master, env, out / "locust-master.log"))
            worker = [py, "-m", "locust", "-f", str(LOCUSTFILE), "--worker"]
            worker += ["--master-host", "127.0.0.1"]
            for i in range(locust_workers):
                procs.append(await _spawn(worker, env, out / f"locust-worker-{i}.log"))
        else:
            procs.append(await _spawn(locust, env, out / "locust.log"))
        host = asyncio.create_task(
            _host(scenario, service, api_key, start_at, out / "host.jsonl", deployment)
        )
        deadline = start_at + scenario.duration + GRACE
        waits = [asyncio.create_task(p.wait()) for p in procs]
        await asyncio.wait(waits, timeout=max(1.0, deadline - time.time()))
        await host
        if deployment is not None:  # the engine's cost, beside the load tools' own
            (out / "engine.json").write_text(json.dumps(deployment.usage()) + "\n")
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    await _read_sale(scenario, service, api_key, out)
    report = build_report(out, scenario)
    page = write_report(report, out)
    for verdict in report.verdicts:
        mark = "ok  " if verdict.ok else "FAIL"
        print(f"{mark} {verdict.slo}: {verdict.measured} (target {verdict.target})")
    if report.passed:
        print(f"PASS: {scenario.name}; report {page}")
        return 0
    print(f"FAIL: {scenario.name}: {', '.join(report.failed())}; report {page}")
    return 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--scenario", required=True, help="a name in loadtest/scenarios or a path")
    parser.add_argument("--url", help="the engine's websocket URL (ws://…/)")
    parser.add_argument("--service", help="the engine's service API (http://…)")
    parser.add_argument(
        "--deploy",
        type=int,
        default=0,
        metavar="WORKERS",
        help="start Redis and `liveroom serve --workers WORKERS` here for the run (faults "
        "on Redis and workers need it); --url, --service, --secret, --api-key not needed",
    )
    parser.add_argument("--api-key", default=os.environ.get("LIVEROOM_SERVICE_API_KEY", ""))
    parser.add_argument("--secret", default=os.environ.get("LIVEROOM_AUTH_SECRET", ""))
    parser.add_argument("--out", type=Path, required=True, help="directory for outputs and report")
    parser.add_argument("--swarms", type=int, default=1, help="viewer-swarm processes")
    parser.add_argument("--locust-workers", type=int, default=0, help="0: one local Locust")
    parser.add_argument("--start-in", type=float, default=3.0, help="seconds before the show")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="people and stock x this (0.01: a 1/100 rehearsal)"
    )
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not args.deploy and not (args.url and args.service and args.secret and args.api_key):
        print("loadtest: --url, --service, --secret and --api-key (or LIVEROOM_AUTH_SECRET "
              "and LIVEROOM_SERVICE_API_KEY) are needed, or --deploy", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    if args.swarms < 1 or args.locust_workers < 0:
        parser.error("--swarms must be >= 1 and --locust-workers >= 0")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scale != 1.0:
        scenario = scenario.scaled(args.scale)
    # The tools read this file: the scenario as run (scaled), kept with the results.
    effective = args.out / "scenario.toml"
    effective.write_text(scenario.to_toml(), encoding="utf-8")
    deployment = None
    if args.deploy:
        deployment = LocalDeployment(args.out / "deploy", args.deploy)
        try:
            deployment.start()
        except DeployError as exc:
            deployment.stop()
            print(f"loadtest: cannot deploy: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        args.url, args.service = deployment.url, deployment.service
        args.secret, args.api_key = deployment.secret, deployment.api_key
    try:
        code = asyncio.run(
            run(
                scenario,
                source=str(effective),
                url=args.url,
                service=args.service,
                api_key=args.api_key,
                secret=args.secret,
                out=args.out,
                swarms=args.swarms,
                locust_workers=args.locust_workers,
                start_in=args.start_in,
                deployment=deployment,
            )
        )
    finally:
        if deployment is not None:
            deployment.stop()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
