"""Builds the whole service from a Config: the store, one namespace per site, the HTTP routes,
and on Redis the links between nodes."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from loguru import logger

from storage import Store, StoreUnavailable
from storage.redis_keys import DEFAULT_PREFIX
from storage.redis_store import RedisStore
from storage.sqlite_store import SQLiteStore
from transport import orjson_codec
from transport.dispatch import Dispatcher
from transport.http_server import CappedSite, ConnectionCap, usable_connections
from transport.node_bus import LocalBus, NodeBus, RedisBus
from transport.send import SendHandler
from transport.site_namespace import SiteNamespace
from transport.socketio_adapter import (
    IncompatibleVersion,
    IndexedManager,
    IndexedRedisManager,
    SocketIOServer,
    check_compatible,
)
from webservice.config import Config

# The browser client pages of the original load from the service itself (socket.io's
# serveClient): socket.io-client 2.5.0, the last of the line the original's pages were written
# for, shipped with its MIT license beside it.
CLIENT_BUNDLE = Path(__file__).parent / "static" / "socket.io.js"
HEALTH_TIMEOUT = 2.0
DEFAULT_MAX_PACKET = 100_000  # bytes, io.maxHttpBufferSize
DRAIN_TIMEOUT = 5.0
HEARTBEATS_PER_TIMEOUT = 6  # a node is declared dead after missing this many heartbeats


class StartupError(Exception):
    """The service cannot start here (port taken, store unreachable, ...): one line says why."""


def make_store(config: Config, node_id: str) -> Store:
    if config.redis_url:
        return RedisStore(
            config.redis_url,
            device_ttl=config.device_ttl,
            node_id=node_id,
            node_dead_after=config.node_timeout,
            max_queue=config.max_queue,
        )
    return SQLiteStore(
        config.sqlite_path,
        device_ttl=config.device_ttl,
        synchronous=config.sqlite_synchronous,
        node_id=node_id,
        max_queue=config.max_queue,
    )


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = uuid.uuid4().hex[:12]
        self.store = make_store(config, self.node_id)
        options: dict[str, Any] = {
            "cors_allowed_origins": "*",
            "json": orjson_codec,
            # Clients send acks and connects only: a packet of 100 KB is already generous.
            "max_http_buffer_size": DEFAULT_MAX_PACKET,
        }
        options.update(config.socketio_options)
        if config.redis_url:
            # Plain-site broadcasts reach the sockets of every node through Redis.
            options["client_manager"] = IndexedRedisManager(
                config.redis_url, channel=f"{DEFAULT_PREFIX}socketio"
            )
        else:
            options["client_manager"] = IndexedManager()
        self.sio = SocketIOServer(async_mode="aiohttp", limits=config.limits, **options)
        self.app = web.Application(client_max_size=config.limits.max_send_body)
        self.sio.attach(self.app)
        self.app.router.add_get("/healthcheck", self.healthcheck)
        self.app.router.add_post("/send", self._send)
        if config.serve_client:
            self.app.router.add_get("/socket.io/socket.io.js", self.client_bundle)
        self.namespaces: dict[str, SiteNamespace] = {}
        self.dispatcher = Dispatcher(self.node_id, self.namespaces)
        self.bus: NodeBus = LocalBus()
        if config.redis_url:
            self.bus = RedisBus(
                config.redis_url,
                self.node_id,
                DEFAULT_PREFIX,
                on_delivery=self.dispatcher.deliver_here,
                on_recovered=self.dispatcher.catch_up_everyone,
            )
        self.dispatcher.bus = self.bus
        self.http: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None
        self._send_handler: SendHandler | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.draining = False

    async def start(self) -> None:
        """Open the store, then listen; raises :class:`StartupError` with one line if either
        cannot be done (the caller then calls ``stop``)."""
        try:
            check_compatible()
        except IncompatibleVersion as exc:
            raise StartupError(str(exc)) from None
        try:
            await self.store.open()
        except StoreUnavailable as exc:
            raise StartupError(str(exc)) from None
        try:
            await self.bus.start()
        except TimeoutError:
            raise StartupError("Redis: the cross-node channel did not subscribe in time") from None
        self.http = aiohttp.ClientSession()
        for site in self.config.sites.values():
            namespace = SiteNamespace(
                site,
                self.store,
                self.http,
                self.config.device_ttl,
                self.config.auth_timeout,
                self.config.limits,
            )
            self.namespaces[site.name] = namespace
            self.sio.register_namespace(namespace)
        self._send_handler = SendHandler(
            self.namespaces, self.store, self.dispatcher, self.config.limits
        )
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="heartbeat")
        self._watchdog = asyncio.create_task(self._watch_writers(), name="write-watchdog")
        self.runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=DRAIN_TIMEOUT,
            keepalive_timeout=self.config.limits.keepalive_timeout,
        )
        await self.runner.setup()
        try:
            limits = self.config.limits
            cap = ConnectionCap(
                usable_connections(limits.max_connections), limits.http_read_timeout
            )
            await CappedSite(self.runner, self.config.host, self.config.port, cap).start()
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        kind = "Redis" if self.config.redis_url else f"SQLite ({self.config.sqlite_path})"
        logger.info(
            "node {} listening on {}:{} with {}; sites: {}",
            self.node_id,
            self.config.host,
            self.config.port,
            kind,
            ", ".join(self.namespaces) or "none",
        )

    async def _beat_forever(self) -> None:
        while True:
            try:
                dead = await self.store.heartbeat()
            except StoreUnavailable as exc:
                logger.warning("heartbeat failed: {}", exc)
            else:
                if dead:
                    logger.warning("released the connections of stopped nodes {}", dead)
            await asyncio.sleep(self.config.node_timeout / HEARTBEATS_PER_TIMEOUT)

    async def _watch_writers(self) -> None:
        while True:
            await asyncio.sleep(self.config.limits.write_timeout / 3)
            self.sio.drop_stalled_writers()

    async def _send(self, request: web.Request) -> web.Response:
        assert self._send_handler is not None
        return await self._send_handler(request)

    async def client_bundle(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(
            CLIENT_BUNDLE,
            headers={"Content-Type": "application/javascript", "Cache-Control": "max-age=3600"},
        )

    async def healthcheck(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="unhealthy: shutting down")
        try:
            await asyncio.wait_for(self.store.ping(), HEALTH_TIMEOUT)
        except (StoreUnavailable, TimeoutError) as exc:
            return web.Response(status=503, text=f"unhealthy: store unavailable: {exc}")
        if not self.bus.healthy:
            return web.Response(status=503, text="unhealthy: cross-node listener is down")
        return web.Response(text="ok")

    async def stop(self) -> None:
        """SIGTERM: stop accepting, finish every /send in progress, close sockets so clients
        reconnect elsewhere, record their disconnects, then close the store."""
        self.draining = True
        if self.runner is not None:
            for site in self.runner.sites:
                await site.stop()
        # wait=False: a socket whose client already left has no writer to flush its queue.
        for socket in list(self.sio.eio.sockets.values()):
            await socket.close(wait=False)
        if self.runner is not None:
            await self.runner.cleanup()  # waits for in-flight requests, up to DRAIN_TIMEOUT
        await self.sio.shutdown()
        for namespace in self.namespaces.values():
            await namespace.close(DRAIN_TIMEOUT)
        for task in (self._heartbeat, self._watchdog):
            if task is not None:
                task.cancel()
        if isinstance(self.sio.manager, IndexedRedisManager):
            await self.sio.manager.stop_listener(DRAIN_TIMEOUT)
        await self.bus.stop()
        if self.http is not None:
            await self.http.close()
        await self.store.close()
