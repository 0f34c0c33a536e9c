"""A single-consumer queue: a deque and at most one waiting future.

``asyncio.Queue`` would do, but it costs about 3 KB per instance (three deques, an Event,
counters), and there is one per connected user (the actor's mailbox) and one per socket
(Engine.IO's send queue, see ``transport.socketio_adapter``); this costs a few hundred bytes.
It is unbounded and has one consumer, which is all either needs. An empty mailbox holds no
deque (an empty deque still holds a 64-slot block, about 0.7 KB): nearly every one is empty.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    __slots__ = ("_drained", "_items", "_unfinished", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._unfinished = 0
        self._drained: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        self._unfinished += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take()

    def _take(self) -> T:
        items = self._items
        assert items
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get_within(self, timeout: float) -> T:
        """``get``, or :class:`TimeoutError` after ``timeout`` seconds: one timer, where
        ``asyncio.wait_for`` would also wrap the wait in a task of its own."""
        if self._items:
            return self._take()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if not self._items:  # woken by a put that another get took
            return await self.get_within(timeout)
        return self._take()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._take()

    def task_done(self) -> None:
        self._unfinished -= 1
        if self._unfinished == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def join(self) -> None:
        """Until everything put so far has been handled (``task_done``)."""
        if self._unfinished:
            if self._drained is None or self._drained.done():
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
