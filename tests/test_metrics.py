"""/metrics counts what users did: connections, sends, stored, delivered, acked, per node."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.sim_client import SimClient
from socketio_webservice.webservice.service import Service
from testkit.processes import ServiceProcess, free_port, write_sites
from tests.harness import Harness, SiteStub, connect, post_send

PREFIX = "socketio_webservice_"


async def scrape(
    http: aiohttp.ClientSession, url: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, by name and labels."""
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((PREFIX + name, frozenset(labels.items())), 0.0)


async def test_metrics_count_connections_sends_deliveries_and_acks(harness: Harness) -> None:
    service = await harness.start()
    node = service.node_id
    assert harness.http is not None
    harness.stub.answers.update(alice=["user_alice", "staff"], bob=["room"], carol=["user_carol"])
    before = await scrape(harness.http, harness.url)
    assert value(before, "connections", site="shop", node=node) == 0

    phone = await harness.connect("shop", "alice", "phone")
    laptop = await harness.connect("shop", "alice", "laptop")
    reader = await harness.connect("news", "bob")
    carol = await harness.connect("shop", "carol", "tablet", auto_ack=False)
    await carol.disconnect()

    assert await harness.send("shop", ["user_alice", "user_carol"], "n", 1) == (200, "OK")
    assert await harness.send("shop", "user_alice", "n", 2) == (200, "OK")
    for device in (phone, laptop):  # acked as they arrive
        assert [(await device.next()).args[0] for _ in range(2)] == [1, 2]
    assert (await harness.send("shop", "user_alice", "_batch"))[0] == 400
    assert (await harness.post("site=shop&apiKey=wrong", json={}))[0] == 401
    assert await harness.send("news", "room", "headline") == (200, "OK")
    assert (await reader.next()).event == "headline"

    # carol reconnects and gets her message in a _batch
    carol = await harness.connect("shop", "carol", "tablet")
    batch = await carol.next()
    assert batch.event == "_batch"

    samples = await scrape(harness.http, harness.url)
    assert value(samples, "connections", site="shop", node=node) == 3
    assert value(samples, "connections", site="news", node=node) == 1
    assert value(samples, "users", site="shop", node=node) == 2
    assert value(samples, "sends_total", site="shop", status="200") == 2
    assert value(samples, "sends_total", site="shop", status="400") == 1
    assert value(samples, "sends_total", site="shop", status="401") == 1
    assert value(samples, "sends_total", site="news", status="200") == 1
    assert value(samples, "messages_stored_total", site="shop") == 5  # 2 + 1 copies, then 2
    assert value(samples, "messages_delivered_total", site="shop", node=node, how="live") == 4
    assert value(samples, "messages_delivered_total", site="shop", node=node, how="batch") == 1
    assert value(samples, "auth_answers_total", site="shop", answer="ok") == 4
    assert value(samples, "store_operation_seconds_count", operation="enqueue") >= 1
    assert value(samples, "nodes_alive") == 1
    assert value(samples, "store_healthy") == 1
    assert (PREFIX + "event_loop_lag_seconds", frozenset()) in samples
    assert ("process_resident_memory_bytes", frozenset()) in samples

    await asyncio.wait_for(_acked(harness, node, 4 + 1), 5)  # acks are written in the background


async def _acked(harness: Harness, node: str, count: int) -> None:
    """An ack is counted when the service reads it, which no event tells the client."""
    assert harness.http is not None
    while True:
        samples = await scrape(harness.http, harness.url)
        if value(samples, "messages_acked_total", site="shop", node=node) >= count:
            return
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("store_kind", ["redis"])  # several nodes share a Redis
async def test_two_nodes_count_their_own_sockets_and_the_signals_between_them(
    harness: Harness,
) -> None:
    first = await harness.start()
    second = Service(dataclasses.replace(first.config, port=free_port()))
    await second.start()
    try:
        url_b = f"http://127.0.0.1:{second.config.port}"
        harness.stub.answers["alice"] = ["user_alice"]
        client = await connect(url_b, "shop", "alice", "phone")
        assert harness.http is not None
        assert await post_send(harness.http, harness.url, "shop", "user_alice", "n", 1) == (
            200,
            "OK",
        )
        assert (await client.next()).args == [1]
        on_a = await scrape(harness.http, harness.url)
        on_b = await scrape(harness.http, url_b)
        assert value(on_a, "connections", site="shop", node=first.node_id) == 0
        assert value(on_b, "connections", site="shop", node=second.node_id) == 1
        assert value(on_a, "node_signals_total", kind="sent") == 1
        assert value(on_b, "node_signals_total", kind="received") == 1
        assert (
            value(on_b, "messages_delivered_total", site="shop", node=second.node_id, how="live")
            == 1
        )
        assert value(on_a, "nodes_alive") == 2
        await client.disconnect()
    finally:
        await second.stop()


async def test_latency_histograms_sessions_disconnects_and_build_info(
    tmp_path: Path, stub: SiteStub
) -> None:
    """What the usual dashboards ask: p99s (histograms with buckets), who is connected how,
    why sessions end, which build runs; under a node name that survives a restart."""
    node = ServiceProcess(
        tmp_path,
        write_sites(tmp_path, f"{stub.url}/auth"),
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        NODE_NAME="push-1",
    )
    await node.start()
    stub.answers.update(t1=["user_1"], t2=["user_2"], t3=["user_3"])
    try:
        async with aiohttp.ClientSession() as http:
            modern = await connect(node.url, "shop", "t1", "phone")  # Engine.IO 4, websocket
            legacy = SimClient(node.url, "shop", "t2", "phone", protocol=3)  # 2.x's protocol
            await legacy.connect(http)
            leaving = await connect(node.url, "shop", "t3", "phone")
            await leaving.disconnect()
            for n in range(3):
                assert await post_send(http, node.url, "shop", "user_1", "n", n) == (200, "OK")
                assert (await modern.next()).args == [n]  # acked as it arrives
            samples = await scrape(http, node.url)
            sessions = {
                (dict(labels)["protocol"], dict(labels)["transport"]): count
                for (name, labels), count in samples.items()
                if name == PREFIX + "sessions"
            }
            assert sessions == {("3", "websocket"): 1, ("4", "websocket"): 1}
            ended = [
                dict(labels)["reason"]
                for (name, labels), count in samples.items()
                if name == PREFIX + "disconnects_total" and count == 1
            ]
            assert ended == ["transport close"]  # python-socketio's client closes so
            assert value(samples, "send_seconds_count", site="shop") == 3
            assert value(samples, "send_seconds_bucket", site="shop", le="+Inf") == 3
            assert value(samples, "auth_request_seconds_count", site="shop") == 3
            assert value(samples, "store_operation_seconds_bucket", operation="enqueue", le="10.0")
            (build,) = [labels for name, labels in samples if name == PREFIX + "build_info"]
            assert dict(build)["node"] == "push-1" and dict(build)["version"]
            assert value(samples, "connections", site="shop", node="push-1") == 2
            while value(samples, "delivery_latency_seconds_count", site="shop", node="push-1") < 3:
                samples = await scrape(http, node.url)  # acks are read in the background
            latency = value(samples, "delivery_latency_seconds_sum", site="shop", node="push-1")
            assert 0 < latency < 30
            await modern.disconnect()
            await legacy.close()
    finally:
        await node.stop()
