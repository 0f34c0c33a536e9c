"""What an actor may do to the outside world; the transport implements it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Outbox(Protocol):
    async def emit(
        self, sid: str, event: str, args: list[Any], on_ack: Callable[..., Any] | None = None
    ) -> None:
        """Send ``event(*args)`` to one socket; ``on_ack`` runs when the client acks it."""

    def is_connected(self, sid: str) -> bool:
        """Whether the socket is still there (it may leave during its own handshake)."""

    async def disconnect(self, sid: str) -> None:
        """Close a socket; its client reconnects and starts over."""

    def presence_changed(self, user: str, authorization: str, connected: bool) -> None:
        """The user's first device connected, or its last one left (fire and forget)."""
