"""One user cannot make every send cost more, nor hold the store (issue 18): a user keeps at
most ``max_devices_per_user`` devices, and a big send is stored in steps, so other users
connect while it runs. Real sockets, both stores."""

from __future__ import annotations

import asyncio
import time

import socketio

from socketio_webservice.transport.limits import Limits
from tests.harness import Harness

WAIT = 10.0


async def test_a_new_device_past_the_limit_retires_an_offline_one_or_is_refused(
    harness: Harness, logs: list[str]
) -> None:
    await harness.start(limits=Limits(max_devices_per_user=3))
    harness.stub.answers["t1"] = ["user_1"]
    clients = {device: await harness.connect("shop", "t1", device) for device in ("a", "b", "c")}
    assert await harness.connect_error("shop", "t1", "d") == (
        "Auth error: too many devices connected for this user (at most 3)"
    )
    await clients.pop("a").disconnect()  # offline now: the least recently seen
    clients["d"] = await harness.connect("shop", "t1", "d")
    assert [line for line in logs if "device a retired" in line]
    await harness.send("shop", ["user_1"], "n", 1)
    for client in clients.values():
        assert (await client.next()).numbers() == [1]
    assert await harness.store.pending("shop", "user_1", "a") == []  # its queue is gone


async def test_other_users_connect_while_a_big_send_to_a_heavy_user_is_stored(
    harness: Harness,
) -> None:
    """1,000 messages to a user with 20 devices are 20,000 copies: stored in steps of
    ``store_step_ms``, with other users' connects served between the steps."""
    await harness.start(limits=Limits(store_step_ms=1))
    harness.stub.answers["heavy"] = ["user_1"]
    for n in range(20):  # offline devices keep their queues: every copy is stored
        client = await harness.connect("shop", "heavy", f"d{n}")
        await client.disconnect()
    body = [{"rooms": ["user_1"], "event": "n", "args": [i]} for i in range(1_000)]
    bulk = asyncio.ensure_future(harness.post("site=shop&apiKey=key", json=body))
    connected: list[float] = []
    answered_at = 0.0

    async def others() -> None:
        for n in range(10):
            harness.stub.answers[f"other{n}"] = [f"user_o{n}"]
            started = time.monotonic()
            client = await harness.connect("shop", f"other{n}", "phone")
            connected.append(time.monotonic() - started)
            await client.disconnect()

    def note(_: object) -> None:
        nonlocal answered_at
        answered_at = time.monotonic()

    bulk.add_done_callback(note)
    await asyncio.wait_for(others(), WAIT)
    others_done_at = time.monotonic()
    status, text = await asyncio.wait_for(bulk, 60)
    assert status == 200 and text.count('"stored":20') == 1_000
    assert others_done_at < answered_at, "the connects waited for the whole send"
    pending = await harness.store.pending("shop", "user_1", "d7")
    assert [m.args for m in pending] == [[i] for i in range(1_000)]
    print(f"connects while the send was stored: max {max(connected) * 1000:.0f} ms")


async def test_a_connect_past_the_limit_is_a_connect_error_for_a_v2_style_query(
    harness: Harness,
) -> None:
    """The refusal reaches the client as a connect error, as the auth errors do."""
    await harness.start(limits=Limits(max_devices_per_user=1))
    harness.stub.answers["t1"] = ["user_1"]
    await harness.connect("shop", "t1", "a")
    client = socketio.AsyncClient()
    errors: asyncio.Queue[object] = asyncio.Queue()
    client.on("connect_error", errors.put, namespace="/shop")
    try:
        await client.connect(
            f"{harness.url}?token=t1&deviceId=b", namespaces=["/shop"], transports=["websocket"]
        )
    except socketio.exceptions.ConnectionError:
        pass
    await client.disconnect()
    error = await asyncio.wait_for(errors.get(), WAIT)
    assert isinstance(error, dict) and error["message"].startswith("Auth error: too many devices")
