"""The node bus between two nodes in one process, on a real Redis: what a plain site's sends
need from it when nodes come and go."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from socketio_webservice.transport.node_bus import RedisBus
from socketio_webservice.transport.stats import TransportStats


def nothing(*_: Any) -> None:
    pass


async def test_a_starting_node_is_known_to_a_slow_one_before_its_start_returns(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A is alone, so it publishes no plain send; it reads its channel slowly (half a
    second per signal). Node B's start returns only once A has heard of B: a plain send A
    makes right then is published, and reaches B."""
    heard: asyncio.Queue[tuple[str, list[str], str, list[Any]]] = asyncio.Queue()

    async def on_broadcast(
        site: str, rooms: Sequence[str], event: str, args: Sequence[Any]
    ) -> None:
        heard.put_nowait((site, list(rooms), event, list(args)))

    a = RedisBus(redis_url, "node-a", "sws:", TransportStats())
    b = RedisBus(redis_url, "node-b", "sws:", TransportStats())
    b.on_broadcast = on_broadcast
    await a.start(nothing, nothing)
    try:
        quick = a._heard_company

        async def slowly(body: dict[str, Any]) -> None:
            await asyncio.sleep(0.5)
            await quick(body)

        monkeypatch.setattr(a, "_heard_company", slowly)
        await b.start(nothing, nothing)
        await a.broadcast("news", ["weather"], "headline", ["rain"])
        assert await asyncio.wait_for(heard.get(), 5) == ("news", ["weather"], "headline", ["rain"])
        assert a.stats.signals_sent == 1
    finally:
        await b.stop()
        await a.stop()
