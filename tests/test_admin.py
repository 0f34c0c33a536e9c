"""The admin API an operator uses on one user, and ``GET /presence`` a site's backend asks:
on both stores, and across two nodes on Redis (the user's sockets on the other node)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.processes import ServiceProcess, write_sites
from tests.harness import Harness, SiteStub, connect

ADMIN = {"Authorization": "Bearer operator-key"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers or {}) as answer:
        body = await answer.json() if answer.content_type == "application/json" else None
        return answer.status, body if body is not None else await answer.text()


async def test_an_operator_looks_at_a_user_purges_a_queue_and_disconnects_it(
    harness: Harness,
) -> None:
    await harness.start(admin_key="operator-key")
    http = harness.http
    assert http is not None
    harness.stub.answers["alice"] = ["user_alice"]
    phone = await harness.connect("shop", "alice", "phone")
    tablet = await harness.connect("shop", "alice", "tablet")
    await tablet.disconnect()
    for n in range(3):
        assert await harness.send("shop", "user_alice", "n", n) == (200, "OK")
        assert (await phone.next()).args == [n]
    user = f"{harness.url}/admin/sites/shop/users/user_alice"

    status, body = await call(http, "GET", user, ADMIN)
    assert status == 200 and body["online"] is True
    devices = {d["device"]: d for d in body["devices"]}
    assert devices["phone"]["connections"] == 1 and devices["phone"]["nodes"]
    assert devices["tablet"]["connections"] == 0 and devices["tablet"]["queued"] == 3
    assert 0 < devices["tablet"]["expires_in"] <= 3600

    status, body = await call(http, "DELETE", f"{user}/devices/tablet/queue", ADMIN)
    assert (status, body) == (200, {"purged": 3})
    tablet = await harness.connect("shop", "alice", "tablet")
    assert (await tablet.next()).event == "_resync"  # it learns that it missed messages
    status, body = await call(http, "DELETE", f"{user}/devices/nothing/queue", ADMIN)
    assert status == 404

    gone = asyncio.Event()
    phone.on("disconnect", gone.set, namespace="/shop")
    status, body = await call(http, "POST", f"{user}/disconnect", ADMIN)
    assert status == 200 and body["closed_here"] == 2
    await asyncio.wait_for(gone.wait(), 5)

    assert (await call(http, "GET", user))[0] == 401
    assert (await call(http, "GET", user, {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await call(http, "GET", f"{harness.url}/admin/sites/nope/users/u", ADMIN))[0] == 404
    assert (await call(http, "GET", f"{harness.url}/admin/sites/news/users/u", ADMIN))[0] == 400


async def test_no_admin_key_no_admin_api(harness: Harness) -> None:
    await harness.start()
    assert harness.http is not None
    url = f"{harness.url}/admin/sites/shop/users/user_alice"
    assert (await call(harness.http, "GET", url, ADMIN))[0] == 404


async def test_presence_says_who_is_online_to_the_sites_backend(harness: Harness) -> None:
    await harness.start()
    http = harness.http
    assert http is not None
    harness.stub.answers.update(alice=["user_alice"], bob=["user_bob"])
    alice = await harness.connect("shop", "alice", "phone")
    bob = await harness.connect("shop", "bob", "phone")
    await bob.disconnect()
    ask = f"{harness.url}/presence?site=shop&apiKey=key&rooms="
    status, body = await call(http, "GET", ask + "user_bob,user_alice,user_carol,user_alice")
    assert (status, body) == (200, {"online": ["user_alice"]})
    assert await call(http, "GET", ask.replace("key&", "wrong&") + "user_alice") == (
        401,
        "ApiKey invalid.",
    )
    assert (await call(http, "GET", ask))[0] == 400
    assert (await call(http, "GET", ask + "user_alice,,user_bob"))[0] == 400
    assert await call(http, "GET", ask + "staff,user_alice") == (200, {"online": ["user_alice"]})
    assert (await call(http, "GET", ask + ",".join(f"user_{n}" for n in range(1001))))[0] == 400
    news = f"{harness.url}/presence?site=news&apiKey=key&rooms=user_alice"
    assert (await call(http, "GET", news))[0] == 400
    await alice.disconnect()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_across_two_nodes_presence_and_disconnect_reach_the_other_node(
    tmp_path: Path, stub: SiteStub, redis_url: str, http: aiohttp.ClientSession
) -> None:
    sites = write_sites(tmp_path, f"{stub.url}/auth")
    env = {"REDIS_URL": redis_url, "ADMIN_KEY": "operator-key"}
    a, b = ServiceProcess(tmp_path, sites, **env), ServiceProcess(tmp_path, sites, **env)
    await asyncio.gather(a.start(), b.start())
    try:
        stub.answers["alice"] = ["user_alice"]
        phone = await connect(b.url, "shop", "alice", "phone")
        ask = f"{a.url}/presence?site=shop&apiKey=key&rooms=user_alice"
        assert await call(http, "GET", ask) == (200, {"online": ["user_alice"]})
        gone = asyncio.Event()
        phone.on("disconnect", gone.set, namespace="/shop")
        status, body = await call(
            http, "POST", f"{a.url}/admin/sites/shop/users/user_alice/disconnect", ADMIN
        )
        assert status == 200 and body["closed_here"] == 0 and len(body["nodes"]) == 1
        await asyncio.wait_for(gone.wait(), 5)  # closed by node b, on a's signal
        for _ in range(100):  # b records the disconnect as it handles it: no event says when
            if (await call(http, "GET", ask))[1] == {"online": []}:
                break
            await asyncio.sleep(0.05)
        assert await call(http, "GET", ask) == (200, {"online": []})
    finally:
        await asyncio.gather(a.stop(), b.stop())
