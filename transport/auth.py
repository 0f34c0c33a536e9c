"""Asks a site which rooms a connecting client belongs to, without letting clients overrun it."""

from __future__ import annotations

import asyncio
import hashlib
import time

import orjson

from ..sites import SiteConfig
from .limits import Limits
from .site_http import SiteCallError, SiteHttp
from .stats import TransportStats

REFUSED_CACHE_SIZE = 10_000  # tokens remembered as refused, per site; the oldest go first
# Characters aiohttp refuses in a header value (it raises ValueError); also the other controls.
_NOT_IN_HEADERS = {chr(c) for c in range(32)} - {"\t"} | {"\x7f"}


class AuthRejected(Exception):
    """The connect error the client sees; the texts are the Node original's, word for word."""


class LoginRefused(AuthRejected):
    """The site answered 401: this token (and meta) is refused, and will be for a while."""

    def __init__(self) -> None:
        super().__init__("Authentication failed")


async def fetch_rooms(
    http: SiteHttp, site: SiteConfig, token: str, meta: str, timeout: float
) -> list[str]:
    """GET the site's authUrl and return the room names it answers with.

    The status decides the error whatever the body says: 401 is a failed login, any other
    non-200 an error of the site; only a 200 with a JSON list of strings is an answer.
    """
    headers = {"Authorization": f"{site.auth_scheme} {token}", "X-META": meta}
    try:
        answer = await http.request("GET", site.auth_url, headers, timeout=timeout)
    except TimeoutError:
        raise AuthRejected(f"Auth error: no answer from the site within {timeout:g}s") from None
    except SiteCallError as exc:
        raise AuthRejected(f"Auth error: {exc}") from None
    except OSError as exc:
        raise AuthRejected(f"Auth error: cannot reach the site ({exc})") from None
    except ValueError:  # a header value that cannot be sent; AuthGate.check stops these first
        raise AuthRejected("Auth error: the token or meta cannot be sent to the site") from None
    if answer.status == 401:
        raise LoginRefused()
    if answer.status != 200:
        raise AuthRejected(f"Auth {answer.status} error")
    body = answer.body
    try:
        rooms = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AuthRejected("Auth error: the site's answer is not JSON") from None
    if not isinstance(rooms, list) or not all(isinstance(room, str) for room in rooms):
        raise AuthRejected("Auth error: the site's answer is not a list of room names")
    return rooms


class AuthGate:
    """One site's door: checks what a client sends before it reaches the site, bounds the
    authUrl calls in flight, and remembers refused tokens for a while, so that a flood of
    connects (from one host, or one socket) costs the site little."""

    def __init__(
        self,
        http: SiteHttp,
        site: SiteConfig,
        limits: Limits,
        timeout: float,
        stats: TransportStats,
    ) -> None:
        self.http = http
        self.stats = stats
        self.site = site
        self.limits = limits
        self.timeout = timeout
        self._calls = asyncio.Semaphore(limits.auth_concurrency)
        self._refused: dict[bytes, float] = {}  # digest of (token, meta) -> refused until

    def check(self, token: str, meta: str) -> None:
        for name, value, limit in (
            ("token", token, self.limits.max_token_length),
            ("meta", meta, self.limits.max_meta_length),
        ):
            if len(value) > limit:
                raise AuthRejected(f"Auth error: {name} is longer than {limit} characters")
            if not _NOT_IN_HEADERS.isdisjoint(value):
                raise AuthRejected(f"Auth error: {name} holds control characters")

    async def rooms(self, token: str, meta: str) -> list[str]:
        """The rooms the site gives this token, or :class:`AuthRejected`; every answer is
        counted by kind in ``stats.auth_answers``."""
        try:
            rooms = await self._rooms(token, meta)
        except LoginRefused:
            self._count("refused")
            raise
        except AuthRejected:
            self._count("error")
            raise
        self._count("ok")
        return rooms

    def _count(self, answer: str) -> None:
        self.stats.auth_answers[self.site.name, answer] += 1

    async def _rooms(self, token: str, meta: str) -> list[str]:
        self.check(token, meta)
        key = hashlib.blake2b(f"{token}\0{meta}".encode(), digest_size=16).digest()
        until = self._refused.get(key)
        if until is not None:
            if until > time.monotonic():
                raise LoginRefused()
            del self._refused[key]
        if self._calls.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._calls.acquire()
            except TimeoutError:
                raise AuthRejected("Auth error: busy, try again") from None
        else:
            await self._calls.acquire()  # a free slot: taken at once, no timer needed
        timing = self.stats.auth_time[self.site.name]
        started = time.perf_counter()
        try:
            rooms = await fetch_rooms(self.http, self.site, token, meta, self.timeout)
        except LoginRefused:
            if self.limits.auth_failure_cache:
                self._remember_refused(key)
            raise
        finally:
            self._calls.release()
            timing.add(started)
        longest = self.limits.max_room_length
        if any(len(room) > longest for room in rooms):
            raise AuthRejected(f"Auth error: the site's answer holds a room name over {longest}")
        return rooms

    def _remember_refused(self, key: bytes) -> None:
        if len(self._refused) >= REFUSED_CACHE_SIZE:
            del self._refused[next(iter(self._refused))]
        self._refused[key] = time.monotonic() + self.limits.auth_failure_cache
