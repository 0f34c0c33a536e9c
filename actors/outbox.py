"""What an actor may do to the outside world; the transport implements it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Outbox(Protocol):
    def send(self, sid: str, payload: str, on_ack: Callable[..., Any] | None = None) -> None:
        """Queue for one socket the event whose JSON ``[event, *args]`` is ``payload``;
        ``on_ack`` runs when the client acks it. Never blocks: packets go out in this order."""

    async def disconnect(self, sid: str) -> None:
        """Close a socket; its client reconnects and starts over."""

    def is_connected(self, sid: str) -> bool:
        """Whether the socket is still there (it may leave during its own handshake)."""

    def presence_changed(self, user: str, authorization: str, connected: bool) -> None:
        """The user's first device connected, or its last one left (fire and forget)."""
