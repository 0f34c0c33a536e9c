"""The garbage collector's policy: a full collection once enough connections have closed,
not before (webservice/gc_policy.py)."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from socketio_webservice.webservice import gc_policy
from tests.harness import Harness, SiteStub


@dataclass
class Policy:
    """The policy running on counters the test sets; ``full`` gets the closed count at each
    full collection."""

    closed: int = 0
    open_now: int = 0
    full: asyncio.Queue[int] = field(default_factory=asyncio.Queue)


@pytest.fixture
async def policy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Policy]:
    monkeypatch.setattr(gc_policy, "CHECK_EVERY", 0.01)
    monkeypatch.setattr(gc_policy, "AFTER_CLOSES", 100)
    state = Policy()

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            state.full.put_nowait(state.closed)

    gc.collect()
    gc.callbacks.append(watch)
    gc.disable()  # only the policy's own collections count here
    task = asyncio.create_task(
        gc_policy.collect_after_churn(lambda: state.closed, lambda: state.open_now)
    )
    await asyncio.sleep(0)  # the policy starts counting from 0 closed
    try:
        yield state
    finally:
        task.cancel()
        gc.callbacks.remove(watch)
        gc.enable()


async def test_a_full_collection_runs_once_enough_connections_closed(policy: Policy) -> None:
    policy.open_now = 1_000
    policy.closed = 200  # under a quarter of the 1,000 open connections: not yet
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(policy.full.get(), 0.2)
    policy.closed = 250
    assert await asyncio.wait_for(policy.full.get(), 5) == 250
    assert policy.full.empty()


async def test_a_collection_that_finds_little_lets_the_next_wait_longer(policy: Policy) -> None:
    policy.closed = 100
    assert await asyncio.wait_for(policy.full.get(), 5) == 100  # found nothing: next after 200
    policy.closed = 250
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(policy.full.get(), 0.2)
    policy.closed = 300
    assert await asyncio.wait_for(policy.full.get(), 5) == 300  # again nothing: next after 400
    cycles = [[] for _ in range(1_000)]
    for cycle in cycles:
        cycle.append(cycle)
    del cycles, cycle
    policy.closed = 700
    assert await asyncio.wait_for(policy.full.get(), 5) == 700  # 1,000 found: back to 100
    policy.closed = 800
    assert await asyncio.wait_for(policy.full.get(), 5) == 800


SERVER_SIDE = ("socketio_webservice.", "engineio.async_socket", "aiohttp.web_")


async def test_a_closed_websocket_leaves_nothing_of_the_server_in_reference_cycles(
    harness: Harness, stub: SiteStub
) -> None:
    """Reference counting frees a closed connection's server side at once: the policy's full
    collections, a walk of the whole heap, find nothing of it to free."""
    await harness.start()
    assert harness.service is not None
    sio = harness.service.sio
    for i in range(20):
        stub.answers[f"t{i}"] = [f"user_{i}"]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        clients = [await harness.connect("shop", f"t{i}") for i in range(20)]
        for client in clients:
            await client.disconnect()
        harness.clients.clear()
        async with asyncio.timeout(5):
            # Nothing says when the server is done with a connection but its own set of them.
            while sio.eio.websockets or sio.session_count():  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        gc.collect()
        left = Counter(
            f"{type(o).__module__}.{type(o).__qualname__}"
            for o in gc.garbage
            if type(o).__module__.startswith(SERVER_SIDE)
        )
        assert not left
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
