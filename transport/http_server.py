"""The listening socket: aiohttp's server behind a cap on open connections.

A flood of idle TCP connections would otherwise take every file descriptor, and then nobody
connects, not even the load balancer's health check. Past the cap a new connection gets a
plain ``503`` and is closed at once; the cap is lowered to what the open-files limit allows.
A connection whose first request's headers are not complete within ``http_read_timeout`` is
closed (slowloris); idle keep-alive connections are aiohttp's, after ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from loguru import logger

RESERVED_DESCRIPTORS = 200  # files, the store, Redis connections, outgoing HTTP
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 32\r\nConnection: close\r\n\r\ntoo many connections, try again\n"
)
REFUSAL_LOG_EVERY = 60.0  # seconds


def usable_connections(wanted: int) -> int:
    """Raise the open-files limit as far as allowed, and say how many connections fit;
    ``wanted`` 0 means as many as fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    fits = max(soft - RESERVED_DESCRIPTORS, 1)
    if not wanted:
        return fits
    if fits < wanted:
        logger.warning(
            "max_connections {} lowered to {}: the open-files limit is {}", wanted, fits, soft
        )
    return min(wanted, fits)


class ConnectionCap:
    def __init__(self, limit: int, header_timeout: float) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = 0
        self._logged_at = 0.0

    def refuse(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_EVERY:
            self._logged_at = now
            logger.warning(
                "{} open connections, the limit: refusing new ones ({} so far)",
                self.open,
                self.refused,
            )


class _CappedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted; or a refusal past the cap."""

    __slots__ = ("_cap", "_counted", "_head_tail", "_header_timer", "_inner")

    def __init__(self, inner: Any, cap: ConnectionCap) -> None:
        self._inner = inner
        self._cap = cap
        self._counted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_tail = b""  # the last bytes seen while the headers are incomplete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._cap.open >= self._cap.limit:
            self._cap.refuse()
            assert isinstance(transport, asyncio.Transport)
            transport.write(REFUSAL)
            transport.close()
            return
        self._cap.open += 1
        self._counted = True
        self._header_timer = asyncio.get_running_loop().call_later(
            self._cap.header_timeout,
            transport.abort,  # type: ignore[attr-defined]
        )
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._counted:
            self._counted = False
            self._cap.open -= 1
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is not None:
            head = self._head_tail + data
            if b"\r\n\r\n" in head:
                self._header_timer.cancel()
                self._header_timer = None
                self._head_tail = b""
            else:
                self._head_tail = head[-3:]
        if self._counted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._counted else None

    def pause_writing(self) -> None:
        if self._counted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._counted:
            self._inner.resume_writing()


class CappedSite(web.BaseSite):
    """Like aiohttp's ``TCPSite``, with every connection passing through a ``ConnectionCap``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        cap: ConnectionCap,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self.cap = cap

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], Any] = server
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _CappedProtocol(factory(), self.cap),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )
