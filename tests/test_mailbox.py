"""The actor mailbox: order, wake-up, and join."""

from __future__ import annotations

import asyncio

from socketio_webservice.actors.mailbox import Mailbox


async def test_items_come_out_in_order_and_wake_a_waiting_getter() -> None:
    mailbox: Mailbox[int] = Mailbox()
    getter = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    mailbox.put_nowait(1)
    mailbox.put_nowait(2)
    assert await getter == 1
    assert await mailbox.get() == 2
    assert mailbox.empty()


async def test_join_waits_until_every_item_is_handled() -> None:
    mailbox: Mailbox[str] = Mailbox()
    await mailbox.join()  # nothing put: returns at once
    mailbox.put_nowait("a")
    mailbox.put_nowait("b")
    joined = asyncio.create_task(mailbox.join())
    for _ in range(2):
        await mailbox.get()
        await asyncio.sleep(0)
        assert not joined.done()
        mailbox.task_done()
    await asyncio.wait_for(joined, 1)


async def test_get_nowait_on_empty_raises_queue_empty_as_engineio_expects() -> None:
    mailbox: Mailbox[int] = Mailbox()
    try:
        mailbox.get_nowait()
    except asyncio.QueueEmpty:
        pass
    else:
        raise AssertionError("no QueueEmpty")
    await mailbox.put(3)
    assert mailbox.get_nowait() == 3


async def test_a_get_cancelled_by_a_timeout_loses_nothing() -> None:
    mailbox: Mailbox[int] = Mailbox()
    try:
        await asyncio.wait_for(mailbox.get(), 0.01)
    except TimeoutError:
        pass
    mailbox.put_nowait(7)
    assert await asyncio.wait_for(mailbox.get(), 1) == 7
