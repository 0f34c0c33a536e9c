"""Redis as production runs it (issue 19): the memory policy that would evict queues, and a
primary that moves. Real redis-server processes, started here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio
import redis.crc

from socketio_webservice.storage import Message, OutcomeUnknown, StoreUnavailable, redis_keys
from socketio_webservice.storage import redis_store as redis_store_module
from socketio_webservice.storage.redis_store import RedisStore
from testkit.processes import RedisClusterSet, RedisServer, free_port, run_cli, write_sites

SITE = "shop"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    instance = RedisServer(tmp_path / "redis")
    instance.start()
    yield instance
    instance.stop()


async def command(url: str, *args: str) -> object:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return await client.execute_command(*args)
    finally:
        await client.aclose()


def test_a_redis_that_may_evict_queues_stops_start_up_in_one_line(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", options=("--maxmemory-policy", "volatile-lru"))
    server.start()
    try:
        sites = write_sites(tmp_path, "http://127.0.0.1:9/auth")
        result = run_cli(
            "--sites", str(sites), cwd=tmp_path, REDIS_URL=server.url, PORT=str(free_port())
        )
    finally:
        server.stop()
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1, result.stderr
    assert "maxmemory-policy is volatile-lru" in lines[0] and "noeviction" in lines[0]
    assert "Traceback" not in result.stderr


async def test_a_memory_policy_changed_at_run_time_makes_the_store_unhealthy(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_store_module, "POLICY_CHECK_EVERY", 0.0)
    store = RedisStore(server.url, device_ttl=3600, node_id="node-a")
    await store.open()
    try:
        await store.ping()
        await command(server.url, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        await store.heartbeat()  # the service's heartbeat reads it every 30 s
        with pytest.raises(StoreUnavailable, match="maxmemory-policy is allkeys-lru"):
            await store.ping()
        await command(server.url, "CONFIG", "SET", "maxmemory-policy", "noeviction")
        await store.heartbeat()
        await store.ping()
    finally:
        await store.close()


async def test_a_primary_that_moves_is_followed_after_its_first_readonly(tmp_path: Path) -> None:
    """The URL names a place (a managed service's DNS name; here a unix socket's path, a
    link) that moves to the new primary at a failover. The store's connection still reaches
    the old one, now a replica: its first READONLY makes it connect again, and it follows."""
    first, second = RedisServer(tmp_path / "a"), RedisServer(tmp_path / "b")
    first.start()
    second.start()
    link = tmp_path / "primary.sock"
    link.symlink_to(first.socket_path)
    store = RedisStore(f"unix://{link}", device_ttl=3600, node_id="node-a")
    try:
        await store.open()
        await store.connect_device(SITE, "user_1", "phone", [])
        # the failover: the second becomes the primary, the first its replica
        await command(first.url, "REPLICAOF", "127.0.0.1", str(second.port))
        link.unlink()
        link.symlink_to(second.socket_path)
        with pytest.raises(StoreUnavailable, match="READONLY"):
            await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[1]))
        await store.connect_device(SITE, "user_1", "phone", [])  # on the new primary
        deliveries = await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[2]))
        assert [d.device for d in deliveries] == ["phone"]
    finally:
        await store.close()
        first.stop()
        second.stop()


async def test_a_user_without_channel_rights_makes_the_bus_wait_quietly(
    server: RedisServer, logs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NOPERM on SUBSCRIBE is not a reconnect: no "reconnected" line, no re-reading of every
    queue, one error line (then one a minute); once the ACL allows it, it recovers once."""
    from socketio_webservice.transport import node_bus
    from socketio_webservice.transport.stats import TransportStats

    monkeypatch.setattr(node_bus, "RECONNECT_MAX", 0.2)
    await command(server.url, "ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "resetchannels")
    url = f"redis://app:pw@127.0.0.1:{server.port}/0"
    recovered: asyncio.Queue[None] = asyncio.Queue()
    bus = node_bus.RedisBus(url, "node-a", "sws:", TransportStats())
    starting = asyncio.create_task(bus.start(lambda *_: None, lambda: recovered.put_nowait(None)))
    try:
        await asyncio.sleep(2)  # a negative check: two seconds of retries say nothing more
        for listener in ("node bus", "broadcasts"):  # one line each, of its own channel
            errors = [line for line in logs if line.startswith(f"ERROR {listener}:")]
            assert len(errors) == 1 and "no permissions" in errors[0], logs
        assert not bus.healthy
        await command(server.url, "ACL", "SETUSER", "app", "allchannels")
        await asyncio.wait_for(starting, 10)
        await asyncio.wait_for(recovered.get(), 5)
        assert bus.healthy and recovered.empty()
        assert len([line for line in logs if "node bus: reconnected" in line]) == 1
        assert len([line for line in logs if "broadcasts: reconnected" in line]) == 1
    finally:
        starting.cancel()
        await bus.stop()


async def test_with_min_replicas_a_send_not_replicated_in_time_is_a_504(tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary")
    primary.start()
    replica = RedisServer(
        tmp_path / "replica", options=("--replicaof", "127.0.0.1", str(primary.port))
    )
    replica.start()
    replica.wait_replicating()
    store = RedisStore(primary.url, device_ttl=3600, node_id="node-a", timeout=1, min_replicas=1)
    try:
        await store.open()
        await store.connect_device(SITE, "user_1", "phone", [])
        deliveries = await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[1]))
        assert len(deliveries) == 1  # the replica confirmed it
        with replica.frozen(), pytest.raises(OutcomeUnknown, match="0 of 1 replicas"):
            await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[2]))
        await store.connect_device(SITE, "user_1", "laptop", [])  # not behind the WAIT
    finally:
        await store.close()
        replica.stop()
        primary.stop()


async def test_with_min_replicas_on_a_cluster_a_send_not_replicated_in_time_is_a_504(
    tmp_path: Path,
) -> None:
    """On Redis Cluster the send waits for the replica of the primary its user's bucket is
    on: frozen, the send's outcome is unknown (504); back, sends are confirmed again."""
    cluster = RedisClusterSet(tmp_path / "cluster-replicas")
    cluster.start()
    store = RedisStore(cluster.url, device_ttl=3600, node_id="node-a", timeout=1, min_replicas=1)
    try:
        await store.open()
        await store.connect_device(SITE, "user_1", "phone", [])
        assert len(await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[1]))) == 1
        key = redis_keys.user_keys(redis_keys.user_prefix("sws:", SITE, "user_1"), "user_1")[0]
        replica = cluster.replica_of(cluster.primary_of(key))
        with replica.frozen(), pytest.raises(OutcomeUnknown, match="0 of 1 replicas"):
            await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[2]))
        assert len(await store.enqueue(SITE, ["user_1"], [], Message(event="n", args=[3]))) == 1
        queued = await store.pending(SITE, "user_1", "phone")
        assert [m.args for m in queued] == [[1], [2], [3]]  # the 504's send was stored
    finally:
        await store.close()
        cluster.stop()


async def test_the_originals_redis_block_with_a_password_and_a_user_connects(
    tmp_path: Path,
) -> None:
    """The original hands its redis block (host, port, username, password, db) to its
    client: the same block starts this service on a Redis that requires them."""
    from socketio_webservice.storage import make_store
    from socketio_webservice.webservice.config import load_config

    server = RedisServer(tmp_path / "redis", options=("--requirepass", "s3cr:t@pw"))
    server.start()
    try:
        await command(
            f"redis://:s3cr%3At%40pw@127.0.0.1:{server.port}/0",
            "ACL", "SETUSER", "app", "on", ">app:pw", "~*", "&*", "+@all",
        )  # fmt: skip
        (tmp_path / "config.yml").write_text(
            "production:\n  redis:\n    host: 127.0.0.1\n"
            f"    port: {server.port}\n    username: app\n    password: 'app:pw'\n    db: 2\n"
        )
        config = load_config({"SITES_FILE": ""}, str(tmp_path / "config.yml"), None)
        store = make_store(redis_url=config.redis_url, device_ttl=60, node_id="n")
        await store.open()
        try:
            await store.connect_device(SITE, "user_1", "phone", [])
            assert len(await store.enqueue(SITE, ["user_1"], [], Message("n", [1]))) == 1
        finally:
            await store.close()
    finally:
        server.stop()


class SlotMove:
    """A slot of a Redis Cluster moved by hand, as ``redis-cli --cluster reshard`` does, with
    a pause in the middle: some of its keys on the new primary, the rest still on the old."""

    def __init__(self, cluster: RedisClusterSet, key: str) -> None:
        self.cluster, self.slot = cluster, redis.crc.key_slot(key.encode())
        self.source = cluster.primary_of(key)
        self.target = next(s for s in cluster.primaries() if s.port != self.source.port)
        self.ids = {
            s.port: cluster.cli("-p", str(s.port), "cluster", "myid").strip()
            for s in (self.source, self.target)
        }

    def start(self, *keys: str) -> None:
        """The slot moving, and ``keys`` of it moved already."""
        self._setslot(self.target, "importing", self.ids[self.source.port])
        self._setslot(self.source, "migrating", self.ids[self.target.port])
        self._migrate(keys)

    def finish(self) -> None:
        left = self.cluster.cli(
            "-p", str(self.source.port), "cluster", "getkeysinslot", str(self.slot), "1000"
        ).split()
        if left:
            self._migrate(left)
        for server in self.cluster.primaries():
            self._setslot(server, "node", self.ids[self.target.port])

    def _setslot(self, server: RedisServer, *args: str) -> None:
        self.cluster.cli("-p", str(server.port), "cluster", "setslot", str(self.slot), *args)

    def _migrate(self, keys: Sequence[str]) -> None:
        target = ("127.0.0.1", str(self.target.port), "", "0", "5000")
        self.cluster.cli("-p", str(self.source.port), "migrate", *target, "keys", *keys)


def users_of(p: str, count: int, start: int = 0) -> list[str]:
    """``count`` users whose bucket prefix is ``p``."""
    found = (f"user_{n}" for n in range(start, start + 20_000))
    return [user for user in found if redis_keys.user_prefix("sws:", SITE, user) == p][:count]


def user_and_device_keys(user: str) -> list[str]:
    p = redis_keys.user_prefix("sws:", SITE, user)
    return [*redis_keys.user_keys(p, user), *redis_keys.device_keys(p, user, "phone")]


async def test_a_step_that_meets_a_key_already_migrated_stores_none_of_its_messages(
    tmp_path: Path,
) -> None:
    """Two messages to two users of one bucket go to Redis Cluster in one script. While the
    bucket's slot is moving, the second user's keys are already on the new primary: the
    script must fail before it stores the first message, which "Redis Cluster is moving"
    (a 503: nothing stored) promises, and which a retry would otherwise store again."""
    cluster = RedisClusterSet(tmp_path / "cluster-moving", replicas=0)
    cluster.start()
    store = RedisStore(cluster.url, device_ttl=3600, node_id="node-a", timeout=1)
    try:
        await store.open()
        first, second = users_of(redis_keys.user_prefix("sws:", SITE, "user_0"), 2)
        for user in (first, second):
            await store.connect_device(SITE, user, "phone", [])
        # The bucket's counters now exist, and stay on the old primary with the first user.
        await store.enqueue(SITE, [first], [], Message(event="n", args=[0]))
        move = SlotMove(cluster, user_and_device_keys(second)[0])
        move.start(*user_and_device_keys(second))
        items = [
            (SITE, [first], [], Message(event="n", args=[1])),
            (SITE, [second], [], Message(event="n", args=[2])),
        ]
        with pytest.raises(StoreUnavailable, match="moving"):
            await store.enqueue_all(items)

        move.finish()
        # the failed step stored nothing
        assert [m.args for m in await store.pending(SITE, first, "phone")] == [[0]]
        await store.enqueue_all(items)  # the site's retry, once the slot has moved
        assert [m.args for m in await store.pending(SITE, first, "phone")] == [[0], [1]]
        assert [m.args for m in await store.pending(SITE, second, "phone")] == [[2]]
    finally:
        await store.close()
        cluster.stop()


def two_buckets_on_one_primary(cluster: RedisClusterSet) -> tuple[str, str]:
    """Two users of different buckets (slots) that one primary serves."""
    first = "user_0"
    primary = cluster.primary_of(user_and_device_keys(first)[0]).port
    p = redis_keys.user_prefix("sws:", SITE, first)
    second = next(
        user
        for user in (f"user_{n}" for n in range(1, 20_000))
        if redis_keys.user_prefix("sws:", SITE, user) != p
        and cluster.primary_of(user_and_device_keys(user)[0]).port == primary
    )
    return first, second


async def test_a_call_for_several_slots_of_one_primary_meets_a_slot_on_the_move(
    tmp_path: Path,
) -> None:
    """A primary's buckets share one script call. When one of its slots is on the move, the
    call changes nothing; each slot is then sent on its own: the other bucket's part is
    stored, the moving one's fails, and the site's retry with the same key completes the
    send without a second copy. Acks take the same way."""
    cluster = RedisClusterSet(tmp_path / "cluster-moving", replicas=0)
    cluster.start()
    store = RedisStore(cluster.url, device_ttl=3600, node_id="node-a", timeout=1)
    try:
        await store.open()
        moving, staying = two_buckets_on_one_primary(cluster)
        for user in (moving, staying):
            await store.connect_device(SITE, user, "phone", [])
        await store.enqueue(SITE, [moving, staying], [], Message(event="n", args=[0]))
        move = SlotMove(cluster, user_and_device_keys(moving)[0])
        move.start(*user_and_device_keys(moving))
        sent = Message(event="n", args=[1], idempotency_id="send-1")
        with pytest.raises(OutcomeUnknown, match="a part of the send failed"):
            await store.enqueue(SITE, [moving, staying], [], sent)
        assert [m.args for m in await store.pending(SITE, staying, "phone")] == [[0], [1]]
        acks = await asyncio.gather(
            store.ack(SITE, moving, "phone", [(1, "n")]),
            store.ack(SITE, staying, "phone", [(1, "n")]),
            return_exceptions=True,
        )
        assert all(isinstance(a, StoreUnavailable) and "moving" in str(a) for a in acks)
        # the staying bucket's ack went through on its own (an ack's retry removes nothing)
        assert [m.args for m in await store.pending(SITE, staying, "phone")] == [[1]]
        move.finish()
        assert [m.args for m in await store.pending(SITE, moving, "phone")] == [[0]]

        await store.enqueue(SITE, [moving, staying], [], sent)  # the site's retry
        assert [m.args for m in await store.pending(SITE, moving, "phone")] == [[0], [1]]
        assert [m.args for m in await store.pending(SITE, staying, "phone")] == [[1]]
        removed = await asyncio.gather(
            store.ack(SITE, moving, "phone", [(1, "n"), (2, "n")]),
            store.ack(SITE, staying, "phone", [(1, "n"), (2, "n")]),
        )
        assert removed == [2, 1]
        assert await store.queue_depths([SITE]) == {SITE: 0}
    finally:
        await store.close()
        cluster.stop()
