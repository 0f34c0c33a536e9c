"""The /status page in headless Chromium: behind the admin key, its figures are /metrics'."""

from __future__ import annotations

from pathlib import Path

from tests.browser import Browser
from tests.harness import Harness
from tests.test_metrics import scrape, value

ADMIN_KEY = "admin-key-for-tests"


async def cell(browser: Browser, site: str, field: str) -> str:
    text: str = await browser.evaluate(
        f'document.querySelector(\'td[data-site="{site}"][data-field="{field}"]\').textContent'
    )
    return text


async def test_status_page_shows_what_metrics_count(
    harness: Harness, browser: Browser, tmp_path: Path
) -> None:
    service = await harness.start(admin_key=ADMIN_KEY)
    harness.stub.answers.update(alice=["user_alice"], bob=["user_bob"], carol=["room"])
    await harness.connect("shop", "alice", "phone")
    await harness.connect("shop", "alice", "laptop")
    bob = await harness.connect("shop", "bob", "phone", auto_ack=False)
    await harness.connect("news", "carol")
    for n in range(3):
        assert await harness.send("shop", "user_bob", "n", n) == (200, "OK")
    for _ in range(3):
        await bob.next()  # delivered, not acked: they stay in the queue

    await browser.open(f"{harness.url}/status#key={ADMIN_KEY}")
    await browser.wait_for("Number(document.body.dataset.refreshes || 0) >= 2")
    assert harness.http is not None
    samples = await scrape(harness.http, harness.url)
    node = service.node_id
    for site in ("shop", "news"):
        for field in ("connections", "users"):
            shown = int(await cell(browser, site, field))
            assert shown == value(samples, field, site=site, node=node), (site, field)
        assert int(await cell(browser, site, "queue_depth")) == value(
            samples, "queue_depth", site=site
        )
    assert int(await cell(browser, "shop", "connections")) == 3
    assert int(await cell(browser, "shop", "users")) == 2
    assert int(await cell(browser, "shop", "queue_depth")) == 3
    assert await browser.evaluate("document.getElementById('node').textContent") == node
    assert await browser.evaluate("document.getElementById('store').textContent") == "healthy"
    nodes_shown = await browser.evaluate("document.getElementById('nodes-count').textContent")
    assert int(nodes_shown) == value(samples, "nodes_alive") == 1
    # the key is not left in the address bar
    assert await browser.evaluate("location.hash") == ""
    png = await browser.screenshot()
    assert png.startswith(b"\x89PNG")
    (tmp_path / "status-page.png").write_bytes(png)  # kept for a look after a failure


async def test_status_needs_the_admin_key_and_is_off_without_one(
    harness: Harness, browser: Browser
) -> None:
    await harness.start(admin_key=ADMIN_KEY)
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}/status.json") as answer:
        assert answer.status == 401
    async with harness.http.get(
        f"{harness.url}/status.json", headers={"Authorization": "Bearer wrong"}
    ) as answer:
        assert answer.status == 401
    await browser.open(f"{harness.url}/status#key=wrong")
    await browser.wait_for("document.getElementById('error').textContent !== ''")
    assert "not the admin key" in await browser.evaluate(
        "document.getElementById('error').textContent"
    )
    assert await browser.evaluate("document.getElementById('status').hidden") is True

    await harness.restart_with(admin_key="")
    for path in ("/status", "/status.json"):
        async with harness.http.get(harness.url + path) as answer:
            assert answer.status == 404


async def test_wrong_admin_keys_are_slowed_per_address_and_logged_once(
    harness: Harness, logs: list[str]
) -> None:
    await harness.start(admin_key=ADMIN_KEY)
    assert harness.http is not None
    statuses = []
    for n in range(200):
        async with harness.http.get(
            f"{harness.url}/status.json", headers={"Authorization": f"Bearer guess-{n}"}
        ) as answer:
            statuses.append(answer.status)
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    async with harness.http.get(  # the right key too, while this address is held off
        f"{harness.url}/status.json", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as answer:
        assert answer.status == 429
    said = [line for line in logs if "wrong admin key" in line]
    assert len(said) == 1 and "guess" not in said[0]
