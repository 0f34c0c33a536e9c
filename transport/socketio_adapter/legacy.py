"""Engine.IO protocol 3 and Socket.IO protocol 4: what socket.io-client 1.x and 2.x speak, the
clients of the Node original (socket.io 1.7). python-engineio speaks protocol 4 only; these are
the few places where 3 differs, served beside it on the same port and path:

- the handshake asks ``EIO=3``; the client pings (``2``) and the server answers (``3``), where in
  protocol 4 the server pings;
- polling payloads frame each packet as ``<length>:<packet>``, where protocol 4 separates
  packets with ``\\x1e``. The length counts characters for 2.x clients but UTF-8 bytes for
  1.x clients (their parser UTF-8-encodes each packet), and nothing in a request says which
  client it is: so every non-ASCII character of a packet we send is written as its JSON escape
  (``\\u00eb``), which both read as the same text and which leaves the two lengths equal;
- a namespace connect carries its query (``0/site?token=...``), the server accepts it with a
  bare ``0/site``, and refuses it with an ERROR packet holding the message string
  (``4/site,"Authentication failed"``), which the client emits as its ``error`` event.

Events, acks, disconnects and the websocket upgrade (``2probe``, ``3probe``, ``5``) are the same
in both. Binary payloads are not: this service sends none, and a client's are refused.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl

import orjson
from engineio import exceptions
from engineio import packet as eio_packet

from .socket import Socket

LEGACY: ContextVar[bool] = ContextVar("socketio_webservice_eio3", default=False)
"""Set while an ``EIO=3`` request is being handled."""

_EIO3 = re.compile(r"(^|&)EIO=3(&|$)")
_MAX_LENGTH_DIGITS = 10


def as_protocol_4_query(query_string: str) -> str:
    """python-engineio refuses a handshake that does not ask for ``EIO=4``."""
    return _EIO3.sub(r"\1EIO=4\2", query_string)


def utf16_length(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code > 0xFFFF:  # as JSON writes it: a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def ascii_packet(text: str) -> str:
    """Non-ASCII characters only ever stand inside the JSON strings of a packet (namespaces
    are ASCII site names), where their escapes mean the same."""
    return text if text.isascii() else _NON_ASCII.sub(_json_escape, text)


def encode_payload(packets: Iterable[eio_packet.Packet]) -> str:
    parts = []
    for pkt in packets:
        text = pkt.encode()
        if isinstance(text, bytes):  # never sent here
            raise ValueError("binary packets are not sent to protocol 3 clients")
        text = ascii_packet(text)
        parts.append(f"{len(text)}:{text}")
    return "".join(parts)


def _end_of(body: str, start: int, units: int) -> int:
    """Where a packet of ``units`` UTF-16 code units that begins at ``start`` ends."""
    if body[start : start + units].isascii() and start + units <= len(body):
        return start + units
    end = start
    while units > 0 and end < len(body):
        units -= 2 if ord(body[end]) > 0xFFFF else 1  # outside the BMP: a surrogate pair
        end += 1
    if units != 0:
        raise ValueError("a protocol 3 packet is shorter than its length")
    return end


def decode_payload(body: str) -> list[eio_packet.Packet]:
    packets = []
    at = 0
    while at < len(body):
        colon = body.find(":", at, at + _MAX_LENGTH_DIGITS + 1)
        digits = body[at:colon]
        if colon < 0 or not digits.isdigit():
            raise ValueError("not a protocol 3 payload")
        end = _end_of(body, colon + 1, int(digits))
        packets.append(eio_packet.Packet(encoded_packet=body[colon + 1 : end]))
        at = end
    return packets


class LegacySocket(Socket):
    """An Engine.IO session of protocol 3: the client keeps it alive with its pings."""

    ACCEPTED = frozenset({eio_packet.CLOSE, eio_packet.PING, eio_packet.MESSAGE})

    def __init__(self, server: Any, sid: str) -> None:
        super().__init__(server, sid)
        self.last_seen = time.time()

    def heard_from(self) -> None:
        self.last_seen = time.time()

    async def receive(self, pkt: eio_packet.Packet) -> None:
        self.heard_from()
        if pkt.packet_type == eio_packet.PING:
            pong = eio_packet.Packet(eio_packet.PONG, data=pkt.data)
            if not self.write_at_once(pong.encode()):  # as a ping of protocol 4
                await self.send(pong)
            return
        await super().receive(pkt)

    def schedule_ping(self) -> None:
        """The server sends no pings in protocol 3."""

    async def check_ping_timeout(self) -> bool:
        if self.closed:
            raise exceptions.SocketIsClosedError()
        silent_for = time.time() - self.last_seen
        if silent_for > self.server.ping_interval + self.server.ping_timeout:
            await self.close(wait=False, abort=False, reason=self.server.reason.PING_TIMEOUT)
            return False
        return True

    def decode_payload(self, body: str) -> list[eio_packet.Packet]:
        return decode_payload(body)


def connect_with_auth(data: str) -> str:
    """``0/site?token=t&deviceId=d,`` (protocol 4) as ``0/site,{"token":"t","deviceId":"d"}``
    (protocol 5): the namespace's query reaches the connect handler as its ``auth``."""
    head, _, _ = data.partition(",")
    namespace, _, query = head[1:].partition("?")
    auth = dict(parse_qsl(query, keep_blank_values=True, max_num_fields=50))
    return f"0{namespace}," + (orjson.dumps(auth).decode() if auth else "")


def connect_reply(packet_type: int, namespace: str | None, data: Any) -> str:
    """The answer to a namespace connect, as protocol 4 says it: ``0/site`` when accepted,
    ``4/site,"<message>"`` when refused (python-socketio would send ``{"message": ...}``)."""
    prefix = namespace if namespace and namespace != "/" else ""
    if packet_type == 0:
        return f"0{prefix}"
    message = data.get("message", "") if isinstance(data, dict) else data
    return f"4{prefix}{',' if prefix else ''}{json.dumps(message)}"
