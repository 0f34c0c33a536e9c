"""python-socketio's server, with one change: a lighter send queue for each socket.

Engine.IO gives every socket a queue from ``create_queue``, an ``asyncio.Queue`` of about
3 KB; ours (``actors.mailbox.Mailbox``) does the same job in a few hundred bytes. With
thousands of idle connections per node, that is most of what separates us from the memory
of a bare python-socketio server (``python -m bench``, RSS per connection).
"""

from __future__ import annotations

from typing import Any

import engineio
import socketio

from actors.mailbox import Mailbox


class _EngineIOServer(engineio.AsyncServer):  # type: ignore[misc]
    def create_queue(self, *args: Any, **kwargs: Any) -> Mailbox[Any]:
        return Mailbox()


class SocketIOServer(socketio.AsyncServer):  # type: ignore[misc]
    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return _EngineIOServer
