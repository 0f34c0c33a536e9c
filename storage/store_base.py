"""What both stores do the same way, so that each implements only its reads and writes.

Shared room names are normalised here, once, as they enter the store (lower case, each once):
they compare case-insensitively. Connects, queue reads, enqueues and acks that arrive in the
same moment are coalesced (``coalesce``) into one round trip or one transaction; a store
implements the batch methods below, each one atomic per item.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence

from loguru import logger

from .coalesce import Failed, WriteCoalescer
from .stats import StoreStats
from .store import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_MAX_DEVICES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_STEP_MS,
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
    PartlyStored,
    StoredMessage,
    StoreUnavailable,
)

SWEEP_INTERVAL = 60.0  # seconds between sweeps of what expired

ReadItem = tuple[str, str, str, int]
"""site, user, device, and the seq after which to read."""


def shared_rooms(rooms: Sequence[str]) -> list[str]:
    """Shared room names as the store keeps them: lower case, each once, in a stable order."""
    if not rooms:  # a message to users only
        return []
    return sorted({room.lower() for room in rooms})


class StoreBase(ABC):
    def __init__(
        self,
        *,
        device_ttl: int,
        node_id: str,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_devices: int = DEFAULT_MAX_DEVICES,
        step_ms: int = DEFAULT_STEP_MS,
        idempotency_ttl: int = DEFAULT_IDEMPOTENCY_TTL,
    ) -> None:
        self.device_ttl = device_ttl
        self.idempotency_ttl = idempotency_ttl
        self.node_id = node_id
        self.max_queue = max_queue
        self.max_devices = max_devices
        self.step_ms = step_ms
        self.stats = StoreStats()
        self._connects: WriteCoalescer[ConnectItem, Connected] = WriteCoalescer(
            self._write_connects
        )
        self._reads: WriteCoalescer[ReadItem, Backlog] = WriteCoalescer(self._read_queues)
        self._enqueues: WriteCoalescer[EnqueueItem, list[Delivery]] = WriteCoalescer(
            self._flush_enqueues
        )
        self._acks: WriteCoalescer[AckItem, int] = WriteCoalescer(self._write_acks)
        self._sweeper: asyncio.Task[None] | None = None
        self.taken_for_dead = False

    # --- the contract's methods that are the same for both stores -------------------------

    async def connect_device(
        self, site: str, user: str, device: str, shared_rooms_: Sequence[str]
    ) -> Connected:
        return await self._connects.submit((site, user, device, shared_rooms(shared_rooms_)))

    async def enqueue(
        self, site: str, users: Sequence[str], shared_rooms_: Sequence[str], message: Message
    ) -> list[Delivery]:
        return await self._enqueues.submit((site, users, shared_rooms(shared_rooms_), message))

    async def enqueue_all(self, items: Sequence[EnqueueItem]) -> list[list[Delivery]]:
        """Several messages (a bulk send), in this order, in steps (see ``_enqueue_steps``).
        Not coalesced with other sends."""
        normalised = [
            (site, users, shared_rooms(rooms), message) for site, users, rooms, message in items
        ]
        stored, error = await self._enqueue_steps(normalised)
        if error is None:
            return stored
        if not stored:
            raise error
        raise PartlyStored(stored, error)

    async def _flush_enqueues(self, items: Sequence[EnqueueItem]) -> list[list[Delivery] | Failed]:
        """Concurrent single sends: a send stored in an earlier step than the one that failed
        stays a success."""
        stored, error = await self._enqueue_steps(items)
        failed: list[list[Delivery] | Failed] = [Failed(error)] if error is not None else []
        return [*stored, *failed * (len(items) - len(stored))]

    async def _enqueue_steps(
        self, items: Sequence[EnqueueItem]
    ) -> tuple[list[list[Delivery]], StoreUnavailable | None]:
        """Each store call stores the whole messages that fit in ``step_ms`` (one at least),
        so a big send never holds Redis or the SQLite writer for longer than a step: other
        users' connects and acks run between the steps. The messages stored, and the error
        that stopped the rest, if any."""
        stored: list[list[Delivery]] = []
        while len(stored) < len(items):
            try:
                stored += await self._write_enqueues(items[len(stored) :])
            except StoreUnavailable as exc:
                return stored, exc
        return stored, None

    async def read_queue(self, site: str, user: str, device: str, after_seq: int = 0) -> Backlog:
        return await self._reads.submit((site, user, device, after_seq))

    async def pending(
        self, site: str, user: str, device: str, after_seq: int = 0
    ) -> list[StoredMessage]:
        return (await self.read_queue(site, user, device, after_seq)).messages

    def ack(
        self, site: str, user: str, device: str, acked: Sequence[tuple[int, str]]
    ) -> asyncio.Future[int]:
        return self._acks.submit((site, user, device, acked))

    async def shared_room_members(self, site: str, room: str) -> set[str]:
        return await self._room_members(site, room.lower())

    async def import_queue(
        self,
        site: str,
        user: str,
        device: str,
        messages: Sequence[ImportedMessage],
        ttl: int | None,
    ) -> Imported:
        ordered = sorted(messages, key=lambda imported: imported.original_id)
        return await self._import_queue(
            site, user, device, ordered, self.device_ttl if ttl is None else ttl
        )

    async def close(self) -> None:
        """Finish every coalesced write submitted so far, then let go of the store."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for coalescer in (self._connects, self._reads, self._enqueues, self._acks):
            await coalescer.drain()
        await self._close()

    def start_sweeping(self) -> None:
        """Sweep every ``SWEEP_INTERVAL`` from now on (``open`` calls it)."""
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="store-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                logger.warning("store sweep failed: {}", exc)

    # --- what each store implements --------------------------------------------------------

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def attach(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None: ...

    @abstractmethod
    async def heartbeat(self) -> list[str]: ...

    @abstractmethod
    async def sweep(self) -> None:
        """Remove what expired: its rows (SQLite), its entries in the sets that index it
        (Redis). Reads ignore it already; this keeps stale entries from piling up."""

    @abstractmethod
    async def disconnect_device(
        self, site: str, user: str, device: str, *, forget: bool
    ) -> bool: ...

    @abstractmethod
    async def ack_head(
        self, site: str, user: str, device: str, seq: int, event: str
    ) -> HeadAck: ...

    @abstractmethod
    async def alive_nodes(self) -> list[str]: ...

    @abstractmethod
    async def devices_of(self, site: str, user: str) -> list[DeviceState]: ...

    @abstractmethod
    async def purge_queue(self, site: str, user: str, device: str) -> int | None: ...

    @abstractmethod
    async def online(self, site: str, users: Sequence[str]) -> set[str]: ...

    @abstractmethod
    async def queue_depths(self, sites: Sequence[str]) -> dict[str, int]: ...

    @abstractmethod
    async def _write_connects(self, items: Sequence[ConnectItem]) -> list[Connected]:
        """Connects arriving together (a node restart, a network blip), shared rooms
        normalised, in one round trip or transaction."""

    @abstractmethod
    async def _read_queues(self, items: Sequence[ReadItem]) -> list[Backlog]:
        """Queues read together (devices reconnecting at once)."""

    @abstractmethod
    async def _write_enqueues(self, items: Sequence[EnqueueItem]) -> list[list[Delivery]]:
        """The first of ``items`` in submit order, as many as fit in ``step_ms`` (at least
        one), in one atomic call; their deliveries. Overflows go to ``stats``."""

    @abstractmethod
    async def _write_acks(self, items: Sequence[AckItem]) -> list[int]:
        """Every ack of this moment; for each, how many of its messages were still stored."""

    @abstractmethod
    async def _room_members(self, site: str, room: str) -> set[str]:
        """``room`` is lower case already."""

    @abstractmethod
    async def _import_queue(
        self, site: str, user: str, device: str, messages: Sequence[ImportedMessage], ttl: int
    ) -> Imported:
        """``messages`` sorted by original id; ``ttl`` in seconds, 0: never expire."""
