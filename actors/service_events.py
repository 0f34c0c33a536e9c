"""The events this service itself sends a client, named as the original names them, and
built here only: ``_settings`` first on every connect, ``_batch`` with what a device missed
while away, ``_resync`` when it missed more than its queue kept. A site may not send them
(``transport/send.py`` refuses the names)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import orjson

NAMES = frozenset({"_settings", "_batch", "_resync"})
RESYNC = '["_resync"]'


@lru_cache(maxsize=16)  # one device_ttl per site: the same text for every connect
def settings(device_ttl: int) -> str:
    """``_settings``: what the client is told of the service, its ``device_ttl`` in seconds."""
    return orjson.dumps(["_settings", {"device_ttl": device_ttl}]).decode()


def batch(payloads: Iterable[str]) -> str:
    """``_batch``: the stored messages' ``[event, *args]`` payloads, in send order."""
    return '["_batch",[' + ",".join(payloads) + "]]"
