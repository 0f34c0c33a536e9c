"""Sends many small, independent store operations in one round trip.

Acks arrive one per delivered message, from every user at once. Each is a tiny write; sent
one by one they cost a round trip (and on SQLite an fsync) each. The coalescer gathers what is
submitted within ``WINDOW`` seconds and flushes it together; each submitter gets a future for
its own result, without a task of its own. The window is short enough that no one waits on it
noticeably (an actor's next queue read waits for its own acks), long enough that a steady
stream of direct messages shares its round trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH = 1000
WINDOW = 0.002


class Failed:
    """A flush's result for one item that failed while others did not."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class WriteCoalescer(Generic[Item, Result]):
    def __init__(
        self, flush: Callable[[Sequence[Item]], Awaitable[Sequence[Result | Failed]]]
    ) -> None:
        self._flush = flush
        self._items: list[Item] = []
        self._futures: list[asyncio.Future[Result]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, item: Item) -> asyncio.Future[Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_later(WINDOW, self._start)
        return future

    def _start(self) -> None:
        self._scheduled = False
        while self._items:
            items, futures = self._items[:MAX_BATCH], self._futures[:MAX_BATCH]
            del self._items[:MAX_BATCH], self._futures[:MAX_BATCH]
            task = asyncio.get_running_loop().create_task(self._run(items, futures))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, items: list[Item], futures: list[asyncio.Future[Result]]) -> None:
        try:
            results = await self._flush(items)
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(futures, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Failed):
                future.set_exception(result.error)
            else:
                future.set_result(result)

    async def drain(self) -> None:
        """Wait for every write submitted so far (at close)."""
        while self._scheduled or self._tasks:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:
                await asyncio.sleep(WINDOW)  # a flush is due when the window closes
