"""``python -m bench``: simulated clients against the service, and the figures that matter.

Examples:
    python -m bench                                  # Redis and SQLite, N=1000, every scenario
    python -m bench --store redis --clients 100,1000,3000 --chart docs/bench.png
    python -m bench --url http://127.0.0.1:1337 --service-pid 1234   # a running service
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.environment import AuthStub, Environment, NodeReference, Target, raise_fd_limit
from bench.official_client import OfficialClients
from bench.report import markdown, save_chart, save_json, table
from bench.scenarios import Bench, Result

SCENARIOS = ["connect", "fanout", "direct", "bulk", "reconnect", "churn"]  # the default run
ON_REQUEST = ["idle"]  # a minute each: run when named
PLAIN_SCENARIOS = ["connect", "fanout", "direct"]  # what a site without user rooms does


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store", choices=["redis", "redis-cluster", "sqlite", "both"], default="both"
    )
    parser.add_argument("--clients", default="1000", help="N, or a comma-separated list")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS + ON_REQUEST)} (default: all but "
        "idle: the clients connected and quiet for a minute, the service's CPU for them)",
    )
    parser.add_argument("--url", help="benchmark a running service instead of starting one")
    parser.add_argument("--service-pid", type=int, help="with --url: for the CPU figures")
    parser.add_argument("--redis-pid", type=int, help="with --url: for the Redis CPU figures")
    parser.add_argument(
        "--auth-port",
        type=int,
        help="with --url: serve the stub site's authUrl, http://127.0.0.1:PORT/auth, for a "
        "service started by hand (the original, say: docs/benchmarks.md)",
    )
    parser.add_argument("--out", default="bench/results", help="folder for the JSON file")
    parser.add_argument("--chart", help="write the PNG chart here (needs matplotlib)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--client",
        choices=["eio4", "eio3", "both", "node4", "node2"],
        default="eio4",
        help="simulated clients: Engine.IO v4 (socket.io-client 3/4), v3 (1.x/2.x), or both; "
        "or the official socket.io-client under Node: node4 (4.x), node2 (2.x)",
    )
    parser.add_argument(
        "--sqlite-synchronous",
        default="NORMAL",
        choices=["FULL", "NORMAL"],
        help="SQLite durability: FULL survives a power loss, NORMAL a crash of the process",
    )
    parser.add_argument(
        "--polling-first",
        action="store_true",
        help="with --client node4|node2: each socket starts on HTTP long-polling and upgrades "
        "to a websocket, as socket.io-client does unless given transports: ['websocket']",
    )
    parser.add_argument(
        "--log-level",
        default="warn",
        choices=["warn", "info"],
        help="the service's log level: warn writes a line per fault only; info, the "
        "default a deployment runs, also one per connect, disconnect and send, as the "
        "original always does (compare with it at info: docs/benchmarks.md)",
    )
    parser.add_argument(
        "--reference",
        choices=["node"],
        help="instead: a plain site (no store) on this service beside socket.io 4 on Node "
        "with the same contract (bench/node_reference), scenarios connect, fanout, direct",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count the instructions the service executes per connect, delivery or "
        "reconnect, under valgrind's callgrind: the same count for the same code, where CPU "
        "seconds move from run to run (about fifty times slower: use a few hundred clients)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each size K times on a fresh service; report the median run",
    )
    return parser.parse_args()


async def run_one(
    target: Target,
    store: str,
    n: int,
    scenarios: list[str],
    protocol: int = 4,
    site: str = "shop",
    official: str | None = None,
    polling_first: bool = False,
) -> list[Result]:
    """``official``: "4" or "2", the official socket.io-client of that major version;
    ``polling_first``: its sockets start on long-polling and upgrade, as by default."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        pool = None
        if official is not None:
            prefix = f"n{random.randrange(16**6):06x}u"
            pool = await OfficialClients.start(target.url, site, prefix, n, official, polling_first)
        bench = Bench(target, store, n, http, protocol, site, official=pool)
        results = [await bench.connect()]
        for name in scenarios:
            if name != "connect":
                results.append(await getattr(bench, name)())
        await bench.close()
    if "connect" not in scenarios:
        results = results[1:]
    if protocol == 3:
        for result in results:
            result.scenario += " eio3"
    if official is not None:
        for result in results:
            result.scenario += f" js{official}" + (" poll" if polling_first else "")
    return results


async def run_reference(
    n: int,
    scenarios: list[str],
    store: str,
    repeat: int,
    every_run: list[dict[str, Any]],
    official: str | None = None,
) -> list[dict[str, Any]]:
    """A plain site of this service ("plain"), then socket.io 4 on Node ("node"), alike."""
    rows = []
    for kind in ("plain", "node"):
        runs = []
        for attempt in range(repeat):
            print(f"{kind} site, N={n}, run {attempt + 1}/{repeat}")
            environment: Environment | NodeReference = (
                Environment(store) if kind == "plain" else NodeReference()
            )
            target = await environment.start()
            try:
                results = await run_one(target, kind, n, scenarios, site="news", official=official)
            finally:
                await environment.stop()
            runs.append([result.figures() for result in results])
            every_run.extend(runs[-1])
        rows.extend(median_runs(runs))
    return rows


def median_runs(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """For each scenario, the run whose server CPU figure is the median of the runs: on a
    noisy machine one run can be off by half; the median of three rarely is."""
    picked = []
    for index in range(len(runs[0])):
        candidates = sorted(
            (run[index] for run in runs), key=lambda row: row["service_cpu_per_1000"] or 0
        )
        row = dict(candidates[len(candidates) // 2])
        # Correctness is never a median: report the worst run.
        for key in ("lost", "doubled", "out_of_order"):
            row[key] = max(run[index][key] for run in runs)
        picked.append(row)
    return picked


@contextlib.asynccontextmanager
async def _target(args: argparse.Namespace, store: str) -> AsyncIterator[Target]:
    """The service to measure: the one at ``--url`` (with the stub site on ``--auth-port``
    if asked), or one started for ``store`` and stopped afterwards."""
    if args.url:
        auth = AuthStub(args.auth_port) if args.auth_port else None
        if auth is not None:
            await auth.start()
        try:
            yield Target(args.url, args.service_pid, args.redis_pid)
        finally:
            if auth is not None:
                await auth.stop()
        return
    environment = Environment(
        store,
        sqlite_synchronous=args.sqlite_synchronous,
        log_level=args.log_level,
        instructions=args.instructions,
    )
    target = await environment.start()
    try:
        yield target
    finally:
        await environment.stop()


async def main() -> None:
    args = parse_args()
    limit = raise_fd_limit()
    sizes = [int(part) for part in args.clients.split(",")]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS + ON_REQUEST)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if max(sizes) + 200 > limit:
        raise SystemExit(f"N={max(sizes)} needs more than {max(sizes)} descriptors; limit {limit}")
    rows: list[dict[str, Any]] = []
    stores = ["redis", "sqlite"] if args.store == "both" else [args.store]
    every_run: list[dict[str, Any]] = []
    protocols = {"eio4": [4], "eio3": [3], "both": [4, 3], "node4": [4], "node2": [3]}[args.client]
    official = {"node4": "4", "node2": "2"}.get(args.client)
    if args.polling_first and official is None:
        raise SystemExit("--polling-first: only with --client node4 or node2")
    if args.instructions and (args.url or args.reference):
        raise SystemExit("--instructions: only for a service the bench starts (no --url)")
    if args.reference:
        why_not = NodeReference.unavailable()
        if why_not is not None:
            raise SystemExit(f"--reference node: skipped: {why_not}")
        plain = [s for s in scenarios if s in PLAIN_SCENARIOS] or PLAIN_SCENARIOS
        for n in sizes:
            rows += await run_reference(
                n, plain, stores[-1], args.repeat, every_run, official=official
            )
        stores = []
    for store, protocol in [(store, protocol) for store in stores for protocol in protocols]:
        for n in sizes:
            runs: list[list[dict[str, Any]]] = []
            for attempt in range(args.repeat):
                print(
                    f"{store}, N={n}, Engine.IO v{protocol}"
                    + (f", socket.io-client {official}.x" if official else "")
                    + (f", run {attempt + 1}/{args.repeat}" if args.repeat > 1 else "")
                )
                async with _target(args, store) as target:
                    results = await run_one(
                        target,
                        store,
                        n,
                        scenarios,
                        protocol,
                        official=official,
                        polling_first=args.polling_first,
                    )
                runs.append([result.figures() for result in results])
                every_run.extend(runs[-1])
            rows.extend(median_runs(runs))
    print()
    print(table(rows))
    if args.markdown:
        print()
        print(markdown(rows))
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.platform(),
        "cores": __import__("os").cpu_count(),
        "python": platform.python_version(),
    }
    out = Path(args.out) / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta["runs_per_row"] = args.repeat
    if not args.url and not args.reference:
        meta["log_level"] = args.log_level  # of the service the bench started
        meta["instructions"] = args.instructions  # its CPU figures then are valgrind's
    if official is not None:
        meta["transports"] = "polling, then websocket" if args.polling_first else "websocket"
    save_json(rows, meta, out, every_run)
    print(f"\nJSON: {out}")
    if args.chart:
        print(
            f"chart: {args.chart}"
            if save_chart(rows, Path(args.chart))
            else "chart: skipped (pip install matplotlib)"
        )


if __name__ == "__main__":
    asyncio.run(main())
