"""Tells other nodes about deliveries for devices connected to them, and about plain sites'
sends.

Each node listens on its own Redis channel for deliveries, and a /send publishes once per node
that holds a target device: signalling costs O(nodes involved), never "every node decodes every
message". A lost signal loses nothing: the message is stored, and the device gets it on its next
delivery (the actor sees the gap and re-reads its queue), on reconnect, or when this listener
recovers.

A plain site (no user rooms) stores nothing and tracks no one's rooms: its sends go to every
node on one broadcast channel, best effort, as socket.io's Redis adapter does. On Redis Cluster
both are sharded channels (``SPUBLISH``), so each is carried by the one primary serving its
slot, and a failover or a moved slot is followed like any key's.

A node alone on the broadcast channel does not publish a plain site's sends (publishing them
and reading them back was a third of a plain send's CPU on one node). It knows it is alone
when a publish of its own reached one listener and came back to it: that listener is itself.
It counts again every ``ALONE_CHECK_EVERY`` seconds, and stops being alone at once when
another node says hello. A node says hello on start, and waits for every other listener's
answer before it takes connections: no client can join a node that the others do not know.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import orjson
from loguru import logger
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..log_throttle import LogThrottle
from ..storage import Delivery, Message, redis_wire
from ..storage.redis_keys import broadcast_channel, deliver_channel
from .stats import TransportStats

RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0
STILL_DOWN_EVERY = 60.0  # seconds between lines saying the bus is still down
SUBSCRIBE_TIMEOUT = 10.0
PUBLISH_TIMEOUT = 5.0
ALONE_CHECK_EVERY = 5.0  # seconds between counts of who listens to plain sites' sends
ECHO_WAIT = 1.0  # seconds for a node's own count to come back to it
WELCOME_WAIT = 2.0  # seconds a starting node waits for the other nodes' answers
# No socket timeout: a subscriber waits for messages; health checks find dead links.
LISTEN_OPTIONS = {"socket_connect_timeout": 5, "health_check_interval": 5, "socket_keepalive": True}

OnDelivery = Callable[[str, Message, Sequence[Delivery]], None]
OnDisconnect = Callable[[str, str], None]  # site, user: close the user's sockets here
# site, rooms, event, args: a plain site's send, for the sockets in those rooms here
OnBroadcast = Callable[[str, Sequence[str], str, Sequence[Any]], Awaitable[None]]


class NodeUnreachable(Exception):
    """A signal Redis did not take."""


class NodeBus(Protocol):
    @property
    def healthy(self) -> bool: ...

    async def start(self, on_delivery: OnDelivery, on_recovered: Callable[[], None]) -> None:
        """Listen: ``on_delivery`` gets every signal for this node, ``on_recovered`` is called
        when the channel is back after an outage (signals may have been missed)."""

    async def stop(self) -> None: ...

    async def publish(
        self, node: str, site: str, message: Message, deliveries: Sequence[Delivery]
    ) -> None: ...

    async def publish_disconnect(self, node: str, site: str, user: str) -> None:
        """Ask ``node`` to close the user's sockets (an operator's disconnect)."""

    async def broadcast(
        self, site: str, rooms: Sequence[str], event: str, args: Sequence[Any]
    ) -> None:
        """A plain site's send, for the sockets of every other node (``on_broadcast``
        there). Best effort: a failure is counted and logged, not raised."""

    on_disconnect: OnDisconnect | None
    on_broadcast: OnBroadcast | None


class LocalBus:
    """One node (SQLite): every device is here, there is no one to tell."""

    healthy = True

    async def start(self, on_delivery: OnDelivery, on_recovered: Callable[[], None]) -> None:
        pass

    async def stop(self) -> None:
        pass

    on_disconnect: OnDisconnect | None = None
    on_broadcast: OnBroadcast | None = None

    async def publish(
        self, node: str, site: str, message: Message, deliveries: Sequence[Delivery]
    ) -> None:
        logger.warning("delivery for unknown node {} dropped (stored, not signalled)", node)

    async def publish_disconnect(self, node: str, site: str, user: str) -> None:
        logger.warning("disconnect for unknown node {} dropped", node)

    async def broadcast(
        self, site: str, rooms: Sequence[str], event: str, args: Sequence[Any]
    ) -> None:
        pass


def encode(site: str, message: Message, deliveries: Sequence[Delivery]) -> bytes:
    return orjson.dumps(
        {
            "site": site,
            "event": message.event,
            "args": message.args,
            "resync": message.resync,
            "at": message.accepted_at,
            "to": [[d.user, d.device, d.seq] for d in deliveries],
        }
    )


def decode(body: dict[str, Any]) -> tuple[str, Message, list[Delivery]]:
    message = Message(
        event=body["event"],
        args=body["args"],
        resync=body["resync"],
        accepted_at=float(body.get("at", 0.0)),  # a node of 0.1.0 sends none
    )
    return body["site"], message, [Delivery(user, device, seq) for user, device, seq in body["to"]]


class _Answers:
    """The other nodes' answers to one hello of this node: how many came, how many are
    awaited (known once Redis says how many listeners the hello reached)."""

    def __init__(self) -> None:
        self.heard = 0
        self.wanted: int | None = None
        self.all_in: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def heard_one(self) -> None:
        self.heard += 1
        self._check()

    def want(self, count: int) -> None:
        self.wanted = count
        self._check()

    def _check(self) -> None:
        if self.wanted is not None and self.heard >= self.wanted and not self.all_in.done():
            self.all_in.set_result(None)


class RedisBus:
    def __init__(
        self,
        url: str,
        node_id: str,
        key_prefix: str,
        stats: TransportStats,
    ) -> None:
        self.node_id = node_id
        self.stats = stats
        self.key_prefix = key_prefix
        self.on_delivery: OnDelivery | None = None
        self.on_disconnect: OnDisconnect | None = None
        self.on_broadcast: OnBroadcast | None = None
        self.on_recovered: Callable[[], None] | None = None
        self.url = url
        self.wire = redis_wire.wire_for(url, PUBLISH_TIMEOUT)
        self._deliveries = deliver_channel(key_prefix, node_id)
        self._broadcasts = broadcast_channel(key_prefix)
        self._listening: dict[str, bool] = {self._deliveries: False, self._broadcasts: False}
        self._listeners: list[asyncio.Task[None]] = []
        self._failed_broadcasts = LogThrottle(STILL_DOWN_EVERY)
        self._alone = False  # no other node listens to broadcasts: none are published
        self._hellos = 0  # other nodes' hellos heard
        self._counts = 0  # counts this node made
        self._echoes: dict[int, asyncio.Future[int]] = {}  # count -> hellos heard at its echo
        self._answers: dict[int, _Answers] = {}  # hello of this node -> the others' answers
        self._counting: set[asyncio.Task[None]] = set()  # every 5 s, and hellos on reconnect

    @property
    def healthy(self) -> bool:
        return all(self._listening.values())

    async def start(self, on_delivery: OnDelivery, on_recovered: Callable[[], None]) -> None:
        self.on_delivery, self.on_recovered = on_delivery, on_recovered
        subscribed = {channel: asyncio.Event() for channel in self._listening}
        self._listeners = [
            asyncio.create_task(self._listen_forever(channel, event), name=f"node-bus {channel}")
            for channel, event in subscribed.items()
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in subscribed.values())), 10)
        await self._count(hello=True)
        self._count_later(self._count_forever())

    async def stop(self) -> None:
        counting = list(self._counting)
        for task in counting:
            task.cancel()
        await asyncio.gather(*counting, return_exceptions=True)
        for listener in self._listeners:
            listener.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)
        await self.wire.close()

    async def publish(
        self, node: str, site: str, message: Message, deliveries: Sequence[Delivery]
    ) -> None:
        try:
            await redis_wire.publish(
                self.wire,
                deliver_channel(self.key_prefix, node),
                encode(site, message, deliveries),
            )
            self.stats.signals_sent += 1
        except (RedisError, OSError) as exc:
            self.stats.signals_failed += 1
            logger.warning("could not signal node {} ({}); its devices get it later", node, exc)

    async def publish_disconnect(self, node: str, site: str, user: str) -> None:
        signal = orjson.dumps({"site": site, "disconnect": user})
        try:
            await redis_wire.publish(self.wire, deliver_channel(self.key_prefix, node), signal)
            self.stats.signals_sent += 1
        except (RedisError, OSError) as exc:
            self.stats.signals_failed += 1
            raise NodeUnreachable(f"could not signal node {node}: {exc}") from None

    async def broadcast(
        self, site: str, rooms: Sequence[str], event: str, args: Sequence[Any]
    ) -> None:
        if self._alone and self._listening[self._broadcasts]:
            return
        signal = orjson.dumps(
            {"site": site, "rooms": rooms, "event": event, "args": args, "from": self.node_id}
        )
        try:
            await redis_wire.publish(self.wire, self._broadcasts, signal)
            self.stats.signals_sent += 1
        except (RedisError, OSError) as exc:
            self.stats.signals_failed += 1
            self._broadcast_failed(exc)

    def _count_later(self, counting: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(counting, name="node-bus count")
        self._counting.add(task)
        task.add_done_callback(self._counting.discard)

    async def _count_forever(self) -> None:
        while True:
            await asyncio.sleep(ALONE_CHECK_EVERY)
            await self._count(hello=False)

    async def _count(self, hello: bool) -> None:
        """Publish a count (a hello, on start) on the broadcast channel, and be alone if Redis
        handed it to one listener and it came back here, with no other node's hello after it
        (a node subscribing later says hello after this count in the channel's order). A
        hello is answered by each other node: wait for as many answers as there were other
        listeners, so that they know of this node before it takes connections."""
        self._counts += 1
        number = self._counts
        echoed = self._echoes[number] = asyncio.get_running_loop().create_future()
        answers = _Answers() if hello else None
        if answers is not None:
            self._answers[number] = answers
        signal = orjson.dumps({"hello" if hello else "count": number, "from": self.node_id})
        try:
            receivers = await redis_wire.publish(self.wire, self._broadcasts, signal)
            async with asyncio.timeout(ECHO_WAIT):
                hellos_then = await echoed
            if answers is not None and receivers > 1:
                await self._welcomes_from(answers, receivers - 1)
        except (RedisError, OSError, TimeoutError):
            self._alone = False
            return
        finally:
            self._echoes.pop(number, None)
            self._answers.pop(number, None)
        self._alone = receivers == 1 and hellos_then == self._hellos

    async def _welcomes_from(self, answers: _Answers, others: int) -> None:
        """Wait (up to WELCOME_WAIT) for ``others`` answers to this node's hello; a listener
        that is not a node of this service never answers, and costs this wait once."""
        answers.want(others)
        try:
            async with asyncio.timeout(WELCOME_WAIT):
                await answers.all_in
        except TimeoutError:
            logger.info(
                "node bus: {} of {} other listeners did not answer in {:.0f} s",
                others - answers.heard,
                others,
                WELCOME_WAIT,
            )

    async def _heard_company(self, body: dict[str, Any]) -> None:
        """A hello, count or welcome on the broadcast channel."""
        sender = str(body["from"])
        if "welcome" in body:
            answers = self._answers.get(int(body["hello"]))
            if body["welcome"] == self.node_id and answers is not None:
                answers.heard_one()
        elif sender == self.node_id:
            echoed = self._echoes.get(int(body.get("hello", body.get("count", 0))))
            if echoed is not None and not echoed.done():
                echoed.set_result(self._hellos)
        elif "hello" in body:
            self._hellos += 1
            self._alone = False
            welcome = {"welcome": sender, "hello": body["hello"], "from": self.node_id}
            try:
                await redis_wire.publish(self.wire, self._broadcasts, orjson.dumps(welcome))
            except (RedisError, OSError) as exc:
                logger.warning("node bus: could not answer node {}'s hello ({})", sender, exc)

    def _broadcast_failed(self, exc: Exception) -> None:
        """One line a minute while Redis is away, however many sends a site makes."""
        since = self._failed_broadcasts.due()
        if since is None:
            return
        logger.warning(
            "plain sites' sends reach this node's sockets only, not other nodes' ({}){}",
            exc,
            f"; {since} more since the last line" if since else "",
        )

    async def _listen_forever(self, channel: str, subscribed: asyncio.Event) -> None:
        """Subscribe, and again after every failure, waiting longer each time (capped).
        Healthy, and "recovered", only once Redis confirmed the subscription: a refusal
        (an ACL user without channel rights: NOPERM) is a failure, not a reconnect. The
        first failure is logged, then one line a minute while it lasts."""
        delay = RECONNECT_FIRST
        lost_at: float | None = None
        said_at = 0.0
        name = "node bus" if channel == self._deliveries else "broadcasts"
        while True:
            try:
                client, sharded = await redis_wire.subscriber(
                    self.url, channel, self.wire, **LISTEN_OPTIONS
                )
                async with client, client.pubsub() as pubsub:
                    if sharded:  # Redis Cluster: the primary of the channel's slot only
                        await pubsub.execute_command("SSUBSCRIBE", channel)
                    else:
                        await pubsub.subscribe(channel)
                    await self._confirmed(pubsub)
                    self._listening[channel] = True
                    subscribed.set()
                    delay = RECONNECT_FIRST
                    if lost_at is not None:
                        logger.info("{}: reconnected to Redis", name)
                        lost_at = None
                        if channel == self._deliveries:
                            assert self.on_recovered is not None
                            self.on_recovered()  # signals may have been missed meanwhile
                        else:  # nodes that came meanwhile did not hear of this one
                            self._count_later(self._count(hello=True))
                    while True:
                        item = await pubsub.get_message(timeout=1.0)
                        if item is None:
                            continue
                        if item["type"] in ("message", "smessage"):
                            await self._receive(item["data"])
                        elif item["type"] == "sunsubscribe":  # its slot moved elsewhere
                            raise RedisConnectionError("the channel's slot moved")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                if lost_at is None:
                    lost_at = said_at = now
                    logger.error("{}: lost Redis ({}); retrying", name, exc)
                elif now - said_at >= STILL_DOWN_EVERY:
                    said_at = now
                    logger.error(
                        "{}: Redis still unavailable after {:.0f} s ({}); retrying",
                        name,
                        now - lost_at,
                        exc,
                    )
                self._listening[channel] = False
                if channel == self._broadcasts:
                    self._alone = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)

    @staticmethod
    async def _confirmed(pubsub: Any) -> None:
        """Wait for Redis's confirmation of the subscription; its refusal is raised."""
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
        while time.monotonic() < deadline:
            item = await pubsub.get_message(timeout=0.5)
            if item is not None and item["type"] in ("subscribe", "ssubscribe"):
                return
        raise RedisTimeoutError("no subscription confirmed")

    async def _receive(self, data: bytes) -> None:
        broadcast: tuple[str, list[str], str, list[Any]] | None = None
        try:
            body = orjson.loads(data)
            if "from" in body and "rooms" not in body:
                await self._heard_company(body)
                return
            if "rooms" in body:
                if body["from"] == self.node_id:  # our own, emitted here already
                    return
                rooms = [str(room) for room in body["rooms"]]
                broadcast = (str(body["site"]), rooms, str(body["event"]), list(body["args"]))
            elif "disconnect" in body:
                site, user = str(body["site"]), str(body["disconnect"])
            else:
                site, message, deliveries = decode(body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            logger.error("node bus: undecodable signal dropped: {}", exc)
            return
        self.stats.signals_received += 1
        if broadcast is not None:
            if self.on_broadcast is not None:
                await self.on_broadcast(*broadcast)
        elif "disconnect" in body:
            if self.on_disconnect is not None:
                self.on_disconnect(site, user)
        else:
            assert self.on_delivery is not None
            self.on_delivery(site, message, deliveries)
