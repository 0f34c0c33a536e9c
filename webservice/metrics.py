"""``GET /metrics`` for Prometheus, and the figures the ``/status`` page shows.

Every layer counts in plain numbers on its own objects (``storage.stats``, ``actors.stats``,
``transport.stats``); this module reads them when Prometheus scrapes, so a delivery pays an
addition, not a metrics library call. Metric names start with ``socketio_webservice_``; what
each means is in docs/operations.md ("Metrics").
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ..histogram import Histogram
from ..storage import Store, StoreUnavailable
from ..transport.site_namespace import SiteNamespace
from ..transport.stats import TransportStats
from .version import version

PREFIX = "socketio_webservice_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OVERVIEW_TTL = 5.0  # seconds: queue depths and alive nodes read from the store at most this often
LAG_INTERVAL = 0.5  # seconds between two event-loop lag samples


class Sessions(Protocol):
    """What the Socket.IO adapter tells of this node's sessions."""

    disconnects: Mapping[str, int]

    def connection_count(self, namespace: str) -> int: ...

    def sessions_by_kind(self) -> dict[tuple[str, str], int]: ...


BUILD = {
    "version": version(),
    "python": platform.python_version(),
    "python_socketio": importlib.metadata.version("python-socketio"),
    "python_engineio": importlib.metadata.version("python-engineio"),
}


def add_histogram(family: HistogramMetricFamily, labels: list[str], times: Histogram) -> None:
    family.add_metric(labels, times.cumulative(), sum_value=times.total)


@dataclass(slots=True)
class StoreOverview:
    """What only the store knows, read at most every ``OVERVIEW_TTL`` seconds."""

    queue_depths: dict[str, int] = field(default_factory=dict)
    nodes_alive: list[str] = field(default_factory=list)
    healthy: bool = True
    error: str = ""
    read_at: float = 0.0


class ServiceMetrics:
    """Reads the service's counters into Prometheus metric families, on a registry of its own
    (two services in one process, as in the tests, do not add up)."""

    def __init__(
        self,
        node_id: str,
        namespaces: Mapping[str, SiteNamespace],
        store: Store,
        stats: TransportStats,
        sessions: Sessions,
        node_name: str = "",
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name or node_id  # the ``node`` label: stable across restarts
        self.namespaces = namespaces
        self.store = store
        self.stats = stats
        self.sessions = sessions
        self.overview = StoreOverview()
        self.loop_lag = 0.0
        self.started = time.time()
        self._lag_task: asyncio.Task[None] | None = None
        self._overview_lock = asyncio.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def start(self) -> None:
        self._lag_task = asyncio.create_task(self._measure_lag(), name="loop-lag")

    def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()

    async def _measure_lag(self) -> None:
        """How late a timer fires: the time every callback waits behind the others."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            self.loop_lag = max(0.0, loop.time() - due)

    async def refresh_overview(self) -> StoreOverview:
        async with self._overview_lock:
            if time.monotonic() - self.overview.read_at < OVERVIEW_TTL:
                return self.overview
            overview = StoreOverview(read_at=time.monotonic())
            try:
                overview.queue_depths = await self.store.queue_depths(list(self.namespaces))
                overview.nodes_alive = await self.store.alive_nodes()
                await self.store.ping()
            except StoreUnavailable as exc:
                overview.healthy, overview.error = False, str(exc)
                overview.queue_depths = self.overview.queue_depths
                overview.nodes_alive = self.overview.nodes_alive
            self.overview = overview
            return overview

    async def exposition(self) -> bytes:
        await self.refresh_overview()
        return generate_latest(self.registry)

    # --- figures per site, shared by /metrics and /status -------------------------------------

    def connections(self, site: str) -> int:
        return self.sessions.connection_count(self.namespaces[site].namespace)

    def users(self, site: str) -> int:
        return len(self.namespaces[site].registry.actors)

    def sends_ok(self, site: str) -> int:
        return self.stats.sends.get((site, 200), 0)

    def delivered(self, site: str) -> int:
        counts = self.namespaces[site].registry.stats
        return counts.live + counts.batched

    # --- the Prometheus collector -------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        node = self.node_name
        gauges = {
            "connections": "Sockets connected to this node",
            "users": "Users with at least one socket on this node (reliable sites)",
        }
        connections = GaugeMetricFamily(
            PREFIX + "connections", gauges["connections"], labels=["site", "node"]
        )
        users = GaugeMetricFamily(PREFIX + "users", gauges["users"], labels=["site", "node"])
        delivered = CounterMetricFamily(
            PREFIX + "messages_delivered",
            "Messages sent to sockets of this node: live (one by one) or in a _batch",
            labels=["site", "node", "how"],
        )
        acked = CounterMetricFamily(
            PREFIX + "messages_acked", "Messages acked by clients", labels=["site", "node"]
        )
        resyncs = CounterMetricFamily(
            PREFIX + "resyncs_sent", "_resync events sent to clients", labels=["site", "node"]
        )
        rereads = CounterMetricFamily(
            PREFIX + "queue_rereads",
            "Device queues re-read from the store (a gap, a missed signal, a full mailbox)",
            labels=["site", "node"],
        )
        latency = HistogramMetricFamily(
            PREFIX + "delivery_latency_seconds",
            "Live messages: from /send accepting one to its client's ack, on this node",
            labels=["site", "node"],
        )
        depth = GaugeMetricFamily(
            PREFIX + "queue_depth",
            "Messages stored and not yet acked (all nodes; read every few seconds)",
            labels=["site"],
        )
        for site in self.namespaces:
            counts = self.namespaces[site].registry.stats
            connections.add_metric([site, node], self.connections(site))
            users.add_metric([site, node], self.users(site))
            delivered.add_metric([site, node, "live"], counts.live)
            delivered.add_metric([site, node, "batch"], counts.batched)
            acked.add_metric([site, node], counts.acked)
            resyncs.add_metric([site, node], counts.resyncs)
            rereads.add_metric([site, node], counts.rereads)
            depth.add_metric([site], self.overview.queue_depths.get(site, 0))
            add_histogram(latency, [site, node], counts.delivery_latency)
        yield from (connections, users, delivered, acked, resyncs, rereads, latency, depth)
        yield from self._session_metrics(node)
        yield from self._transport_metrics()
        yield from self._store_metrics()
        yield GaugeMetricFamily(
            PREFIX + "event_loop_lag_seconds",
            "How late the last timer fired: how long any callback waits to run",
            value=self.loop_lag,
        )

    def _transport_metrics(self) -> Iterator[Any]:
        stats = self.stats
        sends = CounterMetricFamily(
            PREFIX + "sends", "POST /send requests by answer", labels=["site", "status"]
        )
        for (site, status), count in sorted(stats.sends.items()):
            sends.add_metric([site, str(status)], count)
        stored = CounterMetricFamily(
            PREFIX + "messages_stored", "Copies stored, one per target device", labels=["site"]
        )
        resync_sends = CounterMetricFamily(
            PREFIX + "resync_sends", "Sends with resync=true", labels=["site"]
        )
        for site in self.namespaces:
            stored.add_metric([site], stats.stored.get(site, 0))
            resync_sends.add_metric([site], stats.resync_sends.get(site, 0))
        answers = CounterMetricFamily(
            PREFIX + "auth_answers",
            "Connect authentications by outcome: ok, refused (401 or cached), error",
            labels=["site", "answer"],
        )
        for (site, answer), count in sorted(stats.auth_answers.items()):
            answers.add_metric([site, answer], count)
        auth_time = HistogramMetricFamily(
            PREFIX + "auth_request_seconds",
            "Time of the calls to a site's authUrl",
            labels=["site"],
        )
        for site, timing in sorted(stats.auth_time.items()):
            add_histogram(auth_time, [site], timing.times)
        send_time = HistogramMetricFamily(
            PREFIX + "send_seconds",
            "POST /send answered 200: from the request to the answer (stored and handed on)",
            labels=["site"],
        )
        for site, times in sorted(stats.send_time.items()):
            add_histogram(send_time, [site], times)
        signals = CounterMetricFamily(
            PREFIX + "node_signals",
            "Cross-node delivery signals (Redis): sent, failed, received; catch_up: every "
            "queue of this node re-read after signals may have been missed",
            labels=["kind"],
        )
        signals.add_metric(["sent"], stats.signals_sent)
        signals.add_metric(["failed"], stats.signals_failed)
        signals.add_metric(["received"], stats.signals_received)
        signals.add_metric(["catch_up"], stats.catch_ups)
        yield from (sends, stored, resync_sends, answers, auth_time, send_time, signals)

    def _store_metrics(self) -> Iterator[Any]:
        store_stats = self.store.stats
        seconds = HistogramMetricFamily(
            PREFIX + "store_operation_seconds",
            "Store calls (a coalesced write counts once) and their time",
            labels=["operation"],
        )
        errors = CounterMetricFamily(
            PREFIX + "store_errors", "Store calls that failed", labels=["operation"]
        )
        for name, operation in sorted(store_stats.operations.items()):
            add_histogram(seconds, [name], operation.times)
            errors.add_metric([name], operation.errors)
        overflows = CounterMetricFamily(
            PREFIX + "queue_overflows", "Devices whose queue filled up", labels=["site"]
        )
        for site in self.namespaces:
            overflows.add_metric([site], store_stats.overflows.get(site, 0))
        yield from (seconds, errors, overflows)
        yield CounterMetricFamily(
            PREFIX + "messages_expired",
            "Messages removed with their expired device (SQLite; Redis expires keys itself)",
            value=store_stats.expired,
        )
        yield GaugeMetricFamily(
            PREFIX + "nodes_alive",
            "Service nodes alive by their heartbeats (Redis; SQLite: 1)",
            value=len(self.overview.nodes_alive),
        )
        yield GaugeMetricFamily(
            PREFIX + "store_healthy",
            "1 if the store took the last write probe",
            value=1 if self.overview.healthy else 0,
        )

    def _session_metrics(self, node: str) -> Iterator[Any]:
        by_kind = GaugeMetricFamily(
            PREFIX + "sessions",
            "Engine.IO sessions open on this node, by protocol (3: socket.io-client 1.x/2.x, "
            "4: 3.x/4.x) and transport",
            labels=["node", "protocol", "transport"],
        )
        for (protocol, transport), count in sorted(self.sessions.sessions_by_kind().items()):
            by_kind.add_metric([node, protocol, transport], count)
        disconnects = CounterMetricFamily(
            PREFIX + "disconnects",
            "Sessions ended on this node, by reason (client disconnect, server disconnect, "
            "ping timeout, transport close, transport error)",
            labels=["node", "reason"],
        )
        for reason, count in sorted(self.sessions.disconnects.items()):
            disconnects.add_metric([node, reason], count)
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "1, labelled with the versions this node runs",
            labels=["node", "version", "python", "python_socketio", "python_engineio"],
        )
        info.add_metric([node, *BUILD.values()], 1)
        yield from (by_kind, disconnects, info)

    # --- the status page's data ---------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        overview = await self.refresh_overview()
        return {
            "node": self.node_name,
            "time": time.time(),
            "uptime": time.time() - self.started,
            "store": {"healthy": overview.healthy, "error": overview.error},
            "nodes_alive": overview.nodes_alive,
            "event_loop_lag": self.loop_lag,
            "sites": {
                site: {
                    "connections": self.connections(site),
                    "users": self.users(site),
                    "queue_depth": overview.queue_depths.get(site, 0),
                    "sends": self.sends_ok(site),
                    "delivered": self.delivered(site),
                }
                for site in self.namespaces
            },
        }
