"""The adapter's ``PingClock`` alone: one task pings every socket once per interval, at most a
second late, and a socket closed meanwhile is not pinged (nor kept alive for it)."""

from __future__ import annotations

import asyncio

from socketio_webservice.transport.socketio_adapter.socket import PingClock


class FakeSocket:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.pinged = asyncio.Event()
        self.pinged_at = 0.0

    def ping(self) -> None:
        self.pinged_at = asyncio.get_running_loop().time()
        self.pinged.set()


async def test_each_socket_is_pinged_once_an_interval_from_one_task() -> None:
    sockets: dict[str, FakeSocket] = {}
    clock = PingClock(1.0, sockets)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    for sid in ("a", "b", "closed"):
        sockets[sid] = FakeSocket(sid)
        clock.schedule(sockets[sid])  # type: ignore[arg-type]
    task = clock._task
    closed = sockets.pop("closed")  # closed before its ping is due
    try:
        await asyncio.wait_for(
            asyncio.gather(sockets["a"].pinged.wait(), sockets["b"].pinged.wait()), 5
        )
        for socket in sockets.values():
            assert 1.0 <= socket.pinged_at - started <= 2.1
        assert not closed.pinged.is_set()
        sockets["c"] = FakeSocket("c")
        clock.schedule(sockets["c"])  # type: ignore[arg-type]
        assert clock._task is task  # one task for every socket
        await asyncio.wait_for(sockets["c"].pinged.wait(), 5)
    finally:
        await clock.stop()
    assert task is not None and task.done()
