"""Several service processes on one Redis, and the faults a production deployment meets:
a node killed or stopped, Redis going away, a SQLite node killed with SIGKILL."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from socketio_webservice.storage import redis_keys
from socketio_webservice.storage.redis_store import RedisStore
from testkit.processes import (
    RedisClusterSet,
    RedisServer,
    SentinelSet,
    ServiceProcess,
    free_port,
    write_sites,
)
from tests.harness import Client, SiteStub, connect, connect_error, post_send

StartNodes = Callable[..., Awaitable[list[ServiceProcess]]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def start_nodes(tmp_path: Path, stub: SiteStub) -> AsyncIterator[StartNodes]:
    started: list[ServiceProcess] = []
    sites = write_sites(tmp_path, f"{stub.url}/auth")

    async def start(count: int, **env: str) -> list[ServiceProcess]:
        nodes = [ServiceProcess(tmp_path, sites, **env) for _ in range(count)]
        started.extend(nodes)
        await asyncio.gather(*(node.start() for node in nodes))
        return nodes

    yield start
    await asyncio.gather(*(node.stop() for node in started))


@pytest.fixture(params=["redis", "cluster"])
def shared_url(request: pytest.FixtureRequest) -> str:
    """What the nodes share: a single Redis, or a Redis Cluster (three primaries)."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def observer(shared_url: str) -> AsyncIterator[RedisStore]:
    """Reads queues straight from Redis, as a test's window on the store."""
    store = RedisStore(shared_url, device_ttl=3600, node_id="observer")
    yield store
    await store.close()


async def queue_of(store: RedisStore, user: str, device: str) -> list[object]:
    return [m.args[0] if m.args else m.event for m in await store.pending("shop", user, device)]


async def wait_for_queue(
    store: RedisStore, user: str, device: str, expected: list[object], timeout: float = 10
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (queue := await queue_of(store, user, device)) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"queue is {queue}"
        await asyncio.sleep(0.02)


async def numbers_from(client: Client, until: set[int], timeout: float = 15) -> list[int]:
    """Every number the client receives (live or in a _batch) until it has seen ``until``."""
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not until <= set(seen):
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"missing {sorted(until - set(seen))}"
        try:
            received = await asyncio.wait_for(client.events.get(), remaining)
        except TimeoutError:
            continue
        seen.extend(received.numbers())
    return seen


async def test_a_send_on_one_node_reaches_a_device_on_another(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    shared_url: str,
    observer: RedisStore,
) -> None:
    a, b = await start_nodes(2, REDIS_URL=shared_url)
    stub.answers["t1"] = ["user_1", "staff"]
    client = await connect(b.url, "shop", "t1", "phone", auto_ack=False)
    assert await post_send(http, a.url, "shop", "staff", "hello", 1) == (200, "OK")
    received = await client.next()
    assert (received.event, received.args) == ("hello", [1])
    await wait_for_queue(observer, "user_1", "phone", [1])
    await client.ack(received)
    await wait_for_queue(observer, "user_1", "phone", [])
    await client.disconnect()


async def test_a_device_moving_between_nodes_gets_its_batch_once(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    shared_url: str,
) -> None:
    a, b = await start_nodes(2, REDIS_URL=shared_url)
    stub.answers["t1"] = ["user_1"]
    await (await connect(a.url, "shop", "t1", "phone")).disconnect()
    for i in range(3):
        assert (await post_send(http, a.url, "shop", "user_1", "n", i))[0] == 200
    on_b = await connect(b.url, "shop", "t1", "phone")
    batch = await on_b.next()
    assert batch.args == [[["n", 0], ["n", 1], ["n", 2]]]
    await on_b.disconnect()
    back_on_a = await connect(a.url, "shop", "t1", "phone")
    await post_send(http, b.url, "shop", "user_1", "n", 3)
    assert (await back_on_a.next()).args == [3]  # live, and no second _batch before it
    await back_on_a.disconnect()


async def test_plain_broadcasts_reach_sockets_on_every_node(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    shared_url: str,
) -> None:
    a, b = await start_nodes(2, REDIS_URL=shared_url)
    stub.answers.update({"x": ["weather"], "y": ["weather", "sports"]})
    on_a = await connect(a.url, "news", "x")
    on_b = await connect(b.url, "news", "y")
    assert (await post_send(http, a.url, "news", ["weather", "sports"], "headline", "rain"))[
        0
    ] == 200
    for client in (on_a, on_b):
        received = await client.next()
        assert (received.event, received.args) == ("headline", ["rain"])
    await on_b.no_event_within(0.3)
    for client in (on_a, on_b):
        await client.disconnect()


def publishes(url: str) -> int:
    """PUBLISH and SPUBLISH calls Redis served so far, summed over a cluster's primaries."""
    if url.startswith("redis+cluster"):
        client: Any = redis.RedisCluster.from_url(url.replace("redis+cluster", "redis"))
        stats = client.info("commandstats", target_nodes=redis.RedisCluster.PRIMARIES)
        per_node = list(stats.values())
    else:
        client = redis.Redis.from_url(url)
        per_node = [client.info("commandstats")]
    client.close()
    return sum(
        node.get(f"cmdstat_{command}", {}).get("calls", 0)
        for node in per_node
        for command in ("publish", "spublish")
    )


async def test_a_lone_node_publishes_no_plain_send_and_a_new_node_is_told_first(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    shared_url: str,
) -> None:
    """Alone on Redis, a node emits a plain site's sends to its own sockets without
    publishing them; a node that starts is known to it before it takes a connection, so the
    first send after a client joined the new node reaches that client; once the new node is
    gone, the first one stops publishing again."""
    (a,) = await start_nodes(1, REDIS_URL=shared_url)
    stub.answers.update({"x": ["weather"], "y": ["weather"]})
    on_a = await connect(a.url, "news", "x")
    before = await asyncio.to_thread(publishes, shared_url)
    for i in range(20):
        assert (await post_send(http, a.url, "news", "weather", "headline", i))[0] == 200
    assert [(await on_a.next()).args[0] for _ in range(20)] == list(range(20))
    assert await asyncio.to_thread(publishes, shared_url) - before <= 2  # counts, every 5 s

    (b,) = await start_nodes(1, REDIS_URL=shared_url)
    on_b = await connect(b.url, "news", "y")
    assert (await post_send(http, a.url, "news", "weather", "headline", "rain"))[0] == 200
    for client in (on_a, on_b):
        received = await client.next()
        assert (received.event, received.args) == ("headline", ["rain"])

    await on_b.disconnect()
    await b.stop()
    deadline = asyncio.get_running_loop().time() + 15
    while True:  # the next count (within 5 s) finds it alone
        before = await asyncio.to_thread(publishes, shared_url)
        assert (await post_send(http, a.url, "news", "weather", "headline", "sun"))[0] == 200
        assert (await on_a.next()).args == ["sun"]
        if await asyncio.to_thread(publishes, shared_url) == before:
            break
        assert asyncio.get_running_loop().time() < deadline, "still publishing"
        await asyncio.sleep(0.2)
    await on_a.disconnect()


async def test_plain_broadcasts_cross_nodes_again_after_cluster_primaries_die(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """SIGKILL of the cluster node REDIS_URL names and of the primary serving the broadcast
    channel: once their replicas took over and the nodes are healthy, a plain site's send
    reaches the sockets of both nodes again."""
    cluster = RedisClusterSet(tmp_path / "cluster-broadcast")
    cluster.start()
    try:
        a, b = await start_nodes(2, REDIS_URL=cluster.url, REDIS_TIMEOUT="2", NODE_TIMEOUT="30")
        stub.answers.update({"x": ["weather"], "y": ["weather"]})
        on_a = await connect(a.url, "news", "x")
        on_b = await connect(b.url, "news", "y")
        named = next(
            f"k{i}" for i in range(10_000) if cluster.primary_of(f"k{i}") is cluster.servers[0]
        )
        channel = redis_keys.broadcast_channel("sws:")
        for key in (named, channel):
            if cluster.primary_of(key) in cluster.alive():
                await asyncio.to_thread(cluster.kill_primary_of, key)
        await asyncio.gather(a.wait_healthy(), b.wait_healthy())
        assert (await post_send(http, a.url, "news", "weather", "headline", "rain"))[0] == 200
        for client in (on_a, on_b):
            received = await client.next()
            assert (received.event, received.args) == ("headline", ["rain"])
            await client.disconnect()
    finally:
        cluster.stop()


async def test_plain_broadcasts_reach_this_nodes_sockets_while_redis_is_down(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Without Redis a plain site's sends still reach the sockets of the node they came to
    (other nodes' sockets cannot be told), and the failure is logged once, not per send."""
    redis = RedisServer(tmp_path / "redis-down")
    redis.start()
    try:
        (node,) = await start_nodes(1, REDIS_URL=redis.url)
        stub.answers["x"] = ["weather"]
        client = await connect(node.url, "news", "x")
        redis.stop()
        await node.wait_health(503)
        for i in range(20):
            assert (await post_send(http, node.url, "news", "weather", "headline", i))[0] == 200
        assert [(await client.next()).args[0] for _ in range(20)] == list(range(20))
        assert node.logs().count("other nodes") == 1, node.logs()
        await client.disconnect()
    finally:
        redis.stop()


async def test_two_nodes_sending_to_one_user_at_once_keep_one_order(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    shared_url: str,
) -> None:
    a, b = await start_nodes(2, REDIS_URL=shared_url)
    stub.answers["t1"] = ["user_1", "staff"]
    await (await connect(a.url, "shop", "t1", "offline")).disconnect()
    live = await connect(b.url, "shop", "t1", "online")
    sends = [post_send(http, (a, b)[i % 2].url, "shop", "staff", "n", i) for i in range(60)]
    assert {status for status, _ in await asyncio.gather(*sends)} == {200}
    received = await numbers_from(live, set(range(60)))
    batch = (await (await connect(a.url, "shop", "t1", "offline")).next()).args[0]
    assert received == [args[1] for args in batch]  # the same order for both devices
    assert sorted(received) == list(range(60))
    await live.disconnect()


async def test_sigkill_of_a_node_mid_stream_loses_nothing(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    shared_url: str,
    observer: RedisStore,
) -> None:
    a, b = await start_nodes(2, REDIS_URL=shared_url)
    users = [f"user_{i}" for i in range(5)]
    for user in users:
        stub.answers[user] = [user, "staff"]
    before = {user: await connect(b.url, "shop", user, "phone") for user in users}
    sent_ok: set[int] = set()
    killed = asyncio.Event()

    async def sender() -> None:
        for i in range(150):
            status, _ = await post_send(http, a.url, "shop", "staff", "n", i)
            assert status == 200
            sent_ok.add(i)
            if i == 50:
                b.signal(signal.SIGKILL)
                killed.set()
            await asyncio.sleep(0.002)

    sending = asyncio.create_task(sender())
    await killed.wait()
    await b.wait()
    first_part = {user: await drain(client) for user, client in before.items()}
    after = {user: await connect(a.url, "shop", user, "phone") for user in users}
    await sending
    for user, client in after.items():
        again = await numbers_from(client, sent_ok - set(first_part[user]))
        assert len(again) == len(set(again)), f"{user} got duplicates after reconnecting"
        assert set(first_part[user]) | set(again) == sent_ok
        await wait_for_queue(observer, user, "phone", [])
        await client.disconnect()


async def drain(client: Client) -> list[int]:
    """What a client had received before its connection died."""
    numbers: list[int] = []
    while not client.events.empty():
        numbers.extend(client.events.get_nowait().numbers())
    await client.disconnect()
    return numbers


async def test_sigterm_drains_and_exits_cleanly(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    shared_url: str,
    observer: RedisStore,
) -> None:
    a, b = await start_nodes(2, REDIS_URL=shared_url)
    stub.answers["t1"] = ["user_1"]
    client = await connect(b.url, "shop", "t1", "phone")
    answered: set[int] = set()

    async def send(i: int) -> None:
        for node in (b, a):  # as a load balancer would: the stopping node first, then another
            try:
                status, _ = await post_send(http, node.url, "shop", "user_1", "n", i)
            except aiohttp.ClientError:
                continue
            if status == 200:
                answered.add(i)
                return

    first = [asyncio.create_task(send(i)) for i in range(40)]
    await asyncio.sleep(0)
    b.signal(signal.SIGTERM)
    started = asyncio.get_running_loop().time()
    assert await b.wait(timeout=10) == 0
    assert asyncio.get_running_loop().time() - started < 8
    await asyncio.gather(*first)
    for i in range(40, 60):
        await send(i)
    assert answered == set(range(60))
    seen = await drain(client)
    moved = await connect(a.url, "shop", "t1", "phone")
    await numbers_from(moved, answered - set(seen))
    await wait_for_queue(observer, "user_1", "phone", [])
    await moved.disconnect()


async def test_redis_outage_answers_503_keeps_sockets_and_recovers(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis-outage", port=free_port(), persistent=True)
    redis.start()
    try:
        (node,) = await start_nodes(1, REDIS_URL=redis.url)
        stub.answers["t1"] = ["user_1"]
        client = await connect(node.url, "shop", "t1", "phone")
        statuses: dict[int, int] = {}
        answers: dict[int, str] = {}

        async def send(i: int) -> None:
            statuses[i], answers[i] = await post_send(http, node.url, "shop", "user_1", "n", i)

        for i in range(20):
            await send(i)
        redis.stop()
        await node.wait_health(503)
        for i in range(20, 30):
            await send(i)
        stub.answers["t2"] = ["user_2"]
        refused = await connect_error(node.url, "shop", "t2")
        assert refused.startswith("Service unavailable: ")
        redis.start()
        await node.wait_healthy()
        for i in range(30, 50):
            await send(i)
        assert set(statuses.values()) <= {200, 503}
        failed = {i: answers[i] for i in [*range(20), *range(30, 50)] if statuses[i] != 200}
        assert not failed
        assert all(statuses[i] == 503 for i in range(20, 30))
        delivered = await numbers_from(client, {i for i, s in statuses.items() if s == 200})
        assert client.connected and not set(delivered) & set(range(20, 30))
        await client.disconnect()
    finally:
        redis.stop()


async def test_a_stalled_redis_answers_504_within_redis_timeout_and_recovers(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Redis that stops answering (a frozen process, a network that swallows packets) is an
    outage after REDIS_TIMEOUT: the send in flight answers 504, not a hang, and not 503
    (the write was sent: the service cannot promise it was not made). Here it was not: the
    script thawed past its deadline stores nothing."""
    redis = RedisServer(tmp_path / "redis-stall", port=free_port())
    redis.start()
    try:
        (node,) = await start_nodes(1, REDIS_URL=redis.url, REDIS_TIMEOUT="1")
        stub.answers["t1"] = ["user_1"]
        client = await connect(node.url, "shop", "t1", "phone")
        assert (await post_send(http, node.url, "shop", "user_1", "n", 1))[0] == 200
        with redis.frozen():
            started = time.monotonic()
            status, answer = await post_send(http, node.url, "shop", "user_1", "n", 2)
            waited = time.monotonic() - started
        assert status == 504 and answer.startswith("Outcome unknown")
        assert 1 <= waited < 3
        assert (await post_send(http, node.url, "shop", "user_1", "n", 3))[0] == 200
        assert 2 not in await numbers_from(client, {1, 3})
        await client.disconnect()
    finally:
        redis.stop()


async def test_sqlite_node_killed_and_restarted_loses_no_answered_message(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    database = str(tmp_path / "kill9.sqlite3")
    (node,) = await start_nodes(1, SQLITE_PATH=database)
    stub.answers["t1"] = ["user_1"]
    await (await connect(node.url, "shop", "t1", "phone")).disconnect()
    answers = await asyncio.gather(
        *(post_send(http, node.url, "shop", "user_1", "n", i) for i in range(50))
    )
    assert {status for status, _ in answers} == {200}
    node.signal(signal.SIGKILL)
    await node.wait()
    (restarted,) = await start_nodes(1, SQLITE_PATH=database)
    client = await connect(restarted.url, "shop", "t1", "phone")
    batch = await client.next()
    assert sorted(args[1] for args in batch.args[0]) == list(range(50))
    await client.disconnect()


async def test_an_ack_sent_while_redis_is_down_is_kept_and_applied_when_it_is_back(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis-ack", port=free_port(), persistent=True)
    redis.start()
    observer = RedisStore(redis.url, device_ttl=3600, node_id="observer")
    try:
        (node,) = await start_nodes(1, REDIS_URL=redis.url)
        stub.answers["t1"] = ["user_1"]
        client = await connect(node.url, "shop", "t1", "phone", auto_ack=False)
        assert (await post_send(http, node.url, "shop", "user_1", "n", 1))[0] == 200
        received = await client.next()
        redis.stop()
        await node.wait_health(503)
        await client.ack(received)  # the service cannot write it now: it must keep it
        redis.start()
        await node.wait_healthy()
        await wait_for_queue(observer, "user_1", "phone", [])
        await client.disconnect()
        again = await connect(node.url, "shop", "t1", "phone")
        await post_send(http, node.url, "shop", "user_1", "n", 2)
        assert (await again.next()).numbers() == [2]  # no _batch: the ack was not lost
        await again.disconnect()
    finally:
        await observer.close()
        redis.stop()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_legacy_clients_on_one_node_get_sends_made_on_another(
    start_nodes: StartNodes, stub: SiteStub, shared_url: str, observer: RedisStore, version: str
) -> None:
    from tests.test_js_client import assert_original_behaviour, run_scenario

    a, b = await start_nodes(2, REDIS_URL=shared_url)
    stub.answers["t1"] = ["user_1", "staff"]
    steps = await run_scenario(b.url, version, "upgrade", a.url)
    assert_original_behaviour(steps, "upgrade")
    await wait_for_queue(observer, "user_1", f"legacy-{version}-upgrade", [])


async def keyed_send(
    http: aiohttp.ClientSession, url: str, number: int, key: str
) -> tuple[int, str]:
    body = {"rooms": "user_1", "event": "n", "args": [number]}
    async with http.post(
        f"{url}/send?site=shop&apiKey=key", json=body, headers={"Idempotency-Key": key}
    ) as answer:
        return answer.status, await answer.text()


async def test_a_send_answered_504_and_retried_with_its_key_arrives_once(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The site does what a 504 asks: it retries with the same Idempotency-Key, here on the
    other node, and every key's message reaches the device exactly once."""
    redis = RedisServer(tmp_path / "redis-retry", port=free_port())
    redis.start()
    try:
        a, b = await start_nodes(2, REDIS_URL=redis.url, REDIS_TIMEOUT="1")
        stub.answers["t1"] = ["user_1"]
        client = await connect(a.url, "shop", "t1", "phone")
        assert (await keyed_send(http, b.url, 1, "order-1"))[0] == 200
        with redis.frozen():
            status, _ = await keyed_send(http, b.url, 2, "order-2")
        assert status == 504
        for node in (a, b):  # retried as a site would, with a pause, on either node
            for _ in range(50):
                if (await keyed_send(http, node.url, 2, "order-2"))[0] == 200:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the retry was never answered 200")
            assert (await keyed_send(http, node.url, 1, "order-1"))[0] == 200
        assert (await keyed_send(http, b.url, 3, "order-3"))[0] == 200
        seen = await numbers_from(client, {1, 2, 3})
        await client.no_event_within(0.5)  # a negative check: nothing comes twice
        assert sorted(seen) == [1, 2, 3]
        await client.disconnect()
    finally:
        redis.stop()


async def keyed_sends_through(
    http: aiohttp.ClientSession,
    nodes: tuple[ServiceProcess, ServiceProcess],
    client: Client,
    failure: Callable[[], Awaitable[None]],
) -> None:
    """A site sends with keys to the second node while ``failure`` happens; once both nodes
    are healthy again it retries every send not answered 200 with its key, until answered
    200. Then every message has reached the client (on the first node) exactly once, and
    those answered 200 at once in send order."""
    answers: dict[int, int] = {}
    sending = True

    async def send_all() -> None:
        number = 0
        while sending or number < 20:
            number += 1
            answers[number] = (await keyed_send(http, nodes[1].url, number, f"k{number}"))[0]
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(send_all())
    await asyncio.sleep(0.3)
    await failure()
    sending = False
    await sender
    for node in nodes:
        await node.wait_health(200, timeout=30)
    for number, status in sorted(answers.items()):
        for _ in range(50):
            if status == 200:
                break
            status = (await keyed_send(http, nodes[1].url, number, f"k{number}"))[0]
            await asyncio.sleep(0.2)
        assert status == 200, f"send {number} was never answered 200"
    seen = await numbers_from(client, set(answers), timeout=30)
    await client.no_event_within(0.5)  # a negative check: nothing comes twice
    assert sorted(seen) == sorted(answers), "a message came twice"
    at_once = [number for number, status in sorted(answers.items()) if status == 200]
    assert [number for number in seen if number in at_once] == at_once


async def test_a_sentinel_failover_while_sites_send_loses_and_doubles_nothing(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    sentinel_set: SentinelSet,
    sentinel_url: str,
) -> None:
    """Two nodes behind Sentinel; a planned failover (SENTINEL FAILOVER) while a site sends."""
    # NODE_TIMEOUT as in production: longer than the failover (the tests' 2 s is not)
    a, b = await start_nodes(2, REDIS_URL=sentinel_url, REDIS_TIMEOUT="2", NODE_TIMEOUT="30")
    stub.answers["t1"] = ["user_1"]
    client = await connect(a.url, "shop", "t1", "phone")

    async def failover() -> None:
        await asyncio.to_thread(sentinel_set.failover)
        await asyncio.sleep(0.5)  # sends go on after it too

    await keyed_sends_through(http, (a, b), client, failover)
    await client.disconnect()


def user_1_key() -> str:
    """A key in user_1's bucket: the primary the tests fail over is the one serving it."""
    return redis_keys.user_keys(redis_keys.user_prefix("sws:", "shop", "user_1"), "user_1")[0]


async def test_a_cluster_failover_while_sites_send_loses_and_doubles_nothing(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    redis_cluster: RedisClusterSet,
    cluster_url: str,
) -> None:
    """Two nodes on Redis Cluster; CLUSTER FAILOVER of the primary holding the user's queue
    while a site sends."""
    a, b = await start_nodes(2, REDIS_URL=cluster_url, REDIS_TIMEOUT="2", NODE_TIMEOUT="30")
    stub.answers["t1"] = ["user_1"]
    client = await connect(a.url, "shop", "t1", "phone")

    async def failover() -> None:
        await asyncio.to_thread(redis_cluster.failover, user_1_key())
        await asyncio.sleep(0.5)  # sends go on after it too

    await keyed_sends_through(http, (a, b), client, failover)
    await client.disconnect()


async def test_a_slot_migration_while_sites_send_loses_and_doubles_nothing(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    redis_cluster: RedisClusterSet,
    cluster_url: str,
) -> None:
    """redis-cli --cluster reshard moves the slot of the user's queue to another primary
    while a site sends to it and the device acks."""
    a, b = await start_nodes(2, REDIS_URL=cluster_url, REDIS_TIMEOUT="2", NODE_TIMEOUT="30")
    stub.answers["t1"] = ["user_1"]
    client = await connect(a.url, "shop", "t1", "phone")

    async def reshard() -> None:
        await asyncio.to_thread(redis_cluster.move_slot_of, user_1_key())

    await keyed_sends_through(http, (a, b), client, reshard)
    await client.disconnect()


async def test_a_nodes_channel_moving_to_another_primary_loses_no_signal_for_good(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    redis_cluster: RedisClusterSet,
    cluster_url: str,
) -> None:
    """The slot of the first node's sharded channel moves while the second node signals on
    it: the first node subscribes again where it went and re-reads its devices' queues, so
    what was signalled meanwhile still arrives, once."""
    a, b = await start_nodes(2, REDIS_URL=cluster_url, REDIS_TIMEOUT="2", NODE_TIMEOUT="30")
    stub.answers["t1"] = ["user_1"]
    client = await connect(a.url, "shop", "t1", "phone")
    found = re.search(r"node \S+ \((\w+)\) listening", a.logs())
    assert found is not None, a.logs()
    channel = redis_keys.deliver_channel("sws:", found.group(1))

    async def move() -> None:
        await asyncio.to_thread(redis_cluster.move_slot_of, channel)
        deadline = time.monotonic() + 20
        while "node bus: reconnected" not in a.logs():
            assert time.monotonic() < deadline, a.logs()
            await asyncio.sleep(0.05)

    await keyed_sends_through(http, (a, b), client, move)
    await client.disconnect()


async def test_a_cluster_primary_killed_while_sites_send_loses_and_doubles_nothing(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """SIGKILL of the primary holding the user's queue; its replica takes over. Sends
    answered 503/504 meanwhile are retried with their keys: each arrives once."""
    cluster = RedisClusterSet(tmp_path / "cluster-kill")
    cluster.start()
    try:
        a, b = await start_nodes(2, REDIS_URL=cluster.url, REDIS_TIMEOUT="2", NODE_TIMEOUT="30")
        stub.answers["t1"] = ["user_1"]
        client = await connect(a.url, "shop", "t1", "phone")

        async def kill() -> None:
            await asyncio.to_thread(cluster.kill_primary_of, user_1_key())

        await keyed_sends_through(http, (a, b), client, kill)
        await client.disconnect()
    finally:
        cluster.stop()


async def test_the_primary_killed_with_min_replicas_loses_no_answered_send(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """SIGKILL of the Redis primary while a site sends, with min_replicas 1 and two
    replicas: every send answered 200 had reached a replica, so it survives the promotion."""
    deployment = SentinelSet(tmp_path / "sentinel-kill", replicas=2)
    deployment.start()
    try:
        a, b = await start_nodes(
            2,
            REDIS_URL=deployment.url,
            REDIS_TIMEOUT="2",
            REDIS_MIN_REPLICAS="1",
            NODE_TIMEOUT="30",  # as in production: longer than the failover
        )
        stub.answers["t1"] = ["user_1"]
        client = await connect(a.url, "shop", "t1", "phone")

        async def kill() -> None:
            assert deployment.primary.process is not None
            deployment.primary.process.kill()  # SIGKILL
            await asyncio.to_thread(deployment.wait_promoted)

        await keyed_sends_through(http, (a, b), client, kill)
        await client.disconnect()
    finally:
        deployment.stop()


async def test_a_node_paused_past_the_node_timeout_registers_its_sockets_again(
    start_nodes: StartNodes,
    stub: SiteStub,
    http: aiohttp.ClientSession,
    redis_url: str,
) -> None:
    """The other node takes the paused one for dead and releases its connections; when it
    wakes up its sockets are still open, and it counts them in the store again, so sends
    made on the other node reach them live again."""
    a, b = await start_nodes(2, REDIS_URL=redis_url)  # NODE_TIMEOUT 2 s
    stub.answers["t1"] = ["user_1"]
    client = await connect(a.url, "shop", "t1", "phone")
    assert (await post_send(http, b.url, "shop", "user_1", "n", 1))[0] == 200
    assert (await client.next()).numbers() == [1]
    a.signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 20
        while "released the connections of stopped nodes" not in b.logs():
            assert time.monotonic() < deadline, b.logs()
            await asyncio.sleep(0.1)
    finally:
        a.signal(signal.SIGCONT)
    deadline = time.monotonic() + 20
    while "registering them again" not in a.logs():
        assert time.monotonic() < deadline, a.logs()
        await asyncio.sleep(0.1)
    for number in (2, 3):
        assert (await post_send(http, b.url, "shop", "user_1", "n", number))[0] == 200
    assert await numbers_from(client, {2, 3}) == [2, 3]
    await client.disconnect()
