from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from storage import Store
from storage.redis_store import RedisStore
from storage.sqlite_store import SQLiteStore
from tests.redis_server import RedisServer

STORE_KINDS = ["sqlite", "redis"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


def make_store(kind: str, tmp_path: Path, redis_url: str | None, device_ttl: int) -> Store:
    if kind == "sqlite":
        return SQLiteStore(tmp_path / f"store-{uuid.uuid4().hex}.sqlite3", device_ttl=device_ttl)
    assert redis_url is not None
    return RedisStore(redis_url, device_ttl=device_ttl)


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_redis_url(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    """The test Redis URL when the test runs on Redis; no Redis is touched for SQLite."""
    if store_kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return None


@pytest.fixture
async def store(store_kind: str, tmp_path: Path, store_redis_url: str | None) -> AsyncIterator[Store]:
    instance = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600)
    await instance.open()
    yield instance
    await instance.close()
