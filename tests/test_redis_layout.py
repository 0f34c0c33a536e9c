"""Upgrading a running deployment: a Redis written by release 0.1.0 (layout 1, one prefix per
site), or by a release of layout 2 (buckets; rooms' members were users), is converted when the
first node of this release starts, and nothing queued is lost.

tests/fixtures/redis_layout_1.json is every key the RedisStore of commit b721e5e (the last
with layout 1) wrote for the calls ``load_layout_1`` describes, with its type, value and time
left, read back with SCAN/TYPE/PTTL; tests/fixtures/redis_layout_2.json, likewise, what the
RedisStore of commit 5d1cbbb (the last with layout 2) wrote for the calls ``load_layout_2``
describes, with one device hash's ``nodes`` field taken out, as hashes written before that
field have it."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis

from socketio_webservice.storage import (
    Message,
    Repeated,
    StoreUnavailable,
    redis_keys,
    redis_scripts,
)
from socketio_webservice.storage.redis_store import RedisStore

FIXTURES = Path(__file__).parent / "fixtures"


def load_layout_1(url: str) -> None:
    """Every key as release 0.1.0 left it: three users of two sites, queues of offline and
    connected devices, shared rooms, an idempotency record, what expires, what a node held."""
    load(url, FIXTURES / "redis_layout_1.json")


def load_layout_2(url: str) -> None:
    """Every key as layout 2 left it. Site shop: user_1's phone (offline) and tablet:2
    (connected on node old-node-a), in rooms staff and buyers; user_2's d1 (offline), in staff;
    user_3's web{x} (connected on old-node-a and old-node-b, its hash without the nodes field),
    in staff, which acked everything. Sent: an update to staff, a resync notice to user_1 and
    buyers, a notice to staff with the Idempotency-Key k1. Site news2: browse's anon-1, offline,
    with one headline. Both nodes then stopped without a disconnect."""
    load(url, FIXTURES / "redis_layout_2.json")


def load(url: str, fixture: Path) -> None:
    client = redis.Redis.from_url(url)
    for name, key in json.loads(fixture.read_text()).items():
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


@contextlib.asynccontextmanager
async def upgraded(url: str, load: Callable[[str], None]) -> AsyncIterator[RedisStore]:
    """A node of this release started on what ``load`` wrote (the old nodes long silent);
    the queues every fixture holds for user_1's phone and tablet are checked first."""
    load(url)
    store = RedisStore(url, device_ttl=3600, node_id="new-node", node_dead_after=1)
    await store.open()
    try:
        to_staff = [["update_store", "offer", {"id": 1}], ["notice", "zoë"], ["notice", "to staff"]]
        assert await pending(store, "shop", "user_1", "phone") == to_staff
        assert await pending(store, "shop", "user_1", "tablet:2") == to_staff
        assert await pending(store, "news2", "browse", "anon-1") == [["headline", "h1"]]
        yield store
    finally:
        await store.close()


async def test_a_store_written_by_the_previous_release_is_converted_and_nothing_is_lost(
    redis_url: str,
) -> None:
    async with upgraded(redis_url, load_layout_1) as store:
        assert await pending(store, "shop", "user_2", "d1") == [["notice", "to staff"]]
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
    again = RedisStore(redis_url, device_ttl=3600, node_id="second-node")
    await again.open()  # converted once: the second node finds the layout recorded
    try:
        assert await pending(again, "shop", "user_2", "d1") == [["notice", "to staff"], ["n", 1]]
    finally:
        await again.close()


@pytest.mark.parametrize("layout", [1, 2])
async def test_nodes_of_the_previous_release_still_running_stop_the_upgrade(
    redis_url: str, layout: int
) -> None:
    (load_layout_1 if layout == 1 else load_layout_2)(redis_url)
    client = redis.Redis.from_url(redis_url)
    seconds, micros = client.time()
    client.zadd("sws:nodes", {"old-node-b": seconds * 1000 + micros // 1000})
    before = {key: client.type(key) for key in client.scan_iter()}
    client.close()
    store = RedisStore(redis_url, device_ttl=3600, node_id="new-node")
    with pytest.raises(StoreUnavailable, match="nodes of the earlier release are running"):
        await store.open()
    await store.close()
    client = redis.Redis.from_url(redis_url)
    assert {key: client.type(key) for key in client.scan_iter()} == before  # nothing touched
    staff = "sws:shop:members:staff" if layout == 1 else "sws:{b6}:shop:members:staff"
    assert client.smembers(staff) == ({b"user_1", b"user_2"} if layout == 1 else {b"user_2"})
    assert client.get("sws:layout") == (None if layout == 1 else b"2")
    client.close()


async def test_a_layout_this_release_does_not_know_stops_start_up(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("sws:layout", "9")  # written by a later release
    client.close()
    store = RedisStore(redis_url, device_ttl=3600, node_id="new-node")
    with pytest.raises(StoreUnavailable, match="Redis holds layout 9, which this release"):
        await store.open()
    await store.close()


async def test_a_store_written_in_layout_2_is_converted_and_nothing_is_lost(
    redis_url: str,
) -> None:
    async with upgraded(redis_url, load_layout_2) as store:
        assert await pending(store, "shop", "user_2", "d1") == [
            ["update_store", "offer", {"id": 1}],
            ["notice", "to staff"],
        ]
        assert await pending(store, "shop", "user_3", "web{x}") == []
        assert await store.shared_room_members("shop", "staff") == {"user_1", "user_2", "user_3"}
        assert await store.shared_room_members("shop", "buyers") == {"user_1"}
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match="sws:{b*"):
            parsed = redis_keys.bucket_key("sws:", key.decode())
            if parsed and parsed[1] == redis_keys.MEMBERS:  # devices, not users
                assert all(b":" in member for member in client.smembers(key)), key
            if parsed and parsed[1] == redis_keys.DEVICE:
                assert not client.hexists(key, "nodes"), key
        assert await store.queue_depths(["shop", "news2"]) == {"shop": 8, "news2": 1}
        # The old nodes' connections were released at start: every device is offline.
        deliveries = await store.enqueue("shop", [], ["staff"], Message("n", [1]))
        assert sorted((d.user, d.device, d.seq, d.nodes) for d in deliveries) == [
            ("user_1", "phone", 4, ()),
            ("user_1", "tablet:2", 4, ()),
            ("user_2", "d1", 3, ()),
            ("user_3", "web{x}", 3, ()),
        ]
        # The Idempotency-Key's record of layout 2 is read as it is: a retry stores nothing.
        again = await store.enqueue(
            "shop", [], ["staff"], Message("notice", ["to staff"], idempotency_id="k1#0")
        )
        assert isinstance(again, Repeated) and again.stored == 4
        assert sorted((d.user, d.device, d.seq) for d in again) == [
            ("user_1", "phone", 3),
            ("user_1", "tablet:2", 3),
            ("user_2", "d1", 2),
            ("user_3", "web{x}", 2),
        ]
        connected = await store.connect_device("shop", "user_3", "web{x}", ["staff"])
        assert not connected.refused
        assert [m.args for m in connected.backlog.messages] == [[1]]
        assert client.get("sws:layout") == redis_keys.LAYOUT.encode() == b"3"
        client.close()
