"""``GET /presence?site=S&apiKey=K&rooms=user_1,user_2``: which of these users are online now.

For a site's backend (its apiKey, as ``/send``), across every node: a user is online while one
of its devices has a connection anywhere. Answers ``{"online": [...]}``, in the order asked.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web
from loguru import logger

from ..storage import Store, StoreUnavailable
from .limits import Limits
from .send import site_for_key
from .site_namespace import SiteNamespace


class OnlineHandler:
    def __init__(
        self, namespaces: Mapping[str, SiteNamespace], store: Store, limits: Limits
    ) -> None:
        self.namespaces = namespaces
        self.store = store
        self.limits = limits

    async def __call__(self, request: web.Request) -> web.Response:
        site, api_key = request.query.get("site"), request.query.get("apiKey")
        if not site or not api_key:
            return _refuse(400, "Missing query param 'site' or 'apiKey'.")
        namespace = site_for_key(self.namespaces, site, api_key)
        if namespace is None:
            return _refuse(401, "ApiKey invalid.")
        if not namespace.site.reliable:
            return _refuse(400, f"Site {site} has no userRoomPrefix: it has no users to ask for.")
        rooms = request.query.get("rooms", "").split(",")
        if not all(rooms):
            return _refuse(400, "Query param 'rooms': user rooms, comma-separated, none empty.")
        if len(rooms) > self.limits.max_rooms_per_send:
            return _refuse(400, f"At most {self.limits.max_rooms_per_send} rooms at a time.")
        if any(len(room) > self.limits.max_room_length for room in rooms):
            return _refuse(400, f"A room name is longer than {self.limits.max_room_length}.")
        users = [room for room in rooms if namespace.site.is_user_room(room)]  # others: offline
        try:
            online = await self.store.online(site, users)
        except StoreUnavailable as exc:
            logger.error("site={} presence not read: {}", site, exc)
            return _refuse(503, f"Presence not read, try again: {exc}")
        answer = {"online": [room for room in dict.fromkeys(rooms) if room in online]}
        return web.json_response(answer, dumps=lambda data: orjson.dumps(data).decode())


def _refuse(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)
