"""``python -m bench --scenarios idle``: the service's CPU for connected, quiet clients, per
connection-minute; a client that drops meanwhile is counted as lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from bench.environment import Environment
from bench.scenarios import Bench


async def test_the_idle_scenario_measures_quiet_clients_and_counts_a_dropped_one(
    tmp_path: Path,
) -> None:
    environment = Environment("sqlite", workdir=tmp_path)
    target = await environment.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            bench = Bench(target, "sqlite", 120, http)
            await bench.connect()
            idle = asyncio.create_task(bench.idle(seconds=1.5))
            await asyncio.sleep(0.5)  # within the window: one client leaves
            await bench.clients[0].close()
            figures = (await idle).figures()
            await bench.close()
    finally:
        await environment.stop()
    assert (figures["scenario"], figures["unit"]) == ("idle", "connection-minutes")
    assert figures["operations"] == 3  # 120 clients for 1.5 s
    assert figures["lost"] == 1
    assert figures["service_cpu_per_1000"] is not None
