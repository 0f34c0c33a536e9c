"""The ``redis:`` block of config.yml and ``REDIS_URL``, checked before anything connects.

The original hands its ``redis:`` block to its client, so a config written for it may give
``url``, or ``host``, ``port``, ``username``, ``password``, ``db`` and ``tls``: all of them are
read here into one URL. A URL that cannot work (an unknown scheme, a port that is not a
number, no host) is a configuration error in one line, its password masked, rather than a
traceback when the store first connects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ..storage.redis_keys import DEFAULT_PREFIX as DEFAULT_KEY_PREFIX
from ..storage.redis_url import parse

__all__ = ["DEFAULT_KEY_PREFIX", "check_key_prefix", "check_url", "mask", "url_from_block"]
# No glob character (SCAN patterns use it), no brace: the keys' hash tags follow it.
KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class RedisSettingError(ValueError):
    """What is wrong, in one line, with the password masked."""


def mask(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def url_from_block(block: Mapping[str, Any]) -> str:
    """``url`` if given, else one made of ``host``, ``port``, ``username``, ``password``,
    ``db`` and ``tls`` (true, or a mapping of TLS options: rediss)."""
    if block.get("url"):
        return str(block["url"])
    if not any(key in block for key in ("host", "port", "password", "username", "db", "tls")):
        return ""
    host = str(block.get("host") or "127.0.0.1")
    port = block.get("port", 6379)
    tls = block.get("tls")
    scheme = "rediss" if tls not in (None, False, "false", "no", 0) else "redis"
    user, password = block.get("username"), block.get("password")
    auth = ""
    if password is not None or user is not None:
        auth = quote(str(user or ""), safe="") + ":" + quote(str(password or ""), safe="") + "@"
    return f"{scheme}://{auth}{host}:{port}/{block.get('db', 0)}"


def check_url(url: str) -> None:
    """Raises ``RedisSettingError`` for a URL the store could not use."""
    try:
        parse(url)
    except ValueError as exc:
        raise RedisSettingError(f"{mask(url)}: {exc}") from None


def check_key_prefix(prefix: str) -> None:
    if not KEY_PREFIX.match(prefix):
        raise RedisSettingError(
            f"{prefix[:80]!r} is not a key prefix: 1 to 64 letters, digits and _.:-"
        )
