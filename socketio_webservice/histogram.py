"""Time histograms in plain numbers, for ``/metrics``.

Each layer counts its latencies on its own objects (a store call, an authUrl call, a send, a
delivery's trip to the client's ack); Prometheus reads the buckets when it scrapes. An
observation is a bisect and two additions: no lock, no label lookup in a metrics library.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Seconds: from a store call on a local Redis (~0.5 ms) to a delivery that waited for a slow
# client (10 s); one more bucket, +Inf, counts the rest.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0  # seconds, summed

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus's buckets: (upper bound, observations at or below it), +Inf last."""
        buckets, running = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets
