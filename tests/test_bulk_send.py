"""Bulk sends: POST /send with a JSON array of messages, stored in one store call."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from socketio_webservice.transport.limits import Limits
from socketio_webservice.webservice.service import Service
from testkit.processes import free_port
from tests.harness import Harness, connect


def message(rooms: Any, n: int, event: str = "n") -> dict[str, Any]:
    return {"rooms": rooms, "event": event, "args": [n]}


async def bulk(harness: Harness, body: Any, site: str = "shop", url: str = "") -> tuple[int, Any]:
    assert harness.http is not None
    async with harness.http.post(
        f"{url or harness.url}/send?site={site}&apiKey=key", json=body
    ) as answer:
        if answer.content_type == "application/json":
            return answer.status, await answer.json()
        return answer.status, await answer.text()


async def test_a_bulk_send_stores_every_message_and_delivers_each_in_order(
    harness: Harness,
) -> None:
    await harness.start()
    harness.stub.answers.update(alice=["user_alice"], bob=["user_bob", "staff"])
    alice = await harness.connect("shop", "alice", "phone")
    body = [
        message("user_alice", 1),
        message(["user_bob", "user_alice"], 2),
        message("staff", 3),
        message("user_alice", 4),
    ]
    assert await bulk(harness, body) == (
        200,
        {"results": [{"stored": 1}, {"stored": 1}, {"stored": 0}, {"stored": 1}]},
    )
    assert [(await alice.next()).args for _ in range(3)] == [[1], [2], [4]]
    # bob had never connected: nothing was stored for him. Now he has a device, offline.
    bob = await harness.connect("shop", "bob", "laptop")
    await bob.disconnect()
    assert await bulk(harness, [message("staff", 5), message("user_bob", 6)]) == (
        200,
        {"results": [{"stored": 1}, {"stored": 1}]},
    )
    bob = await harness.connect("shop", "bob", "laptop")
    batch = await bob.next()
    assert batch.event == "_batch" and batch.args == [[["n", 5], ["n", 6]]]


async def test_a_bulk_send_with_one_bad_message_stores_none(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["alice"] = ["user_alice"]
    alice = await harness.connect("shop", "alice", "phone")
    status, text = await bulk(
        harness, [message("user_alice", 1), {"rooms": "user_alice", "event": "_batch"}]
    )
    assert status == 400
    assert text.startswith("Message 1: Field 'event': '_batch' is a reserved name")
    assert await harness.store.pending("shop", "user_alice", "phone") == []
    assert await harness.send("shop", "user_alice", "n", 2) == (200, "OK")
    assert (await alice.next()).args == [2]  # the first message of the refused bulk never came


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "Body is an empty list"),
        ([message("user_a", n) for n in range(4)], "Body holds 4 messages; at most 3."),
        (["not a message"], "Message 0: Body must be an object"),
    ],
)
async def test_bulk_send_limits(harness: Harness, body: Any, says: str) -> None:
    await harness.start(limits=Limits(max_messages_per_send=3))
    status, text = await bulk(harness, body)
    assert status == 400
    assert text.startswith(says)


async def test_a_bulk_send_to_a_plain_site_broadcasts_each(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["reader"] = ["news", "sport"]
    reader = await harness.connect("news", "reader")
    status, answer = await bulk(
        harness, [message("news", 1), message("weather", 2), message("sport", 3)], site="news"
    )
    assert status == 200 and answer == {"results": [{"sent": True}] * 3}
    assert [(await reader.next()).args for _ in range(2)] == [[1], [3]]


@pytest.mark.parametrize("store_kind", ["redis"])  # several nodes share a Redis
async def test_a_bulk_send_on_one_node_reaches_devices_on_another(harness: Harness) -> None:
    first = await harness.start()
    second = Service(dataclasses.replace(first.config, port=free_port()))
    await second.start()
    try:
        harness.stub.answers.update(alice=["user_alice"], bob=["user_bob"])
        url_b = f"http://127.0.0.1:{second.config.port}"
        alice = await connect(url_b, "shop", "alice", "phone")
        bob = await connect(harness.url, "shop", "bob", "phone")
        body = [message("user_alice", 1), message("user_bob", 2), message("user_alice", 3)]
        status, answer = await bulk(harness, body)
        assert status == 200 and [r["stored"] for r in answer["results"]] == [1, 1, 1]
        assert [(await alice.next()).args for _ in range(2)] == [[1], [3]]
        assert (await bob.next()).args == [2]
        await alice.disconnect()
        await bob.disconnect()
    finally:
        await second.stop()
