"""WebSocket compression is off unless io.perMessageDeflate asks for it."""

from __future__ import annotations

import aiohttp
import pytest

from tests.harness import Harness


async def negotiated(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket", compress=15
        )
        await ws.close()
        return ws.compress


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_off_by_default_even_when_the_client_offers_it(harness: Harness) -> None:
    await harness.start()
    assert await negotiated(harness.url) == 0


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_per_message_deflate_turns_it_on(harness: Harness) -> None:
    harness.socketio_options = {"websocket_compression": True}
    await harness.start()
    assert await negotiated(harness.url) == 15
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone")  # and it still speaks Socket.IO
    await harness.send("shop", "user_1", "e")
    assert (await client.next()).event == "e"
