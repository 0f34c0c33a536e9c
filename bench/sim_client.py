"""A simulated client that speaks Engine.IO v4 / Socket.IO v5 over one aiohttp websocket, or
Engine.IO v3 / Socket.IO v4 as socket.io-client 1.x and 2.x do (``protocol=3``).

Thousands of these fit in one process, far cheaper than a client object each, so the load
generator is not what limits the figures. It answers pings, acks every message as it arrives
(what the original README's clients do), and records what it got and when.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson


class ConnectRefused(Exception):
    pass


@dataclass(slots=True)
class Receipt:
    message_id: int
    received_at: float
    in_batch: bool


@dataclass
class SimClient:
    base_url: str
    site: str
    token: str
    device: str
    receipts: list[Receipt] = field(default_factory=list)
    settings: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    on_receipt: Any = None  # called with the client after each receipt
    protocol: int = 4  # Engine.IO protocol: 3 is what the original's clients speak
    _leaving: bool = False
    _ws: aiohttp.ClientWebSocketResponse | None = None
    _reader: asyncio.Task[None] | None = None
    _connected: asyncio.Future[None] | None = None

    async def connect(self, http: aiohttp.ClientSession) -> None:
        query = urlencode(
            {
                "EIO": str(self.protocol),
                "transport": "websocket",
                "token": self.token,
                "deviceId": self.device,
            }
        )
        url = self.base_url.replace("http", "ws", 1) + f"/socket.io/?{query}"
        self.settings.clear()
        self.closed.clear()
        self._leaving = False
        self._ws = await http.ws_connect(url, autoping=False, max_msg_size=0)
        self._connected = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        await self._connected
        await self.settings.wait()

    async def ping(self) -> None:
        """Protocol 3: the client keeps its session alive (the server answers ``3``)."""
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str("2")

    async def close(self) -> None:
        # As socket.io-client does: after its disconnect, nothing more reaches the app. (A
        # frame already on the wire would otherwise be recorded, and its ack, arriving after
        # the disconnect, dropped by the server: it comes again, rightly, in the next _batch.)
        self._leaving = True
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(f"41/{self.site},")
            await self._ws.close()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self._ws is not None
        prefix = f"/{self.site},"
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                data: str = frame.data
                kind = data[0]
                if kind == "2" and self.protocol == 4:  # Engine.IO ping (v4: the server's)
                    await self._ws.send_str("3")
                elif kind == "0":  # Engine.IO open: join the site's namespace
                    await self._ws.send_str(f"40{prefix}")
                elif kind == "4":
                    await self._packet(data[1:], prefix)
        finally:
            self.closed.set()
            if self._connected is not None and not self._connected.done():
                self._connected.set_exception(ConnectRefused("closed during connect"))

    async def _packet(self, packet: str, prefix: str) -> None:
        assert self._ws is not None and self._connected is not None
        if self._leaving:
            return
        kind, body = packet[0], packet[1:]
        if kind == "0" and body != prefix[:-1] and not body.startswith(prefix):
            return  # the root namespace's CONNECT, which Socket.IO 1.x/2.x servers also send
        if body.startswith(prefix):
            body = body[len(prefix) :]
        if kind == "0":
            self._connected.set_result(None)
        elif kind == "4":
            self._connected.set_exception(ConnectRefused(body))
        elif kind == "2":
            digits = 0
            while body[digits].isdigit():
                digits += 1
            ack_id, payload = body[:digits], orjson.loads(body[digits:])
            now = time.perf_counter()
            event = payload[0]
            if event == "_settings":
                self.settings.set()
            elif event == "_batch":
                for item in payload[1]:
                    self.receipts.append(Receipt(item[1], now, True))
            elif event == "m":
                self.receipts.append(Receipt(payload[1], now, False))
            if ack_id:
                await self._ws.send_str(f"43{prefix}{ack_id}[]")
            if event in ("m", "_batch") and self.on_receipt is not None:
                self.on_receipt(self)
