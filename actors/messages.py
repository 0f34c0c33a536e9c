"""What a UserActor's mailbox carries. Transport turns socket and HTTP events into these."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..storage import Message


class TooManyDevices(Exception):
    """A new device of a user whose ``max_devices`` devices are all connected."""


@dataclass(slots=True)
class Register:
    """A socket passed auth: count it in the store before the handshake completes.

    ``reply`` resolves to True if this is the user's first connection anywhere; it fails with
    the store's error, or ``TooManyDevices``, which the transport turns into a connect error.
    """

    sid: str
    device: str
    shared_rooms: list[str]
    authorization: str
    forget_on_disconnect: bool
    reply: asyncio.Future[bool]


@dataclass(slots=True)
class RegisterAgain:
    """The other nodes took this one for dead and released its connections: count them in
    the store again, then re-read the queues (signals were missed meanwhile)."""


@dataclass(slots=True)
class Attach:
    """The handshake is complete: greet the socket and send what its device missed."""

    sid: str


@dataclass(slots=True)
class Detach:
    sid: str


@dataclass(slots=True)
class Release:
    """Count a gone socket's connection out of the store (retried until the store answers)."""

    device: str
    authorization: str
    forget: bool


@dataclass(slots=True)
class Deliver:
    """``message`` was stored for these devices of the user, at these seqs."""

    message: Message
    seqs: dict[str, int]


@dataclass(slots=True)
class Ack:
    """Remove these ``(seq, event)`` messages: an ack whose first write failed."""

    device: str
    acked: list[tuple[int, str]]


@dataclass(slots=True)
class ResyncAck:
    """The client acked a message sent with ``resync``: it must be its event's oldest."""

    sid: str
    device: str
    seq: int
    event: str


@dataclass(slots=True, kw_only=True)
class CatchUp:
    """Re-read queues from the store: one device's (a gap did not fill in time) or, without
    ``device``, every device's (deliveries were dropped, or signals may have been missed)."""

    device: str | None = None


@dataclass(slots=True)
class Retry:
    """A store write that failed (store unreachable), tried again after ``delay`` seconds."""

    message: Ack | ResyncAck | Release | CatchUp
    delay: float


ActorMessage = (
    Register
    | RegisterAgain
    | Attach
    | Detach
    | Release
    | Deliver
    | Ack
    | ResyncAck
    | CatchUp
    | Retry
)
