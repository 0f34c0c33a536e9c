"""Headless Chromium driven over the DevTools protocol: open a page, run JavaScript in it,
take a screenshot. Enough for a test to use a page as a person would, with no driver to install
beyond Debian's chromium."""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import orjson

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def start(self) -> None:
        binary = chromium_path()
        assert binary is not None, "chromium is not installed (./dev test installs it)"
        self.process = await asyncio.create_subprocess_exec(
            binary,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = asyncio.get_running_loop().time() + 20
        while not port_file.exists() or not port_file.read_text().strip():
            assert asyncio.get_running_loop().time() < deadline, "chromium did not start"
            await asyncio.sleep(0.05)
        port = port_file.read_text().split()[0]
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    async def call(self, method: str, **params: Any) -> Any:
        assert self.ws is not None
        call_id = next(self._ids)
        await self.ws.send_str(
            orjson.dumps({"id": call_id, "method": method, "params": params}).decode()
        )
        while True:
            message = orjson.loads((await self.ws.receive(timeout=30)).data)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result")

    async def open(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, condition: str, timeout_ms: int = 10_000) -> None:
        """Until the page's ``condition`` (a JavaScript expression) holds: the page is polled by
        its own timer, not by this test."""
        expression = (
            "new Promise((resolve, reject) => { const start = Date.now(); const tick = () => {"
            f" try {{ if ({condition}) return resolve(true); }} catch (e) {{}}"
            f" if (Date.now() - start > {timeout_ms}) return reject(new Error('timed out: '"
            f" + {orjson.dumps(condition).decode()})); setTimeout(tick, 20); }}; tick(); }})"
        )
        await self.evaluate(expression)

    async def screenshot(self) -> bytes:
        """The page as a PNG."""
        result = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
