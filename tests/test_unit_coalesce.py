"""``storage.coalesce.WriteCoalescer`` alone: what is submitted together is flushed together,
in order, and each submitter gets its own result or its own failure."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from socketio_webservice.storage.coalesce import MAX_BATCH, Failed, WriteCoalescer


class Flushes:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    async def double(self, items: Sequence[int]) -> list[int | Failed]:
        self.calls.append(list(items))
        return [Failed(ValueError(f"odd {i}")) if i == 7 else i * 2 for i in items]


async def test_submitted_together_flushed_together_in_order() -> None:
    flushes = Flushes()
    coalescer: WriteCoalescer[int, int] = WriteCoalescer(flushes.double)
    futures = [coalescer.submit(i) for i in range(5)]
    assert [await f for f in futures] == [0, 2, 4, 6, 8]
    assert flushes.calls == [[0, 1, 2, 3, 4]]  # one round trip for the five
    later = coalescer.submit(10)
    assert await later == 20
    assert flushes.calls[-1] == [10]


async def test_one_items_failure_is_its_own() -> None:
    coalescer: WriteCoalescer[int, int] = WriteCoalescer(Flushes().double)
    ok, bad = coalescer.submit(6), coalescer.submit(7)
    assert await ok == 12
    with pytest.raises(ValueError, match="odd 7"):
        await bad


async def test_a_failed_flush_fails_every_item_of_it() -> None:
    async def down(items: Sequence[int]) -> list[int | Failed]:
        raise ConnectionError("store down")

    coalescer: WriteCoalescer[int, int] = WriteCoalescer(down)
    futures = [coalescer.submit(i) for i in range(3)]
    for future in futures:
        with pytest.raises(ConnectionError, match="store down"):
            await future


async def test_a_burst_is_flushed_in_batches_and_drain_waits_for_them() -> None:
    flushes = Flushes()
    coalescer: WriteCoalescer[int, int] = WriteCoalescer(flushes.double)
    futures = [coalescer.submit(i) for i in range(MAX_BATCH * 2 + 1)]
    await coalescer.drain()
    assert all(f.done() for f in futures)
    assert [len(call) for call in flushes.calls] == [MAX_BATCH, MAX_BATCH, 1]
    assert [i for call in flushes.calls for i in call] == list(range(MAX_BATCH * 2 + 1))
