"""The one store interface that both back-ends implement.

The store is the source of truth for reliable delivery: devices, their queues and room
membership live here, not in process memory, so a restart or another node sees the same state.
Every method is one atomic decision (a Lua script on Redis, one transaction on SQLite).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from .stats import StoreStats


class StoreUnavailable(Exception):
    """The store could not be reached, refused, or did not answer in time. A write that
    raises this was not made (a 503 says "nothing stored"), unless it is one of the two
    below."""


class OutcomeUnknown(StoreUnavailable):
    """The store went away with the write in flight: it may have been made, or not."""


class PartlyStored(StoreUnavailable):
    """A send stored in steps (see ``StoreBase.enqueue_all``) failed after its first
    ``len(stored)`` messages were stored; ``cause`` says how the rest failed."""

    def __init__(self, stored: list[list[Delivery]], cause: StoreUnavailable) -> None:
        super().__init__(str(cause))
        self.stored = stored
        self.cause = cause


DEFAULT_MAX_QUEUE = 10_000
DEFAULT_MAX_DEVICES = 20
DEFAULT_STEP_MS = 50


@dataclass(frozen=True, slots=True)
class Connected:
    """What ``connect_device`` found: the user's first connection? the device's queue full
    (messages were not stored for it) since it last connected? ``refused``: the user has
    ``max_devices`` devices already, all connected, and this one is new (nothing changed).
    ``retired``: the device that made room for this new one (the least recently seen of the
    user's offline devices; its queue is gone). ``backlog``: the device's queue, read in the
    same step (what ``read_queue`` would return right after), so a reconnecting socket gets
    its ``_batch`` without a second call."""

    first: bool
    overflowed: bool
    refused: bool = False
    retired: str = ""
    backlog: Backlog = field(default_factory=lambda: Backlog([], 0))


AckItem = tuple[str, str, str, Sequence[tuple[int, str]]]
"""site, user, device, and the ``(seq, event)`` messages one ack removes."""

ConnectItem = tuple[str, str, str, Sequence[str]]
"""site, user, device, and the shared rooms of the latest auth answer."""

EnqueueItem = tuple[str, Sequence[str], Sequence[str], "Message"]
"""site, user rooms, shared rooms, and the message one /send stores."""


@dataclass(frozen=True, slots=True)
class Message:
    """What a site asked to send, encoded once however many devices it reaches."""

    event: str
    args: list[Any]
    resync: bool = False
    idempotency_id: str = field(default="", compare=False)
    """Set by a /send with an Idempotency-Key: stored once per id within the store's
    ``idempotency_ttl``; a repeat stores nothing (see :class:`Repeated`)."""
    accepted_at: float = field(default=0.0, compare=False)
    """When /send took it (wall clock, seconds), for the delivery latency metric; not stored,
    so a message read back from a queue has 0."""
    payload: str = field(init=False, repr=False, compare=False)
    """The JSON of ``[event, *args]``: what the client's socket gets, and what ``_batch`` holds."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "payload", orjson.dumps([self.event, *self.args]).decode())

    def encode(self) -> bytes:
        """The stored record: a flags byte, the event name, NUL, then the payload."""
        return f"{'1' if self.resync else '0'}{self.event}\0{self.payload}".encode()


class StoredMessage(NamedTuple):  # a reconnect reads a queue of them: a tuple is cheapest
    """A message in one device's queue; ``seq`` is dense and increasing per device."""

    seq: int
    event: str
    payload: str
    resync: bool

    @property
    def args(self) -> list[Any]:
        args: list[Any] = orjson.loads(self.payload)[1:]
        return args

    @classmethod
    def decode(cls, seq: int, record: bytes) -> StoredMessage:
        text = record.decode()
        event, _, payload = text[1:].partition("\0")
        return cls(seq, event, payload, text[0] == "1")


@dataclass(frozen=True, slots=True)
class Backlog:
    """A device's queue as read at one moment: its stored messages past ``after_seq`` and the
    last seq assigned to it by then. A message stored later has a higher seq, so a socket that
    attaches with this backlog takes the next one live at once, whatever it missed before."""

    messages: list[StoredMessage]
    last_seq: int


class Delivery(NamedTuple):  # one per stored copy: a tuple is the cheapest to build
    """One stored copy of a message: for ``device`` of ``user``, at position ``seq``.

    ``nodes`` are the service nodes where the device has a connection now (none if offline):
    the only ones that need to hear of it.
    """

    user: str
    device: str
    seq: int
    nodes: tuple[str, ...] = ()


class Repeated(list[Delivery]):
    """What ``enqueue`` returns for a message whose ``idempotency_id`` was stored before:
    nothing was stored now, and ``stored`` is how many device queues the first attempt
    reached. It holds that attempt's deliveries (where the devices are connected now) when
    there were at most ``RECORDED_DELIVERIES``, so that they are handed on again: the first
    attempt may have failed before it could (a 504); a device that had it skips it by its
    seq."""

    def __init__(self, stored: int, deliveries: Sequence[Delivery] = ()) -> None:
        super().__init__(deliveries)
        self.stored = stored


RECORDED_DELIVERIES = 100  # per message with an idempotency key; more: the count only


def stored_count(deliveries: Sequence[Delivery]) -> int:
    """How many device queues a message reached (the first attempt's, for a repeat)."""
    return deliveries.stored if isinstance(deliveries, Repeated) else len(deliveries)


DEFAULT_IDEMPOTENCY_TTL = 86_400

ORIGINAL_ID_DIGITS = 20  # a 64-bit id in decimal: padded to this, string order is number order


class ImportedMessage(NamedTuple):
    """A message the Node original had queued for a device: its id there (a 64-bit flake id,
    time-ordered) and the message."""

    original_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class Imported:
    """What ``import_queue`` did with a device's messages: ``stored``; ``known``, skipped as
    imported before (their id is not above the device's import mark); ``full``, skipped
    because the queue holds ``max_queue`` (the device is flagged as overflowed: it resyncs)."""

    stored: int
    known: int
    full: int


@dataclass(frozen=True, slots=True)
class HeadAck:
    """The outcome of a resync ack: removed as the head, or the event's queue was cleared.

    ``cleared_through`` is the device's last assigned seq when the queue was cleared, so the
    caller can skip live copies of messages that were cleared before they were emitted.
    """

    cleared: bool
    cleared_through: int = 0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device of a user, as an operator looks at it (the admin API)."""

    device: str
    connections: int  # on every node
    queued: int  # messages stored and not acked
    expires_in: float | None  # seconds left after its last disconnect; None: it does not expire
    nodes: tuple[str, ...] = ()  # the nodes holding its connections (node ids)


class Store(Protocol):
    """Per-device message queues and the membership index, for every site.

    ``device_ttl`` (seconds, 0 = never) is how long a device's queue outlives its last
    connection. User and device names are opaque strings; shared room names compare
    case-insensitively.
    """

    device_ttl: int
    node_id: str
    max_queue: int
    max_devices: int
    step_ms: int
    idempotency_ttl: int
    stats: StoreStats

    async def open(self) -> None:
        """Connect, create what is missing, and recover state a crash left behind."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers now."""

    async def sweep(self) -> None:
        """Remove what expired (run every minute by the store itself): SQLite's rows, and on
        Redis the entries of expired devices and users in the sets that index them."""

    taken_for_dead: bool
    """Set by ``heartbeat`` when the other nodes had taken this one for dead (it was paused or
    cut off past their timeout) and released its connections: the caller registers them again
    (``connect_device`` for each socket) and clears it."""

    async def heartbeat(self) -> list[str]:
        """Say this node is alive, and release the connections of nodes that stopped saying so
        (killed or cut off), as if their sockets had disconnected. Returns those nodes."""

    async def connect_device(
        self, site: str, user: str, device: str, shared_rooms: Sequence[str]
    ) -> Connected:
        """Count one more connection of ``device`` and stop its expiry. A user keeps at most
        ``max_devices`` devices: a new one past that retires the least recently seen offline
        device, or is refused if every one is connected.

        ``shared_rooms`` replaces the user's membership (the latest auth answer wins). A device
        whose queue had expired starts empty. Says whether the user had no connection before,
        and whether the device's queue overflowed since it last connected (and clears that),
        and returns the device's queue as it is once connected.
        """

    async def disconnect_device(self, site: str, user: str, device: str, *, forget: bool) -> bool:
        """Count one connection of ``device`` less; at zero its queue starts to expire.

        ``forget`` drops the queue at once (a device that can never come back). Returns True
        if the user has no connection left.
        """

    async def enqueue(
        self, site: str, users: Sequence[str], shared_rooms: Sequence[str], message: Message
    ) -> list[Delivery]:
        """Store ``message`` once for every live device of ``users`` and of every user in
        ``shared_rooms``; each device at most once, and not for a device whose queue holds
        ``max_queue`` messages already (it is flagged as overflowed). Returns where it was
        stored."""

    async def enqueue_all(self, items: Sequence[EnqueueItem]) -> list[list[Delivery]]:
        """``enqueue`` for several messages at once (a bulk send), in this order. Each message
        is atomic; they are stored in steps of about ``step_ms`` (a script, a transaction)
        so that other users' calls run in between. A step that fails raises
        :class:`PartlyStored` if earlier steps stored messages."""

    async def read_queue(self, site: str, user: str, device: str, after_seq: int = 0) -> Backlog:
        """The device's stored messages with ``seq > after_seq``, oldest first, and its last
        assigned seq, read together (a message stored meanwhile is in the list or above it)."""

    async def pending(
        self, site: str, user: str, device: str, after_seq: int = 0
    ) -> list[StoredMessage]:
        """``read_queue``'s messages only."""

    def ack(
        self, site: str, user: str, device: str, acked: Sequence[tuple[int, str]]
    ) -> Awaitable[int]:
        """Remove exactly the ``(seq, event)`` messages given; resolves to how many were there.

        Not a coroutine: acks from every user are written together, in one round trip (one
        transaction) per event-loop turn, and the caller gets a future without a task."""

    async def ack_head(self, site: str, user: str, device: str, seq: int, event: str) -> HeadAck:
        """Resync ack: remove ``seq`` if it is the oldest pending message of ``event``; if an
        older one of that event is pending, clear every pending message of ``event`` instead.
        An ack of a message that is no longer stored changes nothing."""

    async def shared_room_members(self, site: str, room: str) -> set[str]:
        """Users whose latest auth answer holds ``room`` and who have not expired."""

    async def alive_nodes(self) -> list[str]:
        """The service nodes that keep this store, alive by their heartbeats (for the status
        page; SQLite: this one)."""

    async def devices_of(self, site: str, user: str) -> list[DeviceState]:
        """The user's devices that have not expired, by name (the admin API)."""

    async def purge_queue(self, site: str, user: str, device: str) -> int | None:
        """Remove every message queued for the device (an operator's decision), and flag it
        as overflowed so that its client gets ``_resync`` when it next connects: it learns
        that it missed messages. How many were removed; None if there is no such device."""

    async def online(self, site: str, users: Sequence[str]) -> set[str]:
        """Which of ``users`` have a connection now, on any node (``GET /presence``)."""

    async def queue_depths(self, sites: Sequence[str]) -> dict[str, int]:
        """Messages stored and not yet acked, per site. Reads every queue: for the status
        page and /metrics, which cache it, not for a hot path."""

    async def attach(self) -> None:
        """Connect for a tool that runs beside the service (``import-original``): unlike
        ``open``, no recovery of connection counts, no heartbeat, no sweeping."""

    async def import_queue(
        self,
        site: str,
        user: str,
        device: str,
        messages: Sequence[ImportedMessage],
        ttl: int | None,
    ) -> Imported:
        """Append what the Node original had queued for ``device`` of ``user`` (sorted by
        original id) to its queue, as if this service had stored it, in one atomic step.

        The device is created if it is new. Messages whose original id is not above the
        device's import mark (the highest id imported for it) are skipped, so importing
        again adds nothing. An offline device is kept for the later of its own expiry and
        ``ttl`` seconds (what the original's list had left; ``None``: ``device_ttl``; 0:
        never); a connected one keeps none."""
