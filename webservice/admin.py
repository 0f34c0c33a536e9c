"""The admin API: an operator looks at one user's devices, purges a device's queue, or
disconnects a user on every node. Behind the admin key (``Authorization: Bearer``), served
where ``/status`` is (the internal listener when ``INTERNAL_PORT`` is set).

    GET    /admin/sites/{site}/users/{user}                          devices, queues, nodes
    DELETE /admin/sites/{site}/users/{user}/devices/{device}/queue   {"purged": n}
    POST   /admin/sites/{site}/users/{user}/disconnect               {"closed_here": n, ...}

``user`` is the user room (``user_1``), as the site's authUrl names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web
from loguru import logger

from ..storage import Store, StoreUnavailable
from ..transport.dispatch import Dispatcher
from ..transport.node_bus import NodeUnreachable
from ..transport.site_namespace import SiteNamespace

Refusal = Callable[[web.Request], web.Response | None]


class AdminApi:
    def __init__(
        self,
        namespaces: Mapping[str, SiteNamespace],
        store: Store,
        dispatcher: Dispatcher,
        refusal: Refusal,
    ) -> None:
        self.namespaces = namespaces
        self.store = store
        self.dispatcher = dispatcher
        self.refusal = refusal  # None for the admin; else the answer (401, 429)

    def add_routes(self, app: web.Application) -> None:
        user = "/admin/sites/{site}/users/{user}"
        app.router.add_get(user, self.user)
        app.router.add_delete(user + "/devices/{device}/queue", self.purge)
        app.router.add_post(user + "/disconnect", self.disconnect)

    async def user(self, request: web.Request) -> web.Response:
        site, user, refused = self._target(request)
        if refused is not None:
            return refused
        try:
            devices = await self.store.devices_of(site, user)
        except StoreUnavailable as exc:
            return _json({"error": f"store unavailable: {exc}"}, 503)
        return _json(
            {
                "site": site,
                "user": user,
                "online": any(d.connections for d in devices),
                "devices": [{**asdict(d), "nodes": list(d.nodes)} for d in devices],
            }
        )

    async def purge(self, request: web.Request) -> web.Response:
        site, user, refused = self._target(request)
        if refused is not None:
            return refused
        device = request.match_info["device"]
        try:
            purged = await self.store.purge_queue(site, user, device)
        except StoreUnavailable as exc:
            return _json({"error": f"store unavailable: {exc}"}, 503)
        if purged is None:
            return _json({"error": "no such device"}, 404)
        logger.warning(
            "admin: site={} user={} device={}: {} queued messages purged (it gets _resync)",
            site,
            user,
            device,
            purged,
        )
        return _json({"purged": purged})

    async def disconnect(self, request: web.Request) -> web.Response:
        site, user, refused = self._target(request)
        if refused is not None:
            return refused
        try:
            devices = await self.store.devices_of(site, user)
            nodes = sorted({node for d in devices for node in d.nodes})
            closed = await self.dispatcher.disconnect_user(site, user, nodes)
        except (StoreUnavailable, NodeUnreachable) as exc:
            return _json({"error": str(exc)}, 503)
        logger.warning("admin: site={} user={}: disconnected on {} nodes", site, user, len(nodes))
        return _json({"closed_here": closed, "nodes": nodes})

    def _target(self, request: web.Request) -> tuple[str, str, web.Response | None]:
        site, user = request.match_info["site"], request.match_info["user"]
        refused = self.refusal(request)
        if refused is None:
            namespace = self.namespaces.get(site)
            if namespace is None:
                refused = _json({"error": "unknown site"}, 404)
            elif not namespace.site.reliable:
                refused = _json({"error": "the site has no userRoomPrefix: no devices"}, 400)
        return site, user, refused


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: orjson.dumps(d).decode())
