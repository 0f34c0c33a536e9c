"""Whatever a site or a client sends gets a clear answer, costs bounded work, harms no one
else, logs once, and never leaks a secret (issue 7). Real sockets, both stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
import pytest
import socketio

from bench.sim_client import SimClient
from socketio_webservice.transport.form_body import parse_form
from socketio_webservice.transport.limits import Limits
from socketio_webservice.webservice.log_setup import redact
from tests.harness import Client, Harness

WAIT = 5.0


async def next_update(harness: Harness) -> tuple[str, Any, str]:
    return await asyncio.wait_for(harness.stub.updates.get(), WAIT)


# --- POST /send -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event", ["_batch", "_resync", "_settings", "connect", "disconnect", "error", "newListener"]
)
async def test_send_refuses_reserved_event_names(harness: Harness, event: str) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1")
    status, text = await harness.send("shop", ["user_1"], event, 1)
    assert status == 400 and repr(event) in text and "reserved" in text
    await harness.send("shop", ["user_1"], "n", 2)
    assert (await client.next()).numbers() == [2]  # nothing forged came first


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"rooms": [f"r{i}" for i in range(6)], "event": "e"}, "at most 5"),
        ({"rooms": ["x" * 21], "event": "e"}, "longer than 20"),
        ({"rooms": "x" * 21, "event": "e"}, "longer than 20"),  # one room, as a string
        ({"rooms": ["user_1"], "event": "e" * 11}, "longer than 10"),
        ({"rooms": ["user_1"], "event": "e", "args": [[[[["deep"]]]]]}, "deeper than 4"),
        ({"rooms": "user_1", "event": "e", "args": [1, "a", [[[["deep"]]]]]}, "deeper than 4"),
    ],
)
async def test_send_limits_answer_400_naming_the_limit(
    harness: Harness, body: dict[str, Any], says: str
) -> None:
    await harness.start(
        limits=Limits(
            max_rooms_per_send=5, max_room_length=20, max_event_length=10, max_args_depth=4
        )
    )
    status, text = await harness.post("site=shop&apiKey=key", json=body)
    assert status == 400 and says in text


async def test_args_nested_past_what_json_can_encode_are_a_400_not_a_500(
    harness: Harness,
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1")
    deep = "[" * 300 + "]" * 300
    body = f'{{"rooms": ["user_1"], "event": "e", "args": {deep}}}'
    status, text = await harness.post(
        "site=shop&apiKey=key", data=body, headers={"Content-Type": "application/json"}
    )
    assert status == 400 and "deeper than 32" in text
    nested: Any = "bottom"
    for _ in range(31):  # args itself is the 32nd level
        nested = [nested]
    assert (await harness.send("shop", ["user_1"], "deep", nested))[0] == 200
    received = await client.next()
    assert received.event == "deep" and received.args == [nested]


async def test_a_body_over_the_limit_is_413(harness: Harness) -> None:
    await harness.start(limits=Limits(max_send_body=10_000))
    status, _ = await harness.post(
        "site=shop&apiKey=key", json={"rooms": ["user_1"], "event": "e", "args": ["x" * 20_000]}
    )
    assert status == 413


def test_form_parsing_is_linear_in_the_number_of_fields() -> None:
    def seconds(fields: int) -> float:
        body = "event=e&rooms[]=user_1&" + "&".join(f"args[]={i}" for i in range(fields))
        started = time.perf_counter()
        parsed = parse_form(body)
        took = time.perf_counter() - started
        assert len(parsed["args"]) == fields
        return took

    small, large = min(seconds(1_000) for _ in range(3)), min(seconds(8_000) for _ in range(3))
    assert large / small < 24, f"8x the fields took {large / small:.0f}x the time (quadratic?)"


# --- what a client emits -------------------------------------------------------------------


async def test_client_emitted_connect_and_disconnect_run_no_handler(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1")
    assert (await next_update(harness))[1]["user"].keys() == {"last_connected"}
    # A forged disconnect must not stop live delivery; a forged connect must not register a
    # second device that would keep the user online for ever.
    await client.emit("disconnect", namespace="/shop")
    await client.emit("connect", {"token": "t1"}, namespace="/shop")
    await client.emit("anything", namespace="/shop")
    await harness.send("shop", ["user_1"], "n", 1)
    assert (await client.next()).numbers() == [1]
    await client.disconnect()
    assert (await next_update(harness))[1]["user"].keys() == {"last_disconnected"}


async def raw_websocket(harness: Harness, query: str = "") -> aiohttp.ClientWebSocketResponse:
    assert harness.http is not None
    url = harness.url.replace("http", "ws", 1) + f"/socket.io/?EIO=4&transport=websocket{query}"
    ws = await harness.http.ws_connect(url, max_msg_size=0)
    opened = await ws.receive(timeout=WAIT)
    assert opened.data.startswith("0{")
    return ws


async def closed_by_server(ws: aiohttp.ClientWebSocketResponse) -> None:
    while True:
        message = await ws.receive(timeout=WAIT)
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return
        if message.type == aiohttp.WSMsgType.TEXT and message.data == "1":  # Engine.IO close
            return


async def send_frames(ws: aiohttp.ClientWebSocketResponse, frames: Iterable[str | bytes]) -> None:
    """Until the server closes the connection."""
    for frame in frames:
        if ws.closed:
            return
        try:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        except (ConnectionResetError, RuntimeError):
            return


@pytest.mark.parametrize(
    "frame",
    ["4zz", "4[", b"\x00\x01binary", "x", '42/shop,["e"', "40/nope,"],
    ids=["bad-socketio-type", "bad-json", "binary", "bad-engineio-type", "broken-event", "nsp"],
)
async def test_bad_packets_close_the_socket_with_one_log_line(
    harness: Harness, logs: list[str], frame: str | bytes
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    bystander = await harness.connect("shop", "t1")
    ws = await raw_websocket(harness)
    await send_frames(ws, [frame] * 2_000)
    await closed_by_server(ws)
    dropped = [line for line in logs if "dropped" in line]
    assert len(dropped) == 1, dropped
    assert not [line for line in logs if "Traceback" in line or "handler error" in line]
    await harness.send("shop", ["user_1"], "n", 1)
    assert (await bystander.next()).numbers() == [1]


async def test_a_frame_over_the_packet_limit_closes_the_socket(harness: Harness) -> None:
    await harness.start()
    ws = await raw_websocket(harness)
    await ws.send_str("4" + "x" * 200_000)  # io.maxHttpBufferSize defaults to 100 KB
    await closed_by_server(ws)


# --- connecting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "says"),
    [
        ({"token": "t1\r\nX-Evil: 1", "deviceId": "d"}, "Auth error: token holds control"),
        ({"token": "t1", "deviceId": "d", "meta": "a\nb"}, "Auth error: meta holds control"),
        ({"token": "t" * 5000, "deviceId": "d"}, "Auth error: token is longer than 4096"),
        ({"token": "t1", "deviceId": "d" * 200}, "Invalid deviceId: longer than 128"),
    ],
    ids=["crlf-token", "lf-meta", "long-token", "long-device"],
)
async def test_bad_connect_params_get_a_connect_error_and_leak_nothing(
    harness: Harness, logs: list[str], auth: dict[str, str], says: str
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = Client()
    errors: asyncio.Queue[Any] = asyncio.Queue()
    client.on("connect_error", errors.put, namespace="/shop")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(harness.url, namespaces=["/shop"], transports=["websocket"], auth=auth)
    await client.disconnect()
    error = await asyncio.wait_for(errors.get(), WAIT)
    assert error["message"].startswith(says)
    assert harness.stub.auth_requests == []  # the site was not asked
    assert not [line for line in logs if "Traceback" in line or "t1" in line]


async def test_a_refused_token_is_refused_again_without_asking_the_site(harness: Harness) -> None:
    await harness.start()
    assert await harness.connect_error("shop", "wrong") == "Authentication failed"
    asked = len(harness.stub.auth_requests)
    assert asked >= 1
    for _ in range(3):
        assert await harness.connect_error("shop", "wrong") == "Authentication failed"
    assert len(harness.stub.auth_requests) == asked


async def test_auth_calls_in_flight_are_bounded_per_site(harness: Harness) -> None:
    await harness.start(limits=Limits(auth_concurrency=2))
    harness.stub.answers.update({f"s{i}": "slow" for i in range(5)})
    connects = [asyncio.create_task(harness.connect("shop", f"s{i}", f"d{i}")) for i in range(5)]
    for _ in range(2):
        await asyncio.wait_for(harness.stub.auth_arrivals.get(), WAIT)
    await asyncio.sleep(0.3)  # a negative check: no third call starts while two are in flight
    assert len(harness.stub.auth_requests) == 2
    harness.stub.release_slow.set()
    outcomes = await asyncio.gather(*connects, return_exceptions=True)
    assert len(harness.stub.auth_requests) + sum(isinstance(o, Exception) for o in outcomes) == 5, (
        outcomes
    )  # each either asked the site in its turn or was told the site is busy


# --- a client that stops reading ------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [Limits(max_outgoing_queue=20), Limits(write_timeout=1)],
    ids=["outgoing-queue", "write-timeout"],
)
async def test_a_client_that_stops_reading_is_dropped_and_keeps_its_queue(
    harness: Harness, limits: Limits
) -> None:
    await harness.start(limits=limits)
    harness.stub.answers.update({"stuck": ["user_1", "staff"], "fine": ["user_2", "staff"]})
    assert harness.http is not None
    stuck = SimClient(harness.url, "shop", "stuck", "phone")
    await stuck.connect(harness.http)
    assert (await next_update(harness))[0] == "1"
    fine = await harness.connect("shop", "fine")
    assert (await next_update(harness))[0] == "2"
    assert stuck._reader is not None
    stuck._reader.cancel()  # it stops reading: its socket's buffers fill up

    big = "x" * 100_000
    for n in range(300):
        assert (await harness.send("shop", ["user_1"], "m", n, big))[0] == 200
        if not harness.stub.updates.empty():
            break
    user_id, body, _ = await next_update(harness)
    assert (user_id, body["user"].keys()) == ("1", {"last_disconnected"})
    assert len(await harness.store.pending("shop", "user_1", "phone")) > 0
    await harness.send("shop", ["staff"], "n", 7)
    while (received := await fine.next()).event == "m":
        pass
    assert received.numbers() == [7]


async def test_a_plain_site_client_that_stops_reading_is_dropped_and_the_others_get_all(
    harness: Harness,
) -> None:
    await harness.start(limits=Limits(max_outgoing_queue=20))
    harness.stub.answers.update({"stuck": ["staff"], "fine": ["staff"]})
    assert harness.http is not None and harness.service is not None
    stuck = SimClient(harness.url, "news", "stuck", None)
    await stuck.connect(harness.http)
    fine = await harness.connect("news", "fine")
    assert stuck._reader is not None
    stuck._reader.cancel()  # it stops reading: its socket's buffers fill up

    big = "x" * 100_000
    sent = 0
    while harness.service.metrics.connections("news") == 2:
        assert sent < 300, "never dropped"
        assert (await harness.send("news", ["staff"], "m", sent, big))[0] == 200
        sent += 1
    assert [(await fine.next()).args[0] for _ in range(sent)] == list(range(sent))


# --- store failures -------------------------------------------------------------------------


async def healthcheck(harness: Harness, path: str = "/healthcheck") -> int:
    assert harness.http is not None
    async with harness.http.get(f"{harness.url}{path}") as response:
        return response.status


@pytest.mark.parametrize("store_kind", ["redis"])
@pytest.mark.parametrize(
    ("refuse", "allow"),
    [
        (("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "SET", "maxmemory", "0")),
        (("REPLICAOF", "127.0.0.1", "1"), ("REPLICAOF", "NO", "ONE")),
    ],
    ids=["out-of-memory", "read-only"],
)
async def test_redis_refusing_writes_is_a_503_and_unhealthy_until_it_accepts_again(
    harness: Harness, logs: list[str], refuse: tuple[str, ...], allow: tuple[str, ...]
) -> None:
    import redis.asyncio as aioredis

    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1")
    await next_update(harness)
    assert harness.redis_url is not None
    admin = aioredis.Redis.from_url(harness.redis_url)
    await admin.execute_command(*refuse)
    try:
        status, text = await harness.send("shop", ["user_1"], "n", 1)
        assert status == 503 and "Message not stored" in text
        assert await healthcheck(harness) == 503
        assert await healthcheck(harness, "/readyz") == 503  # route no new clients here
        assert await healthcheck(harness, "/livez") == 200  # but do not restart the node
        await client.disconnect()  # its release fails now, and must be retried
    finally:
        await admin.execute_command(*allow)
        await admin.aclose()
    assert (await next_update(harness))[1]["user"].keys() == {"last_disconnected"}
    assert await healthcheck(harness) == 200
    assert (await harness.send("shop", ["user_1"], "n", 2))[0] == 200
    assert not [line for line in logs if "Traceback" in line]


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_sqlite_file_removed_while_running_is_a_503_not_a_silent_loss(
    harness: Harness,
) -> None:
    await harness.start()
    assert (await harness.send("shop", ["user_1"], "n", 1))[0] == 200
    for path in harness.tmp_path.glob("service.sqlite3*"):
        path.unlink()
    status, text = await harness.send("shop", ["user_1"], "n", 2)
    assert status == 503 and "database file is gone" in text
    assert await healthcheck(harness) == 503


# --- secrets --------------------------------------------------------------------------------


def test_redact_masks_keys_tokens_and_authorization_values() -> None:
    text = (
        "POST /send?site=shop&apiKey=s3cret-key&x=1 "
        "GET /socket.io/?EIO=4&token=tok-123&meta=appName:stock "
        "{'Authorization': 'Bearer tok-123', 'X-META': 'm'} Authorization: Token abc "
        "and the key itself: s3cret-key"
    )
    masked = redact(text, ["s3cret-key"])
    for secret in ("s3cret-key", "tok-123", "appName:stock", "Token abc", "'m'"):
        assert secret not in masked
    assert "site=shop" in masked and "x=1" in masked


# --- HTTP connections -----------------------------------------------------------------------


async def open_raw(harness: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert harness.service is not None
    return await asyncio.open_connection("127.0.0.1", harness.service.config.port)


async def test_headers_that_never_complete_are_cut_off(harness: Harness) -> None:
    await harness.start(limits=Limits(http_read_timeout=1))
    reader, writer = await open_raw(harness)
    writer.write(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    assert await asyncio.wait_for(reader.read(), WAIT) == b""
    writer.close()


async def test_a_body_that_trickles_is_a_408(harness: Harness) -> None:
    await harness.start(limits=Limits(http_read_timeout=1))
    reader, writer = await open_raw(harness)
    writer.write(
        b"POST /send?site=shop&apiKey=key HTTP/1.1\r\nHost: x\r\n"
        b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"rooms"'
    )
    status_line = await asyncio.wait_for(reader.readline(), WAIT)
    assert status_line.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_past_the_connection_cap_new_connections_get_a_503(harness: Harness) -> None:
    await harness.start(limits=Limits(max_connections=3))
    held = []
    for _ in range(3):
        reader, writer = await open_raw(harness)
        writer.write(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"HTTP/1.1 200")
        held.append(writer)
    reader, writer = await open_raw(harness)
    assert (await asyncio.wait_for(reader.read(), WAIT)).startswith(b"HTTP/1.1 503")
    writer.close()
    last = held.pop()
    last.close()
    await last.wait_closed()
    deadline = asyncio.get_running_loop().time() + WAIT
    while (status := await healthcheck(harness)) == 503:  # until the server has seen the close
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert status == 200
    for writer in held:
        writer.close()


async def test_a_polling_post_over_the_packet_limit_is_answered(harness: Harness) -> None:
    await harness.start()
    assert harness.http is not None
    base = f"{harness.url}/socket.io/?EIO=4&transport=polling"
    async with harness.http.get(base) as response:
        opened = await response.text()
    sid = opened[opened.index('"sid":"') + 7 :].split('"')[0]
    async with harness.http.post(f"{base}&sid={sid}", data="4" + "x" * 200_000) as response:
        assert response.status == 413


async def test_a_backend_looping_on_bad_sends_costs_a_log_line_not_one_each(
    harness: Harness, logs: list[str]
) -> None:
    await harness.start()
    for _ in range(500):
        assert (await harness.post("site=shop&apiKey=wrong", json={}))[0] == 401
        assert (await harness.post("site=shop&apiKey=key", data=b"{not json"))[0] == 400
    assert await harness.send("shop", "user_1", "n", 1) == (200, "OK")
    rejected = [line for line in logs if "send rejected" in line]
    assert len(rejected) == 2  # one per (site, status) a minute, however many came
    assert any("send site=shop" in line for line in logs)  # a good send is still logged
