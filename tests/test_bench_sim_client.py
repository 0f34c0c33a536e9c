"""The benchmark's simulated client speaks the protocol as python-socketio's own client does:
both, side by side, against the real service on both stores."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bench.sim_client import ConnectRefused, SimClient
from tests.harness import Harness
from tests.test_delivery import wait_for_empty_queue


async def until_received(client: SimClient, count: int) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while len(client.receipts) < count:
        assert asyncio.get_running_loop().time() < deadline, client.receipts
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("protocol", [4, 3])
async def test_sim_client_matches_the_python_socketio_client(
    harness: Harness, protocol: int
) -> None:
    await harness.start()
    harness.stub.default_rooms = None
    harness.stub.answers.update({"sim": ["user_sim", "staff"], "real": ["user_real", "staff"]})
    async with aiohttp.ClientSession() as http:
        sim = SimClient(harness.url, "shop", "sim", "d1", protocol=protocol)
        await sim.connect(http)  # returns once _settings arrived, as the harness's connect
        real = await harness.connect("shop", "real", "d1")

        assert (await harness.send("shop", "staff", "m", 1))[0] == 200
        await until_received(sim, 1)
        received = await real.next()
        assert (received.event, received.args) == ("m", [1])
        assert [(r.message_id, r.in_batch) for r in sim.receipts] == [(1, False)]
        await wait_for_empty_queue(harness, "user_sim", "d1")  # the sim client's ack worked

        await sim.close()
        await harness.send("shop", "staff", "m", 2)
        await harness.send("shop", "staff", "m", 3)
        await sim.connect(http)
        await until_received(sim, 3)
        assert [(r.message_id, r.in_batch) for r in sim.receipts[1:]] == [(2, True), (3, True)]
        await wait_for_empty_queue(harness, "user_sim", "d1")  # and its _batch ack
        await sim.close()


async def test_sim_client_sees_a_refused_connect(harness: Harness) -> None:
    await harness.start()
    async with aiohttp.ClientSession() as http:
        sim = SimClient(harness.url, "shop", "nobody", "d1")
        try:
            await sim.connect(http)
        except ConnectRefused as exc:
            assert "Authentication failed" in str(exc)
        else:
            raise AssertionError("connect was accepted")


@pytest.mark.parametrize("polling_first", [False, True], ids=["websocket", "polling-first"])
@pytest.mark.parametrize("version", ["4", "2"])
async def test_the_bench_drives_the_official_client_as_it_drives_its_own(
    harness: Harness, version: str, polling_first: bool
) -> None:
    """``--client node4|node2``: the official socket.io-client under Node behind the same
    interface: greeted, live, acked (the queue empties), away and back with a _batch; on a
    websocket from the start, or (``--polling-first``) upgraded to one from long-polling."""
    from bench.official_client import OfficialClients

    await harness.start()
    harness.stub.answers.update({"js0": ["user_js0", "staff"], "js1": ["user_js1", "staff"]})
    pool = await OfficialClients.start(harness.url, "shop", "js", 2, version, polling_first)
    try:
        async with aiohttp.ClientSession() as http:
            first, second = pool.clients
            for client in pool.clients:
                await client.connect(http)
            assert (await harness.send("shop", "staff", "m", 1))[0] == 200
            await until_received(first, 1)
            await until_received(second, 1)
            await wait_for_empty_queue(harness, "user_js0", "d")
            await first.close()
            await harness.send("shop", "staff", "m", 2)
            await first.connect(http)
            await until_received(first, 2)
            assert [(r.message_id, r.in_batch) for r in first.receipts] == [(1, False), (2, True)]
            await wait_for_empty_queue(harness, "user_js0", "d")
            nobody = pool.clients[1]
            await nobody.close()
            harness.stub.answers.pop("js1")
            with pytest.raises(ConnectRefused, match="Authentication failed"):
                await nobody.connect(http)
    finally:
        await pool.stop()
