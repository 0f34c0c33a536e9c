"""Asks a site which rooms a connecting client belongs to."""

from __future__ import annotations

import aiohttp
import orjson

from webservice.config import SiteConfig


class AuthRejected(Exception):
    """The connect error the client sees; the texts are the Node original's, word for word."""


async def fetch_rooms(
    http: aiohttp.ClientSession, site: SiteConfig, token: str, meta: str, timeout: float
) -> list[str]:
    """GET the site's authUrl and return the room names it answers with.

    The status decides the error whatever the body says: 401 is a failed login, any other
    non-200 an error of the site; only a 200 with a JSON list of strings is an answer.
    """
    headers = {"Authorization": f"{site.auth_scheme} {token}", "X-META": meta}
    try:
        async with http.get(
            site.auth_url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            if response.status == 401:
                raise AuthRejected("Authentication failed")
            if response.status != 200:
                raise AuthRejected(f"Auth {response.status} error")
            body = await response.read()
    except TimeoutError:
        raise AuthRejected(f"Auth error: no answer from the site within {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise AuthRejected(f"Auth error: {exc or type(exc).__name__}") from exc
    try:
        rooms = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AuthRejected("Auth error: the site's answer is not JSON") from None
    if not isinstance(rooms, list) or not all(isinstance(room, str) for room in rooms):
        raise AuthRejected("Auth error: the site's answer is not a list of room names")
    return rooms
