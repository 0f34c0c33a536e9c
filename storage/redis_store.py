"""Redis store: for production, and for several nodes sharing one Redis.

Each decision is one Lua script (see ``redis_scripts``), so it is atomic across nodes and costs
one round trip however many devices a /send reaches. No ``KEYS``: every key a script touches is
found from the sets that index it (``redis_keys``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from loguru import logger
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import redis_keys as keys
from . import redis_scripts as scripts
from .base import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_MAX_DEVICES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_STEP_MS,
    ORIGINAL_ID_DIGITS,
    AckItem,
    Backlog,
    Connected,
    ConnectItem,
    Delivery,
    EnqueueItem,
    HeadAck,
    Imported,
    ImportedMessage,
    OutcomeUnknown,
    Repeated,
    StoredMessage,
    StoreUnavailable,
)
from .redis_keys import DEFAULT_PREFIX, escape, unescape
from .redis_wire import RedisWire, Script, WriteInDoubt, late
from .store_base import ReadItem, StoreBase

T = TypeVar("T")
# Redis refusing writes, not a bug of ours: out of memory, a replica, a failed snapshot, loading.
REFUSALS = ("OOM", "READONLY", "MISCONF", "LOADING", "BUSY", "NOREPLICAS", "MASTERDOWN")
DEFAULT_TIMEOUT = 5.0  # seconds: commands this long without any reply mean Redis is down
DEFAULT_NODE_DEAD_AFTER = 30.0  # seconds: a node without a heartbeat this long is dead
SWEEP_BATCH, SWEEP_ROUNDS = 500, 20  # entries per script, scripts per sweep
POLICY_CHECK_EVERY = 30.0  # seconds between reads of Redis's maxmemory-policy


class RedisStore(StoreBase):
    def __init__(
        self,
        url: str,
        device_ttl: int,
        node_id: str,
        key_prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        node_dead_after: float = DEFAULT_NODE_DEAD_AFTER,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_devices: int = DEFAULT_MAX_DEVICES,
        step_ms: int = DEFAULT_STEP_MS,
        idempotency_ttl: int = DEFAULT_IDEMPOTENCY_TTL,
        min_replicas: int = 0,
    ) -> None:
        super().__init__(
            device_ttl=device_ttl,
            node_id=node_id,
            max_queue=max_queue,
            max_devices=max_devices,
            step_ms=step_ms,
            idempotency_ttl=idempotency_ttl,
        )
        self.policy_error = ""  # what is wrong with Redis's maxmemory-policy, if anything
        self._beaten = False
        self._policy_checked_at = -POLICY_CHECK_EVERY
        self.url = url
        self.key_prefix = key_prefix
        self.node_dead_after = node_dead_after
        self.wire = RedisWire.from_url(url, timeout)
        self.min_replicas = min_replicas
        self.timeout = timeout
        # WAIT holds its connection until the replicas answer: sends wait on one of their own,
        # and connects and acks do not wait behind them.
        self.send_wire = RedisWire.from_url(url, timeout) if min_replicas else self.wire

    async def open(self) -> None:
        await self.heartbeat()
        if self.policy_error:
            raise StoreUnavailable(self.policy_error)
        self.start_sweeping()

    async def attach(self) -> None:
        await self._check_memory_policy()
        if self.policy_error:
            raise StoreUnavailable(self.policy_error)

    async def _check_memory_policy(self) -> None:
        """Every queue of an offline device carries a TTL, so under any eviction policy but
        ``noeviction`` Redis drops those queues first when memory runs short, without an
        error (managed services default to volatile-lru). INFO, not CONFIG GET: managed
        services allow the one and not the other."""
        self._policy_checked_at = time.monotonic()
        info = await self._call("probe", lambda: self.wire.command(b"INFO", b"memory"))
        policy = next(
            (
                line.split(":", 1)[1].strip()
                for line in info.decode().splitlines()
                if line.startswith("maxmemory_policy:")
            ),
            "noeviction",
        )
        error = (
            ""
            if policy == "noeviction"
            else f"Redis's maxmemory-policy is {policy}: set it to noeviction (CONFIG SET "
            "maxmemory-policy noeviction, or the parameter group of a managed Redis); under "
            "any other Redis evicts queued messages when memory runs short, silently"
        )
        if error != self.policy_error:
            if error:
                logger.error(error)
            else:
                logger.info("Redis's maxmemory-policy is noeviction again")
        self.policy_error = error

    async def _close(self) -> None:
        await self.wire.close()
        if self.send_wire is not self.wire:
            await self.send_wire.close()

    async def _call(self, name: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one round trip, counted in ``stats`` under ``name``; an outage or a refusal
        is a :class:`StoreUnavailable`."""
        started = time.perf_counter()
        try:
            result = await operation()
        except WriteInDoubt as exc:
            self.stats.observe(name, started, failed=True)
            raise OutcomeUnknown(f"Redis went away with the write in flight: {exc}") from exc
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.stats.observe(name, started, failed=True)
            raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
        except ResponseError as exc:
            self.stats.observe(name, started, failed=True)
            if late(exc):
                for wire in {self.wire, self.send_wire}:
                    wire.clock_doubtful()
                raise StoreUnavailable(f"Redis answered too late: {exc}") from exc
            if not any(word in str(exc) for word in REFUSALS):
                raise  # a script error, say: a bug, not an outage
            reason = str(exc).split(". script:")[0]
            if "READONLY" in reason:  # a failover demoted this Redis: find the new primary
                for wire in {self.wire, self.send_wire}:
                    wire.reset(reason[:200])
            raise StoreUnavailable(f"Redis refuses writes: {reason[:200]}") from exc
        self.stats.observe(name, started)
        return result

    async def _replicated(self) -> None:
        """A 200 waits for ``min_replicas`` replicas to have the send's writes (WAIT, for
        every write of the send connection so far). Not within most of the Redis timeout:
        the send's outcome is unknown (the primary has it; a failover now would lose it)."""
        wait_ms = int(self.timeout * 800)
        reached = await self._call(
            "replicate",
            lambda: self.send_wire.command(b"WAIT", self.min_replicas, wait_ms),
        )
        if int(reached) < self.min_replicas:
            raise OutcomeUnknown(
                f"stored on the Redis primary, but {reached} of {self.min_replicas} replicas "
                f"confirmed it within {wait_ms} ms"
            )

    async def _run(self, name: str, script: Script, keys: Sequence[str], *args: Any) -> Any:
        return await self._call(name, lambda: self.wire.run_script(script, keys, args))

    def _prefix(self, site: str) -> str:
        return keys.site_prefix(self.key_prefix, site)

    async def ping(self) -> None:
        """A write, not a PING: Redis answers PING while it refuses writes (out of memory, a
        read-only replica), and then nothing can be stored."""
        key = keys.health(self.key_prefix, self.node_id)
        await self._call("probe", lambda: self.wire.command(b"SET", key, b"1", b"PX", 60_000))
        if self.policy_error:
            raise StoreUnavailable(self.policy_error)

    def _device_keys(self, site: str, user: str, device: str) -> list[str]:
        """What CONNECT_DEVICE and DISCONNECT_DEVICE take as KEYS."""
        p = self._prefix(site)
        return [
            *keys.device_keys(p, user, device),
            *keys.user_keys(p, user),
            keys.node_devices(self.key_prefix, self.node_id),
            *keys.expiring(self.key_prefix),
        ]

    async def heartbeat(self) -> list[str]:
        """Also reads Redis's maxmemory-policy every ``POLICY_CHECK_EVERY`` seconds."""
        if time.monotonic() - self._policy_checked_at >= POLICY_CHECK_EVERY:
            await self._check_memory_policy()
        absent, dead = await self._run(
            "heartbeat",
            scripts.HEARTBEAT,
            [keys.nodes(self.key_prefix), *keys.expiring(self.key_prefix)],
            self.key_prefix,
            self.node_id,
            int(self.node_dead_after * 1000),
            self.device_ttl * 1000,
        )
        if int(absent) and self._beaten:
            self.taken_for_dead = True
        self._beaten = True
        return [node.decode() for node in dead or []]

    async def sweep(self) -> None:
        """Takes expired devices out of their users' sets and expired users out of their
        rooms' members, at most ``SWEEP_BATCH`` of each per script, for a bounded time."""
        for _ in range(SWEEP_ROUNDS):
            removed, looked = await self._run(
                "sweep", scripts.SWEEP, keys.expiring(self.key_prefix), SWEEP_BATCH
            )
            self.stats.swept += int(removed)
            if int(looked) < SWEEP_BATCH:
                return

    async def _write_connects(self, items: Sequence[ConnectItem]) -> list[Connected]:
        """Connections arriving together (a node restart, a network blip) share a round trip."""

        node = keys.node_field(self.node_id)
        calls = [
            (
                scripts.CONNECT_DEVICE,
                self._device_keys(site, user, device),
                [self._prefix(site), node, escape(user), escape(device), self.max_devices]
                + [escape(room) for room in shared_rooms],
            )
            for site, user, device, shared_rooms in items
        ]
        return [
            Connected(
                first=int(conns) == 1,
                overflowed=int(overflowed) == 1,
                refused=int(conns) < 0,
                retired="\t".join(unescape(name) for name in retired.decode().split("\t"))
                if retired
                else "",
            )
            for conns, overflowed, retired in await self._call(
                "connect_device", lambda: self.wire.run_scripts(calls)
            )
        ]

    async def disconnect_device(self, site: str, user: str, device: str, *, forget: bool) -> bool:
        left = await self._run(
            "disconnect_device",
            scripts.DISCONNECT_DEVICE,
            self._device_keys(site, user, device),
            self._prefix(site),
            keys.node_field(self.node_id),
            escape(user),
            escape(device),
            self.device_ttl * 1000,
            "1" if forget else "0",
        )
        return int(left) <= 0

    async def _write_enqueues(self, items: Sequence[EnqueueItem]) -> list[list[Delivery]]:
        """The messages of concurrent /sends, in submit order, as many as one script stores
        in ``step_ms``."""
        args: list[Any] = [self.max_queue, self.step_ms, self.idempotency_ttl * 1000]
        for site, users, shared_rooms, message in items:
            p = self._prefix(site)
            idem = keys.idempotency(p, message.idempotency_id) if message.idempotency_id else ""
            args += (p, message.event, message.encode(), idem)
            args += (len(users), len(shared_rooms))
            args += map(escape, users)
            args += map(escape, shared_rooms)
        flat = await self._call(
            "enqueue", lambda: self.send_wire.run_script(scripts.ENQUEUE, [], args)
        )
        if self.min_replicas:
            await self._replicated()
        results: list[list[Delivery]] = []
        i = 1
        for site, _users, _rooms, _message in items[: int(flat[0])]:
            count, i = int(flat[i]), i + 1
            if count < 0:  # an idempotent repeat: the first attempt's count and deliveries
                stored, count, i = int(flat[i]), int(flat[i + 1]), i + 2
                results.append(Repeated(stored, _deliveries(flat, i, count)))
                i += 4 * count
                continue
            results.append(_deliveries(flat, i, count))
            i += 4 * count
            full, i = int(flat[i]), i + 1
            for j in range(i, i + 2 * full, 2):
                self.stats.overflowed(
                    site, unescape(flat[j].decode()), unescape(flat[j + 1].decode()), self.max_queue
                )
            i += 2 * full
        return results

    async def _import_queue(
        self, site: str, user: str, device: str, messages: Sequence[ImportedMessage], ttl: int
    ) -> Imported:
        p = self._prefix(site)
        args: list[Any] = [p, escape(user), escape(device), ttl * 1000, self.max_queue]
        for imported in messages:
            message = imported.message
            args += (
                f"{imported.original_id:0{ORIGINAL_ID_DIGITS}d}",
                message.event,
                message.encode(),
            )
        names = [
            *keys.device_keys(p, user, device),
            *keys.user_keys(p, user)[:2],
            keys.expiring(self.key_prefix)[1],
        ]
        stored, known, full = await self._run("import_queue", scripts.IMPORT_QUEUE, names, *args)
        return Imported(stored=int(stored), known=int(known), full=int(full))

    async def _read_queues(self, items: Sequence[ReadItem]) -> list[Backlog]:
        """Queues read together (devices reconnecting at once) share a round trip."""

        commands: list[tuple[Any, ...]] = []
        for site, user, device, _ in items:
            dev, msg, _ = keys.device_keys(self._prefix(site), user, device)
            commands += [(b"HGET", dev, b"seq"), (b"HGETALL", msg)]
        flat = await self._call("read_queue", lambda: self.wire.pipeline(commands))
        backlogs = []
        for (*_, after_seq), last, records in zip(items, flat[::2], flat[1::2], strict=True):
            ordered = sorted(zip(map(int, records[::2]), records[1::2], strict=True))
            messages = [StoredMessage.decode(seq, rec) for seq, rec in ordered if seq > after_seq]
            # The seq is read first: a message stored between the two reads is in ``records``.
            last_seq = max(int(last or 0), ordered[-1][0] if ordered else 0)
            backlogs.append(Backlog(messages, last_seq))
        return backlogs

    async def _write_acks(self, items: Sequence[AckItem]) -> list[int]:
        names: list[str] = []
        args: list[Any] = []
        for site, user, device, acked in items:
            _, msg, evt = keys.device_keys(self._prefix(site), user, device)
            names += [msg, evt]
            args.append(len(acked))
            for seq, event in acked:
                args += [seq, keys.event_member(event, seq)]
        removed = await self._run("ack", scripts.ACK, names, *args)
        return [int(count) for count in removed]

    async def ack_head(self, site: str, user: str, device: str, seq: int, event: str) -> HeadAck:
        through = int(
            await self._run(
                "ack_head",
                scripts.ACK_HEAD,
                keys.device_keys(self._prefix(site), user, device),
                seq,
                event,
            )
        )
        if through < 0:
            return HeadAck(cleared=False)
        return HeadAck(cleared=True, cleared_through=through)

    async def _room_members(self, site: str, room: str) -> set[str]:
        prefix = self._prefix(site)
        key = keys.members(prefix, room)
        found = await self._call("room_members", lambda: self.wire.command(b"SMEMBERS", key))
        members = [member.decode() for member in found]
        exists = [(b"EXISTS", keys.user_key(prefix, name)) for name in members]
        alive = await self._call("room_members", lambda: self.wire.pipeline(exists))
        return {unescape(name) for name, live in zip(members, alive, strict=True) if live}

    async def alive_nodes(self) -> list[str]:
        async def read() -> list[Any]:
            seconds, micros = await self.wire.command(b"TIME")
            now = int(seconds) * 1000 + int(micros) // 1000
            since = now - int(self.node_dead_after * 1000)
            nodes = keys.nodes(self.key_prefix)
            return list(await self.wire.command(b"ZRANGEBYSCORE", nodes, since, b"+inf"))

        return sorted(node.decode() for node in await self._call("alive_nodes", read))

    async def queue_depths(self, sites: Sequence[str]) -> dict[str, int]:
        depths = {}
        for site in sites:
            pattern = keys.messages_pattern(self._prefix(site))

            async def count(pattern: str = pattern) -> int:
                total, cursor = 0, b"0"
                while True:
                    cursor, found = await self.wire.command(
                        b"SCAN", cursor, b"MATCH", pattern, b"COUNT", 1000
                    )
                    if found:
                        total += sum(await self.wire.pipeline([(b"HLEN", k) for k in found]))
                    if cursor == b"0":
                        return total

            depths[site] = await self._call("queue_depths", count)
        return depths


def _deliveries(flat: list[Any], at: int, count: int) -> list[Delivery]:
    """``count`` deliveries of ENQUEUE's answer from ``at``: user, device, seq, nodes."""
    deliveries = []
    for j in range(at, at + 4 * count, 4):
        nodes = flat[j + 3]
        deliveries.append(
            Delivery(
                unescape(flat[j].decode()),
                unescape(flat[j + 1].decode()),
                int(flat[j + 2]),
                tuple(nodes.decode().split(",")) if nodes else (),
            )
        )
    return deliveries
