"""What an anonymous peer can make the Engine.IO layer do is bounded by what it sent (issue 18):
packets Engine.IO does not have, polling payloads, acks of nothing, upgrades that never finish,
queues a client never drains, a client that stops reading. Each ends its session with one log
line, and everyone else is served as before. Real sockets, both stores."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from bench.sim_client import SimClient
from socketio_webservice.transport.limits import Limits
from tests.harness import Harness
from tests.test_hostile_input import (
    WAIT,
    closed_by_server,
    next_update,
    raw_websocket,
    send_frames,
)


def dropped_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "dropped" in line]


def no_traceback(lines: list[str]) -> bool:
    return not [line for line in lines if "Traceback" in line or "handler error" in line]


async def polling_session(harness: Harness, eio: str = "4") -> str:
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}/socket.io/?EIO={eio}&transport=polling") as answer:
        opened = await answer.text()
    return opened[opened.index('"sid":"') + 7 :].split('"')[0]


async def post(harness: Harness, sid: str, body: str, eio: str = "4") -> tuple[int, str]:
    assert harness.http is not None
    url = f"{harness.url}/socket.io/?EIO={eio}&transport=polling&sid={sid}"
    async with harness.http.post(url, data=body.encode()) as answer:
        return answer.status, await answer.text()


@pytest.mark.parametrize("frame", ["9", "7", "8", "6", "0", "5", "2"])
async def test_a_flood_of_packet_types_engineio_lacks_closes_with_one_line(
    harness: Harness, logs: list[str], frame: str
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    bystander = await harness.connect("shop", "t1")
    ws = await raw_websocket(harness)
    await send_frames(ws, [frame] * 20_000)
    await closed_by_server(ws)
    assert len(dropped_lines(logs)) == 1, dropped_lines(logs)
    assert f"packet type {frame}" in dropped_lines(logs)[0]
    assert no_traceback(logs)
    await harness.send("shop", ["user_1"], "n", 1)
    assert (await bystander.next()).numbers() == [1]


@pytest.mark.parametrize(
    ("eio", "body"),
    [
        ("4", "9"),
        ("4", "6"),  # NOOP: python-engineio's close waited for a poll that never came
        ("4", "0"),
        ("4", "5"),  # UPGRADE over polling: python-engineio queued a NOOP for each
        ("4", "2"),  # a protocol 4 client does not ping
        ("4", "4zz"),
        ("4", "\x1e".join(["4zz"] * 40)),
        ("3", "1:9"),
        ("3", "1:3"),  # a protocol 3 client does not pong
        ("3", "x:2"),
    ],
)
async def test_a_polling_post_with_a_bad_packet_is_a_400_and_one_line(
    harness: Harness, logs: list[str], eio: str, body: str
) -> None:
    await harness.start()
    sid = await polling_session(harness, eio)
    status, _ = await asyncio.wait_for(post(harness, sid, body, eio), WAIT)
    assert status == 400
    status, _ = await asyncio.wait_for(post(harness, sid, "1:2" if eio == "3" else "3", eio), WAIT)
    assert status == 400  # the session is gone
    assert len(dropped_lines(logs)) == 1, logs
    assert no_traceback(logs)


async def test_more_than_sixteen_packets_in_one_post_are_read(harness: Harness) -> None:
    await harness.start()
    sid = await polling_session(harness)
    assert (await post(harness, sid, "\x1e".join(["3"] * 40)))[0] == 200


@pytest.mark.parametrize("eio", ["3", "4"])
async def test_jsonp_polling_is_refused_for_every_protocol(harness: Harness, eio: str) -> None:
    await harness.start()
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}/socket.io/?EIO={eio}&transport=polling&j=0") as r:
        assert r.status == 400


async def test_a_polling_session_that_pings_and_never_polls_is_dropped_at_the_queue_bound(
    harness: Harness, logs: list[str]
) -> None:
    await harness.start(limits=Limits(max_outgoing_queue=50))
    sid = await polling_session(harness, "3")
    statuses = []
    for _ in range(100):  # 20 pings a POST: each queues a pong the client never polls for
        status, _ = await post(harness, sid, "1:2" * 20, "3")
        statuses.append(status)
        if status != 200:
            break
    assert statuses[-1] == 400 and len(statuses) <= 4, statuses
    assert len(dropped_lines(logs)) == 1 and "packets waiting" in dropped_lines(logs)[0]


async def test_acks_of_ids_never_sent_are_ignored_quietly(
    harness: Harness, logs: list[str]
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1")
    eio = client.eio
    for n in range(2_000):
        await eio.send(f"3/shop,{100_000 + n}[]")
        await eio.send(f'3/shop,{100_000 + n}["x"]')
    await harness.send("shop", ["user_1"], "n", 1)
    assert (await client.next()).numbers() == [1]  # still connected, and served in order
    assert len([line for line in logs if "acked" in line or "callback" in line]) == 1, logs[-5:]
    assert not dropped_lines(logs)


async def test_an_upgrade_that_never_sends_its_probe_is_closed(harness: Harness) -> None:
    await harness.start(socketio_options={"upgrade_timeout": 0.5})
    sid = await polling_session(harness)
    assert harness.http is not None
    url = harness.url.replace("http", "ws", 1) + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
    ws = await harness.http.ws_connect(url)
    started = time.monotonic()
    await closed_by_server(ws)  # within WAIT, not held for ever
    assert time.monotonic() - started < WAIT
    await ws.close()
    assert (await post(harness, sid, "3"))[0] == 200  # the session goes on polling


async def fresh_healthcheck(harness: Harness) -> int:
    """Over a new TCP connection."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{harness.url}/healthcheck", headers={"Connection": "close"}) as answer,
    ):
        return answer.status


async def test_a_client_that_stops_reading_is_dropped_by_its_ping_timeout(
    harness: Harness,
) -> None:
    """Not only after ``write_timeout``: the server's writes to it are blocked, and the pings
    it does not answer say it is gone, so its connection is let go (here, the one connection
    the cap leaves beside the harness's own is free again)."""
    await harness.start(
        limits=Limits(write_timeout=600, max_outgoing_queue=1_000_000, max_connections=2),
        socketio_options={"ping_interval": 1, "ping_timeout": 1},
    )
    harness.stub.answers["stuck"] = ["user_1"]
    assert harness.http is not None
    stuck = SimClient(harness.url, "shop", "stuck", "phone")
    await stuck.connect(harness.http)
    assert (await next_update(harness))[0] == "1"
    assert stuck._reader is not None
    stuck._reader.cancel()  # it stops reading, and so answers no ping
    big = "x" * 100_000
    for n in range(150):  # 15 MB: more than the connection's buffers hold, both ends
        assert (await harness.send("shop", ["user_1"], "m", n, big))[0] == 200
    user_id, body, _ = await asyncio.wait_for(harness.stub.updates.get(), 3 * WAIT)
    assert (user_id, body["user"].keys()) == ("1", {"last_disconnected"})
    deadline = time.monotonic() + 3 * WAIT
    while (status := await fresh_healthcheck(harness)) == 503:  # the cap: still held
        assert time.monotonic() < deadline, "the stuck connection is still open"
        await asyncio.sleep(0.1)
    assert status == 200


async def test_many_clients_each_sending_one_bad_packet_cost_one_line(
    harness: Harness, logs: list[str]
) -> None:
    """One bad packet from each of 200 connections: each is dropped, and the log says so once
    for that kind of fault, with the count, not once per connection."""
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    bystander = await harness.connect("shop", "t1")
    for _ in range(200):
        ws = await raw_websocket(harness)
        await send_frames(ws, ["4{{{not json"])
        await closed_by_server(ws)
    assert len(dropped_lines(logs)) == 1, dropped_lines(logs)[:3]
    assert "bad packet" in dropped_lines(logs)[0]
    await harness.send("shop", "user_1", "after", 1)
    assert (await bystander.next()).args == [1]
    await bystander.disconnect()


_SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
SOMAXCONN = int(_SOMAXCONN.read_text()) if _SOMAXCONN.exists() else 0


def _connect_all(port: int, count: int, timeout: float) -> list[bool]:
    """``count`` TCP connects at once from threads of their own: whether each completed
    within ``timeout`` (the kernel completes them while they wait to be accepted)."""

    def connect(_: int) -> socket.socket | None:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=count) as pool:
        sockets = list(pool.map(connect, range(count)))
    for sock in sockets:
        if sock is not None:
            sock.close()
    return [sock is not None for sock in sockets]


@pytest.mark.skipif(SOMAXCONN < 300, reason="net.core.somaxconn caps the backlog below 300")
async def test_a_storm_of_connects_while_the_node_is_busy_waits_in_the_backlog(
    harness: Harness,
) -> None:
    """300 connects arrive while the node's event loop is busy (this test blocks it): each
    waits in the listen backlog and completes at once. With aiohttp's 128 the kernel
    dropped the rest, and their clients tried again a second later."""
    await harness.start()  # the default listen_backlog
    assert harness.service is not None
    completed = _connect_all(harness.service.config.port, 300, timeout=0.5)  # loop blocked
    assert completed.count(True) == 300


async def handshake(harness: Harness) -> tuple[int, str]:
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}/socket.io/?EIO=4&transport=polling") as answer:
        return answer.status, await answer.text()


async def poll(harness: Harness, sid: str) -> int:
    assert harness.http is not None
    url = f"{harness.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
    async with harness.http.get(url, timeout=aiohttp.ClientTimeout(total=WAIT)) as answer:
        await answer.read()
        return answer.status


async def test_a_session_that_joins_no_namespace_in_time_is_closed(
    harness: Harness, logs: list[str]
) -> None:
    """A polling handshake opens a session without holding a connection: one that never
    joins a site's namespace is closed after ``join_timeout``, on a websocket or polling,
    with one line for all of them; a client that joined is not."""
    await harness.start(limits=Limits(join_timeout=1))
    harness.stub.answers["t1"] = ["user_1"]
    member = await harness.connect("shop", "t1")
    ws = await raw_websocket(harness)
    sids = [await polling_session(harness) for _ in range(3)]
    await closed_by_server(ws)
    for sid in sids:
        await poll(harness, sid)  # answered once the session is closed
        assert await poll(harness, sid) == 400  # and it is gone
    late = [line for line in dropped_lines(logs) if "no namespace joined within 1 s" in line]
    assert len(late) == 1, dropped_lines(logs)
    await harness.send("shop", "user_1", "after", 1)
    assert (await member.next()).args == [1]
    await member.disconnect()


async def test_handshakes_past_the_limit_of_sessions_not_joined_are_refused(
    harness: Harness, logs: list[str]
) -> None:
    """While ``max_unjoined_sessions`` have not joined, a handshake is answered 503 (memory
    stays bounded whatever the rate of handshakes), said in one line; once they are closed
    (``join_timeout``), handshakes and connects are served again."""
    await harness.start(limits=Limits(max_unjoined_sessions=3, join_timeout=1))
    harness.stub.answers["t1"] = ["user_1"]
    waiting = [await polling_session(harness) for _ in range(3)]
    for _ in range(5):
        assert await handshake(harness) == (503, "too many sessions waiting to join: try again")
    refused = [line for line in logs if "handshake refused" in line]
    assert len(refused) == 1 and "3 sessions have not joined" in refused[0]
    for sid in waiting:
        await poll(harness, sid)  # answered once the session is closed
    assert (await handshake(harness))[0] == 200
    member = await harness.connect("shop", "t1")
    await harness.send("shop", "user_1", "after", 1)
    assert (await member.next()).args == [1]
    await member.disconnect()
