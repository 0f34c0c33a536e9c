"""One actor per connected user: the only place that decides what that user's sockets get.

Its mailbox serializes everything about the user on this node: connects, disconnects,
deliveries, resync acks and re-reads. Together with the store's atomic operations this keeps
the delivery invariants (docs/delivery-invariants.md): ``_batch`` first, then live messages
in seq order, each at most once per attachment, and an ack removes exactly what it acks.

Plain acks are the one thing that does not wake the actor: they are written straight away,
together with every other user's acks of the same moment (see ``storage.coalesce``). The actor
keeps the futures of its own acks in flight and waits for them before it reads a queue, so a
read never returns a message whose ack was already received.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from ..storage import Backlog, Message, Store, StoredMessage, StoreUnavailable
from . import service_events
from .mailbox import Mailbox
from .messages import (
    Ack,
    ActorMessage,
    Attach,
    CatchUp,
    Deliver,
    Detach,
    Register,
    RegisterAgain,
    Release,
    ResyncAck,
    Retry,
    TooManyDevices,
)
from .outbox import Outbox
from .stats import DeliveryStats

MAILBOX_LIMIT = 10_000  # deliveries beyond it are dropped from the mailbox and re-read instead
HOLD_LIMIT = 1_000  # out-of-order deliveries held per device while a gap fills
# Seconds a gap may stay open before the queue is re-read from the store. The missing delivery
# is nearly always one this node is still handing out (a fan-out to 10,000 users takes a while);
# only a signal lost between nodes needs the re-read, and that may take a moment.
GAP_WAIT = 1.0
RETRY_FIRST = 0.2  # seconds; doubles up to RETRY_MAX while the store stays unreachable
RETRY_MAX = 5.0


@dataclass(slots=True)
class SocketInfo:
    device: str
    authorization: str
    forget_on_disconnect: bool
    resync_due: bool = False  # its queue overflowed while away: it missed messages
    shared_rooms: list[str] = field(default_factory=list)  # of the auth answer it connected with
    backlog: Backlog | None = None  # its queue as registering read it, until it attaches
    read_at: int = 0  # the actor's ``changes`` when that was read


@dataclass(slots=True)
class DeviceLink:
    """The socket that currently receives a device's messages, and how far it has got.

    ``last_seq`` is the highest seq sent to it (in ``_batch`` or live). Seqs are dense per
    device, so a delivery above ``last_seq + 1`` means another is still on its way: it is held
    until the gap fills, or re-read from the store (which holds everything up to it) after
    ``GAP_WAIT``.
    """

    sid: str
    last_seq: int
    cleared_through: dict[str, int] = field(default_factory=dict)
    held: dict[int, Message] = field(default_factory=dict)
    gap_timer: asyncio.TimerHandle | None = None

    def stop_waiting(self) -> None:
        if self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None


class UserActor:
    """The user's sockets on this node and what each of its devices has been sent.

    It is given what it needs and no more: its site's name, the store, the outbox, the site's
    counters, ``on_work``, called when a message arrives and no task is handling the mailbox
    (the registry starts one), and ``on_idle``, called once it has no socket and nothing left
    to do (the registry then forgets it). Only the registry spawns one, and replaces it with
    :meth:`hand_over` if its task ever fails.
    """

    __slots__ = (
        "_acks_in_flight",
        "_catch_up_queued",
        "_changes",
        "_on_idle",
        "_on_work",
        "_retries_waiting",
        "_running",
        "_successor",
        "devices",
        "mailbox",
        "outbox",
        "site",
        "sockets",
        "stats",
        "store",
        "user",
    )

    def __init__(
        self,
        site: str,
        user: str,
        store: Store,
        outbox: Outbox,
        stats: DeliveryStats,
        on_idle: Callable[[UserActor], None],
        on_work: Callable[[UserActor], None],
    ) -> None:
        self.site = site
        self.user = user
        self.store = store
        self.outbox = outbox
        self.stats = stats
        self._on_idle = on_idle
        self._on_work = on_work
        self._running = False  # a task is handling the mailbox
        self._successor: UserActor | None = None
        self.mailbox: Mailbox[ActorMessage] = Mailbox()
        self.sockets: dict[str, SocketInfo] = {}
        self.devices: dict[str, DeviceLink] = {}
        self._acks_in_flight: set[asyncio.Future[int]] = set()
        self._catch_up_queued = False
        self._retries_waiting = 0
        # Counts what may change a queue read at registration before its socket attaches: an
        # ack, a delivery for a device not attached here, a resync ack. Changed: read again.
        self._changes = 0

    @property
    def ready_for_inline(self) -> bool:
        """No task is handling the mailbox (so it is empty): a delivery may be decided by the
        caller right now, in order, without starting one."""
        return not self._running

    def tell(self, message: ActorMessage) -> None:
        if self._successor is not None:  # a timer or callback of before the hand-over
            self._successor.tell(message)
            return
        if isinstance(message, Deliver) and self.mailbox.qsize() >= MAILBOX_LIMIT:
            # The message is stored; dropping its live copy is safe if the queue is re-read.
            self._changes += 1
            if not self._catch_up_queued:
                self._catch_up_queued = True
                logger.warning(
                    "site={} user={} mailbox full; will re-read queues", self.site, self.user
                )
                self._post(CatchUp())
            return
        self._post(message)

    def _post(self, message: ActorMessage) -> None:
        """The one way into the mailbox: the actor runs only while it has messages, so the
        first one starts it (``on_work``: the registry gives it a task)."""
        self.mailbox.put_nowait(message)
        if not self._running:
            self._running = True
            self._on_work(self)

    @property
    def idle(self) -> bool:
        return (
            not self.sockets
            and self.mailbox.empty()
            and not self._retries_waiting
            and not self._acks_in_flight
        )

    async def run(self) -> None:
        """Handle every message in the mailbox, then end: an actor with nothing to do holds no
        task (about 1 KB per connected user); its next message starts it again."""
        try:
            while not self.mailbox.empty():
                await self._handle_next()
        finally:
            self._running = False
        if self.idle:
            self._on_idle(self)

    async def _handle_next(self) -> None:
        message = self.mailbox.get_nowait()
        try:
            await self.handle(message)
        except StoreUnavailable as exc:
            self._retry_later(message, exc)
        except Exception as exc:  # one bad event must not stop the user's other events
            logger.opt(exception=exc).error(
                "site={} user={} failed to handle {}: {}",
                self.site,
                self.user,
                type(message).__name__,
                exc,
            )
        finally:
            self.mailbox.task_done()

    async def drained(self) -> None:
        """Returns once every message posted so far has been handled."""
        await self.mailbox.join()

    def hand_over(self, successor: UserActor) -> None:
        """This actor's task failed (a bug): give ``successor`` everything it
        held, so that the user's sockets, devices, queued messages, acks in flight and retries
        go on there. Timers and callbacks still bound to this actor forward to it."""
        successor.sockets, successor.devices = self.sockets, self.devices
        self.sockets, self.devices = {}, {}
        successor._acks_in_flight |= self._acks_in_flight
        for future in self._acks_in_flight:
            future.add_done_callback(successor._acks_in_flight.discard)
        successor._retries_waiting += self._retries_waiting
        successor._catch_up_queued = self._catch_up_queued
        successor._changes = self._changes + 1  # what was read before is read again
        self._successor = successor
        while not self.mailbox.empty():
            successor._post(self.mailbox.get_nowait())
            self.mailbox.task_done()
        for device, link in successor.devices.items():
            if link.gap_timer is not None:  # re-armed on the successor
                link.stop_waiting()
                successor.tell(CatchUp(device=device))

    async def handle(self, message: ActorMessage) -> None:
        match message:
            case Deliver():
                self.deliver(message)
            case Ack():
                self._changes += 1
                await self.store.ack(self.site, self.user, message.device, message.acked)
            case ResyncAck():
                await self._resync_ack(message)
            case Register():
                await self._register(message)
            case RegisterAgain():
                await self._register_again()
            case Attach():
                await self._attach(message.sid)
            case Detach():
                await self._detach(message.sid)
            case Release():
                await self._release(message)
            case CatchUp():
                await self._catch_up(message)
            case Retry():
                await self.handle(message.message)

    # --- connections -------------------------------------------------------------------------

    async def _register(self, message: Register) -> None:
        await self._acks_written()  # the queue read with the registration must not hold them
        read_at = self._changes
        try:
            connected = await self.store.connect_device(
                self.site, self.user, message.device, message.shared_rooms
            )
        except Exception as exc:
            if not message.reply.done():
                message.reply.set_exception(exc)
            return
        if connected.refused:
            if not message.reply.done():
                message.reply.set_exception(TooManyDevices(self.store.max_devices))
            return
        if connected.retired:
            logger.info(
                "site={} user={} device {} retired: the user has {} devices, the limit",
                self.site,
                self.user,
                connected.retired.replace("\t", ", "),
                self.store.max_devices,
            )
        if message.reply.done():  # the connect handler gave up (client went away)
            await self.store.disconnect_device(
                self.site, self.user, message.device, forget=message.forget_on_disconnect
            )
            return
        self.sockets[message.sid] = SocketInfo(
            message.device,
            message.authorization,
            message.forget_on_disconnect,
            resync_due=connected.overflowed,
            shared_rooms=message.shared_rooms,
            backlog=connected.backlog,
            read_at=read_at,
        )
        message.reply.set_result(connected.first)
        if connected.first:
            self.outbox.presence_changed(self.user, message.authorization, connected=True)

    async def _register_again(self) -> None:
        for info in list(self.sockets.values()):
            try:
                await self.store.connect_device(
                    self.site, self.user, info.device, info.shared_rooms
                )
            except StoreUnavailable as exc:
                logger.warning(
                    "site={} user={} device {} not registered again: {}",
                    self.site,
                    self.user,
                    info.device,
                    exc,
                )
        await self._catch_up(CatchUp())

    async def _attach(self, sid: str) -> None:
        info = self.sockets.get(sid)
        if info is None:
            return
        if not self.outbox.is_connected(sid):  # it went away during the handshake
            await self._detach(sid)
            return
        backlog = info.backlog if self._read_holds(info) else None
        info.backlog = None
        try:
            if backlog is None:
                await self._acks_written()
                backlog = await self.store.read_queue(self.site, self.user, info.device)
        except StoreUnavailable as exc:
            logger.warning(
                "site={} user={} cannot read the queue, closing the socket: {}",
                self.site,
                self.user,
                exc,
            )
            await self.outbox.disconnect(sid)  # the client reconnects when it can
            return
        self._greet(sid, info, backlog)

    def attach_now(self, sid: str) -> bool:
        """``Attach`` decided by the caller right now, if nothing is to be waited for: no
        task handles the mailbox (so it is empty), and the queue read at registration is
        still all there is. Otherwise False: post ``Attach``."""
        info = self.sockets.get(sid)
        if (
            self._running
            or self._successor is not None
            or info is None
            or info.backlog is None
            or not self._read_holds(info)
            or not self.outbox.is_connected(sid)
        ):
            return False
        backlog, info.backlog = info.backlog, None
        self._greet(sid, info, backlog)
        return True

    def _read_holds(self, info: SocketInfo) -> bool:
        """Nothing of the user's changed since the socket's queue was read at registration
        (a delivery skipped for it, an ack): that read is still all there is."""
        return info.read_at == self._changes

    def _greet(self, sid: str, info: SocketInfo, backlog: Backlog) -> None:
        """An attached socket's first events: ``_settings``, then what its device missed."""
        previous = self.devices.get(info.device)
        if previous is not None:
            previous.stop_waiting()
        # The device's last seq, not its last pending one: the next message stored for it comes
        # live at once, also after a reconnect with nothing pending (no gap to wait out).
        self.devices[info.device] = DeviceLink(sid, backlog.last_seq)
        batch = backlog.messages
        # Read before the greeting, so a client can count on it: whatever is stored after
        # _settings arrives comes live, after the _batch.
        self.outbox.send(sid, service_events.settings(self.store.device_ttl))
        if batch:
            payload = service_events.batch(m.payload for m in batch)
            acked = [(m.seq, m.event) for m in batch]
            self.outbox.send(sid, payload, self._on_ack(info.device, acked))
            self.stats.batched += len(batch)
        if info.resync_due:  # the batch is not all it missed: it must resync
            info.resync_due = False
            self._send_resync(sid)

    async def _detach(self, sid: str) -> None:
        info = self.sockets.pop(sid, None)
        if info is None:
            return
        link = self.devices.get(info.device)
        if link is not None and link.sid == sid:
            link.stop_waiting()
            del self.devices[info.device]
        await self._acks_written()
        release = Release(info.device, info.authorization, info.forget_on_disconnect)
        try:
            await self._release(release)
        except StoreUnavailable as exc:
            self._retry_later(release, exc)

    async def _release(self, release: Release) -> None:
        last = await self.store.disconnect_device(
            self.site, self.user, release.device, forget=release.forget
        )
        if last:
            self.outbox.presence_changed(self.user, release.authorization, connected=False)

    # --- deliveries --------------------------------------------------------------------------

    def deliver(self, deliver: Deliver) -> None:
        """Decide and send at once; never waits (a re-read is queued as a CatchUp)."""
        message = deliver.message
        for device, seq in deliver.seqs.items():
            link = self.devices.get(device)
            if link is None:  # not attached here (yet: the registration's read may miss it)
                self._changes += 1
                continue
            if seq <= link.last_seq:
                continue  # already sent in _batch or a re-read
            if seq > link.last_seq + 1:
                link.held[seq] = message
                if len(link.held) > HOLD_LIMIT:
                    link.stop_waiting()
                    self.tell(CatchUp(device=device))
                elif link.gap_timer is None:
                    link.gap_timer = asyncio.get_running_loop().call_later(
                        GAP_WAIT, self.tell, CatchUp(device=device)
                    )
                continue
            self._send_next(device, link, seq, message)
            self._send_held(device, link)
            if not link.held:
                link.stop_waiting()

    def _send_next(self, device: str, link: DeviceLink, seq: int, message: Message) -> None:
        link.last_seq = seq
        if seq <= link.cleared_through.get(message.event, 0):
            return  # cleared by a resync before it could be sent
        self._send(
            link.sid,
            device,
            seq,
            message.event,
            message.payload,
            message.resync,
            message.accepted_at,
        )

    async def _catch_up(self, catch_up: CatchUp) -> None:
        if catch_up.device is None:
            self._catch_up_queued = False
            for device, link in list(self.devices.items()):
                await self._reread(device, link)
            return
        gapped = self.devices.get(catch_up.device)
        if gapped is not None:
            gapped.gap_timer = None
            if gapped.held:
                await self._reread(catch_up.device, gapped)

    async def _reread(self, device: str, link: DeviceLink) -> None:
        """Send what the store holds past ``last_seq``: it has everything a gap is missing."""
        link.stop_waiting()
        self.stats.rereads += 1
        await self._acks_written()
        missed = await self.store.read_queue(self.site, self.user, device, after_seq=link.last_seq)
        for stored in missed.messages:
            self._send_stored(link, device, stored)
        link.last_seq = max(link.last_seq, missed.last_seq)
        link.held = {seq: m for seq, m in link.held.items() if seq > link.last_seq}
        self._send_held(device, link)

    def _send_held(self, device: str, link: DeviceLink) -> None:
        """Send the held deliveries that now follow on without a gap."""
        while (held := link.held.pop(link.last_seq + 1, None)) is not None:
            self._send_next(device, link, link.last_seq + 1, held)

    def _send_stored(self, link: DeviceLink, device: str, stored: StoredMessage) -> None:
        link.last_seq = max(link.last_seq, stored.seq)
        self._send(link.sid, device, stored.seq, stored.event, stored.payload, stored.resync)

    def _send(
        self,
        sid: str,
        device: str,
        seq: int,
        event: str,
        payload: str,
        resync: bool,
        accepted_at: float = 0.0,
    ) -> None:
        """``accepted_at``: when /send took a live message (0 for one read from the queue)."""
        self.stats.live += 1
        if resync:
            ack = ResyncAck(sid, device, seq, event)
            self.outbox.send(sid, payload, lambda *_: self.tell(ack))
        else:
            self.outbox.send(sid, payload, self._on_ack(device, [(seq, event)], accepted_at))

    # --- acks --------------------------------------------------------------------------------

    def _on_ack(self, device: str, acked: list[tuple[int, str]], accepted_at: float = 0.0) -> Any:
        def on_ack(*_client_args: Any) -> None:
            self._changes += 1
            self.stats.acked += len(acked)
            if accepted_at:
                self.stats.delivery_latency.observe(time.time() - accepted_at)
            future = self.store.ack(self.site, self.user, device, acked)
            assert isinstance(future, asyncio.Future)
            self._acks_in_flight.add(future)
            future.add_done_callback(lambda done: self._ack_written(done, device, acked))

        return on_ack

    def _ack_written(
        self, future: asyncio.Future[int], device: str, acked: list[tuple[int, str]]
    ) -> None:
        self._acks_in_flight.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            self._retry_later(Ack(device, acked), exc)

    async def _acks_written(self) -> None:
        """Wait for this user's acks in flight: a queue read must not return them."""
        if self._acks_in_flight:
            await asyncio.gather(*self._acks_in_flight, return_exceptions=True)

    async def _resync_ack(self, message: ResyncAck) -> None:
        self._changes += 1
        await self._acks_written()
        outcome = await self.store.ack_head(
            self.site, self.user, message.device, message.seq, message.event
        )
        if not outcome.cleared:
            return
        link = self.devices.get(message.device)
        if link is not None:
            link.cleared_through[message.event] = outcome.cleared_through
        logger.info(
            "site={} user={} device={} event={} resync: queue cleared",
            self.site,
            self.user,
            message.device,
            message.event,
        )
        if message.sid in self.sockets:
            self._send_resync(message.sid)

    def _send_resync(self, sid: str) -> None:
        self.outbox.send(sid, service_events.RESYNC)
        self.stats.resyncs += 1

    # --- failures ----------------------------------------------------------------------------

    def _retry_later(self, failed: ActorMessage, exc: BaseException) -> None:
        """Keep what the client or site asked for until the store is back, instead of
        dropping it: an ack, a disconnect, or a re-read of the queue."""
        if self._successor is not None:
            self._successor._retry_later(failed, exc)
            return
        if isinstance(failed, Retry):
            retry = Retry(failed.message, min(failed.delay * 2, RETRY_MAX))
        elif isinstance(failed, Ack | ResyncAck | Release | CatchUp):
            retry = Retry(failed, RETRY_FIRST)
        elif isinstance(failed, Deliver):
            retry = Retry(CatchUp(), RETRY_FIRST)
        else:
            logger.warning(
                "site={} user={} {} failed: {}", self.site, self.user, type(failed).__name__, exc
            )
            return
        if not isinstance(failed, Retry):
            logger.warning(
                "site={} user={} {} failed, will retry: {}",
                self.site,
                self.user,
                type(failed).__name__,
                exc,
            )
        self._retries_waiting += 1
        asyncio.get_running_loop().call_later(retry.delay, self._retry_due, retry)

    def _retry_due(self, retry: Retry) -> None:
        target = self._successor or self  # counted there since the hand-over
        target._retries_waiting -= 1
        target._post(retry)
