"""Tells a site's updateUserUrl when a user comes online and goes offline."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
from loguru import logger

from ..sites import SiteConfig
from .site_http import SiteCallError, SiteHttp

UPDATE_TIMEOUT = 10.0


class PresenceNotifier:
    """Fire-and-forget PUTs, tracked so that shutdown can wait for them."""

    def __init__(self, http: SiteHttp, site: SiteConfig) -> None:
        self.http = http
        self.site = site
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, user_room: str, authorization: str, connected: bool) -> None:
        if not self.site.update_user_url or self.site.is_public_channel(user_room):
            return
        task = asyncio.create_task(self._put(user_room, authorization, connected))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, user_room: str, authorization: str, connected: bool) -> None:
        user_id = self.site.user_id(user_room)
        field = "last_connected" if connected else "last_disconnected"
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        url = self.site.update_user_url.replace(":id", user_id)
        body = orjson.dumps({"id": user_id, "user": {field: stamp}})
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        try:
            answer = await self.http.request("PUT", url, headers, body, UPDATE_TIMEOUT)
        except (SiteCallError, OSError, ValueError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            logger.warning("site={} user update {} failed: {}", self.site.name, url, reason)
            return
        if answer.status >= 300:
            logger.warning("site={} user update {} answered {}", self.site.name, url, answer.status)

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
