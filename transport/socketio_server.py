"""python-socketio's server and client managers, with two changes that matter at scale.

- A lighter send queue for each socket: Engine.IO gives every socket a queue from
  ``create_queue``, an ``asyncio.Queue`` of about 3 KB; ours (``actors.mailbox.Mailbox``) does
  the same job in a few hundred bytes.
- WebSocket compression is a choice (``io.perMessageDeflate``), off unless asked for: the
  messages are small JSON, and permessage-deflate costs a zlib stream per connection and a
  deflate per message.
- A short cut for acks (see ``SocketIOServer._handle_eio_message``).
- An index of each socket's rooms: python-socketio finds a leaving socket's rooms by scanning
  every room of the namespace, and every socket has a room of its own, so each disconnect
  costs O(connections) and a wave of them (a node restart, a network blip) O(connections²).
"""

from __future__ import annotations

import re
from typing import Any

import engineio
import socketio
from aiohttp.web import WebSocketResponse
from engineio.async_drivers import aiohttp as aiohttp_driver

from actors.mailbox import Mailbox

ACK_PACKET = re.compile(r"3(/[^,]*),(\d+)")  # Socket.IO ACK: namespace and ack id, then args


class _WebSocket(aiohttp_driver.WebSocket):  # type: ignore[misc]
    """Engine.IO's aiohttp WebSocket, with compression as the server says."""

    async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
        self._sock = WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size,
            compress=self.server.websocket_compression,
        )
        await self._sock.prepare(environ["aiohttp.request"])
        self.environ = environ
        await self.handler(self)
        return self._sock


class _EngineIOServer(engineio.AsyncServer):  # type: ignore[misc]
    def __init__(self, *args: Any, websocket_compression: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.websocket_compression = websocket_compression
        drivers: dict[str, Any] = self._async  # type: ignore[has-type]
        self._async = {**drivers, "websocket": _WebSocket}

    def create_queue(self, *args: Any, **kwargs: Any) -> Mailbox[Any]:
        return Mailbox()


class SocketIOServer(socketio.AsyncServer):  # type: ignore[misc]
    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return _EngineIOServer

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """Acks take a short cut: there is one per delivered message, and python-socketio
        would build a packet object and parse its JSON arguments, which our ack callbacks
        ignore (an ack only says "received"). Everything else goes the usual way."""
        if isinstance(data, str) and data.startswith("3/") and eio_sid not in self._binary_packet:
            match = ACK_PACKET.match(data)
            if match is not None:
                sid = self.manager.sid_from_eio_sid(eio_sid, match[1])
                callbacks = self.manager.callbacks.get(sid)
                callback = callbacks.pop(int(match[2]), None) if callbacks else None
                if callback is not None:
                    callback()
                    return
        await super()._handle_eio_message(eio_sid, data)


class _IndexedRooms:
    """Keeps which rooms each (namespace, sid) is in, next to python-socketio's room map."""

    rooms: dict[str, dict[Any, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rooms_of: dict[tuple[str, str], set[Any]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # As python-socketio's own, but leaving only the rooms this socket is in.
        for room in self._rooms_of.pop((namespace, sid), set()):
            super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        return [room for room in self._rooms_of.get((namespace, sid), ()) if room is not None]


class IndexedManager(_IndexedRooms, socketio.AsyncManager):  # type: ignore[misc]
    """One node."""


class IndexedRedisManager(_IndexedRooms, socketio.AsyncRedisManager):  # type: ignore[misc]
    """Several nodes: broadcasts to rooms reach every node through Redis."""
