"""UserActor on its own: a fake outbox (what its sockets would get) and a real store.

What a socket receives is the outbox's record: the payloads in the order the actor queued
them, each with the ack callback a client would trigger.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from socketio_webservice.actors import user_actor
from socketio_webservice.actors.mailbox import Mailbox
from socketio_webservice.actors.messages import (
    ActorMessage,
    Attach,
    Deliver,
    Detach,
    Register,
)
from socketio_webservice.actors.registry import ActorRegistry
from socketio_webservice.actors.stats import DeliveryStats
from socketio_webservice.actors.user_actor import UserActor
from socketio_webservice.storage import Message, Store, StoreUnavailable

SITE, USER, DEVICE = "shop", "user_1", "phone"
WAIT = 5.0


@dataclass
class Sent:
    sid: str
    event: str
    args: list[Any]
    on_ack: Callable[..., Any] | None

    def ack(self) -> None:
        assert self.on_ack is not None, f"{self.event} asked for no ack"
        self.on_ack()


@dataclass
class FakeOutbox:
    sent: asyncio.Queue[Sent] = field(default_factory=asyncio.Queue)
    connected: set[str] = field(default_factory=set)
    presence: list[tuple[str, bool]] = field(default_factory=list)

    def send(self, sid: str, payload: str, on_ack: Callable[..., Any] | None = None) -> None:
        event, *args = orjson.loads(payload)
        self.sent.put_nowait(Sent(sid, event, args, on_ack))

    async def disconnect(self, sid: str) -> None:
        self.connected.discard(sid)

    def is_connected(self, sid: str) -> bool:
        return sid in self.connected

    def presence_changed(self, user: str, authorization: str, connected: bool) -> None:
        self.presence.append((user, connected))

    async def next(self) -> Sent:
        return await asyncio.wait_for(self.sent.get(), WAIT)

    def nothing_sent(self) -> bool:
        return self.sent.empty()


class BrokenMailbox(Mailbox[ActorMessage]):
    """A bug in the actor's own loop, as far as the registry can tell: its first read fails."""

    broken = True

    def get_nowait(self) -> ActorMessage:
        if self.broken:
            self.broken = False
            raise RuntimeError("a bug in the actor's loop")
        return super().get_nowait()


class Runner:
    """What the registry does for an actor: a task for as long as it has messages."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, actor: UserActor) -> None:
        self.tasks.append(asyncio.create_task(actor.run()))

    def spawn(self, store: Any, outbox: FakeOutbox) -> UserActor:
        return UserActor(
            SITE, USER, store, outbox, DeliveryStats(), on_idle=lambda _: None, on_work=self.start
        )

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Flaky:
    """The real store, with its acks refused while ``down`` (as a Redis out of memory)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.ack_calls: asyncio.Queue[bool] = asyncio.Queue()  # True: it went through

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def ack(
        self, site: str, user: str, device: str, acked: Sequence[tuple[int, str]]
    ) -> asyncio.Future[int]:
        self.ack_calls.put_nowait(not self.down)
        if self.down:
            failed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            failed.set_exception(StoreUnavailable("refusing writes"))
            return failed
        future = self.store.ack(site, user, device, acked)
        assert isinstance(future, asyncio.Future)
        return future


@pytest.fixture
def outbox() -> FakeOutbox:
    return FakeOutbox()


@pytest.fixture(autouse=True)
def quick_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(user_actor, "GAP_WAIT", 0.02)
    monkeypatch.setattr(user_actor, "RETRY_FIRST", 0.02)


@pytest.fixture
async def actor(store: Store, outbox: FakeOutbox) -> AsyncIterator[UserActor]:
    runner = Runner()
    yield runner.spawn(store, outbox)
    await runner.stop()


async def register(actor: UserActor, outbox: FakeOutbox, sid: str, device: str = DEVICE) -> None:
    """The first half of ``attach``: registered (its queue read with it), not attached yet."""
    reply: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    outbox.connected.add(sid)
    actor.tell(Register(sid, device, [], "Bearer t", forget_on_disconnect=False, reply=reply))
    await asyncio.wait_for(reply, WAIT)


def answer_connect(actor: UserActor, sid: str) -> None:
    """The second half, as the transport does once the connect is answered: at once if the
    actor is idle and its read still holds, else through the mailbox (ActorRegistry.attach)."""
    if not actor.attach_now(sid):
        actor.tell(Attach(sid))


async def attach(actor: UserActor, outbox: FakeOutbox, sid: str, device: str = DEVICE) -> Sent:
    """Register and attach a socket as the transport does; returns its _settings."""
    await register(actor, outbox, sid, device)
    answer_connect(actor, sid)
    settings = await outbox.next()
    assert settings.event == "_settings"
    return settings


async def phone_away(actor: UserActor, outbox: FakeOutbox) -> None:
    """The laptop keeps the user here; the phone's socket ``s1`` came and went."""
    await attach(actor, outbox, "laptop-socket", device="laptop")
    await attach(actor, outbox, "s1")
    actor.tell(Detach("s1"))
    await actor.drained()


async def store_message(store: Store, n: int, event: str = "n", resync: bool = False) -> Deliver:
    """Store a message for the user, as /send does; the Deliver the dispatcher would post."""
    message = Message(event=event, args=[n], resync=resync)
    deliveries = await store.enqueue(SITE, [USER], [], message)
    return Deliver(message, {d.device: d.seq for d in deliveries})


async def test_batch_first_then_live_in_order(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    await phone_away(actor, outbox)
    stored = [await store_message(store, n) for n in (1, 2)]
    assert stored[1].seqs == {DEVICE: 2, "laptop": 2}
    for deliver in stored:
        actor.tell(deliver)
    assert [(await outbox.next()).sid for _ in range(2)] == ["laptop-socket"] * 2

    await attach(actor, outbox, "s2")
    batch = await outbox.next()
    assert batch.event == "_batch" and batch.args == [[["n", 1], ["n", 2]]]
    live = await store_message(store, 3)
    actor.tell(live)
    both = {sent.sid: sent for sent in [await outbox.next(), await outbox.next()]}
    third = both["s2"]
    assert (third.event, third.args) == ("n", [3])
    assert both["laptop-socket"].args == [3]
    actor.tell(live)  # a second copy of the same delivery (a re-sent signal): not sent again
    await actor.drained()
    assert outbox.nothing_sent()

    batch.ack()
    third.ack()
    await actor.drained()
    assert await asyncio.wait_for(_empty(store), WAIT) == []


async def test_an_idle_actor_greets_a_socket_at_once_with_settings_then_its_batch(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    await phone_away(actor, outbox)
    actor.tell(await store_message(store, 1))
    assert (await outbox.next()).sid == "laptop-socket"

    await register(actor, outbox, "s2")
    assert actor.attach_now("s2")  # decided here, before anything else runs
    greeting = [outbox.sent.get_nowait(), outbox.sent.get_nowait()]
    assert [(sent.sid, sent.event) for sent in greeting] == [("s2", "_settings"), ("s2", "_batch")]
    assert greeting[1].args == [[["n", 1]]]
    assert not actor.attach_now("s2")  # once only: a second answer finds nothing to greet


async def test_a_socket_gone_before_its_connect_was_answered_is_not_greeted(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    await attach(actor, outbox, "laptop-socket", device="laptop")  # keeps the user here
    await register(actor, outbox, "s1")
    outbox.connected.discard("s1")  # the client left during the handshake
    answer_connect(actor, "s1")
    await actor.drained()
    assert outbox.nothing_sent()
    assert DEVICE not in actor.devices


async def test_a_register_whose_connect_handler_gave_up_leaves_the_user_offline(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    """The connect handler stops waiting (cancelled, or past its timeout) before the actor
    registers the device: the actor takes it offline again, and sends the socket nothing."""
    reply: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    reply.cancel()
    actor.tell(Register("s1", DEVICE, [], "Bearer t", forget_on_disconnect=False, reply=reply))
    await actor.drained()
    assert await store.online(SITE, [USER]) == set()
    assert outbox.nothing_sent()


async def test_a_message_stored_between_register_and_attach_comes_once_in_the_batch(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    await phone_away(actor, outbox)
    actor.tell(await store_message(store, 1))  # the laptop's copy
    assert (await outbox.next()).sid == "laptop-socket"

    await register(actor, outbox, "s2")  # reads [1]
    actor.tell(await store_message(store, 2))  # for a device not attached yet: skipped
    assert not actor.attach_now("s2")  # what was read is not all there is: read again
    actor.tell(Attach("s2"))
    assert (await outbox.next()).sid == "laptop-socket"
    assert (await outbox.next()).event == "_settings"
    batch = await outbox.next()
    assert (batch.sid, batch.event, batch.args) == ("s2", "_batch", [[["n", 1], ["n", 2]]])
    await actor.drained()
    assert outbox.nothing_sent()


async def test_an_ack_between_register_and_attach_is_not_sent_again(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    await attach(actor, outbox, "s1")
    actor.tell(await store_message(store, 1))
    first = await outbox.next()
    assert (first.sid, first.args) == ("s1", [1])

    await register(actor, outbox, "s2")  # the same device from a second socket: reads [1]
    first.ack()  # the first socket acks it before the second attaches
    answer_connect(actor, "s2")
    assert (await outbox.next()).event == "_settings"
    await actor.drained()
    assert outbox.nothing_sent()  # no _batch: 1 was acked
    assert await store.pending(SITE, USER, DEVICE) == []


async def _empty(store: Store) -> list[object]:
    """The queue once the acks in flight are written (they are written in the background)."""
    while True:
        pending = await store.pending(SITE, USER, DEVICE)
        if not pending:
            return list(pending)
        await asyncio.sleep(0.01)


async def test_an_early_delivery_is_held_until_the_gap_fills(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    await attach(actor, outbox, "s1")
    first, second = await store_message(store, 1), await store_message(store, 2)
    actor.tell(second)  # arrives before the first (another node's signal, say)
    await actor.drained()
    assert outbox.nothing_sent()
    actor.tell(first)
    assert [(await outbox.next()).args for _ in range(2)] == [[1], [2]]


async def test_a_gap_that_does_not_fill_is_read_from_the_store(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    await attach(actor, outbox, "s1")
    await store_message(store, 1)  # its signal is lost
    actor.tell(await store_message(store, 2))
    # after GAP_WAIT the actor re-reads the queue: 1 from the store, then 2, once each
    assert [(await outbox.next()).args for _ in range(2)] == [[1], [2]]
    assert actor.stats.rereads == 1
    await actor.drained()
    assert outbox.nothing_sent()


async def test_a_resync_ack_of_a_newer_message_clears_the_event_and_sends_resync(
    actor: UserActor, outbox: FakeOutbox, store: Store
) -> None:
    await attach(actor, outbox, "s1")
    actor.tell(await store_message(store, 1, event="count", resync=True))
    older = await outbox.next()
    actor.tell(await store_message(store, 2, event="count", resync=True))
    newer = await outbox.next()
    assert (older.args, newer.args) == ([1], [2])
    newer.ack()  # the older one is still pending: the client missed it, it must resync
    resync = await outbox.next()
    assert resync.event == "_resync"
    assert await store.pending(SITE, USER, DEVICE) == []
    older.ack()  # cleared already: changes nothing, sends nothing
    await actor.drained()
    assert outbox.nothing_sent()


async def test_an_ack_refused_by_the_store_is_retried_until_it_is_written(
    store: Store, outbox: FakeOutbox
) -> None:
    flaky = Flaky(store)
    runner = Runner()
    actor = runner.spawn(flaky, outbox)
    try:
        await attach(actor, outbox, "s1")
        actor.tell(await store_message(store, 1))
        sent = await outbox.next()
        flaky.down = True
        sent.ack()
        assert await asyncio.wait_for(flaky.ack_calls.get(), WAIT) is False
        assert await asyncio.wait_for(flaky.ack_calls.get(), WAIT) is False  # retried
        flaky.down = False
        while not await asyncio.wait_for(flaky.ack_calls.get(), WAIT):
            pass  # retried until the store takes it
        await actor.drained()
        assert await asyncio.wait_for(_empty(store), WAIT) == []
    finally:
        await runner.stop()


async def test_a_crashed_actor_is_respawned_with_everything_it_held(
    store: Store, outbox: FakeOutbox
) -> None:
    registry = ActorRegistry(SITE, store, outbox)
    reply: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    outbox.connected.add("s1")
    registry.tell(USER, Register("s1", DEVICE, [], "Bearer t", False, reply))
    await asyncio.wait_for(reply, WAIT)
    registry.tell(USER, Attach("s1"))
    assert (await outbox.next()).event == "_settings"
    crashed = registry.actors[USER]
    await crashed.drained()

    crashed.mailbox = BrokenMailbox()  # its next read raises: the task fails
    for n in (1, 2, 3):
        crashed.tell(await store_message(store, n))  # queued when it crashes
    # the successor has the socket and the device's position, and what was queued
    assert [(await outbox.next()).args for _ in range(3)] == [[1], [2], [3]]
    assert registry.actors[USER] is not crashed
    registry.deliver(USER, await store_message(store, 4))
    assert (await outbox.next()).args == [4]
    crashed.tell(await store_message(store, 5))  # a late timer of the old one: forwarded
    assert (await outbox.next()).args == [5]
    await registry.drain(1.0)
