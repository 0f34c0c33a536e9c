"""Redis only: what several nodes share. (SQLite serves one node, whose crash is recovered
when it opens the file again; see test_store_contract.)"""

from __future__ import annotations

import asyncio

import redis.asyncio

from socketio_webservice.storage import Message, redis_keys
from socketio_webservice.storage.redis_store import RedisStore

SITE = "shop"


async def test_deliveries_name_the_nodes_holding_each_device(redis_url: str) -> None:
    a = RedisStore(redis_url, device_ttl=60, node_id="a")
    b = RedisStore(redis_url, device_ttl=60, node_id="b")
    try:
        await a.connect_device(SITE, "user_1", "phone", ["staff"])
        await b.connect_device(SITE, "user_1", "phone", ["staff"])  # a second tab, elsewhere
        await b.connect_device(SITE, "user_2", "laptop", ["staff"])
        await a.connect_device(SITE, "user_3", "gone", ["staff"])
        await a.disconnect_device(SITE, "user_3", "gone", forget=False)
        deliveries = await a.enqueue(SITE, [], ["staff"], Message("e", []))
        assert {(d.user, tuple(sorted(d.nodes))) for d in deliveries} == {
            ("user_1", ("a", "b")),
            ("user_2", ("b",)),
            ("user_3", ()),
        }
    finally:
        await a.close()
        await b.close()


async def test_the_nodes_named_follow_connects_and_disconnects(redis_url: str) -> None:
    """A send reads a device's holders from its bucket's holders hash, which connects and
    disconnects on every node keep."""
    a = RedisStore(redis_url, device_ttl=60, node_id="a")
    b = RedisStore(redis_url, device_ttl=60, node_id="b")

    async def holders() -> tuple[str, ...]:
        (delivery,) = await a.enqueue(SITE, ["user_1"], [], Message("e", []))
        return tuple(sorted(delivery.nodes))

    try:
        await a.connect_device(SITE, "user_1", "phone", [])
        await a.connect_device(SITE, "user_1", "phone", [])  # two tabs on node a
        await b.connect_device(SITE, "user_1", "phone", [])
        assert await holders() == ("a", "b")
        await a.disconnect_device(SITE, "user_1", "phone", forget=False)
        assert await holders() == ("a", "b")  # a still holds one
        await b.disconnect_device(SITE, "user_1", "phone", forget=False)
        assert await holders() == ("a",)
        await b.connect_device(SITE, "user_1", "phone", [])
        assert await holders() == ("a", "b")
        await a.disconnect_device(SITE, "user_1", "phone", forget=False)
        assert await holders() == ("b",)
        await b.disconnect_device(SITE, "user_1", "phone", forget=False)
        assert await holders() == ()
    finally:
        await a.close()
        await b.close()


async def test_a_silent_nodes_connections_are_released(redis_url: str) -> None:
    survivor = RedisStore(redis_url, device_ttl=1, node_id="survivor", node_dead_after=0.3)
    crashed = RedisStore(redis_url, device_ttl=1, node_id="crashed", node_dead_after=0.3)
    try:
        await crashed.open()  # its first heartbeat
        assert (await crashed.connect_device(SITE, "user_1", "phone", [])).first
        await crashed.enqueue(SITE, ["user_1"], [], Message("e", []))
        await crashed.close()  # killed: no disconnect is ever recorded
        await survivor.open()
        assert await survivor.heartbeat() == []  # not silent for long enough yet
        deadline = asyncio.get_running_loop().time() + 5
        while (released := await survivor.heartbeat()) != ["crashed"]:
            assert asyncio.get_running_loop().time() < deadline, "never released"
            await asyncio.sleep(0.1)
        # As if the device had disconnected: its queue now expires after device_ttl.
        while await survivor.pending(SITE, "user_1", "phone"):
            assert asyncio.get_running_loop().time() < deadline + 3, "queue never expired"
            await asyncio.sleep(0.1)
        # The user is offline now: a reconnect is its first connection again.
        assert (await survivor.connect_device(SITE, "user_1", "phone", [])).first
        assert released == ["crashed"]
    finally:
        await survivor.close()


async def test_a_reconnect_with_the_same_rooms_keeps_them_for_as_long_as_it_stays(
    redis_url: str,
) -> None:
    """A reconnect whose auth answer names the rooms it had leaves the rooms' members as
    they are; the user's rooms set, given a lifetime when it went offline, is kept again for
    as long as it is connected (the sweep needs it to take the user out of the rooms)."""
    store = RedisStore(redis_url, device_ttl=60, node_id="a")
    try:
        await store.connect_device(SITE, "user_1", "phone", ["staff"])
        await store.disconnect_device(SITE, "user_1", "phone", forget=False)
        rooms = redis_keys.user_keys(store._p(SITE, "user_1"), "user_1")[2]
        async with redis.asyncio.Redis.from_url(redis_url) as client:
            assert await client.pttl(rooms) > 0  # offline: it expires after its user
            await store.connect_device(SITE, "user_1", "phone", ["staff"])
            assert await client.pttl(rooms) == -1
        (delivery,) = await store.enqueue(SITE, [], ["staff"], Message("e", []))
        assert (delivery.user, delivery.nodes) == ("user_1", ("a",))
        await store.connect_device(SITE, "user_1", "phone", ["sales"])  # another answer
        assert await store.enqueue(SITE, [], ["staff"], Message("e", [])) == []
        assert len(await store.enqueue(SITE, [], ["sales"], Message("e", []))) == 1
    finally:
        await store.close()
