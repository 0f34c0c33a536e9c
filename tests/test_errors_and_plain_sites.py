"""Bad input gets a clear 4xx or connect error and loses nothing; plain sites broadcast."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from socketio_webservice.sites import SiteConfig
from socketio_webservice.transport import site_namespace
from testkit.processes import RedisServer, free_port
from tests.harness import Harness, SiteStub, connect_error
from tests.test_delivery import wait_for_empty_queue, wait_until


def shop_site(stub: SiteStub) -> SiteConfig:
    return SiteConfig(
        name="shop", auth_url=f"{stub.url}/auth", api_key="key", user_room_prefix="user_"
    )


async def test_healthcheck(harness: Harness) -> None:
    await harness.start()
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}/healthcheck") as response:
        assert (response.status, await response.text()) == (200, "ok")


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("site=shop", 400, "Missing query param 'site' or 'apiKey'."),
        ("apiKey=key", 400, "Missing query param 'site' or 'apiKey'."),
        ("site=nope&apiKey=key", 401, "ApiKey invalid."),
        ("site=shop&apiKey=wrong", 401, "ApiKey invalid."),
        ("site=shop&apiKey=key&resync=maybe", 400, "Query param 'resync' must be true or false"),
    ],
)
async def test_send_query_errors(harness: Harness, query: str, status: int, text: str) -> None:
    await harness.start()
    got_status, got_text = await harness.post(query, json={"rooms": ["user_1"], "event": "e"})
    assert got_status == status and got_text.startswith(text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event": "e"}, "'rooms' is missing"),
        ({"rooms": 7, "event": "e"}, "'rooms' must be"),
        ({"rooms": ["ok", 3], "event": "e"}, "'rooms' must be"),
        ({"rooms": ["user_1"]}, "'event' is missing"),
        ({"rooms": ["user_1"], "event": 5}, "'event' must be"),
        ({"rooms": ["user_1"], "event": "e", "args": "x"}, "'args' must be a list"),
        ([1, 2], "Body must be an object"),
    ],
)
async def test_send_body_errors_name_the_field(harness: Harness, body: object, field: str) -> None:
    await harness.start()
    status, text = await harness.post("site=shop&apiKey=key", json=body)
    assert status == 400 and field in text


async def test_send_rejects_broken_json_and_unknown_content_types(harness: Harness) -> None:
    await harness.start()
    status, text = await harness.post(
        "site=shop&apiKey=key", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and "not valid JSON" in text
    status, text = await harness.post(
        "site=shop&apiKey=key", data=b"x", headers={"Content-Type": "text/plain"}
    )
    assert status == 400 and "Unsupported Content-Type" in text


async def test_bad_sends_lose_nothing_already_queued(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone")
    await harness.post("site=shop&apiKey=key", json={"rooms": 1, "event": "bad"})
    await harness.send("shop", "user_1", "good")
    assert (await client.next()).event == "good"


async def test_form_bodies_are_read_like_the_originals_body_parser(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "staff"]
    client = await harness.connect("shop", "t1", "phone")
    form = "rooms[]=user_1&rooms[]=staff&event=update&args[]=user&args[1][id]=7"
    status, _ = await harness.post(
        "site=shop&apiKey=key",
        data=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    received = await client.next()
    assert (received.event, received.args) == ("update", ["user", {"id": "7"}])


async def test_resync_false_is_false(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone", auto_ack=False)
    for i in range(2):
        assert (
            await harness.post(
                "site=shop&apiKey=key&resync=false",
                json={"rooms": "user_1", "event": "e", "args": [i]},
            )
        )[0] == 200
    await client.next()
    await client.ack(await client.next())  # out of order, but resync is off
    await client.no_event_within(0.3)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (None, "Authentication failed"),
        (500, "Auth 500 error"),
        (403, "Auth 403 error"),
        (["staff"], "User is missing a private room"),
        ({"rooms": ["user_1"]}, "Auth error: the site's answer is not a list of room names"),
        (b"<html>", "Auth error: the site's answer is not JSON"),
        ("slow", "Auth error: no answer from the site within 1s"),
    ],
)
async def test_connect_errors_are_the_originals_texts(
    harness: Harness, answer: object, message: str
) -> None:
    await harness.start()
    if answer is not None:
        harness.stub.answers["t1"] = answer
    assert await harness.connect_error("shop", "t1") == message


async def test_unreachable_auth_url_is_a_clear_connect_error(harness: Harness) -> None:
    from dataclasses import replace

    from testkit.processes import free_port

    site = harness.sites["shop"]
    harness.sites["shop"] = replace(site, auth_url=f"http://127.0.0.1:{free_port()}/auth")
    await harness.start()
    assert (await harness.connect_error("shop", "t1")).startswith("Auth error: ")


async def test_auth_request_carries_scheme_token_and_meta(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["secret"] = ["user_1"]
    await harness.connect("shop", "secret", "d", meta="app=ios")
    headers = harness.stub.auth_requests[-1]
    assert headers["Authorization"] == "Bearer secret" and headers["X-META"] == "app=ios"


async def test_a_cookie_the_site_sets_for_one_user_is_never_sent_for_another(
    harness: Harness,
) -> None:
    """Every auth call stands alone, as the original's fetch: a session cookie the site sets
    in its answer for one token must not ride along with the next user's call."""
    from dataclasses import replace

    site = harness.sites["shop"]
    auth_url = f"http://localhost:{harness.stub.port}/auth"  # a host name: cookies stick to it
    harness.sites["shop"] = replace(site, auth_url=auth_url)
    harness.stub.sets_cookies = True
    await harness.start()
    harness.stub.answers.update({"alice": ["user_1"], "bob": ["user_2"]})
    await harness.connect("shop", "alice", "d1")
    await harness.connect("shop", "bob", "d2")
    assert [h["Authorization"] for h in harness.stub.auth_requests] == [
        "Bearer alice",
        "Bearer bob",
    ]
    assert all("Cookie" not in headers for headers in harness.stub.auth_requests)


async def test_v4_auth_object_works_like_the_query(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone", use_auth=True)
    await harness.send("shop", "user_1", "e")
    assert (await client.next()).event == "e"
    await wait_for_empty_queue(harness, "user_1", "phone")


async def test_unknown_namespace_is_refused(harness: Harness) -> None:
    await harness.start()
    message = await harness.connect_error("nosuchsite", "t1")
    assert message


async def test_client_garbage_does_not_break_the_socket(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone")
    await client.emit("whatever", {"x": 1}, namespace="/shop")
    await client.emit("_batch", "not-a-list", namespace="/shop")
    await harness.send("shop", "user_1", "still-works")
    assert (await client.next()).event == "still-works"


async def test_plain_site_broadcasts_once_per_socket_and_stores_nothing(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers.update({"a": ["sports", "weather"], "b": ["weather"], "c": ["arts"]})
    both = await harness.connect("news", "a")
    weather = await harness.connect("news", "b")
    arts = await harness.connect("news", "c")
    assert (await harness.send("news", ["sports", "weather"], "headline", "rain"))[0] == 200
    for client in (both, weather):
        received = await client.next()
        assert (received.event, received.args, received.ack_id) == ("headline", ["rain"], None)
    await both.no_event_within(0.3)
    await arts.no_event_within(0)
    await both.disconnect()
    await harness.send("news", "sports", "missed")
    again = await harness.connect("news", "a")
    await again.no_event_within(0.3)


async def test_a_send_to_no_room_reaches_no_one(harness: Harness) -> None:
    """``rooms: []`` names no room: no socket gets it, on a plain site as on a reliable one
    (python-socketio's emit reads an empty list as "everyone in the namespace")."""
    await harness.start()
    harness.stub.answers.update({"a": ["weather"], "t1": ["user_1", "weather"]})
    news = await harness.connect("news", "a")
    shop = await harness.connect("shop", "t1", "phone")
    for site, client in (("news", news), ("shop", shop)):
        assert (await harness.send(site, [], "headline", "nobody"))[0] == 200
        assert (await harness.send(site, ["weather"], "headline", "rain"))[0] == 200
        assert (await client.next()).args == ["rain"]


async def test_plain_site_greets_with_settings(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["a"] = []
    client = await harness.connect("news", "a")
    assert client.settings == {"device_ttl": 3600}


async def test_sites_are_isolated(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "weather"]
    shop = await harness.connect("shop", "t1", "phone")
    news = await harness.connect("news", "t1")
    await harness.send("news", "user_1", "news-only")
    assert (await news.next()).event == "news-only"
    await shop.no_event_within(0.3)


async def test_many_connects_at_once(harness: Harness) -> None:
    await harness.start()
    harness.stub.default_rooms = ["user_1", "staff"]
    clients = await asyncio.gather(*(harness.connect("shop", f"t{i}", f"d{i}") for i in range(20)))
    await harness.send("shop", "staff", "all")
    for client in clients:
        assert (await client.next()).event == "all"


async def test_a_connect_the_store_does_not_register_in_time_is_refused_and_leaves_no_device(
    stub: SiteStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store stops answering (a frozen Redis) while a device registers: past the
    register timeout the client gets a connect error, and once the store answers again the
    device it registered meanwhile is taken offline (nobody is there to be sent to)."""
    monkeypatch.setattr(site_namespace, "REGISTER_TIMEOUT", 0.3)
    redis = RedisServer(tmp_path / "redis-frozen", port=free_port())
    redis.start()
    harness = Harness("redis", tmp_path, redis.url, stub, sites={"shop": shop_site(stub)})
    try:
        await harness.start()
        stub.answers["t1"] = ["user_1"]
        with redis.frozen():
            refused = await connect_error(harness.url, "shop", "t1", "phone")
        assert refused == "Service unavailable: TimeoutError"
        await wait_until(harness, lambda: harness.store.online("shop", ["user_1"]), set())
        client = await harness.connect("shop", "t1", "phone")  # the next try connects
        assert await harness.store.online("shop", ["user_1"]) == {"user_1"}
        await client.disconnect()
    finally:
        await harness.stop()
        redis.stop()
