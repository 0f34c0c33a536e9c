"""``transport.auth.AuthGate`` alone, against a real HTTP server standing in for the site:
what reaches the site, the original's error texts, refused tokens remembered, and the bound
on calls in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from socketio_webservice.sites import SiteConfig
from socketio_webservice.transport.auth import AuthGate, AuthRejected, LoginRefused
from socketio_webservice.transport.limits import Limits
from socketio_webservice.transport.site_http import SiteHttp
from socketio_webservice.transport.stats import TransportStats
from tests.harness import SiteStub


@pytest.fixture
async def http() -> AsyncIterator[SiteHttp]:
    client = SiteHttp()
    yield client
    await client.close()


def gate(http: SiteHttp, stub: SiteStub, timeout: float = 2.0, **limits: int) -> AuthGate:
    site = SiteConfig(name="shop", auth_url=f"{stub.url}/auth", api_key="k", auth_scheme="Token")
    return AuthGate(http, site, Limits(**limits), timeout, TransportStats())


async def test_the_site_gets_the_token_and_meta_and_its_rooms_come_back(
    http: SiteHttp, stub: SiteStub
) -> None:
    stub.answers["t1"] = ["user_1", "staff"]
    door = gate(http, stub)
    assert await door.rooms("t1", "app:ios") == ["user_1", "staff"]
    (asked,) = stub.auth_requests
    assert (asked["Authorization"], asked["X-META"]) == ("Token t1", "app:ios")
    assert door.stats.auth_answers["shop", "ok"] == 1
    assert door.stats.auth_time["shop"].times.count == 1


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (401, "Authentication failed"),
        (500, "Auth 500 error"),
        (b"{not json", "Auth error: the site's answer is not JSON"),
        (b'{"rooms": []}', "Auth error"),
        (["x" * 201], "Auth error: the site's answer holds a room name over 200"),
    ],
)
async def test_the_originals_texts_for_what_the_site_answers(
    http: SiteHttp, stub: SiteStub, answer: object, error: str
) -> None:
    stub.answers["t1"] = answer
    with pytest.raises(AuthRejected) as refused:
        await gate(http, stub).rooms("t1", "")
    assert str(refused.value).startswith(error)


async def test_what_cannot_be_sent_never_reaches_the_site(http: SiteHttp, stub: SiteStub) -> None:
    door = gate(http, stub, max_token_length=10, max_meta_length=5)
    for token, meta, error in [
        ("x" * 11, "", "Auth error: token is longer than 10 characters"),
        ("t", "m" * 6, "Auth error: meta is longer than 5 characters"),
        ("t\r\nX: 1", "", "Auth error: token holds control characters"),
    ]:
        with pytest.raises(AuthRejected, match=error):
            await door.rooms(token, meta)
    assert stub.auth_requests == []


async def test_a_refused_token_is_refused_again_without_asking(
    http: SiteHttp, stub: SiteStub
) -> None:
    stub.answers["bad"] = 401
    door = gate(http, stub, auth_failure_cache=10)
    for _ in range(3):
        with pytest.raises(LoginRefused):
            await door.rooms("bad", "")
    assert len(stub.auth_requests) == 1
    assert door.stats.auth_answers["shop", "refused"] == 3
    with pytest.raises(LoginRefused):
        await door.rooms("bad", "other meta")  # another (token, meta): asked again
    assert len(stub.auth_requests) == 2


async def test_calls_in_flight_are_bounded_and_a_wait_past_the_timeout_is_busy(
    http: SiteHttp, stub: SiteStub
) -> None:
    """One call at a time, each bounded by the timeout: of three clients waiting behind a
    call the site holds, at most one gets the slot when it frees (if its own wait has not run
    out by then); the others give up, busy, and never reach the site."""
    stub.answers["slow"] = "slow"  # the stub holds these until release_slow is set
    door = gate(http, stub, timeout=0.5, auth_concurrency=1)
    first = asyncio.create_task(door.rooms("slow", ""))
    await asyncio.wait_for(stub.auth_arrivals.get(), 5)
    waiting = asyncio.gather(
        *(door.rooms("slow", "") for _ in range(3)), first, return_exceptions=True
    )
    outcomes = [str(outcome) for outcome in await asyncio.wait_for(waiting, 10)]
    busy = outcomes.count("Auth error: busy, try again")
    assert busy >= 2
    assert len(stub.auth_requests) == 1 + (3 - busy)  # the first, and any that got its slot
    assert door.stats.auth_answers["shop", "error"] == 4
    stub.release_slow.set()
