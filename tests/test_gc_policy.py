"""The garbage collector's policy: a full collection once enough connections have closed,
not before (webservice/gc_policy.py)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from socketio_webservice.webservice import gc_policy


async def test_a_full_collection_runs_once_enough_connections_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gc_policy, "CHECK_EVERY", 0.01)
    monkeypatch.setattr(gc_policy, "AFTER_CLOSES", 100)
    full: asyncio.Queue[int] = asyncio.Queue()
    closed, open_now = [0], [1_000]

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.put_nowait(closed[0])

    gc.callbacks.append(watch)
    gc.disable()  # only the policy's own collections count here
    task = asyncio.create_task(
        gc_policy.collect_after_churn(lambda: closed[0], lambda: open_now[0])
    )
    try:
        await asyncio.sleep(0)  # the policy starts counting from 0 closed
        closed[0] = 200  # under a quarter of the 1,000 open connections: not yet
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(full.get(), 0.2)
        closed[0] = 250
        assert await asyncio.wait_for(full.get(), 5) == 250
        assert full.empty()
    finally:
        task.cancel()
        gc.callbacks.remove(watch)
        gc.enable()
