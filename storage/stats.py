"""What a store counts as it works, for ``/metrics``.

Plain numbers on the store, read when Prometheus scrapes: the hot path pays an addition, not a
lock or a label lookup of the metrics library.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from loguru import logger

from ..histogram import Histogram


@dataclass(slots=True)
class OperationStats:
    """One kind of call (a store script or transaction, an authUrl call): its times, and how
    many failed. A coalesced write counts once, however many sends it carried."""

    times: Histogram = field(default_factory=Histogram)
    errors: int = 0

    def add(self, started: float, failed: bool = False) -> None:
        """One call, begun at ``started`` (a ``time.perf_counter()`` reading), ended now."""
        self.times.observe(time.perf_counter() - started)
        if failed:
            self.errors += 1


class StoreStats:
    def __init__(self) -> None:
        self.operations: defaultdict[str, OperationStats] = defaultdict(OperationStats)
        self.overflows: defaultdict[str, int] = defaultdict(int)  # per site
        self.expired = 0  # messages removed because their device expired (SQLite's sweep)
        self.swept = 0  # stale set entries removed by Redis's sweep

    def observe(self, operation: str, started: float, failed: bool = False) -> None:
        self.operations[operation].add(started, failed)

    def overflowed(self, site: str, user: str, device: str, limit: int) -> None:
        """A device's queue is full: from now on it misses messages, and gets ``_resync`` when
        it next connects. Logged once per overflow, not once per message."""
        self.overflows[site] += 1
        logger.warning(
            "site={} user={} device={}: queue full ({} messages); not storing more, "
            "it gets _resync on its next connection",
            site,
            user,
            device,
            limit,
        )
