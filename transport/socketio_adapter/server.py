"""python-socketio's server and client manager, with changes that matter at scale.

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
- The sockets waiting between the two steps of a connect (its handler running) or of a
  disconnect are found by key: python-socketio searched a list of all of them at each step,
  O(n²) for a wave of n connects (``_Waiting``).
- Engine.IO's check of every session for a silent client wakes once a second for that
  second's share of the sessions (``_EngineIOServer._service_task``), where python-engineio
  waited before each session in turn with a task and a timer: three quarters of an idle
  connection's cost.
- Sessions that have not joined a namespace are bounded in number (a handshake past
  ``max_unjoined_sessions`` is answered 503) and in time (closed after ``join_timeout``): a
  polling handshake opens one without holding a connection.
- Packets queued straight onto a socket (``SocketIOServer.queue_event``), with a bound: a
  client that stops reading is dropped instead of growing its queue forever; so is one whose
  write stays blocked past ``write_timeout`` (``SocketIOServer.drop_stalled_writers``). A
  plain site's send to rooms goes the same way (``queue_to_rooms``): python-socketio's
  ``emit`` starts a task for every recipient.
- Clients only receive here. No event a client emits is handled: python-socketio would run
  the namespace's ``on_connect``/``on_disconnect`` for a client-emitted ``connect`` or
  ``disconnect``. A packet that cannot be decoded closes its socket with one log line, and so
  does a flood of packets before the client has joined a namespace.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import engineio
import socketio
from aiohttp import web
from aiohttp.web import WebSocketResponse
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as aiohttp_driver
from loguru import logger

from ...actors.mailbox import Mailbox
from ...log_throttle import LogThrottle
from ..limits import Limits
from .legacy import (
    LEGACY,
    LegacySocket,
    as_protocol_4_query,
    connect_reply,
    connect_with_auth,
    encode_payload,
)
from .socket import PingClock, SocketTable

ACK_PACKET = re.compile(r"3(/[^,]*),(\d+)")  # Socket.IO ACK: namespace and ack id, then args
# Engine.IO's query parameters a request is routed by: protocol 3, and JSONP polling
PROTOCOL_3 = re.compile(r"(?:^|&)EIO=3(?:&|$)")
JSONP = re.compile(r"(?:^|&)j=")
RANDOM_POOL = 4_096  # bytes of os.urandom read at once for session ids
SERVICE_TICK = 1.0  # seconds between the session checks' wake-ups (``_service_task``)


class _WebSocket(aiohttp_driver.WebSocket):  # type: ignore[misc]
    """Engine.IO's aiohttp WebSocket, with compression as the server says, a record of how
    long its current write has been blocked, and a way to cut it off."""

    writing_since = 0.0
    transport: Any = None
    aborted = False

    def __init__(self, handler: Any, server: Any) -> None:
        super().__init__(handler, server)
        self.server = server  # python-engineio keeps it only from 4.12 on

    async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size,
            compress=self.server.websocket_compression,
        )
        await self._sock.prepare(request)
        self.environ = environ
        self.transport = request.transport
        eio_socket = self.handler.__self__
        if getattr(eio_socket, "websocket", None) is None:  # not a second one (refused)
            eio_socket.websocket = self  # for queue_event and Socket.close
        self.server.websockets.add(self)
        try:
            await self.handler(self)
        except (ValueError, TypeError, IndexError) as exc:  # an Engine.IO frame it cannot read
            self.server.drop(eio_socket, f"undecodable frame ({str(exc)[:100]})")
        finally:
            self.server.websockets.discard(self)
            # The socket held this, which held the socket (its handler) and the whole
            # connection: a cycle only a full collection would free (gc_policy.py).
            if eio_socket.websocket is self:
                eio_socket.websocket = None
        return self._sock

    async def send(self, message: Any) -> None:
        self.writing_since = time.monotonic()
        await super().send(message)
        self.writing_since = 0.0

    def can_write_now(self) -> bool:
        """Whether a text frame may go straight to the connection: nothing is being written
        through aiohttp (which may be waiting to drain), frames are not compressed, and the
        connection's write buffer is nearly empty (the client reads)."""
        transport = self.transport
        return (
            self.writing_since == 0.0
            and not self.server.websocket_compression
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() < DIRECT_WRITE_LIMIT
        )

    def write_now(self, *texts: str) -> None:
        """Unmasked, uncompressed text frames (RFC 6455 5.2), one each, in one write: a
        socket's connect reply, ``_settings`` and ``_batch`` leave in one segment."""
        frames = []
        for text in texts:
            data = text.encode()
            size = len(data)
            if size < 126:
                frames.append(bytes((0x81, size)))
            elif size < 65536:
                frames.append(bytes((0x81, 126)) + size.to_bytes(2, "big"))
            else:
                frames.append(bytes((0x81, 127)) + size.to_bytes(8, "big"))
            frames.append(data)
        self.transport.write(b"".join(frames))

    def abort(self) -> None:
        """Drop the connection now: a write blocked on it fails, and the socket closes."""
        self.aborted = True
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        """No closing frame on a connection cut off: aiohttp would fail to write it, and keep
        the error, its traceback and the whole connection in a reference cycle."""
        if not self.aborted:
            await super().close()


class _CachedBody:
    """Stands in for the request stream once the body has been read (see ``handle_request``)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read(self, length: int = -1) -> bytes:
        return self.body


PROTOCOL = "socketio_webservice.protocol"
DIRECT_WRITE_LIMIT = 16_384  # bytes waiting in a connection's buffer past which we queue
# What a namespace connect reads of the session's environ; the request headers are not read
# once a client has joined, and a long-lived session kept every one (1.3 KB per connection
# with the bench's bare client, more with a browser's cookies).
KEPT_IN_ENVIRON = frozenset(
    {"QUERY_STRING", "REQUEST_METHOD", "PATH_INFO", "REMOTE_ADDR", "aiohttp.request", PROTOCOL}
)


def slim(environ: dict[str, Any]) -> None:
    for key in [key for key in environ if key not in KEPT_IN_ENVIRON]:
        del environ[key]


def client_protocol(environ: dict[str, Any]) -> str:
    """``EIO3`` for socket.io-client 1.x/2.x, ``EIO4`` for 3.x/4.x: for the logs."""
    protocol: str = environ.get(PROTOCOL, "EIO4")
    return protocol


# The request headers python-engineio reads (CORS, the websocket upgrade, compression) and
# their environ keys. python-engineio's own translation copies every header, to be dropped
# again at the namespace connect (``slim``); a browser's cookies alone can be kilobytes.
READ_HEADERS = tuple(
    (name, "HTTP_" + name.upper().replace("-", "_"))
    for name in (
        "Origin",
        "Host",
        "Upgrade",
        "Connection",
        "Accept-Encoding",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Access-Control-Request-Headers",
    )
)


def _translate_request(request: web.Request) -> dict[str, Any]:
    """The WSGI-like environ python-engineio works on, with only what it reads."""
    headers = request.headers
    environ: dict[str, Any] = {
        "wsgi.input": request.content,
        "wsgi.url_scheme": headers.get("X-Forwarded-Proto", "http"),
        "REQUEST_METHOD": request.method,
        "QUERY_STRING": request.query_string,
        "PATH_INFO": request.path,
        "SCRIPT_NAME": "",
        "REMOTE_ADDR": "127.0.0.1",  # as python-engineio's (the peer is not asked for)
        "aiohttp.request": request,
    }
    for name, key in READ_HEADERS:
        if name in headers:  # a repeated header's values joined, as in WSGI
            environ[key] = ",".join(headers.getall(name))
    if LEGACY.get():
        environ["QUERY_STRING"] = as_protocol_4_query(environ["QUERY_STRING"])
        environ[PROTOCOL] = "EIO3"
    body = request.get(_BODY)
    if body is not None:
        environ["wsgi.input"] = _CachedBody(body)
    return environ


# A typed request key where aiohttp has them (3.12 and later), else a plain string.
_BODY: Any = (
    web.RequestKey("socketio_webservice.body", bytes)
    if hasattr(web, "RequestKey")
    else "socketio_webservice.body"
)


class _EngineIOServer(engineio.AsyncServer):  # type: ignore[misc]
    def __init__(
        self,
        *args: Any,
        websocket_compression: bool = False,
        upgrade_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.websocket_compression = websocket_compression
        self.upgrade_timeout = upgrade_timeout  # io.upgradeTimeout: the probe and UPGRADE
        drivers: dict[str, Any] = self._async  # type: ignore[has-type]
        self._async = {
            **drivers,
            "websocket": _WebSocket,
            "translate_request": _translate_request,
        }
        self.websockets: set[_WebSocket] = set()
        self.sockets = SocketTable()
        self.ping_clock = PingClock(self.ping_interval, self.sockets)
        self._random, self._random_at = b"", 0
        self._drops_said = LogThrottle()  # by kind of fault
        self.read_timeout = 60.0
        self.max_outgoing_queue = 1_000
        self.max_unjoined_sessions = 10_000
        self.join_timeout = 45.0
        self._closing: set[asyncio.Future[Any]] = set()

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        """A polling POST's body is read here, within ``read_timeout`` and the packet limit:
        Engine.IO would wait for a trickling body for ever, and answers one over the limit by
        closing the session in a way that waits for a poll the client will never make."""
        # Not request.query: it would be parsed and cached on the request, which a websocket
        # keeps alive; Engine.IO parses the query string again anyway.
        query = request.query_string
        legacy = PROTOCOL_3.search(query) is not None
        if JSONP.search(query) is not None:
            return web.Response(status=400, text="JSONP polling is not supported: use XHR")
        token = LEGACY.set(legacy)
        try:
            return await self._handle_request(request)
        finally:
            LEGACY.reset(token)

    async def _handle_request(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            try:
                async with asyncio.timeout(self.read_timeout):
                    body = await request.read()
            except TimeoutError:
                return web.Response(status=408, text="body not received in time")
            socket = self.sockets.get(request.query.get("sid", ""))
            if len(body) > self.max_http_buffer_size:
                if socket is not None:
                    self.drop(socket, "a POST over the packet limit")
                return web.Response(status=413, text="payload over the packet limit")
            request[_BODY] = body
            if socket is not None:
                if socket.closed or socket.closing:  # python-engineio: a KeyError, a 500
                    return web.Response(status=400, text="session closed")
                response: web.StreamResponse = await super().handle_request(request)
                if socket.dropped:  # by what this POST held (one line was logged)
                    return web.Response(status=400, text="bad packet: session closed")
                return response
        response = await super().handle_request(request)
        return response

    async def _handle_connect(
        self, environ: dict[str, Any], transport: str, jsonp_index: int | None = None
    ) -> Any:
        """A new session: python-engineio's for protocol 4; for protocol 3 the same steps with
        a ``LegacySocket`` (python-engineio builds its own socket class here). Refused while
        ``max_unjoined_sessions`` have not joined a namespace: a polling handshake opens a
        session without holding a connection, so without it a flood of them from one
        connection held memory for as long as each lived."""
        if len(self.sockets.unjoined) >= self.max_unjoined_sessions:
            unsaid = self._drops_said.due("too many sessions")
            if unsaid is not None:
                more = f"; {unsaid} more since the last line" if unsaid else ""
                logger.warning(
                    "handshake refused: {} sessions have not joined a namespace{}",
                    self.max_unjoined_sessions,
                    more,
                )
            return {
                "status": "503 Service Unavailable",
                "headers": [("Content-Type", "text/plain; charset=UTF-8")],
                "response": b"too many sessions waiting to join: try again",
            }
        if not LEGACY.get():
            return await super()._handle_connect(environ, transport, jsonp_index)
        if self.start_service_task:  # type: ignore[has-type]  # it times out silent sessions
            self.start_service_task = False
            self.service_task_handle = self.start_background_task(self._service_task)
        sid = self.generate_id()
        socket = LegacySocket(self, sid)
        self.sockets[sid] = socket
        opened = {
            "sid": sid,
            "upgrades": self._upgrades(sid, transport),
            "pingTimeout": int(self.ping_timeout * 1000),
            "pingInterval": int(self.ping_interval * 1000),
        }
        await socket.send(eio_packet.Packet(eio_packet.OPEN, opened))
        accepted = await self._trigger_event("connect", sid, environ, run_async=False)
        if accepted is not None and accepted is not True:
            del self.sockets[sid]
            return self._unauthorized(accepted or None)
        if transport == "websocket":
            response = await socket.handle_get_request(environ)
            if socket.closed and sid in self.sockets:
                del self.sockets[sid]
            return response
        socket.connected = True
        try:
            return self._ok(await socket.poll(), jsonp_index=jsonp_index)
        except eio_exceptions.QueueEmpty:
            return self._bad_request()

    def _ok(
        self,
        packets: list[eio_packet.Packet] | None = None,
        headers: list[tuple[str, str]] | None = None,
        jsonp_index: int | None = None,
    ) -> dict[str, Any]:
        """A polling answer: protocol 3 frames its packets its own way."""
        if packets is None or not LEGACY.get():
            answer: dict[str, Any] = super()._ok(packets, headers, jsonp_index)
            return answer
        return {
            "status": "200 OK",
            "headers": [*(headers or []), ("Content-Type", "text/plain; charset=UTF-8")],
            "response": encode_payload(packets).encode(),
        }

    async def shutdown(self) -> None:
        await self.ping_clock.stop()
        await super().shutdown()

    async def _service_task(self) -> None:
        """As python-engineio's: every session checked once per ping timeout (one whose
        client stopped answering pings is closed, a closed one forgotten), the checks spread
        over that time. python-engineio waited before each session with ``asyncio.wait_for``,
        a task and a timer for every session in every cycle; this wakes once a second and
        checks that second's share."""
        self.service_task_event = stop = self.create_event()
        while not stop.is_set():
            sessions = list(self.sockets.values())
            share = math.ceil(len(sessions) * SERVICE_TICK / self.ping_timeout) or 1
            for start in range(0, max(len(sessions), 1), share):
                try:
                    await asyncio.wait_for(stop.wait(), SERVICE_TICK)
                    return
                except TimeoutError:
                    pass
                self._close_unjoined()
                for session in sessions[start : start + share]:
                    sid = session.sid
                    try:
                        if session.closed:
                            if self.sockets.get(sid) is session:
                                del self.sockets[sid]
                        elif not session.closing:
                            await session.check_ping_timeout()
                    except Exception:  # one session's failure stops no other's check
                        logger.exception("checking session {} failed", sid)

    def _close_unjoined(self) -> None:
        """Close the sessions that have not joined a namespace within ``join_timeout``."""
        deadline = time.monotonic() - self.join_timeout
        for sid in self.sockets.not_joined_since(deadline):
            session = self.sockets.get(sid)
            if session is not None:
                self.drop(session, f"no namespace joined within {self.join_timeout:g} s")

    def generate_id(self) -> str:
        """As python-engineio's (12 random bytes and a counter, URL-safe base64), the random
        bytes taken from a pool of ``os.urandom``: one system call per 341 ids, not one each
        (python-socketio asks here for its sids too)."""
        if self._random_at + 12 > len(self._random):
            self._random, self._random_at = os.urandom(RANDOM_POOL), 0
        at = self._random_at
        self._random_at = at + 12
        number: int = self.sequence_number  # type: ignore[has-type]
        self.sequence_number = (number + 1) & 0xFFFFFF
        raw = self._random[at : at + 12] + number.to_bytes(3, "big")
        return base64.urlsafe_b64encode(raw).decode()

    def create_queue(self, *args: Any, **kwargs: Any) -> Mailbox[Any]:
        return Mailbox()

    def drop(self, socket: Any, reason: str) -> None:
        """Close an Engine.IO socket at once, without waiting for its writer: it may be stuck
        on a client that does not read. Every way a client is dropped (bad input, a flood, not
        reading) comes here, and is logged once a minute for each kind of fault, with how many
        more: many connections each sending one bad packet cost a line, not one each."""
        if socket.closed or socket.closing:
            return
        unsaid = self._drops_said.due(reason.split(" (", 1)[0])
        if unsaid is not None:
            more = f"; {unsaid} more clients dropped so since the last line" if unsaid else ""
            logger.warning("client {} dropped: {}{}", socket.sid, reason, more)
        socket.dropped = True
        websocket = getattr(socket, "websocket", None)
        if websocket is not None:
            websocket.abort()
        closing = asyncio.ensure_future(socket.close(wait=False, abort=True))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        socket.queue.put_nowait(None)  # ends Engine.IO's writer, or the pending poll


class SocketIOServer(socketio.AsyncServer):  # type: ignore[misc]
    def __init__(self, *args: Any, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or Limits()
        self.eio.read_timeout = float(self.limits.http_read_timeout)
        self.eio.max_outgoing_queue = self.limits.max_outgoing_queue
        self.eio.max_unjoined_sessions = self.limits.max_unjoined_sessions
        self.eio.join_timeout = float(self.limits.join_timeout)
        self._unjoined_packets: dict[str, int] = {}
        self._told_ignored: set[str] = set()
        self._closed_sessions = 0  # Engine.IO sessions ended since start
        # ... by python-engineio's reason: client disconnect, server disconnect, ping timeout,
        # transport close, transport error
        self.disconnects: defaultdict[str, int] = defaultdict(int)

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return _EngineIOServer

    def session_count(self) -> int:
        """Engine.IO sessions open on this node (every client, joined or not)."""
        return len(self.eio.sockets)

    async def close_sessions(self, count: int | None = None) -> int:
        """Close ``count`` open Engine.IO sessions (every one when None), as a server going
        away does: their clients reconnect. How many stay open."""
        open_ = [s for s in self.eio.sockets.values() if not s.closed and not s.closing]
        for socket in open_[:count]:
            # wait=False: a socket whose client already left has no writer to flush its queue.
            await socket.close(wait=False)
        return max(len(open_) - (len(open_) if count is None else count), 0)

    def sessions_by_kind(self) -> dict[tuple[str, str], int]:
        """Open sessions by (Engine.IO protocol, transport): ("3", "websocket") is a
        socket.io-client 1.x/2.x on a websocket."""
        kinds: dict[tuple[str, str], int] = defaultdict(int)
        for socket in list(self.eio.sockets.values()):
            protocol = "3" if isinstance(socket, LegacySocket) else "4"
            kinds[protocol, "websocket" if socket.upgraded else "polling"] += 1
        return dict(kinds)

    def closed_session_count(self) -> int:
        """Engine.IO sessions ended on this node since it started (for the GC policy)."""
        return self._closed_sessions

    def connection_count(self, namespace: str) -> int:
        """Sockets connected to ``namespace`` on this node."""
        return len(self._connected(namespace))

    def namespace_sids(self, namespace: str) -> list[str]:
        """The sockets connected to ``namespace`` on this node."""
        return list(self._connected(namespace))

    def _connected(self, namespace: str) -> Any:
        """python-socketio's room of every socket of ``namespace`` (sid -> Engine.IO sid)."""
        return self.manager.rooms.get(namespace, {}).get(None, {})

    def socket_alive(self, sid: str, namespace: str) -> Coroutine[Any, Any, None] | bool:
        """Whether the socket ``sid`` of ``namespace`` is still connected. python-socketio
        marks a socket connected even if it left during the handshake: such a one is not,
        and what would take it out of python-socketio's rooms is returned, to be run."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        if eio_sid is not None and eio_sid in self.environ:
            return True
        if self.manager.is_connected(sid, namespace):
            return self.manager.disconnect(sid, namespace, ignore_queue=True)  # type: ignore[no-any-return]
        return False

    def unregister_namespace(self, namespace: str) -> None:
        """Connects to ``namespace`` are refused from now on, as to any unknown namespace."""
        self.namespace_handlers.pop(namespace, None)

    # --- out ---------------------------------------------------------------------------------

    def queue_event(
        self, sid: str, namespace: str, payload: str, on_ack: Callable[..., Any] | None
    ) -> None:
        """Queue a Socket.IO EVENT whose JSON ``[event, *args]`` is ``payload``, without a task
        or a per-emit encode: the payload was encoded once for all its recipients, and Engine.IO's
        own ``send`` only appends to the socket's queue. A client whose queue is full stopped
        reading: it is dropped (it reconnects, and gets what it missed from the store)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        socket = self._taking(eio_sid) if eio_sid is not None else None
        if socket is not None:  # an ack callback only for a packet that goes out
            ack = "" if on_ack is None else str(self.manager._generate_ack_id(sid, on_ack))
            self._put(socket, f"2{namespace},{ack}{payload}")

    def queue_to_rooms(self, namespace: str, rooms: Sequence[str], payload: str) -> None:
        """A plain site's send: ``payload`` (``[event, *args]``, encoded once) queued as
        ``queue_event`` does, once for each socket in any of ``rooms``. python-socketio's
        ``emit`` starts a task for each recipient, and reads no rooms as the whole namespace."""
        if rooms:
            packet = f"2{namespace},{payload}"
            for _, eio_sid in self.manager.get_participants(namespace, list(rooms)):
                socket = self._taking(eio_sid)
                if socket is not None:
                    self._put(socket, packet)

    def _taking(self, eio_sid: str) -> Any:
        """The open socket of ``eio_sid`` if it takes one more packet; one whose queue is full
        stopped reading, and is dropped."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return None
        if socket.queue.qsize() >= self.limits.max_outgoing_queue:
            self.eio.drop(socket, f"{self.limits.max_outgoing_queue} packets waiting: not reading")
            return None
        return socket

    def _put(self, socket: Any, packet: str) -> None:
        # Written at once if the socket's writer is idle: the fan-out hot path.
        if not socket.write_at_once("4" + packet):
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.MESSAGE, data=packet))

    def drop_stalled_writers(self) -> None:
        """Drop every websocket whose current write has been blocked past ``write_timeout``."""
        deadline = time.monotonic() - self.limits.write_timeout
        for websocket in list(self.eio.websockets):
            if 0.0 < websocket.writing_since < deadline:
                self.eio.drop(websocket.handler.__self__, "a write blocked: not reading")

    # --- in ----------------------------------------------------------------------------------

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """Acks take a short cut: there is one per delivered message, and python-socketio
        would build a packet object and parse its JSON arguments, which our ack callbacks
        ignore (an ack only says "received"). Everything else goes the usual way, counted
        until the client joins a namespace; a packet it cannot decode drops the client."""
        if isinstance(data, str) and data.startswith("3/") and eio_sid not in self._binary_packet:
            match = ACK_PACKET.match(data)
            if match is not None:
                self._acked(eio_sid, match[1], int(match[2]))
                return
        if isinstance(data, str) and data[:1] == "0" and self._is_legacy(eio_sid):
            data = connect_with_auth(data)
        if eio_sid in self.eio.sockets.unjoined:
            count = self._unjoined_packets.get(eio_sid, 0) + 1
            self._unjoined_packets[eio_sid] = count
            if count > self.limits.max_packets_before_join:
                self._drop_sid(eio_sid, f"{count} packets before joining a namespace")
                return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self._drop_sid(eio_sid, f"bad packet ({str(exc)[:100]})")

    async def _handle_ack(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        """An ack not taken by the short cut above (binary, or an odd spelling)."""
        self._acked(eio_sid, namespace or "/", id)

    def _acked(self, eio_sid: str, namespace: str, ack_id: Any) -> None:
        """Run the ack's callback. An ack of nothing we sent (a stale id after a reconnect,
        or made up) is ignored, and said once per connection, where python-socketio logs a
        line for every one."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        callbacks = self.manager.callbacks.get(sid)
        callback = callbacks.pop(ack_id, None) if callbacks else None
        if callback is not None:
            callback()
        elif eio_sid not in self._told_ignored:
            self._told_ignored.add(eio_sid)
            logger.debug("client {} acked an id it was not sent: ignored", eio_sid)

    def _is_legacy(self, eio_sid: str) -> bool:
        return isinstance(self.eio.sockets.get(eio_sid), LegacySocket)

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if pkt.packet_type in (0, 4) and self._is_legacy(eio_sid):  # CONNECT, CONNECT_ERROR
            await self.eio.send(eio_sid, connect_reply(pkt.packet_type, pkt.namespace, pkt.data))
            return
        await super()._send_packet(eio_sid, pkt)

    def _drop_sid(self, eio_sid: str, reason: str) -> None:
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None:
            self.eio.drop(socket, reason)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        if self.manager.sid_from_eio_sid(eio_sid, namespace or "/") is not None:
            self.eio.sockets.joined(eio_sid)
            self._unjoined_packets.pop(eio_sid, None)
            environ = self.environ.get(eio_sid)
            if environ is not None:
                slim(environ)

    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        if eio_sid not in self._told_ignored:
            self._told_ignored.add(eio_sid)
            name = str(data[0])[:50] if isinstance(data, list) and data else "?"
            logger.debug(
                "client {} emitted {!r}: clients only receive here, ignored", eio_sid, name
            )

    async def _handle_eio_disconnect(self, eio_sid: str, *args: Any) -> None:
        self._closed_sessions += 1
        self.disconnects[str(args[0]) if args and args[0] else "unknown"] += 1
        self._unjoined_packets.pop(eio_sid, None)
        self._told_ignored.discard(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, *args)


class _Sids(dict[str, None]):
    """A namespace's sockets waiting to connect or to disconnect, in the order they came: the
    list methods python-socketio calls on them, each O(1) (and dict's own, in C)."""

    append = dict.setdefault
    remove = dict.__delitem__


class _Waiting(dict[str, _Sids]):
    """python-socketio's ``pending_connect`` and ``pending_disconnect``: by namespace, the
    sockets between the two steps of a connect (its handler is running: the auth call, the
    store) or of a disconnect. python-socketio keeps a list per namespace and finds a socket
    in it by value at every step, so n connects waiting at once (a wave of reconnects while
    the site's auth endpoint is slow) cost O(n²): 30,000 took 8.9 s of the event loop. Each
    list it makes becomes a :class:`_Sids` as it is stored."""

    def __setitem__(self, namespace: str, sids: Any) -> None:
        super().__setitem__(namespace, _Sids(dict.fromkeys(sids)))


class IndexedManager(socketio.AsyncManager):  # type: ignore[misc]
    """This node's sockets and rooms (plain sites' sends reach other nodes on the node bus,
    not through a python-socketio manager). Keeps which rooms each (namespace, sid) is in,
    next to python-socketio's room map.

    Every socket is in two rooms of its own, ``None`` (the namespace) and its sid; only the
    others are kept here, so a socket of a reliable site (which joins none) costs no set.
    """

    rooms: dict[str, dict[Any, Any]]
    callbacks: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rooms_of: dict[tuple[str, str], set[Any]] = {}
        # pending_connect only from python-socketio 5.18 on; unused before
        self.pending_connect = _Waiting()
        self.pending_disconnect = _Waiting()

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None and room != sid:
            self._rooms_of.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of.get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # As python-socketio's own, but leaving only the rooms this socket is in.
        for room in (*self._rooms_of.pop((namespace, sid), ()), sid, None):
            super().basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            waiting = pending.get(namespace)
            if waiting is not None and sid in waiting:
                waiting.remove(sid)
                if not waiting:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        if sid not in self.rooms.get(namespace, {}).get(sid, ()):
            return []
        return [sid, *self._rooms_of.get((namespace, sid), ())]
