"""The original's example page, unchanged, in headless Chromium: its client bundle comes from
the service's /socket.io/socket.io.js, the page from the site's own origin."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from tests.browser import Browser
from tests.harness import Harness

PAGE = Path(__file__).parent / "e2e" / "original_page.html"


async def test_the_originals_page_connects_receives_and_gets_its_batch(
    harness: Harness, browser: Browser, tmp_path: Path
) -> None:
    await harness.start()
    harness.stub.answers["browser-user"] = ["user_9", "staff"]
    page = PAGE.read_text().replace("SERVICE", harness.url)

    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    site = web.Application()
    site.router.add_get("/page", serve_page)
    runner = web.AppRunner(site)
    await runner.setup()
    listener = web.TCPSite(runner, "127.0.0.1", 0)
    await listener.start()
    port = runner.addresses[0][1]
    try:
        await browser.open(f"http://localhost:{port}/page")  # another origin than the service
        await browser.wait_for("document.getElementById('status').textContent === 'connected'")
        await browser.wait_for("document.getElementById('log').textContent.includes('settings')")
        assert (await harness.send("shop", ["user_9"], "update_store", "offer", {"id": 1}))[
            0
        ] == 200
        await browser.wait_for("document.getElementById('log').textContent.includes('offer 1')")

        await browser.evaluate("document.getElementById('disconnect').click()")
        await browser.wait_for("document.getElementById('status').textContent === 'disconnected'")
        for n in (2, 3):
            await harness.send("shop", ["staff"], "update_store", "offer", {"id": n})
        await browser.evaluate("document.getElementById('connect').click()")
        await browser.wait_for("document.getElementById('log').textContent.includes('offer 3')")
        png = await browser.screenshot()
        assert png.startswith(b"\x89PNG")
        (tmp_path / "original-page.png").write_bytes(png)  # kept for a look after a failure
        lines = await browser.evaluate(
            "[...document.querySelectorAll('#log li')].map(li => li.textContent)"
        )
        assert lines == [
            "settings 3600",
            "update_store offer 1",
            "settings 3600",
            "_batch of 2",
            "update_store offer 2",
            "update_store offer 3",
        ]
    finally:
        await runner.cleanup()
