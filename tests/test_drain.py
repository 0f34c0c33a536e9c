"""SIGTERM on a node with thousands of clients, as a rolling deploy does it: the node says it
is not ready but keeps serving for ``DRAIN_GRACE``, then closes its sockets spread over
``DRAIN_SPREAD``; the clients reconnect to the other node gradually, and lose nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bench.environment import raise_fd_limit
from bench.scenarios import gather_limited
from bench.sim_client import SimClient
from testkit.processes import ServiceProcess, write_sites
from tests.harness import SiteStub, post_send

CLIENTS = 5000
GRACE, SPREAD = 1.0, 4.0
WINDOW = 0.5  # seconds: the other node's connects are counted per window


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def receipts_of(client: SimClient, messages: set[int]) -> None:
    arrived = asyncio.Event()
    client.on_receipt = lambda _client: arrived.set()
    while not messages <= {r.message_id for r in client.receipts}:
        await asyncio.wait_for(arrived.wait(), 20)
        arrived.clear()


async def test_sigterm_closes_sockets_spread_out_and_loses_nothing(
    tmp_path: Path, stub: SiteStub, redis_url: str, http: aiohttp.ClientSession
) -> None:
    assert raise_fd_limit() >= 3 * CLIENTS, "the test needs a descriptor per socket"
    sites = write_sites(tmp_path, f"{stub.url}/auth")
    env = {"REDIS_URL": redis_url, "DRAIN_GRACE": str(GRACE), "DRAIN_SPREAD": str(SPREAD)}
    leaving, staying = (
        ServiceProcess(tmp_path, sites, **env),
        ServiceProcess(tmp_path, sites, **env),
    )
    await asyncio.gather(leaving.start(), staying.start())
    try:
        for i in range(CLIENTS):
            stub.answers[f"t{i}"] = [f"user_{i}"]
        clients = [SimClient(leaving.url, "shop", f"t{i}", "phone") for i in range(CLIENTS)]
        await gather_limited([lambda c=c: c.connect(http) for c in clients], 100)  # type: ignore[misc]
        closed_at: list[float] = []  # when each client reconnects: the other node's arrivals

        async def follow(client: SimClient) -> None:
            """As socket.io-client does when the server closes it: reconnect (the load
            balancer now sends it to the other node)."""
            await client.closed.wait()
            closed_at.append(time.perf_counter())
            client.base_url = staying.url
            await client.connect(http)

        followers = [asyncio.create_task(follow(c)) for c in clients]
        answered: dict[int, set[int]] = {}

        async def send(message: int) -> None:
            """To the leaving node while it takes sends, then to the other, as a balancer."""
            user = message * 7 % CLIENTS
            for node in (leaving, staying):
                try:
                    status, _ = await post_send(
                        http, node.url, "shop", f"user_{user}", "m", message
                    )
                except aiohttp.ClientError:
                    continue
                if status == 200:
                    answered.setdefault(user, set()).add(message)
                    return

        leaving.signal(signal.SIGTERM)
        signalled = time.perf_counter()
        # Not ready at once, yet still serving: a client arriving in the grace connects.
        await leaving.wait_health(503)  # /healthcheck and /readyz
        assert await status_of(http, f"{leaving.url}/livez") == 200
        late = SimClient(leaving.url, "shop", "t0", "tablet")
        await late.connect(http)
        assert not closed_at, "no socket closed during the grace"
        followers.append(asyncio.create_task(follow(late)))
        sending = [asyncio.create_task(send(m)) for m in range(300)]
        assert await leaving.wait(timeout=GRACE + SPREAD + 20) == 0
        await asyncio.gather(*sending)
        await asyncio.wait_for(asyncio.gather(*followers), 60)

        # Gradual: the reconnects span the spread, no window takes much more than its share,
        # and none came before the grace was over.
        first, last = min(closed_at), max(closed_at)
        assert first - signalled >= GRACE
        assert last - first >= SPREAD * 0.75, (first, last)
        windows: dict[int, int] = {}
        for at in closed_at:
            windows[int((at - first) / WINDOW)] = windows.get(int((at - first) / WINDOW), 0) + 1
        fair_share = (CLIENTS + 1) * WINDOW / SPREAD
        assert max(windows.values()) <= 2 * fair_share, windows

        # Nothing lost: every answered send reached its user's phone, live or in a _batch.
        assert sum(len(m) for m in answered.values()) == 300
        for user, messages in answered.items():
            await receipts_of(clients[user], messages)
        await gather_limited([lambda c=c: c.close() for c in [*clients, late]], 200)  # type: ignore[misc]
    finally:
        await asyncio.gather(leaving.stop(), staying.stop())
