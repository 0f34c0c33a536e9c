"""The scenarios: connect, fanout, direct, reconnect, churn. Every client acks every message;
every run counts what was lost, doubled or out of order."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp

from bench.environment import Target, cpu_seconds, rss_bytes
from bench.official_client import OfficialClients
from bench.sim_client import SimClient

SITE = "shop"
CONNECT_CONCURRENCY = 200
IDLE_SECONDS = 60.0
SETTLE_LIMIT = 3.0


Checked = tuple[int, int, int, list[float]]  # lost, doubled, out of order, live latencies


@dataclass
class Result:
    scenario: str
    store: str
    clients: int
    seconds: float
    operations: int  # deliveries, connects or reconnects: what the CPU figure is per 1000 of
    unit: str
    service_cpu: float | None
    redis_cpu: float | None
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    rss_per_connection: float | None = None
    lost: int = 0
    doubled: int = 0
    out_of_order: int = 0
    service_instructions: int | None = None  # under callgrind (``--instructions``)

    def figures(self) -> dict[str, Any]:
        per_1000 = 1000 / self.operations if self.operations else 0.0
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

        return {
            "scenario": self.scenario,
            "store": self.store,
            "clients": self.clients,
            "unit": self.unit,
            "operations": self.operations,
            "seconds": round(self.seconds, 3),
            "throughput_per_s": round(self.operations / self.seconds, 1) if self.seconds else None,
            "latency_p50_ms": pct(0.50),
            "latency_p95_ms": pct(0.95),
            "latency_p99_ms": pct(0.99),
            "latency_mean_ms": round(statistics.fmean(lat), 1) if lat else None,
            "service_cpu_per_1000": round(self.service_cpu * per_1000, 4)
            if self.service_cpu is not None
            else None,
            "redis_cpu_per_1000": round(self.redis_cpu * per_1000, 4)
            if self.redis_cpu is not None
            else None,
            "rss_per_connection_kb": round(self.rss_per_connection / 1024, 1)
            if self.rss_per_connection is not None
            else None,
            "service_instructions_per_unit": round(self.service_instructions / self.operations)
            if self.service_instructions is not None and self.operations
            else None,
            "lost": self.lost,
            "doubled": self.doubled,
            "out_of_order": self.out_of_order,
        }


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.started = time.perf_counter()
        self.last_draw = 0.0

    def advance(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        if time.perf_counter() - self.last_draw > 0.1:
            self._draw()

    def _draw(self) -> None:
        self.last_draw = now = time.perf_counter()
        width = 30
        filled = int(width * self.done / max(1, self.total))
        sys.stderr.write(
            f"\r  {self.label:<24} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done}/{self.total} {now - self.started:5.1f}s"
        )
        sys.stderr.flush()

    def finish(self) -> None:
        self._draw()
        sys.stderr.write("\n")


class Meter:
    """CPU of the service and of Redis over a window, read from /proc."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.service_start = self.redis_start = 0.0

    def start(self) -> None:
        if self.target.callgrind:
            self.target.callgrind.start()
        if self.target.service_pid:
            self.service_start = cpu_seconds(self.target.service_pid)
        if self.target.redis_pids:
            self.redis_start = sum(map(cpu_seconds, self.target.redis_pids))

    async def settle(self) -> None:
        """Acks trail the receipts: wait until the service is idle again, so they count."""
        if not self.target.service_pid:
            return
        deadline = time.perf_counter() + SETTLE_LIMIT
        last = cpu_seconds(self.target.service_pid)
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
            now = cpu_seconds(self.target.service_pid)
            if now - last < 0.003:
                return
            last = now

    def read(self) -> tuple[float | None, float | None]:
        """CPU seconds of the service and of Redis since :meth:`start` (and, under callgrind,
        the instructions, kept in the target's ``callgrind.last_window``)."""
        if self.target.callgrind:
            self.target.callgrind.end_window()
        service = redis = None
        if self.target.service_pid:
            service = cpu_seconds(self.target.service_pid) - self.service_start
        if self.target.redis_pids:
            redis = sum(map(cpu_seconds, self.target.redis_pids)) - self.redis_start
        return service, redis


class Ledger:
    """What was sent and what each client got."""

    def __init__(self) -> None:
        self.sent_at: dict[int, float] = {}
        self.next_id = 0

    def new_id(self) -> int:
        self.next_id += 1
        self.sent_at[self.next_id] = time.perf_counter()
        return self.next_id

    def check(
        self, clients: Sequence[SimClient], expected: dict[int, set[int]], ordered_by_id: bool
    ) -> Checked:
        """Lost, doubled, out of order, and live latencies. Without ``ordered_by_id`` (several
        sends in flight to the same devices), order is checked as: every device saw the common
        messages in one and the same order."""
        lost = doubled = disorder = 0
        latencies: list[float] = []
        reference: dict[int, int] = {}
        for index, client in enumerate(clients):
            ids = [r.message_id for r in client.receipts]
            want = expected.get(index, set())
            lost += len(want - set(ids))
            doubled += len(ids) - len(set(ids))
            latencies.extend(
                (r.received_at - self.sent_at[r.message_id]) * 1000
                for r in client.receipts
                if not r.in_batch
            )
            if ordered_by_id:
                disorder += sum(1 for a, b in itertools.pairwise(ids) if b < a)
            else:
                if not reference:
                    reference = {m: i for i, m in enumerate(dict.fromkeys(ids))}
                ranks = [reference[m] for m in ids if m in reference]
                disorder += sum(1 for a, b in itertools.pairwise(ranks) if b < a)
        return lost, doubled, disorder, latencies


async def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            return
        await asyncio.sleep(0.01)


async def post(
    http: aiohttp.ClientSession, url: str, rooms: Any, message_id: int, site: str = SITE
) -> None:
    async with http.post(
        f"{url}/send?site={site}&apiKey=key",
        json={"rooms": rooms, "event": "m", "args": [message_id]},
    ) as response:
        if response.status != 200:
            raise RuntimeError(f"/send answered {response.status}: {await response.text()}")


async def gather_limited(work: Sequence[Callable[[], Awaitable[None]]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(job) for job in work))


class Bench:
    """One store, one target, N clients that stay for every scenario of the run."""

    def __init__(
        self,
        target: Target,
        store: str,
        clients: int,
        http: aiohttp.ClientSession,
        protocol: int = 4,
        site: str = SITE,
        official: OfficialClients | None = None,
    ):
        self.target, self.store, self.n, self.http = target, store, clients, http
        self.site = site
        self.run_id = random.randrange(16**6)
        self.protocol = protocol
        self.official = official  # the official client under Node, instead of simulated ones
        self.clients: list[Any] = (
            list(official.clients)
            if official is not None
            else [
                SimClient(target.url, site, self.token(i), "d", protocol=protocol)
                for i in range(clients)
            ]
        )
        self._pinger: asyncio.Task[None] | None = None
        if protocol == 3 and official is None:
            self._pinger = asyncio.get_running_loop().create_task(self._ping_forever())

    def token(self, index: int) -> str:
        return f"r{self.run_id:06x}u{index}"

    async def _ping_forever(self) -> None:
        """Protocol 3 clients ping the server, as socket.io-client 1.x/2.x do every 25 s."""
        while True:
            await asyncio.sleep(20)
            for client in self.clients:
                await client.ping()

    def _connect_jobs(self, clients: Sequence[SimClient], progress: Progress) -> list[Any]:
        async def connect(client: SimClient) -> None:
            await client.connect(self.http)
            progress.advance()

        return [partial(connect, client) for client in clients]

    async def connect(self) -> Result:
        progress = Progress(f"connect {self.n}", self.n)
        meter = Meter(self.target)
        rss_before = rss_bytes(self.target.service_pid) if self.target.service_pid else 0
        meter.start()
        started = time.perf_counter()
        await gather_limited(self._connect_jobs(self.clients, progress), CONNECT_CONCURRENCY)
        seconds = time.perf_counter() - started
        await meter.settle()
        progress.finish()
        service, redis = meter.read()
        rss = None
        if self.target.service_pid:
            rss = (rss_bytes(self.target.service_pid) - rss_before) / self.n
        return Result(
            "connect",
            self.store,
            self.n,
            seconds,
            self.n,
            "connects",
            service,
            redis,
            rss_per_connection=rss,
            service_instructions=self._instructions(),
        )

    async def _deliver(
        self, label: str, sends: list[tuple[Any, set[int]]], in_flight: int, ordered_by_id: bool
    ) -> Result:
        """POST each (rooms, receiving client indexes) with ``in_flight`` messages in flight:
        a message is in flight from its POST until every receiver has it, so latency is
        measured at a steady load, not behind an ever-growing backlog."""
        for client in self.clients:
            client.receipts.clear()
        ledger = Ledger()
        expected: dict[int, set[int]] = {}
        total = sum(len(receivers) for _, receivers in sends)
        progress = Progress(label, total)
        waiting: dict[int, int] = {}  # message id -> receivers still to get it
        delivered: dict[int, asyncio.Event] = {}

        def on_receipt(client: SimClient) -> None:
            progress.advance()
            message_id = client.receipts[-1].message_id
            if message_id in waiting:
                waiting[message_id] -= 1
                if waiting[message_id] == 0:
                    delivered.pop(message_id).set()

        for client in self.clients:
            client.on_receipt = on_receipt
        meter = Meter(self.target)
        meter.start()
        started = time.perf_counter()

        async def send(rooms: Any, receivers: set[int]) -> None:
            message_id = ledger.new_id()
            for index in receivers:
                expected.setdefault(index, set()).add(message_id)
            waiting[message_id] = len(receivers)
            done = delivered[message_id] = asyncio.Event()
            await post(self.http, self.target.url, rooms, message_id, self.site)
            await asyncio.wait_for(done.wait(), 60)

        await gather_limited([partial(send, r, t) for r, t in sends], in_flight)
        seconds, cpu = await self._all_received(total, started, meter, progress)
        checked = ledger.check(self.clients, expected, ordered_by_id)
        return self._result(label.split()[0], seconds, total, "deliveries", cpu, checked)

    async def fanout(self, messages: int = 20, in_flight: int = 4) -> Result:
        everyone = set(range(self.n))
        return await self._deliver(
            f"fanout {self.n}", [("staff", everyone)] * messages, in_flight, ordered_by_id=False
        )

    async def direct(self, messages: int = 2000, in_flight: int = 16) -> Result:
        # Round-robin over users: each user's sends are in flight one at a time at most when
        # in_flight <= n, so each device must see its ids in increasing order.
        sends = [(f"user_{self.clients[i % self.n].token}", {i % self.n}) for i in range(messages)]
        return await self._deliver(f"direct {self.n}", sends, min(in_flight, self.n), True)

    async def bulk(
        self, messages: int = 2000, per_request: int = 100, in_flight: int = 2
    ) -> Result:
        """The direct scenario's one-recipient messages, ``per_request`` to a POST (a JSON
        array): compare its CPU per 1000 deliveries with direct's."""
        for client in self.clients:
            client.receipts.clear()
        ledger = Ledger()
        expected: dict[int, set[int]] = {}
        progress = Progress(f"bulk {self.n}", messages)
        for client in self.clients:
            client.on_receipt = lambda _client: progress.advance()
        receivers = [i % self.n for i in range(messages)]
        meter = Meter(self.target)
        meter.start()
        started = time.perf_counter()

        async def request(first: int) -> None:
            body = []
            for index in receivers[first : first + per_request]:
                message_id = ledger.new_id()
                expected.setdefault(index, set()).add(message_id)
                token = self.clients[index].token
                body.append({"rooms": f"user_{token}", "event": "m", "args": [message_id]})
            async with self.http.post(
                f"{self.target.url}/send?site={self.site}&apiKey=key", json=body
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"/send answered {response.status}")

        # Requests in flight at once reach different users when N >= per_request * in_flight,
        # so each device must see its ids in increasing order.
        await gather_limited(
            [partial(request, first) for first in range(0, messages, per_request)], in_flight
        )
        seconds, cpu = await self._all_received(messages, started, meter, progress)
        checked = ledger.check(self.clients, expected, self.n >= per_request * in_flight)
        return self._result("bulk", seconds, messages, "deliveries", cpu, checked)

    async def reconnect(self, missed: int = 5) -> Result:
        away = self.clients[: self.n // 2]
        for client in self.clients:
            client.receipts.clear()
        await asyncio.gather(*(client.close() for client in away))
        ledger = Ledger()
        for _ in range(missed):
            await post(self.http, self.target.url, "staff", ledger.new_id(), self.site)
        await wait_until(
            lambda: all(len(c.receipts) >= missed for c in self.clients[self.n // 2 :]), 60
        )
        progress = Progress(f"reconnect {len(away)}", len(away))
        meter = Meter(self.target)
        await meter.settle()  # the disconnects are done with: measure the comebacks only
        meter.start()
        started = time.perf_counter()
        await gather_limited(self._connect_jobs(away, progress), CONNECT_CONCURRENCY)
        await wait_until(lambda: all(len(c.receipts) >= missed for c in away), 60)
        seconds = time.perf_counter() - started
        await meter.settle()
        progress.finish()
        service, redis = meter.read()
        everything = set(range(1, missed + 1))
        expected = {i: everything for i in range(self.n)}
        lost, doubled, disorder, _ = ledger.check(self.clients, expected, ordered_by_id=True)
        batched = sum(1 for c in away for r in c.receipts if r.in_batch)
        lost += len(away) * missed - batched  # each missed message must be in the batch
        checked: Checked = (lost, doubled, disorder, [])
        return self._result(
            "reconnect", seconds, len(away), "reconnects", (service, redis), checked
        )

    async def idle(self, seconds: float = IDLE_SECONDS) -> Result:
        """Every client connected and quiet: what the service spends to keep them (pings
        and pongs, the checks for clients gone silent), per connection-minute. The window
        covers a ping interval and a ping timeout (25 s and 20 s by default)."""
        connected = [client for client in self.clients if not client.closed.is_set()]
        meter = Meter(self.target)
        await meter.settle()
        meter.start()
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        cpu = meter.read()
        dropped = sum(1 for client in connected if client.closed.is_set())  # counted as lost
        minutes = max(1, round(len(connected) * elapsed / 60))
        return self._result(
            "idle", elapsed, minutes, "connection-minutes", cpu, (dropped, 0, 0, [])
        )

    async def churn(self, messages: int = 30, cycle_fraction: float = 0.1) -> Result:
        """Messages to everyone while a tenth of the clients at a time drop and come back."""
        for client in self.clients:
            client.receipts.clear()
            client.on_receipt = None
        ledger = Ledger()
        rng = random.Random(self.run_id)
        stop = asyncio.Event()
        cycles = [0]

        async def cycle() -> None:
            while not stop.is_set():
                group = rng.sample(self.clients, max(1, int(self.n * cycle_fraction)))
                await asyncio.gather(*(c.close() for c in group))
                await asyncio.sleep(0.05)
                await gather_limited(
                    [partial(c.connect, self.http) for c in group], CONNECT_CONCURRENCY
                )
                cycles[0] += len(group)

        progress = Progress(f"churn {self.n}", messages)
        meter = Meter(self.target)
        meter.start()
        started = time.perf_counter()
        churner = asyncio.create_task(cycle())
        for _ in range(messages):
            await post(self.http, self.target.url, "staff", ledger.new_id(), self.site)
            progress.advance()
            await asyncio.sleep(0.02)
        stop.set()
        await churner
        await wait_until(
            lambda: all(len({r.message_id for r in c.receipts}) >= messages for c in self.clients),
            60,
        )
        seconds = time.perf_counter() - started
        await meter.settle()
        progress.finish()
        service, redis = meter.read()
        everything = set(range(1, messages + 1))
        expected = {i: everything for i in range(self.n)}
        checked = ledger.check(self.clients, expected, True)
        deliveries = sum(len(c.receipts) for c in self.clients)
        return self._result("churn", seconds, deliveries, "deliveries", (service, redis), checked)

    async def _all_received(
        self, total: int, started: float, meter: Meter, progress: Progress
    ) -> tuple[float, tuple[float | None, float | None]]:
        """Wait until the clients hold ``total`` receipts; the seconds since ``started`` and
        the CPU the meter read, once the service has settled."""
        await wait_until(lambda: sum(len(c.receipts) for c in self.clients) >= total, 60)
        seconds = time.perf_counter() - started
        for client in self.clients:
            client.on_receipt = None
        await meter.settle()
        progress.finish()
        return seconds, meter.read()

    def _result(
        self,
        scenario: str,
        seconds: float,
        operations: int,
        unit: str,
        cpu: tuple[float | None, float | None],
        checked: Checked,
    ) -> Result:
        lost, doubled, disorder, latencies = checked
        return Result(
            scenario,
            self.store,
            self.n,
            seconds,
            operations,
            unit,
            *cpu,
            latencies,
            lost=lost,
            doubled=doubled,
            out_of_order=disorder,
            service_instructions=self._instructions(),
        )

    def _instructions(self) -> int | None:
        """The service's instructions in the window just metered, if counted."""
        callgrind = self.target.callgrind
        return callgrind.last_window if callgrind else None

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        await asyncio.gather(*(client.close() for client in self.clients), return_exceptions=True)
        if self.official is not None:
            await self.official.stop()
