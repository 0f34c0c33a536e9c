"""The store's connection to Redis: one socket, every round trip pipelined on it.

Why not redis-py's pool: a round trip through it costs a pool checkout, a read in a stream
task and response callbacks (48 us of CPU per uncoalesced store call here; 13 on this wire,
same minute). Here concurrent callers write their commands as they come; Redis answers in
the same order, so each reply resolves the oldest waiting future, read straight from the
socket by hiredis. Nobody waits for a free connection.

redis-py still opens the socket: the URL's grammar (``redis://``, ``rediss://``, ``unix://``),
TLS, AUTH, SELECT and its handshake stay as redis-py does them; then the wire takes the socket
over (``transport.set_protocol``). Errors are redis-py's exception classes, so callers treat
both alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_url import RedisAddress, parse

FAILURES = (RedisError, OSError)  # what a command may raise: Redis down, or an error reply
CLOCK_READ_EVERY = 30.0  # seconds: Redis's clock against ours, for scripts' deadlines


class WriteInDoubt(RedisConnectionError):
    """The connection failed (lost, or no reply in time) after the commands were written:
    Redis may have run them, or not."""


class Script:
    """A Lua script, run by its SHA1 once Redis has it (EVALSHA), by its body when not.

    A script made ``with_deadline`` gets, as ARGV[1], the time on Redis's clock (ms) after
    which it must not run: by then the wire has given up on it (see ``_Connection``), its
    caller was told it failed, and what it would write must not appear later.
    """

    def __init__(self, body: str, with_deadline: bool = False) -> None:
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()
        self.with_deadline = with_deadline

    def call(self, keys: Sequence[Any], args: Sequence[Any], deadline: int) -> tuple[Any, ...]:
        return (b"EVALSHA", self.sha, *self._rest(keys, args, deadline))

    def call_by_body(
        self, keys: Sequence[Any], args: Sequence[Any], deadline: int
    ) -> tuple[Any, ...]:
        return (b"EVAL", self.body, *self._rest(keys, args, deadline))

    def _rest(self, keys: Sequence[Any], args: Sequence[Any], deadline: int) -> tuple[Any, ...]:
        if self.with_deadline:
            return (len(keys), *keys, deadline, *args)
        return (len(keys), *keys, *args)


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A failed attempt to connect is raised to the callers that wait on it; when all of them
    were cancelled, it is marked seen here rather than logged by asyncio as never retrieved."""
    if not task.cancelled():
        task.exception()


def _raise_first_error(replies: list[Any]) -> list[Any]:
    """Replies, unless one is an error: an error reply, or (Redis Cluster) the failure of
    the connection it went out on."""
    for reply in replies:
        if isinstance(reply, (ResponseError, RedisConnectionError, RedisTimeoutError)):
            raise reply
    return replies


def late(error: Exception) -> bool:
    """Redis ran a script after its deadline, so it wrote nothing."""
    return str(error).startswith("LATE")


def _missing_script(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


class _Connection(asyncio.Protocol):
    """One socket's replies, matched to the futures of the commands written on it in order.

    A watchdog instead of a timer per command: every ``timeout / 2`` seconds it looks how long
    commands have waited with no reply at all; from ``timeout`` on (Redis stalled, or a network
    that swallows packets) it ends the connection, failing what waits on it. So a stall is
    noticed ``timeout`` to 1.5 x ``timeout`` after the last sign of life.

    So a command sent now is failed no sooner than ``deadline()``: a script run by Redis
    after that moment (a Redis that was frozen, then thaws and reads what waited in its
    socket) would write for a caller already told it failed, and refuses to. The deadline is
    on Redis's clock: the offset to this loop's clock is read (TIME) when the connection
    opens and every CLOCK_READ_EVERY seconds after. (A Redis with a backlog longer than the
    timeout, replying all the while, refuses the scripts it reaches late too: an overload
    answered as an outage, 503, rather than a send that takes longer than the timeout.)
    """

    def __init__(self, owner: Any, transport: asyncio.WriteTransport, timeout: float) -> None:
        self.owner = owner  # redis-py's connection: it holds the stream objects of the socket
        self.transport = transport
        self.closed = False
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._loop = asyncio.get_running_loop()
        self._last_progress = self._loop.time()  # a reply, or a command sent to an idle socket
        self._timeout = timeout
        self._watchdog = self._loop.call_later(timeout / 2, self._look)
        self._clock_offset = 0.0  # Redis's clock (ms since the epoch) less this loop's (ms)
        self._clock_read_at = -math.inf

    def deadline(self) -> int:
        """When, on Redis's clock (ms), the watchdog may fail a command sent now, at the
        soonest."""
        since = self._last_progress if self._waiting else self._loop.time()
        return int((since + self._timeout) * 1000 + self._clock_offset)

    def clock_due(self) -> bool:
        return self._loop.time() - self._clock_read_at >= CLOCK_READ_EVERY

    def read_clock(self) -> asyncio.Future[Any]:
        """Ask Redis the time; its reply sets the offset between the clocks."""
        asked_at = self._clock_read_at = self._loop.time()
        (reply,) = self.send(hiredis.pack_command((b"TIME",)), 1)

        def answered(reply: asyncio.Future[Any]) -> None:
            if reply.cancelled() or reply.exception() is not None:
                self._clock_read_at = -math.inf
                return
            seconds, micros = reply.result()
            redis_ms = int(seconds) * 1000 + int(micros) / 1000
            self._clock_offset = redis_ms - (asked_at + self._loop.time()) / 2 * 1000

        reply.add_done_callback(answered)
        return reply

    def clock_doubtful(self) -> None:
        """Read Redis's clock again before the next command (it refused one as late)."""
        self._clock_read_at = -math.inf

    def send(self, packed: bytes, count: int) -> list[asyncio.Future[Any]]:
        futures = [self._loop.create_future() for _ in range(count)]
        if not self._waiting:
            self._last_progress = self._loop.time()
        self._waiting.extend(futures)
        self.transport.write(packed)
        return futures

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        self._last_progress = self._loop.time()
        try:
            while (reply := self._reader.gets()) is not False:
                future = self._waiting.popleft()
                if not future.done():  # its caller may have been cancelled
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.fail(RedisConnectionError(f"Protocol error from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = exc or "closed by the server"
        self.fail(RedisConnectionError(f"Connection to Redis lost: {reason}"))

    def fail(self, error: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        self._watchdog.cancel()
        self.transport.abort()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def _look(self) -> None:
        if self._waiting and self._loop.time() - self._last_progress >= self._timeout:
            self.fail(RedisTimeoutError(f"No reply from Redis within {self._timeout:g} s"))
            return
        self._watchdog = self._loop.call_later(self._timeout / 2, self._look)


def connection_pool(url: str, **options: Any) -> aioredis.ConnectionPool:
    """redis-py's pool for ``url``: a plain URL's, or for Sentinel a pool whose every new
    connection asks the sentinels where the primary is now (redis-py's Sentinel support).
    ``options``: redis-py connection options (timeouts, keepalive)."""
    address = parse(url)
    if not address.is_sentinel:
        return aioredis.ConnectionPool.from_url(url, **options)
    pool: aioredis.ConnectionPool = (
        _sentinel(address, options).master_for(address.service).connection_pool
    )
    return pool


def client(url: str, **options: Any) -> aioredis.Redis:
    """A redis-py client for one Redis, plain or behind Sentinel (the node bus's
    subscriptions)."""
    return aioredis.Redis(connection_pool=connection_pool(url, **options))


async def subscriber(
    url: str, channel: str, wire: RedisWire | ClusterWire, **options: Any
) -> tuple[aioredis.Redis, bool]:
    """A redis-py client to listen on ``channel`` with, and whether to use sharded pub/sub
    (Redis Cluster: the client is the primary's that serves the channel's slot now, so only
    that primary carries the channel's messages)."""
    if isinstance(wire, ClusterWire):
        node = await wire.node_of(channel)
        kwargs = {**node.connection_kwargs, **options}
        pool = aioredis.ConnectionPool(connection_class=node.connection_class, **kwargs)
        return aioredis.Redis(connection_pool=pool), True
    return client(url, **options), False


async def publish(wire: RedisWire | ClusterWire, channel: str, data: bytes) -> int:
    """PUBLISH; SPUBLISH on Redis Cluster, to the primary of the channel's slot. How many
    subscribers Redis handed it to."""
    command = b"SPUBLISH" if isinstance(wire, ClusterWire) else b"PUBLISH"
    receivers: int = await wire.command(command, channel, data)
    return receivers


def wire_for(url: str, timeout: float) -> RedisWire | ClusterWire:
    """The store's connection: one Redis (plain or behind Sentinel), or a Redis Cluster."""
    address = parse(url)
    if address.is_cluster:
        return ClusterWire(address, timeout)
    return RedisWire.from_url(url, timeout)


def _sentinel(address: RedisAddress, options: dict[str, Any]) -> Sentinel:
    timeouts = {key: value for key, value in options.items() if key.startswith("socket_")}
    primary: dict[str, Any] = {
        "db": address.db,
        "username": address.username,
        "password": address.password,
    }
    if address.tls:
        primary["ssl"] = True
    return Sentinel(list(address.sentinels), sentinel_kwargs=timeouts, **options, **primary)


class RedisWire:
    @classmethod
    def from_url(cls, url: str, timeout: float) -> RedisWire:
        pool = connection_pool(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(pool, timeout)

    def __init__(self, pool: aioredis.ConnectionPool, timeout: float) -> None:
        """``pool`` is used only for what it knows of the URL: it opens each socket."""
        self._pool = pool
        # The replies are read as RESP2's (HGETALL a flat list); redis-py 8 asks for RESP3.
        pool.connection_kwargs["protocol"] = 2
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._opening: asyncio.Task[_Connection] | None = None

    def clock_doubtful(self) -> None:
        """A script was refused as late: Redis's clock may have moved; read it again."""
        if self._connection is not None:
            self._connection.clock_doubtful()

    # What a store asks of its wire whether it is one Redis or a cluster (see ClusterWire).

    async def start(self) -> None:
        """Nothing to learn first: the connection opens with the first command."""

    def slot_of(self, key: str | bytes) -> int | None:
        """None: every key is on this one Redis, any script may take keys of any bucket."""
        return None

    def node_wire(self, key: str | bytes) -> RedisWire:
        """The wire of the Redis that holds ``key``: for commands that name no key (TIME)."""
        return self

    def primaries(self) -> list[RedisWire]:
        """One wire per primary: for what each must answer (INFO, SCAN, a write probe)."""
        return [self]

    async def command(self, *args: Any) -> Any:
        """One command's reply; an error reply is raised as redis-py's ResponseError."""
        (reply,) = await self.pipeline([args])
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies of commands written at once, in order. The first error reply is raised
        once all have replied. A lost connection fails them all: whether Redis ran them is not
        known."""
        return _raise_first_error(await self.replies(commands))

    async def replies(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """``pipeline``'s replies, error replies among them."""
        return await self._exchange(lambda _: commands)

    async def run_scripts(
        self, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        """Scripts run in order, each by SHA1; the ones Redis does not know yet (a new
        connection, a restarted Redis, ``SCRIPT FLUSH``) were not run, and run again by body,
        which also loads them."""
        return _raise_first_error(await self.script_replies(calls))

    async def script_replies(
        self, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        """``run_scripts``'s replies, error replies among them."""
        replies = await self._exchange(
            lambda connection: [
                script.call(keys, args, connection.deadline()) for script, keys, args in calls
            ]
        )
        return await self._run_missing(calls, replies)

    async def _run_missing(
        self, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]], replies: list[Any]
    ) -> list[Any]:
        """``replies`` to ``calls`` sent by SHA1, with the ones Redis did not run for want of
        the script run again by body (which loads it)."""
        missing = [calls[i] for i, reply in enumerate(replies) if _missing_script(reply)]
        if missing:
            again = iter(
                await self._exchange(
                    lambda connection: [
                        script.call_by_body(keys, args, connection.deadline())
                        for script, keys, args in missing
                    ]
                )
            )
            replies = [next(again) if _missing_script(reply) else reply for reply in replies]
        return replies

    async def run_script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        (reply,) = await self.run_scripts([(script, keys, args)])
        return reply

    async def run_scripts_then(
        self,
        calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]],
        commands: Sequence[Sequence[Any]],
    ) -> list[Any]:
        """``run_scripts``' replies, with ``commands`` run after the scripts: written behind
        them at once, as one Redis runs a connection's commands in order. If a script was not
        known, the commands are sent again once it has run (they must bear repeating)."""
        if not commands:
            return await self.run_scripts(calls)
        replies = await self._exchange(
            lambda connection: (
                [script.call(keys, args, connection.deadline()) for script, keys, args in calls]
                + list(commands)
            )
        )
        scripts, after = replies[: len(calls)], replies[len(calls) :]
        if any(map(_missing_script, scripts)):
            scripts = await self._run_missing(calls, scripts)
            after = await self.replies(commands)
        return _raise_first_error(scripts + after)[: len(calls)]

    async def _exchange(self, build: Callable[[_Connection], Sequence[Sequence[Any]]]) -> list[Any]:
        """Replies to the commands ``build`` makes for the connection they go out on (a
        script's deadline is that connection's)."""
        connection = await self._connected()
        if connection.clock_due():
            connection.read_clock()
        commands = build(connection)
        packed = b"".join(hiredis.pack_command(tuple(command)) for command in commands)
        futures = connection.send(packed, len(commands))
        try:
            return [await future for future in futures]
        except BaseException as exc:
            for future in futures:  # a cancelled caller: its replies are no one's
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved, so that asyncio does not log it
            if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
                raise WriteInDoubt(str(exc)) from exc
            raise

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        # Callers arriving while Redis is down share one attempt to reconnect, not one each.
        if self._opening is None or self._opening.done():
            self._opening = asyncio.get_running_loop().create_task(self._open())
            self._opening.add_done_callback(_retrieve)
        return await asyncio.shield(self._opening)

    async def _open(self) -> _Connection:
        if self._connection is not None:
            await self._release(self._connection)
            self._connection = None
        owner: Any = self._pool.connection_class(**self._pool.connection_kwargs)
        await owner.connect()
        writer = getattr(owner, "_writer", None)
        if not isinstance(writer, asyncio.StreamWriter):
            await owner.disconnect()
            raise RuntimeError(
                "this redis-py version's connection has no asyncio stream writer (_writer): "
                "the store cannot take its socket over; use a redis version pyproject.toml allows"
            )
        transport = writer.transport
        connection = _Connection(owner, transport, self._timeout)
        transport.set_protocol(connection)
        try:
            await connection.read_clock()
        except BaseException:
            await self._release(connection)
            raise
        self._connection = connection
        return connection

    async def _release(self, connection: _Connection) -> None:
        connection.fail(RedisConnectionError("Connection to Redis closed"))
        await connection.owner.disconnect(nowait=True)

    def reset(self, reason: str) -> None:
        """Drop the connection: the next command opens a new one (the host name resolved
        again), as after a failover that demoted the Redis this one reached."""
        if self._connection is not None:
            self._connection.fail(RedisConnectionError(f"Connection to Redis dropped: {reason}"))

    async def close(self) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self._connection is not None:
            await self._release(self._connection)
            self._connection = None


# Replies that mean "this slot is not served here, now": the call changed nothing (a script
# is checked before it runs, and reads every key before it writes: redis_scripts).
_ELSEWHERE = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
REDIRECT_PATIENCE = 0.05  # seconds before the first retry of a redirected call; doubled


def _elsewhere(reply: Any) -> bool:
    text = str(reply) if isinstance(reply, ResponseError) else ""
    return text.startswith(_ELSEWHERE) or "non local key" in text


class _NodePool:
    """What RedisWire needs of a pool, for one node of a cluster: how to open a connection."""

    def __init__(self, node: ClusterNode) -> None:
        self.connection_class = node.connection_class
        self.connection_kwargs = dict(node.connection_kwargs)


class ClusterWire:
    """Redis Cluster: redis-py keeps the map of slots to primaries (its NodesManager reads
    ``CLUSTER SLOTS`` at start, and again here after a redirection or a lost node), and each
    primary gets one of our wires. A call goes to the primary of its first key's slot; one
    that comes back MOVED, ASK, TRYAGAIN or CLUSTERDOWN (a slot moved, is moving, or a
    failover is under way) changed nothing, and is sent again once the map is read again,
    until ``timeout``."""

    def __init__(self, address: RedisAddress, timeout: float) -> None:
        options: dict[str, Any] = {
            "username": address.username,
            "password": address.password,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "require_full_coverage": False,
        }
        if address.tls:
            options["ssl"] = True
        self._cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in address.cluster_nodes],
            **options,
        )
        self._timeout = timeout
        self._wires: dict[str, RedisWire] = {}
        self._by_slot: dict[int, RedisWire] = {}  # what the map said; cleared when read again
        self._started = False
        self._refreshing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._cluster.initialize()
        except (RedisError, OSError) as exc:
            raise RedisConnectionError(f"Redis Cluster: {exc}") from exc
        self._started = True

    def slot_of(self, key: str | bytes) -> int | None:
        return int(key_slot(key.encode() if isinstance(key, str) else key))

    def node_wire(self, key: str | bytes) -> RedisWire:
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        wire = self._by_slot.get(slot)
        if wire is None:
            wire = self._by_slot[slot] = self._wire_of_slot(slot)
        return wire

    def primaries(self) -> list[RedisWire]:
        return [self._wire_of(node) for node in self._cluster.get_primaries()]

    def primary_of(self, key: str | bytes) -> str:
        """The name of the primary that the map says serves ``key``'s slot."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        return str(self._cluster.nodes_manager.get_node_from_slot(slot).name)

    async def node_of(self, key: str) -> ClusterNode:
        """The primary serving ``key``'s slot, the map read again first."""
        if self._started:
            await self._refresh()
        else:
            await self.start()
        return self._cluster.nodes_manager.get_node_from_slot(key_slot(key.encode()))

    def _wire_of_slot(self, slot: int) -> RedisWire:
        return self._wire_of(self._cluster.nodes_manager.get_node_from_slot(slot))

    def _wire_of(self, node: ClusterNode) -> RedisWire:
        wire = self._wires.get(node.name)
        if wire is None:
            pool: Any = _NodePool(node)
            wire = self._wires[node.name] = RedisWire(pool, self._timeout)
        return wire

    async def _refresh(self) -> None:
        """Read the slot map again; callers arriving meanwhile share the one reading."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(
                self._cluster.nodes_manager.initialize()
            )
            self._refreshing.add_done_callback(_retrieve)
        try:
            await asyncio.shield(self._refreshing)
        except (RedisError, OSError) as exc:
            raise RedisConnectionError(f"Redis Cluster: {exc}") from exc
        finally:
            self._by_slot.clear()

    async def _routed(
        self,
        items: Sequence[Any],
        key_of: Callable[[Any], Any],
        send: Callable[[RedisWire, list[Any]], Any],
        again: bool = True,
    ) -> list[Any]:
        """Replies to ``items``, each sent to its key's primary (those of one primary at
        once, the primaries in parallel); redirected ones again, with the map read again
        (unless not ``again``: then the redirection is the reply)."""
        if not self._started:
            await self.start()
        replies: list[Any] = [None] * len(items)
        waiting = list(range(len(items)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        pause = REDIRECT_PATIENCE
        while True:
            groups: dict[int, tuple[RedisWire, list[int]]] = {}
            for index in waiting:
                wire = self.node_wire(key_of(items[index]))
                groups.setdefault(id(wire), (wire, []))[1].append(index)
            if len(groups) == 1:  # the usual case: no task to gather
                ((wire, indexes),) = groups.values()
                try:
                    answers: list[Any] = [await send(wire, [items[i] for i in indexes])]
                except (RedisConnectionError, RedisTimeoutError):
                    await self._forget_map()
                    raise
            else:  # a primary that failed fails its own items only: the others' stand
                answers = await asyncio.gather(
                    *(send(w, [items[i] for i in group]) for w, group in groups.values()),
                    return_exceptions=True,
                )
            lost = False
            for (_, indexes), answer in zip(groups.values(), answers, strict=True):
                if isinstance(answer, (RedisConnectionError, RedisTimeoutError)):
                    lost = True
                    answer = [answer] * len(indexes)
                elif isinstance(answer, BaseException):
                    raise answer
                for index, reply in zip(indexes, answer, strict=True):
                    replies[index] = reply
            if lost:
                await self._forget_map()
            waiting = [index for index in waiting if _elsewhere(replies[index])]
            if not waiting or not again or loop.time() + pause > deadline:
                return replies
            await asyncio.sleep(pause)
            pause *= 2
            await self._refresh()

    async def _forget_map(self) -> None:
        """A primary went away (killed, failed over): the next call reads the map first."""
        try:
            await self._refresh()
        except RedisConnectionError:
            pass

    async def run_scripts(
        self, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        return _raise_first_error(await self.script_replies(calls))

    async def script_replies(
        self, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        return await self._routed(
            calls, lambda call: call[1][0], lambda wire, group: wire.script_replies(group)
        )

    async def script_replies_once(
        self, calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]]
    ) -> list[Any]:
        """As ``script_replies``, but a call redirected (or one that met a key of a slot
        served elsewhere) comes back as that error: for a call on buckets of several slots,
        which its caller then splits, one call per slot."""
        return await self._routed(
            calls,
            lambda call: call[1][0],
            lambda wire, group: wire.script_replies(group),
            again=False,
        )

    @staticmethod
    def redirected(reply: Any) -> bool:
        """The reply says the call's slot, or a key's, is served elsewhere: nothing changed."""
        return _elsewhere(reply)

    async def run_script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        (reply,) = await self.run_scripts([(script, keys, args)])
        return reply

    async def run_scripts_then(
        self,
        calls: Sequence[tuple[Script, Sequence[Any], Sequence[Any]]],
        commands: Sequence[Sequence[Any]],
    ) -> list[Any]:
        """As ``RedisWire``'s; the commands' keys may be on other primaries, so they are sent
        once the scripts have replied."""
        replies = await self.run_scripts(calls)
        if commands:
            await self.pipeline(commands)
        return replies

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Each command goes to its key's primary (its second word is the key)."""
        return _raise_first_error(
            await self._routed(
                commands, lambda command: command[1], lambda wire, group: wire.replies(group)
            )
        )

    async def command(self, *args: Any) -> Any:
        (reply,) = await self.pipeline([args])
        return reply

    def clock_doubtful(self) -> None:
        for wire in self._wires.values():
            wire.clock_doubtful()

    def reset(self, reason: str) -> None:
        for wire in self._wires.values():
            wire.reset(reason)

    async def close(self) -> None:
        for wire in self._wires.values():
            await wire.close()
        closing = getattr(self._cluster, "aclose", None) or self._cluster.close
        await closing()
