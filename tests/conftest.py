from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from loguru import logger

from socketio_webservice import storage
from socketio_webservice.storage import Store
from testkit.processes import RedisClusterSet, RedisServer, SentinelSet

if TYPE_CHECKING:
    from tests.browser import Browser
    from tests.harness import Harness, SiteStub

STORE_KINDS = ["sqlite", "redis"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels, for the tests that run behind Sentinel."""
    deployment = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    deployment.start()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    """Three primaries with a replica each, for the tests that run on Redis Cluster."""
    cluster = RedisClusterSet(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterSet) -> str:
    """The cluster's URL, every primary emptied."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def sentinel_url(sentinel_set: SentinelSet) -> str:
    """The Sentinel URL, its primary emptied (wherever a failover left it)."""
    client = redis.Redis(port=sentinel_set.primary_port())
    client.flushall()
    client.close()
    return sentinel_set.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


def make_store(
    kind: str,
    tmp_path: Path,
    redis_url: str | None,
    device_ttl: int,
    node_id: str = "node-a",
    max_queue: int = 10_000,
    max_devices: int = 20,
    step_ms: int = 50,
) -> Store:
    """The service's own factory, on a fresh SQLite file or the test Redis."""
    assert kind == "sqlite" or redis_url, "a Redis store needs the test Redis"
    return storage.make_store(
        redis_url=redis_url if kind != "sqlite" and redis_url else "",
        sqlite_path=tmp_path / f"store-{uuid.uuid4().hex}.sqlite3",
        device_ttl=device_ttl,
        node_id=node_id,
        max_queue=max_queue,
        max_devices=max_devices,
        step_ms=step_ms,
    )


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_redis_url(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    """The test Redis URL when the test runs on Redis; no Redis is touched for SQLite."""
    if store_kind in ("redis", "sentinel", "cluster"):
        url: str = request.getfixturevalue(f"{store_kind}_url")
        return url
    return None


@pytest.fixture
async def store(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> AsyncIterator[Store]:
    instance = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600)
    await instance.open()
    yield instance
    await instance.close()


@pytest.fixture
async def stub() -> AsyncIterator[SiteStub]:
    from tests.harness import SiteStub

    site_stub = SiteStub()
    await site_stub.start()
    yield site_stub
    await site_stub.stop()


@pytest.fixture
async def harness(
    store_kind: str, tmp_path: Path, store_redis_url: str | None, stub: SiteStub
) -> AsyncIterator[Harness]:
    """The service on a free port, on the store of the test's parameter, with two sites:
    ``shop`` delivers reliably (user rooms ``user_*``, public channel ``browse``), ``news``
    broadcasts to rooms only."""
    from socketio_webservice.sites import SiteConfig
    from tests.harness import Harness

    sites = {
        "shop": SiteConfig(
            name="shop",
            auth_url=f"{stub.url}/auth",
            api_key="key",
            user_room_prefix="user_",
            public_channel="browse",
            update_user_url=f"{stub.url}/users/:id",
        ),
        "news": SiteConfig(name="news", auth_url=f"{stub.url}/auth", api_key="key"),
    }
    instance = Harness(store_kind, tmp_path, store_redis_url, stub, sites=sites)
    yield instance
    await instance.stop()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    """Headless Chromium with a profile of its own."""
    from tests.browser import Browser

    instance = Browser(tmp_path / "profile")
    await instance.start()
    yield instance
    await instance.stop()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Every line the service logs, ours (loguru) and the libraries' (logging), unredacted."""
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message}", diagnose=False)
    caplog.set_level(logging.DEBUG)
    yield lines
    logger.remove(sink)
    lines.extend(f"{r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
