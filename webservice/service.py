"""Builds the whole service from a Config: the store, one namespace per site, the HTTP routes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import socketio
from aiohttp import web
from loguru import logger

from storage import Store, StoreUnavailable
from storage.redis_store import RedisStore
from storage.sqlite_store import SQLiteStore
from transport.send import SendHandler
from transport.site_namespace import SiteNamespace
from webservice.config import Config

HEALTH_TIMEOUT = 2.0
DRAIN_TIMEOUT = 5.0


def make_store(config: Config) -> Store:
    if config.redis_url:
        return RedisStore(config.redis_url, device_ttl=config.device_ttl)
    return SQLiteStore(
        config.sqlite_path, device_ttl=config.device_ttl, synchronous=config.sqlite_synchronous
    )


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = make_store(config)
        options: dict[str, Any] = {"cors_allowed_origins": "*"}
        options.update(config.socketio_options)
        self.sio = socketio.AsyncServer(async_mode="aiohttp", **options)
        self.app = web.Application()
        self.sio.attach(self.app)
        self.namespaces: dict[str, SiteNamespace] = {}
        self.http: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self.app.router.add_get("/healthcheck", self.healthcheck)
        self.app.router.add_post("/send", self._send)
        self._send_handler: SendHandler | None = None

    async def start(self) -> None:
        await self.store.open()
        self.http = aiohttp.ClientSession()
        for site in self.config.sites.values():
            namespace = SiteNamespace(
                site, self.store, self.http, self.config.device_ttl, self.config.auth_timeout
            )
            self.namespaces[site.name] = namespace
            self.sio.register_namespace(namespace)
        self._send_handler = SendHandler(self.namespaces, self.store)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.config.host, self.config.port).start()
        kind = "Redis" if self.config.redis_url else f"SQLite ({self.config.sqlite_path})"
        logger.info(
            "listening on {}:{} with {}; sites: {}",
            self.config.host,
            self.config.port,
            kind,
            ", ".join(self.namespaces) or "none",
        )

    async def _send(self, request: web.Request) -> web.Response:
        assert self._send_handler is not None
        return await self._send_handler(request)

    async def healthcheck(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self.store.ping(), HEALTH_TIMEOUT)
        except (StoreUnavailable, TimeoutError) as exc:
            return web.Response(status=503, text=f"unhealthy: store unavailable: {exc}")
        return web.Response(text="ok")

    async def stop(self) -> None:
        """Stop accepting, let in-flight work finish, close sockets, then the store."""
        if self.runner is not None:
            for site in self.runner.sites:
                await site.stop()
        # Clients see a transport close and reconnect (elsewhere). wait=False: a socket whose
        # client already left has no writer any more to flush its queue.
        for socket in list(self.sio.eio.sockets.values()):
            await socket.close(wait=False)
        await self.sio.shutdown()
        for namespace in self.namespaces.values():
            await namespace.close(DRAIN_TIMEOUT)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.http is not None:
            await self.http.close()
        await self.store.close()
