"""python-engineio's socket, with cheaper waits for packets in and out.

Adapted from python-engineio's ``AsyncSocket`` (MIT): its writer (websocket) and every polling
GET wait in ``poll`` for the next packet with ``asyncio.wait_for``, which wraps each wait in a
task of its own, and its websocket reader starts a task and a ``wait_for`` for every packet a
client sends (every ack): two tasks per packet, on every socket. Profiled on plain-site direct
sends, ``poll``'s alone were 9% of the service's CPU; on fan-out the reader's were 5%. Here
``poll`` waits with one timer (``Mailbox.get_within``; the socket's queue is our Mailbox, see
``_EngineIOServer.create_queue``), the websocket's reader and writer wait without timers
(Engine.IO's service task already closes a socket whose pings stop, see ``close``), and the
server's pings come from one clock for all sockets, not from a task per connection: with the
empty mailboxes holding no deque, 3 KB less per connection. A message frame read from a
websocket (every ack is one) goes straight to the Socket.IO server's handler, without the
Packet, the log call and the event wrapper ``receive`` puts around each.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from engineio import async_socket
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

MESSAGE = str(eio_packet.MESSAGE)
PING = str(eio_packet.PING)
PAYLOAD_SEPARATOR = "\x1e"
ONE_WRITE_LIMIT = 16_384  # characters of queued packets the writer may send in one write


class Socket(async_socket.AsyncSocket):  # type: ignore[misc]
    dropped = False  # set by the server's ``drop``: read nothing more from this client
    last_ping: float | None
    upgrading: bool
    upgraded: bool
    # What a protocol 4 client sends once its session is open (the upgrade's probe and
    # UPGRADE are read by the websocket handler itself). Anything else, as Node's engine.io
    # does, ends the session: python-engineio would log a traceback for a type it has no name
    # for, and answer a polling UPGRADE or a second probe with a packet queued for every one.
    ACCEPTED = frozenset({eio_packet.CLOSE, eio_packet.PONG, eio_packet.MESSAGE})

    async def receive(self, pkt: eio_packet.Packet) -> None:
        if pkt.packet_type not in self.ACCEPTED:
            self.server.drop(self, f"Engine.IO packet type {pkt.packet_type} from a client")
            return
        await super().receive(pkt)

    async def send(self, pkt: eio_packet.Packet) -> None:
        """As python-engineio's, with the queue's bound: Engine.IO's own answers (a protocol 3
        client's pongs) count too, so a client that posts pings and never polls is dropped."""
        if self.queue.qsize() >= self.server.max_outgoing_queue:
            self.server.drop(self, f"{self.server.max_outgoing_queue} packets waiting: not reading")
            return
        await super().send(pkt)

    async def handle_post_request(self, environ: dict[str, Any]) -> None:
        """A polling POST's packets (its body was read and bounded by the server). A payload
        that cannot be decoded drops the client with one line; the server answers 400."""
        body = await environ["wsgi.input"].read()
        try:
            packets = self.decode_payload(body.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError included
            self.server.drop(self, f"bad payload ({str(exc)[:100]})")
            return
        for pkt in packets:
            await self.receive(pkt)
            if self.dropped:
                return

    def decode_payload(self, body: str) -> list[eio_packet.Packet]:
        """Protocol 4: packets separated by a record separator. Not python-engineio's decode,
        which refuses more than 16 packets in one POST (a polling client's acks after a
        burst of messages can be more) and reads ``d=`` as JSONP, which is refused here."""
        if not body:
            return []
        return [eio_packet.Packet(encoded_packet=part) for part in body.split(PAYLOAD_SEPARATOR)]

    async def poll(self) -> list[Any]:
        """As python-engineio's: the packets waiting, or ``QueueEmpty`` if none comes within
        a ping interval and timeout; an empty list once the socket is closing (``None``)."""
        queue = self.queue
        try:
            first = await queue.get_within(self.server.ping_interval + self.server.ping_timeout)
        except (TimeoutError, asyncio.CancelledError):
            raise eio_exceptions.QueueEmpty() from None
        queue.task_done()
        return self._with_the_rest(first)

    def _with_the_rest(self, first: Any) -> list[Any]:
        """``first`` and every packet queued behind it, up to a ``None`` (closing), which stays
        queued for the next wait; ``[]`` if ``first`` is that ``None``."""
        if first is None:
            return []
        queue, packets = self.queue, [first]
        while not queue.empty():
            packet = queue.get_nowait()
            queue.task_done()
            if packet is None:
                queue.put_nowait(None)
                break
            packets.append(packet)
        return packets

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """As python-engineio's, and then the writer is told to stop: python-engineio's own
        writer and reader ended by their timeouts, which ours do not have, so a socket closed
        for a missed ping (Engine.IO's service task) must end its websocket here."""
        closing_now = not (self.closed or self.closing)
        await super().close(wait=wait, abort=abort, reason=reason)
        if closing_now and self.closed:
            self.queue.put_nowait(None)
            # python-engineio forgets a closed session at its next request, or when its
            # service task passes by (a ping timeout later): a flood of short sessions would
            # be held that long.
            if self.server.sockets.get(self.sid) is self:
                del self.server.sockets[self.sid]
            websocket = getattr(self, "websocket", None)
            if websocket is not None and websocket.writing_since:
                # A client that neither pongs nor reads: its writer is stuck on a full
                # connection, and would hold the socket until ``write_timeout``.
                websocket.abort()

    def heard_from(self) -> None:
        """The client sent a packet (protocol 3 sockets keep the time: it is their liveness)."""

    def schedule_ping(self) -> None:
        """As python-engineio's, but the server's one :class:`PingClock` sends it, where
        python-engineio starts a task per connection that sleeps through the interval."""
        if self.last_ping:
            self.last_ping = None
            self.server.ping_clock.schedule(self)

    def ping(self) -> None:
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            if not self.write_at_once(PING):
                self.queue.put_nowait(eio_packet.Packet(eio_packet.PING))

    def write_at_once(self, encoded: str) -> bool:
        """Write an encoded Engine.IO packet straight to the websocket if its writer is idle
        (nothing queued, nothing being written): no task is woken for it. False: queue it."""
        websocket = getattr(self, "websocket", None)
        if (
            websocket is not None
            and self.queue.empty()
            and self.upgraded
            and not self.upgrading
            and websocket.can_write_now()
        ):
            websocket.write_now(encoded)
            return True
        return False

    async def _websocket_handler(self, ws: Any) -> None:
        """As python-engineio's: the upgrade handshake if the session began on polling, then
        a writer task for what the server sends, and this task reads what the client sends
        until it closes, is dropped, or is closed for silence (``close`` ends the writer, and
        the writer the websocket)."""
        max_size = self.server.max_http_buffer_size

        async def read() -> Any:
            data = await ws.wait()
            if data and len(data) > max_size:
                raise ValueError("packet is too large")
            return data

        if self.connected:  # type: ignore[has-type]  # an upgrade: the probe, then UPGRADE
            if self.upgrading or self.upgraded:
                return  # a second websocket for the session
            self.upgrading = True
            try:
                async with asyncio.timeout(self.server.upgrade_timeout):
                    probe = eio_packet.Packet(encoded_packet=await read())
                    if probe.packet_type != eio_packet.PING or probe.data != "probe":
                        self.upgrading = False
                        return
                    await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
                    await self.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the poll
                    upgrade = eio_packet.Packet(encoded_packet=await read())
            except (OSError, TimeoutError):  # gone, or no probe or UPGRADE in time
                self.upgrading = False
                return
            if upgrade.packet_type != eio_packet.UPGRADE:
                self.upgraded = self.upgrading = False
                return
            self.upgraded, self.upgrading = True, False
        else:
            self.connected = self.upgraded = True

        async def writer() -> None:
            # No timeout on this wait (poll's is for polling GETs): the connection's liveness
            # is Engine.IO's service task's business, which checks every socket's pings.
            queue = self.queue
            while True:
                first = await queue.get()
                queue.task_done()
                packets = self._with_the_rest(first)
                if not packets:  # the socket is closing
                    break
                encoded = [packet.encode() for packet in packets]
                try:
                    # Together in one write only what is small: the rest goes through aiohttp,
                    # which waits for a client that stopped reading (the queue's bound holds).
                    if (
                        ws.can_write_now()
                        and all(type(text) is str for text in encoded)
                        and sum(map(len, encoded)) <= ONE_WRITE_LIMIT
                    ):
                        ws.write_now(*encoded)
                        continue
                    for text in encoded:
                        await ws.send(text)
                except Exception:
                    break
            await ws.close()

        on_message = self.server.handlers.get("message")
        writer_task = asyncio.ensure_future(writer())
        try:
            while True:
                try:
                    data = await read()
                except Exception:  # the connection failed, or a frame over the limit
                    break
                if data is None:  # closed by the client
                    break
                if type(data) is str and data[:1] == MESSAGE and on_message is not None:
                    # A message (every ack is one) goes straight to the handler, as
                    # ``receive`` would hand it on after building a Packet, logging it and
                    # wrapping the call.
                    self.heard_from()
                    try:
                        await on_message(self.sid, data[1:])
                    except Exception:  # bad input is dropped by the handler: this is a bug
                        self.server.logger.exception("message handler error")
                        self.server.drop(self, "message handler error")
                else:
                    try:
                        await self.receive(eio_packet.Packet(encoded_packet=data))
                    except eio_exceptions.SocketIsClosedError:
                        break
                    except Exception as exc:  # a frame that cannot be decoded, or its effect
                        self.server.drop(self, f"undecodable frame ({str(exc)[:100]})")
                if self.dropped:  # what the client sent after its offence is not read
                    break
        except asyncio.CancelledError:
            pass  # the server is stopping: close as below
        await self.queue.put(None)  # ends the writer
        await writer_task
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)


class PingClock:
    """Pings every socket once per ping interval, from one task for the whole server: each
    socket waits in the bucket of the second it is due (a list entry, not a timer or a task
    of its own; a second late at most, well inside the client's ping timeout). A bucket holds
    sids, not sockets: a socket closed meanwhile is not kept alive for its ping."""

    def __init__(self, interval: float, sockets: dict[str, Socket]) -> None:
        self.interval = interval
        self.sockets = sockets
        self._due: dict[int, list[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def schedule(self, socket: Socket) -> None:
        loop = asyncio.get_running_loop()
        self._due.setdefault(math.ceil(loop.time() + self.interval), []).append(socket.sid)
        if self._task is None:
            self._task = loop.create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            await asyncio.sleep(math.ceil(now) - now + 0.001)
            second = math.floor(loop.time())
            for due in sorted(key for key in self._due if key <= second):
                for sid in self._due.pop(due):
                    socket = self.sockets.get(sid)
                    if socket is not None:
                        socket.ping()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class SocketTable(dict[str, Any]):
    """The server's sessions: each socket python-engineio creates is made a :class:`Socket`
    as it is stored (python-engineio builds its socket class itself, in ``_handle_connect``).
    ``unjoined``: the sessions that have not joined a namespace, by when they opened, in
    that order (the ones opened earlier first)."""

    def __init__(self) -> None:
        super().__init__()
        self.unjoined: dict[str, float] = {}

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is async_socket.AsyncSocket:
            socket.__class__ = Socket
        if sid not in self:
            self.unjoined[sid] = time.monotonic()
        super().__setitem__(sid, socket)

    def __delitem__(self, sid: str) -> None:
        super().__delitem__(sid)
        self.unjoined.pop(sid, None)

    def joined(self, sid: str) -> None:
        self.unjoined.pop(sid, None)

    def not_joined_since(self, deadline: float) -> list[str]:
        """The sessions opened before ``deadline`` that have not joined, taken off the list:
        they are to be closed."""
        late = []
        for sid, opened in self.unjoined.items():
            if opened >= deadline:
                break
            late.append(sid)
        for sid in late:
            del self.unjoined[sid]
        return late
