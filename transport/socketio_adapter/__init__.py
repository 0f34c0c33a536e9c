"""Everything that reaches into python-socketio's and python-engineio's internals, in one place:
the server and managers we tune (``server``), Engine.IO protocol 3 beside their protocol 4
(``legacy``), and the start-up check that the installed versions have what both need
(``compatibility``)."""

from .compatibility import IncompatibleVersion, check_compatible
from .server import (
    IndexedManager,
    SocketIOServer,
    client_protocol,
)

__all__ = [
    "IncompatibleVersion",
    "IndexedManager",
    "SocketIOServer",
    "check_compatible",
    "client_protocol",
]
