"""Where messages, devices and room membership are kept: Redis or SQLite, one contract."""

from .base import Backlog, Delivery, HeadAck, Message, Store, StoredMessage, StoreUnavailable

__all__ = [
    "Backlog",
    "Delivery",
    "HeadAck",
    "Message",
    "Store",
    "StoreUnavailable",
    "StoredMessage",
]
