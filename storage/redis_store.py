"""Redis store: for production, and for several nodes sharing one Redis or one Redis Cluster.

Each decision is one Lua script per bucket (see ``redis_keys`` and ``redis_scripts``), atomic
across nodes: on a single Redis a /send is one script however many devices it reaches; on
Redis Cluster it is one script per primary it reaches, run in parallel, each bucket's part
in it atomic. No ``KEYS``: every key a script touches is found from the sets that index it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from loguru import logger
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import redis_keys as keys
from . import redis_layout
from . import redis_scripts as scripts
from .redis_keys import BUCKETS, DEFAULT_PREFIX, escape, unescape
from .redis_wire import ClusterWire, RedisWire, Script, WriteInDoubt, late, wire_for
from .store import (
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
    DeviceState,
    EnqueueItem,
    HeadAck,
    Imported,
    ImportedMessage,
    Message,
    OutcomeUnknown,
    Repeated,
    StoredMessage,
    StoreUnavailable,
)
from .store_base import ReadItem, StoreBase

T = TypeVar("T")
# Redis refusing writes, not a bug of ours: out of memory, a replica, a failed snapshot, loading.
REFUSALS = ("OOM", "READONLY", "MISCONF", "LOADING", "BUSY", "NOREPLICAS", "MASTERDOWN")
# Redis Cluster still moving a slot, or failing over, when the wire stopped retrying.
ELSEWHERE = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "non local key")
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
        self.wire: RedisWire | ClusterWire = wire_for(url, timeout)
        self.min_replicas = min_replicas
        self.timeout = timeout
        # WAIT holds its connection until the replicas answer: sends wait on one of their own,
        # and connects and acks do not wait behind them.
        self.send_wire = wire_for(url, timeout) if min_replicas else self.wire

    async def open(self) -> None:
        await self.attach()
        await self.heartbeat()
        self.start_sweeping()

    async def attach(self) -> None:
        await self._call("connect", self.wire.start)
        if self.send_wire is not self.wire:
            await self._call("connect", self.send_wire.start)
        await self._check_memory_policy()
        if self.policy_error:
            raise StoreUnavailable(self.policy_error)
        await self._call(
            "upgrade",
            lambda: redis_layout.upgrade(self.wire, self.key_prefix, self.node_dead_after),
        )

    async def _check_memory_policy(self) -> None:
        """Every queue of an offline device carries a TTL, so under any eviction policy but
        ``noeviction`` Redis drops those queues first when memory runs short, without an
        error (managed services default to volatile-lru). INFO, not CONFIG GET: managed
        services allow the one and not the other."""
        self._policy_checked_at = time.monotonic()

        async def infos() -> list[Any]:
            primaries = self.wire.primaries()
            return list(await asyncio.gather(*(w.command(b"INFO", b"memory") for w in primaries)))

        policies = {
            line.split(":", 1)[1].strip()
            for info in await self._call("probe", infos)
            for line in info.decode().splitlines()
            if line.startswith("maxmemory_policy:")
        }
        policy = next(
            (policy for policy in sorted(policies) if policy != "noeviction"), "noeviction"
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
            if any(word in str(exc) for word in ELSEWHERE):
                raise StoreUnavailable(f"Redis Cluster is moving: {str(exc)[:200]}") from exc
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

        async def wait() -> int:  # on each primary: the send's parts may be on any of them
            primaries = self.send_wire.primaries()
            counts = await asyncio.gather(
                *(w.command(b"WAIT", self.min_replicas, wait_ms) for w in primaries)
            )
            return min(int(count) for count in counts)

        reached = await self._call("replicate", wait)
        if reached < self.min_replicas:
            raise OutcomeUnknown(
                f"stored on the Redis primary, but {reached} of {self.min_replicas} replicas "
                f"confirmed it within {wait_ms} ms"
            )

    async def _run(self, name: str, script: Script, keys: Sequence[str], *args: Any) -> Any:
        return await self._call(name, lambda: self.wire.run_script(script, keys, args))

    async def _scripts(
        self, name: str, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        return await self._call(name, lambda: self.wire.run_scripts(calls))

    async def _release(self, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]) -> None:
        await self._scripts("heartbeat", calls)

    def _p(self, site: str, user: str) -> str:
        return keys.user_prefix(self.key_prefix, site, user)

    async def ping(self) -> None:
        """A write, not a PING, on every primary: Redis answers PING while it refuses writes
        (out of memory, a read-only replica), and then nothing can be stored."""
        probes: dict[int, str] = {}
        for bucket in range(BUCKETS):  # one bucket each primary serves
            key = keys.bucket_tag(self.key_prefix, bucket) + keys.health("", self.node_id)
            probes.setdefault(id(self.wire.node_wire(key)), key)
        commands = [(b"SET", key, b"1", b"PX", 60_000) for key in probes.values()]
        await self._call("probe", lambda: self.wire.pipeline(commands))
        if self.policy_error:
            raise StoreUnavailable(self.policy_error)

    def _device_keys(self, site: str, user: str, device: str) -> list[str]:
        """What CONNECT_DEVICE and DISCONNECT_DEVICE take as KEYS."""
        p = self._p(site, user)
        g = keys.bucket_of_prefix(p)
        return [
            *keys.device_keys(p, user, device),
            *keys.user_keys(p, user),
            keys.node_devices(g, self.node_id),
            *keys.expiring(g),
        ]

    async def heartbeat(self) -> list[str]:
        """Also reads Redis's maxmemory-policy every ``POLICY_CHECK_EVERY`` seconds."""
        if time.monotonic() - self._policy_checked_at >= POLICY_CHECK_EVERY:
            await self._check_memory_policy()
        nodes = keys.nodes(self.key_prefix)
        absent, dead = await self._run(
            "heartbeat", scripts.BEAT, [nodes], self.node_id, int(self.node_dead_after * 1000)
        )
        if int(absent) and self._beaten:
            self.taken_for_dead = True
        self._beaten = True
        released = [node.decode() for node in dead or []]
        for node in released:
            calls = [
                (
                    scripts.RELEASE_NODE,
                    [keys.node_devices(g, node), *keys.expiring(g)],
                    [node, self.device_ttl * 1000],
                )
                for g in (keys.bucket_tag(self.key_prefix, b) for b in range(BUCKETS))
            ]
            await self._release(calls)
            await self._run("heartbeat", scripts.FORGET_NODE, [nodes], node)
        return released

    async def sweep(self) -> None:
        """Takes expired devices out of their users' sets and expired users out of their
        rooms' members, at most ``SWEEP_BATCH`` of each per bucket and script, for a bounded
        number of rounds; a room left without members in a bucket leaves the room's index."""
        due = list(range(BUCKETS))
        for _ in range(SWEEP_ROUNDS):
            calls = [
                (scripts.SWEEP, keys.expiring(keys.bucket_tag(self.key_prefix, b)), [SWEEP_BATCH])
                for b in due
            ]
            replies = await self._scripts("sweep", calls)
            emptied: list[tuple[int, str]] = []
            again = []
            for bucket, (removed, looked, *rooms) in zip(due, replies, strict=True):
                self.stats.swept += int(removed)
                if int(looked) >= SWEEP_BATCH:
                    again.append(bucket)
                emptied += [(bucket, room.decode()) for room in rooms]
            if emptied:
                await self._prune(emptied)
            if not again:
                return
            due = again

    async def _prune(self, emptied: Sequence[tuple[int, str]]) -> None:
        """Take buckets out of rooms' indexes where a connect added no member since: the
        version is read before the members are counted (see PRUNE_ROOM)."""
        found = []
        for bucket, entry in emptied:
            p, _, room = entry.partition(keys.HELD_SEP)
            site = unescape(p[len(keys.bucket_tag(self.key_prefix, bucket)) : -1])
            idx = keys.room_buckets(self.key_prefix, site, unescape(room))
            found.append((bucket, idx, keys.members(p, unescape(room))))
        versions = await self._call(
            "sweep", lambda: self.wire.pipeline([(b"HGET", idx, b) for b, idx, _ in found])
        )
        counts = await self._call(
            "sweep", lambda: self.wire.pipeline([(b"SCARD", members) for _, _, members in found])
        )
        calls = [
            (scripts.PRUNE_ROOM, [idx], [bucket, version])
            for (bucket, idx, _), version, count in zip(found, versions, counts, strict=True)
            if version is not None and int(count) == 0
        ]
        if calls:
            await self._call("sweep", lambda: self.wire.run_scripts(calls))

    async def _write_connects(self, items: Sequence[ConnectItem]) -> list[Connected]:
        """Connections arriving together (a node restart, a network blip) share a round trip.
        Each room's index then lists the user's bucket (after the script: see PRUNE_ROOM;
        a bump repeated changes nothing the prune relies on)."""
        node = self.node_id
        calls = [
            (
                scripts.CONNECT_DEVICE,
                self._device_keys(site, user, device),
                [self._p(site, user), node, escape(user), escape(device), self.max_devices]
                + [escape(room) for room in shared_rooms],
            )
            for site, user, device, shared_rooms in items
        ]
        indexed = [
            (
                b"HINCRBY",
                keys.room_buckets(self.key_prefix, site, room),
                keys.bucket_number(self._p(site, user)),
                1,
            )
            for site, user, _device, shared_rooms in items
            for room in shared_rooms
        ]

        async def connect() -> list[Any]:
            return await self.wire.run_scripts_then(calls, indexed)

        return [
            Connected(
                first=int(conns) == 1,
                overflowed=int(overflowed) == 1,
                refused=int(conns) < 0,
                retired="\t".join(unescape(name) for name in retired.decode().split("\t"))
                if retired
                else "",
                backlog=_backlog(*queue) if queue else Backlog([], 0),
            )
            for conns, overflowed, retired, *queue in await self._call("connect_device", connect)
        ]

    async def disconnect_device(self, site: str, user: str, device: str, *, forget: bool) -> bool:
        left = await self._run(
            "disconnect_device",
            scripts.DISCONNECT_DEVICE,
            self._device_keys(site, user, device),
            self._p(site, user),
            self.node_id,
            escape(user),
            escape(device),
            self.device_ttl * 1000,
            "1" if forget else "0",
        )
        return int(left) <= 0

    async def _write_enqueues(self, items: Sequence[EnqueueItem]) -> list[list[Delivery]]:
        """The messages of concurrent /sends, in submit order. On a single Redis, one script
        stores as many as fit in ``step_ms``; on Redis Cluster, one script per primary, the
        primaries at once, as many steps as ``items`` take."""
        indexes = await self._room_indexes(
            {(site, room) for site, _users, rooms, _message in items for room in rooms}
        )
        plan = [self._parts(item, indexes) for item in items]
        if isinstance(self.wire, RedisWire):
            return await self._enqueue_one_redis(items, plan, indexes)
        return await self._enqueue_cluster(items, plan, indexes)

    async def _room_indexes(
        self, rooms: set[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[int, bytes]]:
        """The buckets that may hold members of each room, with their versions."""
        if not rooms:
            return {}
        ordered = sorted(rooms)
        found = await self._call(
            "enqueue",
            lambda: self.wire.pipeline(
                [(b"HGETALL", keys.room_buckets(self.key_prefix, s, r)) for s, r in ordered]
            ),
        )
        return {
            room: {int(found_room[i]): found_room[i + 1] for i in range(0, len(found_room), 2)}
            for room, found_room in zip(ordered, found, strict=True)
        }

    def _parts(
        self, item: EnqueueItem, indexes: dict[tuple[str, str], dict[int, bytes]]
    ) -> list[tuple[list[str], list[Any], str]]:
        """One message's parts, one per bucket it reaches: (KEYS, ARGV group, bucket prefix)."""
        site, users, rooms, message = item
        by_bucket: dict[str, tuple[list[str], list[str]]] = {}
        for user in dict.fromkeys(users):  # each once: ENQUEUE takes the named users as given
            by_bucket.setdefault(self._p(site, user), ([], []))[0].append(escape(user))
        for room in rooms:
            for bucket in indexes.get((site, room), {}):
                p = keys.site_in_bucket(self.key_prefix, bucket, site)
                by_bucket.setdefault(p, ([], []))[1].append(escape(room))
        parts = []
        for p, (part_users, part_rooms) in sorted(by_bucket.items()):
            names = [keys.depth(keys.bucket_of_prefix(p))]  # ENQUEUE counts what it stores
            if message.idempotency_id:
                names.append(keys.idempotency(p, message.idempotency_id))
            group = [p, len(part_users), len(part_rooms), *part_users, *part_rooms]
            parts.append((names, group, p))
        return parts

    @staticmethod
    def _message_args(message: Message, parts: int) -> list[Any]:
        """What ENQUEUE takes once per message, before its parts."""
        return [message.event, message.encode(), "1" if message.idempotency_id else "0", parts]

    def _enqueue_call(
        self,
        items: Sequence[EnqueueItem],
        plan: list[list[tuple[list[str], list[Any], str]]],
        order: Sequence[tuple[int, int]],
        names_in_args: bool,
    ) -> tuple[Script, list[str], list[Any]]:
        """ENQUEUE for these parts, (message, part) in message order: their keys declared,
        or (for the buckets of several slots on one primary of Redis Cluster) named at
        ARGV's end."""
        guarded = "0" if isinstance(self.wire, RedisWire) else "1"
        names: list[str] = []
        args: list[Any] = []
        at = 0
        while at < len(order):
            m = order[at][0]
            end = at
            while end < len(order) and order[end][0] == m:
                end += 1
            args += self._message_args(items[m][3], end - at)
            for _, k in order[at:end]:
                names += plan[m][k][0]
                args += plan[m][k][1]
            at = end
        head = [self.max_queue, self.step_ms, self.idempotency_ttl * 1000, guarded]
        if names_in_args:
            return (scripts.ENQUEUE, names[:1], [*head, len(names), *args, *names])
        return (scripts.ENQUEUE, names, [*head, 0, *args])

    async def _enqueue_one_redis(
        self,
        items: Sequence[EnqueueItem],
        plan: list[list[tuple[list[str], list[Any], str]]],
        indexes: dict[tuple[str, str], dict[int, bytes]],
    ) -> list[list[Delivery]]:
        order = [(m, k) for m, parts in enumerate(plan) for k in range(len(parts))]
        call = self._enqueue_call(items, plan, order, names_in_args=False)
        flat: list[Any] = []
        if order:
            flat = await self._call("enqueue", lambda: self.send_wire.run_script(*call))
            if self.min_replicas:
                await self._replicated()
        handled = int(flat[0]) if flat else 0
        answers = _part_answers(flat, handled)
        results: list[list[Delivery]] = []
        at = 0
        for item, parts in zip(items, plan, strict=True):
            if at + len(parts) > handled and parts:
                break
            results.append(
                await self._message_result(item, parts, answers[at : at + len(parts)], indexes)
            )
            at += len(parts)
        return results

    async def _enqueue_cluster(
        self,
        items: Sequence[EnqueueItem],
        plan: list[list[tuple[list[str], list[Any], str]]],
        indexes: dict[tuple[str, str], dict[int, bytes]],
    ) -> list[list[Delivery]]:
        by_slot: dict[int | None, list[tuple[int, int]]] = {}  # slot -> (message, part) in order
        for m, parts in enumerate(plan):
            for k, (names, _group, _p) in enumerate(parts):
                by_slot.setdefault(self.wire.slot_of(names[0]), []).append((m, k))
        answers: dict[tuple[int, int], _PartAnswer] = {}
        wire = self.send_wire
        assert isinstance(wire, ClusterWire)

        async def run_all() -> None:
            """A step of every primary's parts in one call each, the primaries in parallel,
            then again for the parts left (a step is ``step_ms``). The slots of a call that
            met a slot on the move go one call each from then on, following redirections."""
            waiting = {slot: order for slot, order in by_slot.items() if order}
            alone: set[int | None] = set()
            errors: list[Exception] = []
            while waiting and not errors:
                by_primary: dict[str, list[int | None]] = {}
                for slot, order in waiting.items():
                    if slot not in alone:
                        first = plan[order[0][0]][order[0][1]][0][0]
                        by_primary.setdefault(wire.primary_of(first), []).append(slot)
                for slots in list(by_primary.values()):
                    if len(slots) == 1:  # a primary's only slot: its keys declared, as Redis
                        alone.update(slots)  # Cluster checks them before the script runs
                by_primary = {name: slots for name, slots in by_primary.items() if len(slots) > 1}
                merged = [
                    sorted(p for s in slots for p in waiting[s]) for slots in by_primary.values()
                ]
                single = [slot for slot in waiting if slot in alone]
                replies = await asyncio.gather(
                    wire.script_replies_once(
                        [self._enqueue_call(items, plan, order, True) for order in merged]
                    ),
                    wire.script_replies(
                        [self._enqueue_call(items, plan, waiting[slot], False) for slot in single]
                    ),
                )
                sent = [
                    (order, slots, flat, True)
                    for order, slots, flat in zip(
                        merged, by_primary.values(), replies[0], strict=True
                    )
                ] + [
                    (waiting[slot], [slot], flat, False)
                    for slot, flat in zip(single, replies[1], strict=True)
                ]
                for order, slots, flat, first_try in sent:
                    if isinstance(flat, Exception):
                        if first_try and wire.redirected(flat):
                            alone.update(slots)  # nothing stored: again, one call per slot
                            continue
                        errors.append(flat)
                        for slot in slots:
                            del waiting[slot]
                        continue
                    handled = int(flat[0])
                    for key, answer in zip(order, _part_answers(flat, handled), strict=False):
                        answers[key] = answer
                    for slot in slots:
                        left = [part for part in waiting[slot] if part not in answers]
                        if left:
                            waiting[slot] = left
                        else:
                            del waiting[slot]
            if errors:
                doubt = answers or any(isinstance(e, WriteInDoubt) for e in errors)
                if doubt:  # some parts stored: a retry with the same key completes the rest
                    raise WriteInDoubt(f"a part of the send failed: {errors[0]}") from errors[0]
                raise errors[0]

        await self._call("enqueue", run_all)
        if self.min_replicas:
            await self._replicated()
        return [
            await self._message_result(
                item, parts, [answers[(m, k)] for k in range(len(parts))], indexes
            )
            for m, (item, parts) in enumerate(zip(items, plan, strict=True))
        ]

    async def _message_result(
        self,
        item: EnqueueItem,
        parts: list[tuple[list[str], list[Any], str]],
        answers: list[_PartAnswer],
        indexes: dict[tuple[str, str], dict[int, bytes]],
    ) -> list[Delivery]:
        site = item[0]
        deliveries: list[Delivery] = []
        repeated, stored_before = False, 0
        empty: list[tuple[int, str]] = []
        for (_names, _group, p), answer in zip(parts, answers, strict=True):
            deliveries += answer.deliveries
            if answer.repeated is not None:
                repeated = True
                stored_before += answer.repeated
            else:
                stored_before += len(answer.deliveries)
            for user, device in answer.full:
                self.stats.overflowed(site, user, device, self.max_queue)
            empty += [(keys.bucket_number(p), room) for room in answer.empty_rooms]
        if empty:
            await self._prune_after_send(site, empty, indexes)
        if repeated:
            return Repeated(stored_before, deliveries)
        return deliveries

    async def _prune_after_send(
        self,
        site: str,
        empty: list[tuple[int, str]],
        indexes: dict[tuple[str, str], dict[int, bytes]],
    ) -> None:
        """A bucket a send found without members of a room leaves the room's index, unless a
        connect bumped its version since the send read the index. Best effort: a bucket left
        in an index costs a look, never a message."""
        calls = []
        for bucket, room in empty:
            version = indexes.get((site, unescape(room)), {}).get(bucket)
            if version is not None:
                idx = keys.room_buckets(self.key_prefix, site, unescape(room))
                calls.append((scripts.PRUNE_ROOM, [idx], [bucket, version]))
        if calls:
            try:
                await self._call("enqueue", lambda: self.wire.run_scripts(calls))
            except StoreUnavailable:
                pass

    async def _import_queue(
        self, site: str, user: str, device: str, messages: Sequence[ImportedMessage], ttl: int
    ) -> Imported:
        p = self._p(site, user)
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
            keys.expiring(keys.bucket_of_prefix(p))[1],
        ]
        stored, known, full = await self._run("import_queue", scripts.IMPORT_QUEUE, names, *args)
        return Imported(stored=int(stored), known=int(known), full=int(full))

    async def _read_queues(self, items: Sequence[ReadItem]) -> list[Backlog]:
        """Queues read together (devices reconnecting at once) share a round trip."""

        commands: list[tuple[Any, ...]] = []
        for site, user, device, _ in items:
            dev, msg = keys.device_keys(self._p(site, user), user, device)
            commands += [(b"HMGET", dev, b"seq", b"conns"), (b"HGETALL", msg)]
        flat = await self._call("read_queue", lambda: self.wire.pipeline(commands))
        backlogs = []
        for (*_, after_seq), (last, conns), records in zip(
            items, flat[::2], flat[1::2], strict=True
        ):
            if conns is None:  # the device expired; its queue waits for the sweep
                backlogs.append(Backlog([], 0))
                continue
            backlogs.append(_backlog(last, records, after_seq))
        return backlogs

    async def _write_acks(self, items: Sequence[AckItem]) -> list[int]:
        """Every ack of this moment: one script (on Redis Cluster, one per primary), each
        bucket's depth counted down once per site."""
        wire = self.wire
        calls: dict[str, dict[str, tuple[str, list[int]]]] = {}  # where -> p -> depth, items
        for i, (site, user, _device, _acked) in enumerate(items):
            p = self._p(site, user)
            depth = keys.depth(keys.bucket_of_prefix(p))
            where = wire.primary_of(depth) if isinstance(wire, ClusterWire) else ""
            calls.setdefault(where, {}).setdefault(p, (depth, []))[1].append(i)
        removed = [0] * len(items)

        def count(groups: dict[str, tuple[str, list[int]]], counts: list[Any]) -> None:
            members = [i for _, group in groups.values() for i in group]
            for i, n in zip(members, counts, strict=True):
                removed[i] = int(n)

        async def write() -> None:
            if not isinstance(wire, ClusterWire):
                (groups,) = calls.values()
                (counts,) = await wire.run_scripts([self._ack_call(items, groups, False)])
                count(groups, counts)
                return
            slots_of = [{wire.slot_of(d) for d, _ in g.values()} for g in calls.values()]
            replies = await wire.script_replies_once(
                [
                    self._ack_call(items, groups, len(slots) > 1)
                    for groups, slots in zip(calls.values(), slots_of, strict=True)
                ]
            )
            by_slot: dict[int | None, dict[str, tuple[str, list[int]]]] = {}
            for groups, reply in zip(calls.values(), replies, strict=True):
                if isinstance(reply, Exception) and not wire.redirected(reply):
                    raise reply
                if not isinstance(reply, Exception):
                    count(groups, reply)
                    continue
                for p, group in groups.items():  # a slot moved: one call per slot instead
                    by_slot.setdefault(wire.slot_of(group[0]), {})[p] = group
            if by_slot:
                slots = list(by_slot.values())
                answers = await wire.run_scripts(
                    [self._ack_call(items, groups, False) for groups in slots]
                )
                for groups, counts in zip(slots, answers, strict=True):
                    count(groups, counts)

        await self._call("ack", write)
        return removed

    @staticmethod
    def _ack_call(
        items: Sequence[AckItem], groups: dict[str, tuple[str, list[int]]], names_in_args: bool
    ) -> tuple[Script, list[str], list[Any]]:
        """ACK for these groups (a site in a bucket each): their keys declared, or (for
        buckets of several slots on one primary of Redis Cluster) named at ARGV's end."""
        names = [depth for depth, _ in groups.values()]
        args: list[Any] = [0, len(groups)]
        fields: list[Any] = []
        for p, (_, members) in groups.items():
            args += [keys.site_field(p), len(members)]
            for i in members:
                _site, user, device, acked = items[i]
                names.append(keys.device_keys(p, user, device)[1])
                fields.append(len(acked))
                fields += [keys.message_field(seq, event) for seq, event in acked]
        if names_in_args:
            args[0] = len(names)
            return (scripts.ACK, names[:1], args + fields + names)
        return (scripts.ACK, names, args + fields)

    async def devices_of(self, site: str, user: str) -> list[DeviceState]:
        p = self._p(site, user)
        devices_key = keys.user_keys(p, user)[1]
        names = await self._call("devices_of", lambda: self.wire.command(b"SMEMBERS", devices_key))
        escaped = sorted(name.decode() for name in names)
        commands: list[tuple[Any, ...]] = []
        for name in escaped:
            dev, msg = keys.device_keys(p, user, unescape(name))
            commands += [(b"HGETALL", dev), (b"PTTL", dev), (b"HLEN", msg)]
        flat = await self._call("devices_of", lambda: self.wire.pipeline(commands))
        found = []
        for i, name in enumerate(escaped):
            fields, ttl, queued = flat[3 * i : 3 * i + 3]
            if ttl == -2:  # expired: its name waits in the set for the sweep
                continue
            state = {k.decode(): v for k, v in zip(fields[::2], fields[1::2], strict=True)}
            nodes = tuple(
                sorted(f[len(keys.NODE_FIELD) :] for f in state if f.startswith(keys.NODE_FIELD))
            )
            expires = None if ttl < 0 else ttl / 1000
            conns = int(state.get("conns", 0))
            found.append(DeviceState(unescape(name), conns, int(queued), expires, nodes))
        return found

    async def purge_queue(self, site: str, user: str, device: str) -> int | None:
        names = keys.device_keys(self._p(site, user), user, device)
        purged = int(await self._run("purge_queue", scripts.PURGE_QUEUE, names))
        return None if purged < 0 else purged

    async def online(self, site: str, users: Sequence[str]) -> set[str]:
        if not users:
            return set()
        commands = [(b"HGET", keys.user_keys(self._p(site, u), u)[0], b"conns") for u in users]
        counts = await self._call("online", lambda: self.wire.pipeline(commands))
        return {user for user, conns in zip(users, counts, strict=True) if int(conns or 0) > 0}

    async def ack_head(self, site: str, user: str, device: str, seq: int, event: str) -> HeadAck:
        through = int(
            await self._run(
                "ack_head",
                scripts.ACK_HEAD,
                keys.device_keys(self._p(site, user), user, device),
                seq,
                event,
            )
        )
        if through < 0:
            return HeadAck(cleared=False)
        return HeadAck(cleared=True, cleared_through=through)

    async def _room_members(self, site: str, room: str) -> set[str]:
        (buckets,) = (await self._room_indexes({(site, room)})).values()
        prefixes = [keys.site_in_bucket(self.key_prefix, b, site) for b in sorted(buckets)]
        found = await self._call(
            "room_members",
            lambda: self.wire.pipeline([(b"SMEMBERS", keys.members(p, room)) for p in prefixes]),
        )
        candidates = list(
            dict.fromkeys(
                (p, m.decode().partition(keys.SEP)[0])  # a device entry's user, escaped
                for p, members in zip(prefixes, found, strict=True)
                for m in members
            )
        )
        alive = await self._call(
            "room_members",
            lambda: self.wire.pipeline([(b"EXISTS", keys.user_key(p, m)) for p, m in candidates]),
        )
        return {unescape(name) for (_, name), live in zip(candidates, alive, strict=True) if live}

    async def alive_nodes(self) -> list[str]:
        nodes = keys.nodes(self.key_prefix)

        async def read() -> list[Any]:
            wire = self.wire.node_wire(nodes)
            seconds, micros = await wire.command(b"TIME")
            now = int(seconds) * 1000 + int(micros) // 1000
            since = now - int(self.node_dead_after * 1000)
            return list(await wire.command(b"ZRANGEBYSCORE", nodes, since, b"+inf"))

        return sorted(node.decode() for node in await self._call("alive_nodes", read))

    async def queue_depths(self, sites: Sequence[str]) -> dict[str, int]:
        """From each bucket's depth counter: BUCKETS reads whatever the keyspace holds."""
        commands = [
            (b"HGETALL", keys.depth(keys.bucket_tag(self.key_prefix, b))) for b in range(BUCKETS)
        ]
        found = await self._call("queue_depths", lambda: self.wire.pipeline(commands))
        totals: dict[str, int] = {}
        for flat in found:
            for field, count in zip(flat[::2], flat[1::2], strict=True):
                site = unescape(field.decode())
                totals[site] = totals.get(site, 0) + int(count)
        return {site: max(totals.get(site, 0), 0) for site in sites}


class _PartAnswer:
    """What ENQUEUE answered for one part."""

    __slots__ = ("deliveries", "empty_rooms", "full", "repeated")

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.full: list[tuple[str, str]] = []
        self.empty_rooms: list[str] = []
        self.repeated: int | None = None  # a part recorded before: what it stored then


def _part_answers(flat: list[Any], handled: int) -> list[_PartAnswer]:
    """ENQUEUE's flat answer, per part."""
    answers = []
    i = 1
    for _ in range(handled):
        answer = _PartAnswer()
        count, i = int(flat[i]), i + 1
        if count < 0:
            answer.repeated, count, i = int(flat[i]), int(flat[i + 1]), i + 2
        answer.deliveries = _deliveries(flat, i, count)
        i += 3 * count
        full, i = int(flat[i]), i + 1
        answer.full = [keys.split_device_entry(flat[j].decode()) for j in range(i, i + full)]
        i += full
        empty, i = int(flat[i]), i + 1
        answer.empty_rooms = [flat[j].decode() for j in range(i, i + empty)]
        i += empty
        answers.append(answer)
    return answers


def _deliveries(flat: list[Any], at: int, count: int) -> list[Delivery]:
    """``count`` deliveries of ENQUEUE's answer from ``at``: device entry, seq, nodes."""
    deliveries = []
    for j in range(at, at + 3 * count, 3):
        nodes = flat[j + 2]
        user, device = keys.split_device_entry(flat[j].decode())
        held = tuple(nodes.decode().split(",")) if nodes else ()
        deliveries.append(Delivery(user, device, int(flat[j + 1]), held))
    return deliveries


def _backlog(last: bytes | None, records: list[bytes], after_seq: int = 0) -> Backlog:
    """A device's queue from its last seq and its messages hash (HGETALL's flat list)."""
    seqs = map(keys.message_seq, records[::2])
    ordered = sorted(zip(seqs, records[1::2], strict=True))
    messages = [StoredMessage.decode(seq, rec) for seq, rec in ordered if seq > after_seq]
    # The seq is read first: a message stored between the two reads is in ``records``.
    last_seq = max(int(last or 0), ordered[-1][0] if ordered else 0)
    return Backlog(messages, last_seq)
