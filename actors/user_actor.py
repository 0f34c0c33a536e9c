"""One actor per connected user: the only place that decides what that user's sockets get.

Its mailbox serializes everything about the user on this node: connects, disconnects,
deliveries and acks. Together with the store's atomic operations this keeps the delivery
invariants (shared/delivery-invariants.md): ``_batch`` first, then live messages in seq order,
each at most once per attachment, and an ack removes exactly what it acknowledges.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from actors.messages import (
    Ack,
    ActorMessage,
    Attach,
    CatchUp,
    Deliver,
    Detach,
    Register,
    Release,
    ResyncAck,
    Retry,
)
from actors.outbox import Outbox
from storage import Store, StoredMessage, StoreUnavailable

if TYPE_CHECKING:
    from actors.registry import ActorRegistry

MAILBOX_LIMIT = 10_000
RETRY_FIRST = 0.2  # seconds; doubles up to RETRY_MAX while the store stays unreachable
RETRY_MAX = 5.0


@dataclass(slots=True)
class SocketInfo:
    device: str
    authorization: str
    forget_on_disconnect: bool
    attached: bool = False


@dataclass(slots=True)
class DeviceLink:
    """The socket that currently receives a device's messages, and how far it has got.

    ``last_seq`` is the highest seq sent to it (in ``_batch`` or live). Seqs are dense per
    device, so a delivery above ``last_seq + 1`` means one is still on its way and the queue
    is re-read from the store, which already holds everything up to it.
    """

    sid: str
    last_seq: int
    cleared_through: dict[str, int] = field(default_factory=dict)


class UserActor:
    def __init__(self, registry: ActorRegistry, user: str) -> None:
        self.registry = registry
        self.user = user
        self.site = registry.site.name
        self.store: Store = registry.store
        self.outbox: Outbox = registry.outbox
        self.mailbox: asyncio.Queue[ActorMessage] = asyncio.Queue()
        self.sockets: dict[str, SocketInfo] = {}
        self.devices: dict[str, DeviceLink] = {}
        self._catch_up_queued = False
        self._retries_waiting = 0

    def tell(self, message: ActorMessage) -> None:
        if isinstance(message, Deliver) and self.mailbox.qsize() >= MAILBOX_LIMIT:
            # The message is stored; dropping its live copy is safe if the queue is re-read.
            if not self._catch_up_queued:
                self._catch_up_queued = True
                logger.warning(
                    "site={} user={} mailbox full; will re-read queues", self.site, self.user
                )
                self.mailbox.put_nowait(CatchUp())
            return
        self.mailbox.put_nowait(message)

    @property
    def idle(self) -> bool:
        return not self.sockets and self.mailbox.empty() and not self._retries_waiting

    async def run(self) -> None:
        while True:
            message = await self.mailbox.get()
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
            if self.idle:
                self.registry.retire(self)
                return

    def _retry_later(self, failed: ActorMessage, exc: Exception) -> None:
        """Keep what the client or site asked for until the store is back, instead of
        dropping it: an ack, a disconnect, or a re-read of the queue."""
        if isinstance(failed, Retry):
            retry = Retry(failed.message, min(failed.delay * 2, RETRY_MAX))
        elif isinstance(failed, Ack | ResyncAck | Release | CatchUp):
            retry = Retry(failed, RETRY_FIRST)
        elif isinstance(failed, Deliver):
            retry = Retry(CatchUp("store unavailable"), RETRY_FIRST)
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
        self._retries_waiting -= 1
        self.mailbox.put_nowait(retry)

    async def handle(self, message: ActorMessage) -> None:
        match message:
            case Retry():
                await self.handle(message.message)
            case Deliver():
                await self._deliver(message)
            case Ack():
                await self.store.ack(self.site, self.user, message.device, message.acked)
            case ResyncAck():
                await self._resync_ack(message)
            case Register():
                await self._register(message)
            case Attach():
                await self._attach(message.sid)
            case Detach():
                await self._detach(message.sid)
            case Release():
                await self._release(message)
            case CatchUp():
                self._catch_up_queued = False
                for device in list(self.devices):
                    await self._catch_up(device)

    async def _register(self, message: Register) -> None:
        try:
            first = await self.store.connect_device(
                self.site, self.user, message.device, message.shared_rooms
            )
        except Exception as exc:
            if not message.reply.done():
                message.reply.set_exception(exc)
            return
        if message.reply.done():  # the connect handler gave up (client went away)
            await self.store.disconnect_device(
                self.site, self.user, message.device, forget=message.forget_on_disconnect
            )
            return
        self.sockets[message.sid] = SocketInfo(
            message.device, message.authorization, message.forget_on_disconnect
        )
        message.reply.set_result(first)
        if first:
            self.outbox.presence_changed(self.user, message.authorization, connected=True)

    async def _attach(self, sid: str) -> None:
        info = self.sockets.get(sid)
        if info is None:
            return
        if not self.outbox.is_connected(sid):  # it went away during the handshake
            await self._detach(sid)
            return
        info.attached = True
        try:
            batch = await self.store.pending(self.site, self.user, info.device)
        except StoreUnavailable as exc:
            logger.warning(
                "site={} user={} cannot read the queue, closing the socket: {}",
                self.site,
                self.user,
                exc,
            )
            await self.outbox.disconnect(sid)  # the client reconnects when it can
            return
        self.devices[info.device] = DeviceLink(sid, batch[-1].seq if batch else 0)
        # Read before the greeting, so a client can count on it: whatever is stored after
        # _settings arrives comes live, after the _batch.
        await self.outbox.emit(sid, "_settings", [{"device_ttl": self.store.device_ttl}])
        if batch:
            await self.outbox.emit(
                sid,
                "_batch",
                [[[m.event, *m.args] for m in batch]],
                self._on_ack(Ack(info.device, [(m.seq, m.event) for m in batch])),
            )

    async def _detach(self, sid: str) -> None:
        info = self.sockets.pop(sid, None)
        if info is None:
            return
        link = self.devices.get(info.device)
        if link is not None and link.sid == sid:
            del self.devices[info.device]
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

    async def _deliver(self, message: Deliver) -> None:
        for device, seq in message.seqs.items():
            link = self.devices.get(device)
            if link is None or seq <= link.last_seq:
                continue  # not attached here, or already sent in _batch / a catch-up
            event = message.message.event
            if seq <= link.cleared_through.get(event, 0):
                if seq == link.last_seq + 1:
                    link.last_seq = seq
                continue
            if seq == link.last_seq + 1:
                link.last_seq = seq
                await self._emit_live(
                    link.sid, device, seq, event, message.message.args, message.message.resync
                )
            else:
                await self._catch_up(device)

    async def _catch_up(self, device: str) -> None:
        link = self.devices.get(device)
        if link is None:
            return
        missed = await self.store.pending(self.site, self.user, device, after_seq=link.last_seq)
        for stored in missed:
            await self._emit_stored(link, device, stored)

    async def _emit_stored(self, link: DeviceLink, device: str, stored: StoredMessage) -> None:
        link.last_seq = max(link.last_seq, stored.seq)
        await self._emit_live(
            link.sid, device, stored.seq, stored.event, stored.args, stored.resync
        )

    async def _emit_live(
        self, sid: str, device: str, seq: int, event: str, args: list[Any], resync: bool
    ) -> None:
        ack: Ack | ResyncAck = (
            ResyncAck(sid, device, seq, event) if resync else Ack(device, [(seq, event)])
        )
        await self.outbox.emit(sid, event, args, self._on_ack(ack))

    def _on_ack(self, message: Ack | ResyncAck) -> Any:
        registry, user = self.registry, self.user

        def acked(*_client_args: Any) -> None:
            registry.tell(user, message)

        return acked

    async def _resync_ack(self, message: ResyncAck) -> None:
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
            await self.outbox.emit(message.sid, "_resync", [])
