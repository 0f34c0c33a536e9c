"""The one way to get a store: Redis if a URL is given, else SQLite in a file."""

from __future__ import annotations

from pathlib import Path

from .redis_keys import DEFAULT_PREFIX
from .redis_store import DEFAULT_NODE_DEAD_AFTER, DEFAULT_TIMEOUT, RedisStore
from .sqlite_store import SQLiteStore
from .store import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_MAX_DEVICES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_STEP_MS,
    Store,
)


def make_store(
    *,
    redis_url: str = "",
    redis_key_prefix: str = DEFAULT_PREFIX,
    sqlite_path: str | Path = "",
    device_ttl: int,
    node_id: str,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_devices: int = DEFAULT_MAX_DEVICES,
    step_ms: int = DEFAULT_STEP_MS,
    idempotency_ttl: int = DEFAULT_IDEMPOTENCY_TTL,
    redis_min_replicas: int = 0,
    sqlite_synchronous: str = "NORMAL",
    node_dead_after: float = DEFAULT_NODE_DEAD_AFTER,
    redis_timeout: float = DEFAULT_TIMEOUT,
) -> Store:
    """``redis_url`` for several nodes sharing a Redis; else one node's ``sqlite_path``."""
    if redis_url:
        return RedisStore(
            redis_url,
            key_prefix=redis_key_prefix,
            device_ttl=device_ttl,
            node_id=node_id,
            node_dead_after=node_dead_after,
            max_queue=max_queue,
            max_devices=max_devices,
            step_ms=step_ms,
            idempotency_ttl=idempotency_ttl,
            min_replicas=redis_min_replicas,
            timeout=redis_timeout,
        )
    if not sqlite_path:
        raise ValueError("a store needs a Redis URL or an SQLite path")
    return SQLiteStore(
        sqlite_path,
        device_ttl=device_ttl,
        synchronous=sqlite_synchronous,
        node_id=node_id,
        max_queue=max_queue,
        max_devices=max_devices,
        step_ms=step_ms,
        idempotency_ttl=idempotency_ttl,
    )
