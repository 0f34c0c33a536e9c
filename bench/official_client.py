"""The official socket.io-client under Node, for the bench: ``--client node4`` (4.x) or
``node2`` (2.x, the original's), every scenario as with the simulated clients.

One Node process (``bench/node_client/clients.cjs``) holds all N sockets; each
:class:`OfficialClient` here stands for one of them with the simulated client's interface
(``connect``, ``close``, ``receipts``, ``on_receipt``), so the scenarios run unchanged. A
receipt is timed when its line reaches this process: a pipe's latency more than the socket's.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .sim_client import ConnectRefused, Receipt

SCRIPT = Path(__file__).parent / "node_client" / "clients.cjs"


@dataclass
class OfficialClient:
    pool: OfficialClients
    index: int
    token: str
    receipts: list[Receipt] = field(default_factory=list)
    on_receipt: Any = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _greeted: asyncio.Future[None] | None = None

    async def connect(self, http: aiohttp.ClientSession) -> None:
        self.closed.clear()
        self._greeted = asyncio.get_running_loop().create_future()
        await self.pool.command({"open": [self.index]})
        await self._greeted

    async def close(self) -> None:
        if self.closed.is_set():
            return
        await self.pool.command({"close": [self.index]})
        await self.closed.wait()

    async def ping(self) -> None:
        """The official client pings by itself."""


class OfficialClients:
    def __init__(self, process: asyncio.subprocess.Process, clients: list[OfficialClient]):
        self.process = process
        self.clients = clients
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        url: str,
        site: str,
        token_prefix: str,
        count: int,
        version: str,
        polling_first: bool = False,
    ) -> OfficialClients:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: the official client runs under Node")
        process = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT),
            url,
            site,
            token_prefix,
            str(count),
            version,
            "polling,websocket" if polling_first else "websocket",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )
        pool = cls(process, [])
        pool.clients = [OfficialClient(pool, i, f"{token_prefix}{i}") for i in range(count)]
        assert process.stdout is not None
        ready = orjson.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert ready == {"ready": True}, ready
        pool._reader = asyncio.create_task(pool._read())
        return pool

    async def command(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            event = orjson.loads(line)
            if "r" in event:
                client = self.clients[event["r"]]
                client.receipts.append(Receipt(event["m"], time.perf_counter(), bool(event["b"])))
                if client.on_receipt is not None:
                    client.on_receipt(client)
            elif "c" in event:
                greeted = self.clients[event["c"]]._greeted
                if greeted is not None and not greeted.done():
                    greeted.set_result(None)
            elif "e" in event:
                greeted = self.clients[event["e"]]._greeted
                if greeted is not None and not greeted.done():
                    greeted.set_exception(ConnectRefused(event["why"]))
            elif "x" in event:
                self.clients[event["x"]].closed.set()

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
