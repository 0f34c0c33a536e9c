"""Where messages, devices and room membership are kept: Redis or SQLite, one contract."""

from .factory import make_store
from .store import (
    Backlog,
    Delivery,
    HeadAck,
    Imported,
    ImportedMessage,
    Message,
    OutcomeUnknown,
    PartlyStored,
    Repeated,
    Store,
    StoredMessage,
    StoreUnavailable,
    stored_count,
)

__all__ = [
    "Backlog",
    "Delivery",
    "HeadAck",
    "Imported",
    "ImportedMessage",
    "Message",
    "OutcomeUnknown",
    "PartlyStored",
    "Repeated",
    "Store",
    "StoreUnavailable",
    "StoredMessage",
    "make_store",
    "stored_count",
]
