"""What the transport counts as it works (sends, auth calls, signals between nodes), for
``/metrics``: plain numbers, read when Prometheus scrapes."""

from __future__ import annotations

from collections import defaultdict

from ..histogram import Histogram
from ..storage.stats import OperationStats


class TransportStats:
    def __init__(self) -> None:
        self.sends: defaultdict[tuple[str, int], int] = defaultdict(int)  # (site, status)
        self.send_time: defaultdict[str, Histogram] = defaultdict(Histogram)  # answered 200
        self.stored: defaultdict[str, int] = defaultdict(int)  # copies stored, per site
        self.resync_sends: defaultdict[str, int] = defaultdict(int)  # sends with resync=true
        self.auth_answers: defaultdict[tuple[str, str], int] = defaultdict(int)  # (site, answer)
        # calls to each site's authUrl: how many, how long in all
        self.auth_time: defaultdict[str, OperationStats] = defaultdict(OperationStats)
        self.signals_sent = 0  # cross-node signals published
        self.signals_failed = 0  # ... that Redis did not take (the devices get them later)
        self.signals_received = 0
        self.catch_ups = 0  # every actor here re-read its queues (after missed signals)
