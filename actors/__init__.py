"""One actor per connected user decides what that user's sockets get; the registry spawns,
supervises and retires them. The transport posts messages; the actors answer through an
outbox the transport implements."""

from .messages import ActorMessage, Attach, CatchUp, Deliver, Detach, Register, TooManyDevices
from .outbox import Outbox
from .registry import ActorRegistry
from .stats import DeliveryStats

__all__ = [
    "ActorMessage",
    "ActorRegistry",
    "Attach",
    "CatchUp",
    "Deliver",
    "DeliveryStats",
    "Detach",
    "Outbox",
    "Register",
    "TooManyDevices",
]
