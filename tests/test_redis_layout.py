"""Upgrading a running deployment: a Redis written by release 0.1.0 (layout 1, one prefix per
site) is converted when the first node of this release starts, and nothing queued is lost.

tests/fixtures/redis_layout_1.json is every key the RedisStore of commit b721e5e (the last
with layout 1) wrote for the calls ``load_layout_1`` describes, with its type, value and time
left, read back with SCAN/TYPE/PTTL."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis

from socketio_webservice.storage import Message, StoreUnavailable, redis_keys, redis_scripts
from socketio_webservice.storage.redis_store import RedisStore

FIXTURE = Path(__file__).parent / "fixtures" / "redis_layout_1.json"


def load_layout_1(url: str) -> None:
    """Every key as release 0.1.0 left it: three users of two sites, queues of offline and
    connected devices, shared rooms, an idempotency record, what expires, what a node held."""
    client = redis.Redis.from_url(url)
    for name, key in json.loads(FIXTURE.read_text()).items():
        raw = base64.b64decode(name)
        value = key["value"]
        if key["type"] == "string":
            client.set(raw, base64.b64decode(value))
        elif key["type"] == "hash":
            client.hset(
                raw, mapping={base64.b64decode(f): base64.b64decode(v) for f, v in value.items()}
            )
        elif key["type"] == "set":
            client.sadd(raw, *(base64.b64decode(m) for m in value))
        else:
            client.zadd(raw, {base64.b64decode(m): score for m, score in value})
        if key["pttl"] > 0:
            client.pexpire(raw, key["pttl"])
    client.close()


async def pending(store: RedisStore, site: str, user: str, device: str) -> list[list[object]]:
    return [[m.event, *m.args] for m in await store.pending(site, user, device)]


async def test_a_store_written_by_the_previous_release_is_converted_and_nothing_is_lost(
    redis_url: str,
) -> None:
    load_layout_1(redis_url)
    store = RedisStore(redis_url, device_ttl=3600, node_id="new-node", node_dead_after=1)
    await store.open()
    try:
        to_staff = [["update_store", "offer", {"id": 1}], ["notice", "zoë"], ["notice", "to staff"]]
        assert await pending(store, "shop", "user_1", "phone") == to_staff
        assert await pending(store, "shop", "user_1", "tablet:2") == to_staff
        assert await pending(store, "shop", "user_2", "d1") == [["notice", "to staff"]]
        assert await pending(store, "news2", "browse", "anon-1") == [["headline", "h1"]]
        resync = [m.resync for m in await store.pending("shop", "user_1", "phone")]
        assert resync == [False, True, False]
        assert await store.shared_room_members("shop", "staff") == {"user_1", "user_2"}
        assert await store.shared_room_members("shop", "buyers") == {"user_1"}
        client = redis.Redis.from_url(redis_url)
        left = [k for k in client.scan_iter() if b"{" not in k]
        assert sorted(left) == [b"sws:layout", b"sws:nodes"]  # every old key was carried over
        # The old node's connection (the tablet) was released at start, like any dead
        # node's: the tablet is offline, its queue expiring.
        tablet = redis_keys.device_keys(
            redis_keys.user_prefix("sws:", "shop", "user_1"), "user_1", "tablet:2"
        )
        assert 0 < client.pttl(tablet[0]) <= 3_600_000
        # its queue outlives it by the grace in which the sweep counts it out of the depth
        assert 3_600_000 < client.pttl(tablet[1]) <= 3_600_000 + redis_scripts.QUEUE_GRACE_MS
        assert await store.queue_depths(["shop", "news2"]) == {"shop": 7, "news2": 1}
        assert client.zrange("sws:nodes", 0, -1) == [b"new-node"]
        # Sends reach the converted devices and rooms, after what they had.
        deliveries = await store.enqueue("shop", [], ["staff"], Message("n", [1]))
        assert sorted((d.user, d.device, d.seq) for d in deliveries) == [
            ("user_1", "phone", 4),
            ("user_1", "tablet:2", 4),
            ("user_2", "d1", 2),
        ]
        connected = await store.connect_device("shop", "user_2", "d1", ["staff"])
        assert not connected.refused
        backlog = await store.read_queue("shop", "user_2", "d1")
        assert [m.args for m in backlog.messages] == [["to staff"], [1]]
        client.close()
    finally:
        await store.close()
    again = RedisStore(redis_url, device_ttl=3600, node_id="second-node")
    await again.open()  # converted once: the second node finds the layout recorded
    try:
        assert await pending(again, "shop", "user_2", "d1") == [["notice", "to staff"], ["n", 1]]
    finally:
        await again.close()


async def test_nodes_of_the_previous_release_still_running_stop_the_upgrade(
    redis_url: str,
) -> None:
    load_layout_1(redis_url)
    client = redis.Redis.from_url(redis_url)
    seconds, micros = client.time()
    client.zadd("sws:nodes", {"old-node-b": seconds * 1000 + micros // 1000})
    client.close()
    store = RedisStore(redis_url, device_ttl=3600, node_id="new-node")
    with pytest.raises(StoreUnavailable, match="nodes of the earlier release are running"):
        await store.open()
    await store.close()
    client = redis.Redis.from_url(redis_url)
    assert client.exists("sws:shop:msg:user_1:phone")  # nothing was touched
    assert not client.exists("sws:layout")
    client.close()
