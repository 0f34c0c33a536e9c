"""What a site's actors did on this node, for ``/metrics``.

Plain integers that the actors add to as they send (one addition per delivery, no lock, no
label lookup); Prometheus reads them when it scrapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..histogram import Histogram


@dataclass(slots=True)
class DeliveryStats:
    live: int = 0  # messages sent to a socket one by one (live, or after a re-read)
    batched: int = 0  # messages sent inside a _batch
    acked: int = 0  # messages the clients acked
    resyncs: int = 0  # _resync events sent
    rereads: int = 0  # queues re-read from the store (a gap, a missed signal, a full mailbox)
    # live messages: from /send accepting one to its client's ack (wall clocks of two nodes
    # when the send came through another one)
    delivery_latency: Histogram = field(default_factory=Histogram)
