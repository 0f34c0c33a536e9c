"""Builds the whole service from a Config: the store, one namespace per site, the HTTP routes,
and on Redis the links between nodes."""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from loguru import logger

from ..actors.messages import RegisterAgain
from ..sites import SiteConfig
from ..storage import Store, StoreUnavailable, make_store
from ..transport import orjson_codec
from ..transport.dispatch import Dispatcher
from ..transport.http_server import CappedSite, ConnectionCap, usable_connections
from ..transport.node_bus import LocalBus, NodeBus, RedisBus
from ..transport.online import OnlineHandler
from ..transport.send import SendHandler
from ..transport.site_http import SiteHttp
from ..transport.site_namespace import SiteNamespace
from ..transport.socketio_adapter import (
    IncompatibleVersion,
    IndexedManager,
    SocketIOServer,
    check_compatible,
)
from ..transport.stats import TransportStats
from . import metrics
from .admin import AdminApi
from .config import Config
from .key_guard import KeyGuard
from .metrics import ServiceMetrics
from .openapi import openapi_document
from .version import version

# The browser client pages of the original load from the service itself (socket.io's
# serveClient): socket.io-client 2.5.0, the last of the line the original's pages were written
# for, shipped with its MIT license beside it.
CLIENT_BUNDLE = Path(__file__).parent / "static" / "socket.io.js"
STATUS_PAGE = Path(__file__).parent / "static" / "status.html"
HEALTH_TIMEOUT = 2.0
DEFAULT_MAX_PACKET = 100_000  # bytes, io.maxHttpBufferSize
DRAIN_TIMEOUT = 5.0
DRAIN_STEP = 0.05  # seconds between two batches of sockets closed while draining
HEARTBEATS_PER_TIMEOUT = 6  # a node is declared dead after missing this many heartbeats


def same_rooms(old: SiteConfig, new: SiteConfig) -> bool:
    """Whether a site's sockets mean the same with ``new`` (only its URLs or keys changed)."""
    return (old.user_room_prefix, old.public_channel) == (new.user_room_prefix, new.public_channel)


def store_for(config: Config, node_id: str) -> Store:
    """The store ``config`` names (the service's, and import-original's)."""
    return make_store(
        redis_url=config.redis_url,
        redis_key_prefix=config.redis_key_prefix,
        redis_min_replicas=config.redis_min_replicas,
        sqlite_path=config.sqlite_path,
        device_ttl=config.device_ttl,
        node_id=node_id,
        max_queue=config.max_queue,
        max_devices=config.limits.max_devices_per_user,
        step_ms=config.limits.store_step_ms,
        idempotency_ttl=config.idempotency_ttl,
        sqlite_synchronous=config.sqlite_synchronous,
        node_dead_after=config.node_timeout,
        redis_timeout=config.redis_timeout,
    )


class StartupError(Exception):
    """The service cannot start here (port taken, store unreachable, ...): one line says why."""


SITES_NAMED = 20  # a reload names this many added sites, then counts the rest


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node_id = uuid.uuid4().hex[:12]
        self.store = store_for(config, self.node_id)
        options: dict[str, Any] = {
            # Given as loggers, the libraries add no handler of their own: their lines go
            # through ours (one format, redacted, JSON where asked) and are not printed twice.
            "logger": logging.getLogger("socketio.server"),
            "engineio_logger": logging.getLogger("engineio.server"),
            "cors_allowed_origins": "*",
            "json": orjson_codec,
            # Clients send acks and connects only: a packet of 100 KB is already generous.
            "max_http_buffer_size": DEFAULT_MAX_PACKET,
        }
        options.update(config.socketio_options)
        # This node's sockets only: plain sites' sends reach other nodes on the node bus.
        options["client_manager"] = IndexedManager()
        self.sio = SocketIOServer(async_mode="aiohttp", limits=config.limits, **options)
        self.app = web.Application(client_max_size=config.limits.max_send_body)
        self.sio.attach(self.app)
        self.stats = TransportStats()
        self.namespaces: dict[str, SiteNamespace] = {}
        self.bus: NodeBus = (
            RedisBus(config.redis_url, self.node_id, config.redis_key_prefix, self.stats)
            if config.redis_url
            else LocalBus()
        )
        self.dispatcher = Dispatcher(self.node_id, self.namespaces, self.bus, self.stats)
        self.metrics = ServiceMetrics(
            self.node_id, self.namespaces, self.store, self.stats, self.sio, config.node_name
        )
        self.app.router.add_get("/healthcheck", self.healthcheck)
        self.app.router.add_get("/readyz", self.healthcheck)
        self.app.router.add_get("/livez", self.livez)
        self.app.router.add_post("/send", self._send)
        # The operators' endpoints: on the internal listener when there is one, so that the
        # public port serves clients and /send only.
        self.internal_app = web.Application() if config.internal_port else None
        operators = self.internal_app or self.app
        if self.internal_app is not None:
            self.internal_app.router.add_get("/livez", self.livez)
            self.internal_app.router.add_get("/readyz", self.healthcheck)
        operators.router.add_get("/metrics", self.metrics_page)
        operators.router.add_get("/openapi.json", self.openapi)
        self.admin_guard = KeyGuard("admin key")
        if config.admin_key:
            operators.router.add_get("/status", self.status_page)
            operators.router.add_get("/status.json", self.status_data)
            admin = AdminApi(self.namespaces, self.store, self.dispatcher, self._admin_refusal)
            admin.add_routes(operators)
        self._online = OnlineHandler(self.namespaces, self.store, config.limits)
        self.app.router.add_get("/presence", self._presence)
        self.bus.on_disconnect = self._disconnect_signalled
        self.bus.on_broadcast = self.dispatcher.emit_here
        if config.serve_client:
            self.app.router.add_get("/socket.io/socket.io.js", self.client_bundle)
        self.http: SiteHttp | None = None
        self.runner: web.AppRunner | None = None
        self.internal_runner: web.AppRunner | None = None
        self._send_handler: SendHandler | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.draining = False
        self._signalled: set[asyncio.Task[int]] = set()

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
            await self.bus.start(self.dispatcher.deliver_here, self.dispatcher.catch_up_everyone)
        except TimeoutError:
            raise StartupError("Redis: the cross-node channel did not subscribe in time") from None
        # No cookies: every call to a site stands alone, as the original's fetch. A shared
        # jar would send the session cookie a site set for one user with the next user's call.
        limits = self.config.limits
        self.http = SiteHttp(limits.max_site_answer, limits.site_connections)
        for site in self.config.sites.values():
            self._open_site(site)
        self._send_handler = SendHandler(
            self.namespaces, self.store, self.dispatcher, self.config.limits, self.stats
        )
        self.metrics.start()
        self._heartbeat = asyncio.create_task(self._beat_forever(), name="heartbeat")
        self._watchdog = asyncio.create_task(self._watch_writers(), name="write-watchdog")
        self.runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=DRAIN_TIMEOUT,
            keepalive_timeout=self.config.limits.keepalive_timeout,
            # No SO_KEEPALIVE (a system call and a socket object per connection): a dead
            # client is found by Engine.IO's pings, an idle HTTP one by keepalive_timeout,
            # both long before the kernel's two hours.
            tcp_keepalive=False,
        )
        await self.runner.setup()
        try:
            limits = self.config.limits
            cap = ConnectionCap(
                usable_connections(limits.max_connections), limits.http_read_timeout
            )
            listener = CappedSite(
                self.runner, self.config.host, self.config.port, cap, limits.listen_backlog
            )
            await listener.start()
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        if self.internal_app is not None:
            self.internal_runner = web.AppRunner(self.internal_app, access_log=None)
            await self.internal_runner.setup()
            host, port = self.config.host, self.config.internal_port
            try:
                await web.TCPSite(self.internal_runner, host, port).start()
            except OSError as exc:
                where = f"{host}:{port}"
                raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from None
            logger.info("internal endpoints on port {}", self.config.internal_port)
        kind = "Redis" if self.config.redis_url else f"SQLite ({self.config.sqlite_path})"
        logger.info(
            "node {} ({}) listening on {}:{} with {}; sites: {}",
            self.config.node_name,
            self.node_id,
            self.config.host,
            self.config.port,
            kind,
            ", ".join(self.namespaces) or "none",
        )

    def _open_site(self, site: SiteConfig) -> None:
        assert self.http is not None
        namespace = SiteNamespace(
            site,
            self.store,
            self.http,
            self.config.device_ttl,
            self.config.auth_timeout,
            self.config.limits,
            self.node_id,
            self.stats,
        )
        self.namespaces[site.name] = namespace
        self.sio.register_namespace(namespace)

    async def _close_site(self, name: str) -> None:
        """Close the site's sockets (their disconnects recorded as usual), then refuse its
        connects and sends as for a site that never was."""
        namespace = self.namespaces.pop(name)  # sends: 401 from now on
        namespace.closing = True  # connects in the meantime: refused
        for sid in self.sio.namespace_sids(namespace.namespace):
            await self.sio.disconnect(sid, namespace=namespace.namespace)
        await namespace.close(DRAIN_TIMEOUT)
        self.sio.unregister_namespace(namespace.namespace)

    async def reload_sites(self, sites: Mapping[str, SiteConfig]) -> None:
        """SIGHUP: take the sites of a new sites.yml without a restart.

        A removed site's sockets are closed. A changed authUrl, authScheme, apiKey or
        updateUserUrl applies from the next connect or send, and keeps every connection; a
        changed userRoomPrefix or publicChannel changes what its sockets are, so they are
        closed and their clients reconnect under the new settings. Other sites are untouched.
        """
        for name in list(self.namespaces):
            old, new = self.namespaces[name].site, sites.get(name)
            if old == new:
                continue
            if new is not None and same_rooms(old, new):
                self.namespaces[name].update_site(new)
                logger.info("site {}: settings reloaded, connections kept", name)
                continue
            await self._close_site(name)
            logger.info(
                "site {}: {}; its sockets were closed",
                name,
                "removed" if new is None else "room settings changed",
            )
        added = [site for name, site in sites.items() if name not in self.namespaces]
        for count, site in enumerate(added, 1):
            self._open_site(site)
            if count <= SITES_NAMED:
                logger.info("site {}: added", site.name)
            if count % 500 == 0:
                await asyncio.sleep(0)  # thousands of sites: connects and sends go on meanwhile
        if len(added) > SITES_NAMED:
            logger.info("{} more sites added", len(added) - SITES_NAMED)

    async def _close_sockets_over(self, spread: float, hurry: asyncio.Event) -> None:
        left = self.sio.session_count()
        if spread > 0 and left:
            logger.info("closing {} sockets over {} s", left, spread)
        steps = max(int(spread / DRAIN_STEP), 1)
        per_step = -(-left // steps)  # ceiling: every socket is closed by the last step
        for _ in range(steps - 1):
            if not left or hurry.is_set():
                break
            left = await self.sio.close_sessions(per_step)
            await _unless(hurry, DRAIN_STEP)
        await self.sio.close_sessions()  # the rest, and any opened meanwhile

    def _disconnect_signalled(self, site: str, user: str) -> None:
        """Another node's admin API asked: close the user's sockets here."""
        task = asyncio.create_task(self.dispatcher.disconnect_here(site, user))
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)

    async def _beat_forever(self) -> None:
        while True:
            try:
                dead = await self.store.heartbeat()
            except StoreUnavailable as exc:
                logger.warning("heartbeat failed: {}", exc)
            else:
                if dead:
                    logger.warning("released the connections of stopped nodes {}", dead)
                if self.store.taken_for_dead:
                    self.store.taken_for_dead = False
                    logger.warning(
                        "the other nodes took this one for dead (no heartbeat for {} s) and "
                        "released its connections: registering them again",
                        self.config.node_timeout,
                    )
                    for namespace in self.namespaces.values():
                        namespace.registry.tell_everyone(RegisterAgain())
            await asyncio.sleep(self.config.node_timeout / HEARTBEATS_PER_TIMEOUT)

    async def _watch_writers(self) -> None:
        while True:
            await asyncio.sleep(self.config.limits.write_timeout / 3)
            self.sio.drop_stalled_writers()

    async def _send(self, request: web.Request) -> web.Response:
        assert self._send_handler is not None
        return await self._send_handler(request)

    async def _presence(self, request: web.Request) -> web.Response:
        return await self._online(request)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=await self.metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE}
        )

    def _admin_refusal(self, request: web.Request) -> web.Response | None:
        """None for the admin; else the answer: 401, or 429 past a few wrong keys a minute
        from the same address (see ``KeyGuard``)."""
        address = request.remote or "-"
        if self.admin_guard.blocked(address):
            return web.json_response(
                {"error": "too many wrong admin keys: try again in a minute"}, status=429
            )
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer" and hmac.compare_digest(key.encode(), self.config.admin_key.encode()):
            return None
        self.admin_guard.failed(address)
        return web.json_response({"error": "admin key required"}, status=401)

    async def status_page(self, request: web.Request) -> web.FileResponse:
        """The page itself holds no figure: it asks /status.json with the key it is given."""
        return web.FileResponse(STATUS_PAGE, headers={"Cache-Control": "no-store"})

    async def status_data(self, request: web.Request) -> web.Response:
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        return web.json_response(
            await self.metrics.status(), dumps=lambda data: orjson.dumps(data).decode()
        )

    async def openapi(self, request: web.Request) -> web.Response:
        document = openapi_document(self.config.limits, version(), bool(self.config.admin_key))
        return web.json_response(document, dumps=lambda data: orjson.dumps(data).decode())

    async def client_bundle(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(
            CLIENT_BUNDLE,
            headers={"Content-Type": "application/javascript", "Cache-Control": "max-age=3600"},
        )

    async def livez(self, request: web.Request) -> web.Response:
        """Liveness: the process and its event loop answer. Not the store: an orchestrator
        that restarts on this must not restart every node, dropping every socket, while
        Redis is down (open sockets stay up through it; ``/readyz`` says not to send more)."""
        return web.Response(text="ok")

    async def healthcheck(self, request: web.Request) -> web.Response:
        """``/healthcheck`` (the original's) and ``/readyz``: whether to route to this node."""
        if self.draining:
            return web.Response(status=503, text="unhealthy: shutting down")
        try:
            await asyncio.wait_for(self.store.ping(), HEALTH_TIMEOUT)
        except (StoreUnavailable, TimeoutError) as exc:
            return web.Response(status=503, text=f"unhealthy: store unavailable: {exc}")
        if not self.bus.healthy:
            return web.Response(status=503, text="unhealthy: cross-node listener is down")
        return web.Response(text="ok")

    async def stop(
        self, grace: float = 0.0, spread: float = 0.0, hurry: asyncio.Event | None = None
    ) -> None:
        """SIGTERM: drain, then stop. ``/readyz`` turns 503 at once while the node keeps
        serving for ``grace`` seconds, the time a load balancer takes to stop routing here;
        then the listener closes and the open sockets are closed spread over ``spread``
        seconds, so that their clients' reconnects reach the other nodes gradually instead of
        all in one second. Sends in flight finish, disconnects are recorded, the store closes.
        ``hurry`` (a second signal) cuts the waits short."""
        self.draining = True
        hurry = hurry or asyncio.Event()
        if grace > 0:
            logger.info("draining: not ready; serving {} s more before closing", grace)
            await _unless(hurry, grace)
        if self.runner is not None:
            for site in self.runner.sites:
                await site.stop()
        await self._close_sockets_over(spread, hurry)
        if self.runner is not None:
            await self.runner.cleanup()  # waits for in-flight requests, up to DRAIN_TIMEOUT
        await self.sio.shutdown()
        for namespace in self.namespaces.values():
            await namespace.close(DRAIN_TIMEOUT)
        self.metrics.stop()
        for task in (self._heartbeat, self._watchdog):
            if task is not None:
                task.cancel()
        await self.bus.stop()
        if self.http is not None:
            await self.http.close()
        if self.internal_runner is not None:
            await self.internal_runner.cleanup()
        await self.store.close()


async def _unless(event: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``event`` is set meanwhile."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
