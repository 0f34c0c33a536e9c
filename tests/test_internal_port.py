"""``INTERNAL_PORT``: the operators' endpoints on a listener of their own, so that the public
port serves clients and ``/send`` only (and a proxy in front has nothing to hide)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from testkit.processes import ServiceProcess, free_port, write_sites
from tests.harness import SiteStub, connect, post_send

OPERATORS = ["/metrics", "/openapi.json", "/status", "/status.json"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def status(http: aiohttp.ClientSession, url: str, key: str = "") -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.get(url, headers=headers) as answer:
        return answer.status, await answer.text()


async def test_operators_endpoints_move_to_the_internal_port(
    tmp_path: Path, stub: SiteStub, http: aiohttp.ClientSession
) -> None:
    internal = free_port()
    node = ServiceProcess(
        tmp_path,
        write_sites(tmp_path, f"{stub.url}/auth"),
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        INTERNAL_PORT=str(internal),
        ADMIN_KEY="operator-key",
    )
    await node.start()
    inside = f"http://127.0.0.1:{internal}"
    try:
        for path in OPERATORS:
            assert (await status(http, node.url + path, "operator-key"))[0] == 404, path
        stub.answers["t1"] = ["user_1"]
        client = await connect(node.url, "shop", "t1", "phone")  # clients: the public port
        assert await post_send(http, node.url, "shop", "user_1", "n", 1) == (200, "OK")
        assert (await client.next()).args == [1]
        await client.disconnect()

        code, text = await status(http, inside + "/metrics")
        assert code == 200 and "socketio_webservice_sends_total" in text
        assert (await status(http, inside + "/openapi.json"))[0] == 200
        assert (await status(http, inside + "/status.json"))[0] == 401
        assert (await status(http, inside + "/status.json", "operator-key"))[0] == 200
        assert (await status(http, inside + "/livez"))[0] == 200
        assert (await status(http, inside + "/readyz"))[0] == 200
        assert await post_send(http, inside, "shop", "user_1", "n", 2) == (404, "404: Not Found")
    finally:
        await node.stop()
