"""Redis store: for production, and for several nodes sharing one Redis.

Each decision is one Lua script (see ``redis_scripts``), so it is atomic across nodes and costs
one round trip however many devices a /send reaches. No ``KEYS``: every key a script touches is
found from the sets that index it (``redis_keys``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import redis_keys as keys
from . import redis_scripts as scripts
from .base import (
    DEFAULT_MAX_QUEUE,
    AckItem,
    Backlog,
    Connected,
    ConnectItem,
    Delivery,
    EnqueueItem,
    HeadAck,
    StoredMessage,
    StoreUnavailable,
)
from .redis_keys import DEFAULT_PREFIX, escape, unescape
from .store_base import ReadItem, StoreBase

T = TypeVar("T")
# Redis refusing writes, not a bug of ours: out of memory, a replica, a failed snapshot, loading.
REFUSED = (OutOfMemoryError, ReadOnlyError, BusyLoadingError)
REFUSALS = ("OOM", "READONLY", "MISCONF", "LOADING", "BUSY", "NOREPLICAS", "MASTERDOWN")
POOL_SIZE = 32
POOL_WAIT = 60.0


class _LeanConnection:
    """What the store changes in redis-py's asyncio connections (all three kinds: plain, TLS,
    Unix socket), measured on the store's own calls:

    - Packing in C: redis-py packs a command in Python, joining the growing buffer once per
      argument; an ack or enqueue script of a fan-out has thousands of arguments, and py-spy
      put that packing at 8% of the service's fan-out CPU. hiredis (a dependency already, for
      parsing replies) packs the same bytes.
    - Writing without a task: with a socket timeout set, redis-py wraps every write in
      ``asyncio.wait_for`` (a task and a timer per command) to bound a write that blocks. A
      write into an empty buffer cannot block, so it is written at once; a connection with
      bytes still waiting goes redis-py's way, timeout and all.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str) and " " in first:  # "CLIENT SETINFO": separate arguments
            args = (*first.split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        writer = getattr(self, "_writer", None)
        transport = writer.transport if writer is not None else None
        if (
            not isinstance(command, list)
            or transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > 0
        ):
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
            return
        if check_health:
            await self.check_health()  # type: ignore[attr-defined]
        try:
            writer.writelines(command)  # type: ignore[union-attr]
        except OSError as exc:  # as redis-py: the connection is done with
            await self.disconnect(nowait=True)  # type: ignore[attr-defined]
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc


def lean_connection(connection_class: type[Any]) -> type[Any]:
    """The pool's connection class (plain, TLS or Unix socket, from the URL) with
    :class:`_LeanConnection`'s changes (packing in C only where hiredis can)."""
    if not hasattr(hiredis, "pack_command"):
        return connection_class
    return type(f"Lean{connection_class.__name__}", (_LeanConnection, connection_class), {})


def _as_bytes(value: bytes | str) -> bytes:
    """The client returns bytes (no decode_responses); its types also allow str."""
    return value if isinstance(value, bytes) else value.encode()


class RedisStore(StoreBase):
    def __init__(
        self,
        url: str,
        device_ttl: int,
        node_id: str,
        key_prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0,
        node_dead_after: float = 30.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        super().__init__(device_ttl=device_ttl, node_id=node_id, max_queue=max_queue)
        self.url = url
        self.key_prefix = key_prefix
        self.node_dead_after = node_dead_after
        # A burst (a thousand connects at once) waits for a free connection instead of
        # failing (the pool refuses past its size): every use of the pool is a ``_call``,
        # which first takes one of POOL_SIZE slots. (redis-py's BlockingConnectionPool waits
        # the same way, at 45 us of CPU more per round trip.)
        self._slots = asyncio.Semaphore(POOL_SIZE)
        pool = aioredis.ConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=1,  # a PING first on a connection idle for over a second
        )
        pool.connection_class = lean_connection(pool.connection_class)
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._connect = self.redis.register_script(scripts.CONNECT_DEVICE)
        self._disconnect = self.redis.register_script(scripts.DISCONNECT_DEVICE)
        self._enqueue = self.redis.register_script(scripts.ENQUEUE)
        self._ack = self.redis.register_script(scripts.ACK)
        self._ack_head = self.redis.register_script(scripts.ACK_HEAD)
        self._heartbeat = self.redis.register_script(scripts.HEARTBEAT)

    async def open(self) -> None:
        await self.heartbeat()

    async def _close(self) -> None:
        await self.redis.aclose()

    async def _call(self, name: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one round trip, counted in ``stats`` under ``name``; an outage or a refusal
        is a :class:`StoreUnavailable`."""
        started = time.perf_counter()
        try:
            await self._take_slot()
            try:
                result = await operation()
            finally:
                self._slots.release()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self.stats.observe(name, started, failed=True)
            # The idle pooled connections went down with this one: drop them, so that once
            # Redis is back no request is sent down a dead connection. (Those in use fail,
            # or not, on their own.)
            with contextlib.suppress(RedisError, OSError):
                await self.redis.connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailable(f"Redis unavailable: {exc}") from exc
        except ResponseError as exc:
            self.stats.observe(name, started, failed=True)
            if not isinstance(exc, REFUSED) and not any(word in str(exc) for word in REFUSALS):
                raise  # a script error, say: a bug, not an outage
            reason = str(exc).split(". script:")[0]
            raise StoreUnavailable(f"Redis refuses writes: {reason[:200]}") from exc
        self.stats.observe(name, started)
        return result

    async def _take_slot(self) -> None:
        """One of the pool's connections; waiting for one is load, not an outage, up to
        POOL_WAIT."""
        if not self._slots.locked():
            await self._slots.acquire()  # at once
            return
        try:
            async with asyncio.timeout(POOL_WAIT):
                await self._slots.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"no free connection within {POOL_WAIT:.0f} s") from None

    async def _run(self, name: str, script: Any, keys: Sequence[str], *args: Any) -> Any:
        return await self._call(name, lambda: script(keys=list(keys), args=list(args)))

    def _prefix(self, site: str) -> str:
        return keys.site_prefix(self.key_prefix, site)

    async def ping(self) -> None:
        """A write, not a PING: Redis answers PING while it refuses writes (out of memory, a
        read-only replica), and then nothing can be stored."""
        key = keys.health(self.key_prefix, self.node_id)
        await self._call("probe", lambda: self.redis.set(key, b"1", px=60_000))

    def _device_keys(self, site: str, user: str, device: str) -> list[str]:
        """What CONNECT_DEVICE and DISCONNECT_DEVICE take as KEYS."""
        p = self._prefix(site)
        return [
            *keys.device_keys(p, user, device),
            *keys.user_keys(p, user),
            keys.node_devices(self.key_prefix, self.node_id),
        ]

    async def heartbeat(self) -> list[str]:
        dead = await self._run(
            "heartbeat",
            self._heartbeat,
            [keys.nodes(self.key_prefix)],
            self.key_prefix,
            self.node_id,
            int(self.node_dead_after * 1000),
            self.device_ttl * 1000,
        )
        return [_as_bytes(node).decode() for node in dead or []]

    async def _write_connects(self, items: Sequence[ConnectItem]) -> list[Connected]:
        """Connections arriving together (a node restart, a network blip) share a round trip."""

        async def queue(pipe: Any, item: ConnectItem) -> None:
            site, user, device, shared_rooms = item
            rooms = [escape(room) for room in shared_rooms]
            node = keys.node_field(self.node_id)
            args = [self._prefix(site), node, escape(user), escape(device), *rooms]
            await self._connect(keys=self._device_keys(site, user, device), args=args, client=pipe)

        return [
            Connected(first=int(conns) == 1, overflowed=int(overflowed) == 1)
            for conns, overflowed in await self._pipeline("connect_device", items, queue)
        ]

    async def _pipeline(
        self, name: str, items: Sequence[Any], queue: Callable[[Any, Any], Any]
    ) -> list[Any]:
        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in items:
                    await queue(pipe, item)
                return list(await pipe.execute())

        return await self._call(name, run)

    async def disconnect_device(self, site: str, user: str, device: str, *, forget: bool) -> bool:
        left = await self._run(
            "disconnect_device",
            self._disconnect,
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
        """The messages of concurrent /sends, stored in one script call, in submit order."""
        args: list[Any] = [self.max_queue]
        for site, users, shared_rooms, message in items:
            rooms = [escape(room) for room in shared_rooms]
            args += [self._prefix(site), message.event, message.encode(), len(users), len(rooms)]
            args += [escape(user) for user in users]
            args += rooms
        flat = await self._run("enqueue", self._enqueue, [], *args)
        results: list[list[Delivery]] = []
        i = 0
        for site, *_ in items:
            count, i = int(flat[i]), i + 1
            results.append(
                [
                    Delivery(
                        user=unescape(flat[j].decode()),
                        device=unescape(flat[j + 1].decode()),
                        seq=int(flat[j + 2]),
                        nodes=tuple(flat[j + 3].decode().split(",")) if flat[j + 3] else (),
                    )
                    for j in range(i, i + 4 * count, 4)
                ]
            )
            i += 4 * count
            full, i = int(flat[i]), i + 1
            for j in range(i, i + 2 * full, 2):
                self.stats.overflowed(
                    site, unescape(flat[j].decode()), unescape(flat[j + 1].decode()), self.max_queue
                )
            i += 2 * full
        return results

    async def _read_queues(self, items: Sequence[ReadItem]) -> list[Backlog]:
        """Queues read together (devices reconnecting at once) share a round trip."""

        async def queue(pipe: Any, item: ReadItem) -> None:
            site, user, device, _ = item
            dev, msg, _ = keys.device_keys(self._prefix(site), user, device)
            pipe.hget(dev, "seq")
            pipe.hgetall(msg)

        flat = await self._pipeline("read_queue", items, queue)
        backlogs = []
        for (*_, after_seq), last, records in zip(items, flat[::2], flat[1::2], strict=True):
            ordered = sorted((int(seq), _as_bytes(record)) for seq, record in records.items())
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
        removed = await self._run("ack", self._ack, names, *args)
        return [int(count) for count in removed]

    async def ack_head(self, site: str, user: str, device: str, seq: int, event: str) -> HeadAck:
        through = int(
            await self._run(
                "ack_head",
                self._ack_head,
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
        members = [
            _as_bytes(m).decode()
            for m in await self._call("room_members", lambda: self.redis.smembers(key))
        ]

        async def exists() -> list[int]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in members:
                    pipe.exists(keys.user_key(prefix, name))
                return list(await pipe.execute())

        alive = await self._call("room_members", exists)
        return {unescape(name) for name, live in zip(members, alive, strict=True) if live}

    async def alive_nodes(self) -> list[str]:
        async def read() -> list[Any]:
            seconds, micros = await self.redis.time()
            now = seconds * 1000 + micros // 1000
            since = now - int(self.node_dead_after * 1000)
            return list(await self.redis.zrangebyscore(keys.nodes(self.key_prefix), since, "+inf"))

        return sorted(_as_bytes(node).decode() for node in await self._call("alive_nodes", read))

    async def queue_depths(self, sites: Sequence[str]) -> dict[str, int]:
        depths = {}
        for site in sites:
            pattern = keys.messages_pattern(self._prefix(site))

            async def count(pattern: str = pattern) -> int:
                total = 0
                found = [key async for key in self.redis.scan_iter(match=pattern, count=1000)]
                for start in range(0, len(found), 1000):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for key in found[start : start + 1000]:
                            pipe.hlen(key)
                        total += sum(await pipe.execute())
                return total

            depths[site] = await self._call("queue_depths", count)
        return depths
