"""Engine.IO heartbeats as the service sends them (one clock for every socket): a client that
answers stays connected, one that stops answering is closed."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.harness import Harness


async def open_raw(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(
        url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    )
    opened = await ws.receive_str()
    assert opened.startswith("0{")
    return ws


async def test_the_server_pings_every_interval_and_a_silent_client_is_closed(
    harness: Harness,
) -> None:
    harness.socketio_options = {"ping_interval": 1.0, "ping_timeout": 1.0}
    await harness.start()
    assert harness.http is not None
    answering = await open_raw(harness.http, harness.url)
    silent = await open_raw(harness.http, harness.url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(3):  # three pings, each answered
        assert await asyncio.wait_for(answering.receive_str(), 5) == "2"
        await answering.send_str("3")
    assert 2.0 <= loop.time() - started < 6.0  # about one a second
    assert await asyncio.wait_for(silent.receive_str(), 5) == "2"  # pinged, never answers
    closed = await asyncio.wait_for(silent.receive(), 10)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert not answering.closed
    assert await asyncio.wait_for(answering.receive_str(), 5) == "2"  # still pinged
    await answering.close()


async def test_a_legacy_client_that_stops_pinging_is_closed(harness: Harness) -> None:
    """Protocol 3 clients ping the server; one that goes quiet is closed like any other."""
    harness.socketio_options = {"ping_interval": 1.0, "ping_timeout": 1.0}
    await harness.start()
    assert harness.http is not None
    url = harness.url.replace("http", "ws", 1) + "/socket.io/?EIO=3&transport=websocket"
    pinging = await harness.http.ws_connect(url)
    quiet = await harness.http.ws_connect(url)
    for ws in (pinging, quiet):
        assert (await ws.receive_str()).startswith("0{")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # the quiet one is closed while the other keeps pinging
        await pinging.send_str("2")
        assert await asyncio.wait_for(_next_text(pinging), 5) == "3"  # the server's pong
        try:
            closed = await asyncio.wait_for(quiet.receive(), 0.5)
        except TimeoutError:
            assert loop.time() < deadline, "the quiet client was never closed"
            continue
        if closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            break
    assert not pinging.closed
    await pinging.close()


async def _next_text(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The next text frame that is not the namespace's connect ("40")."""
    while (text := await ws.receive_str()) == "40":
        pass
    return text
