"""Reliable delivery over real sockets, on both stores (python-socketio's own client)."""

from __future__ import annotations

import asyncio

from tests.harness import Client, Harness

PUBLIC = "browse"


async def test_every_connection_is_greeted_with_settings(harness: Harness) -> None:
    await harness.start(device_ttl=120)
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1")
    assert client.settings == {"device_ttl": 120}


async def test_message_to_a_user_room_arrives_with_its_args_and_ack_removes_it(
    harness: Harness,
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone", auto_ack=False)
    assert await harness.send("shop", ["user_1"], "update_store", "user", {"id": 1, "age": 5}) == (
        200,
        "OK",
    )
    received = await client.next()
    assert (received.event, received.args) == ("update_store", ["user", {"id": 1, "age": 5}])
    assert received.ack_id is not None
    assert len(await harness.store.pending("shop", "user_1", "phone")) == 1
    await client.ack(received)
    await wait_for_empty_queue(harness, "user_1", "phone")


async def test_shared_room_reaches_every_device_of_every_member_once(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers.update(
        {"a": ["user_1", "Staff"], "b": ["user_2", "staff"], "c": ["user_3", "buyers"]}
    )
    phone = await harness.connect("shop", "a", "phone")
    laptop = await harness.connect("shop", "a", "laptop")
    other = await harness.connect("shop", "b", "phone")
    outsider = await harness.connect("shop", "c", "phone")
    assert (await harness.send("shop", ["user_1", "STAFF", "staff"], "notice", 1))[0] == 200
    assert (await harness.send("shop", ["user_3"], "marker"))[0] == 200
    for client in (phone, laptop, other):
        received = await client.next()
        assert (received.event, received.args) == ("notice", [1])
    assert (await outsider.next()).event == "marker"
    await phone.no_event_within(0.3)


async def test_reconnecting_device_gets_what_it_missed_as_one_ordered_batch(
    harness: Harness,
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "staff"]
    client = await harness.connect("shop", "t1", "phone")
    await client.disconnect()
    await harness.send("shop", "user_1", "a", 1)
    await harness.send("shop", ["staff"], "b", {"x": [1, 2]})
    await harness.send("shop", ["user_1"], "a", 2)

    again = await harness.connect("shop", "t1", "phone", auto_ack=False)
    batch = await again.next()
    assert batch.event == "_batch"
    assert batch.args == [[["a", 1], ["b", {"x": [1, 2]}], ["a", 2]]]
    await again.ack(batch)
    await wait_for_empty_queue(harness, "user_1", "phone")
    await again.disconnect()

    third = await harness.connect("shop", "t1", "phone")
    await harness.send("shop", "user_1", "live")
    assert (await third.next()).event == "live"  # no second _batch before it


async def test_batch_ack_keeps_messages_stored_after_the_batch_and_they_come_after_it(
    harness: Harness,
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    await (await harness.connect("shop", "t1", "phone")).disconnect()
    await harness.send("shop", "user_1", "old")
    client = await harness.connect("shop", "t1", "phone", auto_ack=False)
    batch = await client.next()
    assert batch.event == "_batch"
    await harness.send("shop", "user_1", "new")
    live = await client.next()
    assert live.event == "new"
    await client.ack(batch)
    await wait_until(harness, lambda: pending_events(harness, "user_1", "phone"), ["new"])
    await client.ack(live)
    await wait_for_empty_queue(harness, "user_1", "phone")


async def test_unacked_live_message_comes_back_in_the_next_batch(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone", auto_ack=False)
    await harness.send("shop", "user_1", "e", 1)
    assert (await client.next()).args == [1]
    await client.disconnect()  # no ack reached the service
    again = await harness.connect("shop", "t1", "phone")
    batch = await again.next()
    assert (batch.event, batch.args) == ("_batch", [[["e", 1]]])


async def test_acked_message_is_never_sent_again(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone", auto_ack=False)
    await harness.send("shop", "user_1", "e", 1)
    await client.ack(await client.next())
    await wait_for_empty_queue(harness, "user_1", "phone")
    await client.disconnect()
    again = await harness.connect("shop", "t1", "phone")
    await harness.send("shop", "user_1", "after")
    assert (await again.next()).event == "after"


async def test_resync_ack_out_of_order_clears_the_event_and_sends_resync(
    harness: Harness,
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone", auto_ack=False)
    await harness.send("shop", "user_1", "sync", 1, resync=True)
    await harness.send("shop", "user_1", "other", resync=True)
    await harness.send("shop", "user_1", "sync", 2, resync=True)
    first, other, second = [await client.next() for _ in range(3)]
    await client.ack(second)  # the first "sync" was never acked: the client missed it
    resync = await client.next()
    assert resync.event == "_resync"
    assert await pending_events(harness, "user_1", "phone") == ["other"]
    await client.ack(other)
    await client.ack(first)  # a late ack of a cleared message changes nothing
    await wait_for_empty_queue(harness, "user_1", "phone")
    await client.no_event_within(0.3)


async def test_resync_acks_in_order_remove_quietly(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone", auto_ack=False)
    for i in range(3):
        await harness.send("shop", "user_1", "sync", i, resync=True)
    for _ in range(3):
        await client.ack(await client.next())
    await wait_for_empty_queue(harness, "user_1", "phone")
    await client.no_event_within(0.3)


async def test_without_resync_an_out_of_order_ack_removes_only_that_message(
    harness: Harness,
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone", auto_ack=False)
    await harness.send("shop", "user_1", "e", 1)
    await harness.send("shop", "user_1", "e", 2)
    await client.next()
    await client.ack(await client.next())
    await wait_until(harness, lambda: pending_events(harness, "user_1", "phone"), ["e"])
    await client.no_event_within(0.3)


async def test_offline_queue_expires_device_ttl_after_disconnect(harness: Harness) -> None:
    await harness.start(device_ttl=1)
    harness.stub.answers["t1"] = ["user_1"]
    await (await harness.connect("shop", "t1", "phone")).disconnect()
    await harness.send("shop", "user_1", "kept-for-a-second")
    await wait_for_empty_queue(harness, "user_1", "phone", timeout=5)
    await harness.send("shop", "user_1", "after-expiry")
    assert await pending_events(harness, "user_1", "phone") == []
    again = await harness.connect("shop", "t1", "phone")
    await harness.send("shop", "user_1", "live")
    assert (await again.next()).event == "live"


async def test_a_device_whose_queue_filled_gets_its_batch_then_resync(harness: Harness) -> None:
    await harness.start(max_queue=2)
    harness.stub.answers["t1"] = ["user_1"]
    await (await harness.connect("shop", "t1", "phone")).disconnect()
    for i in range(4):
        assert (await harness.send("shop", "user_1", "n", i))[0] == 200  # stored or not: 200
    client = await harness.connect("shop", "t1", "phone")
    batch = await client.next()
    assert batch.args == [[["n", 0], ["n", 1]]]
    assert (await client.next()).event == "_resync"
    await wait_for_empty_queue(harness, "user_1", "phone")  # the batch's ack made room
    await harness.send("shop", "user_1", "n", 4)
    assert (await client.next()).args == [4]


async def test_restart_keeps_devices_and_queues(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "staff"]
    await (await harness.connect("shop", "t1", "phone")).disconnect()
    await harness.send("shop", "staff", "before-restart")
    await harness.restart()
    await harness.send("shop", "staff", "after-restart")
    client = await harness.connect("shop", "t1", "phone")
    batch = await client.next()
    assert batch.args == [[["before-restart"], ["after-restart"]]]


async def test_membership_is_the_latest_auth_answer(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "staff"]
    await (await harness.connect("shop", "t1", "phone")).disconnect()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone")
    await harness.send("shop", "staff", "staff-only")
    await harness.send("shop", "user_1", "direct")
    assert (await client.next()).event == "direct"


async def test_connections_without_device_id_never_share_a_queue(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    first = await harness.connect("shop", "t1", None, auto_ack=False)
    second = await harness.connect("shop", "t1", None, auto_ack=False)
    await harness.send("shop", "user_1", "e")
    one, two = await first.next(), await second.next()
    await first.ack(one)
    await second.disconnect()  # its unacked copy is dropped with it: it cannot come back
    third = await harness.connect("shop", "t1", None)
    await harness.send("shop", "user_1", "next")
    assert (await third.next()).event == "next"
    assert two.event == "e"


async def test_public_channel_reaches_anonymous_and_signed_in_holders(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers.update({"anon": [PUBLIC], "t1": ["user_1", PUBLIC]})
    anonymous = await harness.connect("shop", "anon", "kiosk")
    member = await harness.connect("shop", "t1", "phone")
    await harness.send("shop", PUBLIC, "announcement")
    assert (await anonymous.next()).event == "announcement"
    assert (await member.next()).event == "announcement"
    await anonymous.disconnect()
    await harness.send("shop", PUBLIC, "while-away")
    again = await harness.connect("shop", "anon", "kiosk")
    assert (await again.next()).args == [[["while-away"]]]


async def test_user_updates_on_first_connect_and_last_disconnect(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers.update({"t7": ["user_7"], "anon": [PUBLIC]})
    phone = await harness.connect("shop", "t7", "phone")
    user_id, body, authorization = await asyncio.wait_for(harness.stub.updates.get(), 5)
    assert (user_id, body["id"], list(body["user"])) == ("7", "7", ["last_connected"])
    assert body["user"]["last_connected"].endswith("Z") and authorization == "Bearer t7"
    laptop = await harness.connect("shop", "t7", "laptop")
    await laptop.disconnect()
    anonymous = await harness.connect("shop", "anon", "kiosk")
    await anonymous.disconnect()
    await phone.disconnect()
    user_id, body, _ = await asyncio.wait_for(harness.stub.updates.get(), 5)
    assert (user_id, list(body["user"])) == ("7", ["last_disconnected"])
    assert harness.stub.updates.empty()


async def test_concurrent_sends_arrive_in_store_order_without_loss_or_duplicates(
    harness: Harness,
) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1", "staff"]
    await (await harness.connect("shop", "t1", "offline")).disconnect()
    live = await harness.connect("shop", "t1", "online")
    results = await asyncio.gather(*(harness.send("shop", ["staff"], "n", i) for i in range(60)))
    assert all(status == 200 for status, _ in results)
    received = [(await live.next()).args[0] for _ in range(60)]
    batch = (await (await harness.connect("shop", "t1", "offline")).next()).args[0]
    assert received == [args[1] for args in batch]
    assert sorted(received) == list(range(60))


async def test_churn_loses_nothing(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    await (await harness.connect("shop", "t1", "phone")).disconnect()  # the device is known
    seen: list[int] = []
    sender = asyncio.create_task(send_numbers(harness, 80))
    while not sender.done():
        client = await harness.connect("shop", "t1", "phone")
        await collect(client, seen, 0.05)
        await client.disconnect()
    assert all(status == 200 for status in await sender)
    final = await harness.connect("shop", "t1", "phone")
    await collect(final, seen, 0.5)
    assert sorted(set(seen)) == list(range(80))
    await wait_for_empty_queue(harness, "user_1", "phone")


async def send_numbers(harness: Harness, count: int) -> list[int]:
    statuses = []
    for i in range(count):
        statuses.append((await harness.send("shop", "user_1", "n", i))[0])
        await asyncio.sleep(0)
    return statuses


async def collect(client: Client, seen: list[int], quiet: float) -> None:
    """Everything the client gets until it has been quiet for ``quiet`` seconds."""
    while True:
        try:
            received = await asyncio.wait_for(client.events.get(), quiet)
        except TimeoutError:
            return
        seen.extend(received.numbers())


async def pending_events(harness: Harness, user: str, device: str) -> list[str]:
    return [m.event for m in await harness.store.pending("shop", user, device)]


async def wait_until(harness: Harness, probe, expected, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Acks are fire-and-forget for the client: wait until the store shows their effect."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await probe()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"store still has {value}"
        await asyncio.sleep(0.02)


async def wait_for_empty_queue(
    harness: Harness, user: str, device: str, timeout: float = 5.0
) -> None:
    await wait_until(harness, lambda: pending_events(harness, user, device), [], timeout)


async def test_after_missed_signals_every_actor_re_reads_its_queues(harness: Harness) -> None:
    from socketio_webservice.storage import Message

    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone")
    # Stored, but its signal never came (as while the node's channel was down).
    await harness.store.enqueue("shop", ["user_1"], [], Message("n", [7]))
    await client.no_event_within(0.2)
    assert harness.service is not None
    harness.service.dispatcher.catch_up_everyone()  # what the channel's recovery does
    assert (await client.next()).numbers() == [7]


async def test_first_live_message_after_a_reconnect_with_nothing_pending_comes_at_once(
    harness: Harness,
) -> None:
    """A page reload must not hold the next message back (invariant 9): the device's queue is
    empty but its seq is past 0, and the attach must know where it stands."""
    from socketio_webservice.actors.user_actor import GAP_WAIT

    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone")
    for n in range(3):
        await harness.send("shop", ["user_1"], "n", n)
        assert (await client.next()).numbers() == [n]
    await wait_for_empty_queue(harness, "user_1", "phone")
    await client.disconnect()

    again = await harness.connect("shop", "t1", "phone")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await harness.send("shop", ["user_1"], "n", 3)
    assert (await again.next()).numbers() == [3]
    assert loop.time() - started < GAP_WAIT / 2, "the message waited for a gap that is not there"


async def test_messages_of_every_frame_size_arrive_whole(harness: Harness) -> None:
    """Frames written straight to an idle websocket: 7-bit, 16-bit and 64-bit lengths."""
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1", "phone")
    for size in (10, 200, 70_000, 300_000):
        text = "é" * (size // 2) + "x" * (size % 2)
        assert (await harness.send("shop", ["user_1"], "big", text))[0] == 200
        received = await client.next()
        assert (received.event, received.args) == ("big", [text])


async def test_a_send_repeated_with_its_idempotency_key_is_stored_once(harness: Harness) -> None:
    await harness.start()
    harness.stub.answers["t1"] = ["user_1"]
    client = await harness.connect("shop", "t1")
    answers = []
    for _ in range(3):
        answers.append(
            await harness.post(
                "site=shop&apiKey=key",
                json={"rooms": ["user_1"], "event": "n", "args": [1]},
                headers={"Idempotency-Key": "order-17"},
            )
        )
    assert answers == [(200, "OK")] * 3
    bulk = [{"rooms": "user_1", "event": "n", "args": [n]} for n in (2, 3)]
    for _ in range(2):
        status, text = await harness.post(
            "site=shop&apiKey=key", json=bulk, headers={"Idempotency-Key": "batch-4"}
        )
        assert (status, text) == (200, '{"results":[{"stored":1},{"stored":1}]}')
    assert [(await client.next()).numbers() for _ in range(3)] == [[1], [2], [3]]
    await client.no_event_within(0.3)  # a negative check: no second copy
    status, text = await harness.post(
        "site=shop&apiKey=key",
        json={"rooms": ["user_1"], "event": "n"},
        headers={"Idempotency-Key": "two words"},
    )
    assert status == 400 and "Idempotency-Key" in text
