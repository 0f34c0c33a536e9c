"""When Python's cyclic garbage collector runs: rarely on the hot path, surely after churn.

The collector's defaults (700, 10, 10) make it walk the whole heap, thousands of objects per
connection, every few hundred allocations; the hot path allocates a few objects per delivery.
Measured with `python -m bench`, N=1000 on Redis: CPU per 1000 fan-out deliveries 0.133 s ->
0.076 s, direct 0.57 s -> 0.36 s with the thresholds below. Refcounting frees nearly all.

Not all: a connection that ends may leave objects in reference cycles, and one that lived
long sits in the oldest generation, which those thresholds almost never collect. Until the
adapter let go of a websocket's Engine.IO socket when it closed (``_WebSocket.__call__``),
every websocket left about 36 objects in a cycle that held its whole connection: 15,000
short connections left 210 MB behind for good. So a full collection runs once at least
``AFTER_CLOSES`` connections, and a quarter of those open, have closed since the last one:
its cost, a walk of the live heap, is spread over the connections that made it due.

That walk is not cheap: 260 to 420 ms with 3,000 connections open (about 90 us per closed
connection, a seventh of a reconnect). Now that a closed connection leaves nothing behind in
the usual case, a collection that finds less than ``LITTLE`` object per closed connection
doubles the closes the next one waits for, up to ``MAX_STRETCH`` times; one that finds more
sets it back. Garbage waits longer only while there is little of it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

from loguru import logger

THRESHOLDS = (100_000, 50, 1_000)
AFTER_CLOSES = 2_000
CHECK_EVERY = 5.0  # seconds
LITTLE = 1.0  # objects found per closed connection
MAX_STRETCH = 64


def tune_gc() -> None:
    gc.freeze()  # what start-up allocated lives as long as the process: never scan it again
    gc.set_threshold(*THRESHOLDS)


async def collect_after_churn(closed: Callable[[], int], open_now: Callable[[], int]) -> None:
    """Run for ever: a full collection whenever enough connections closed (see above).
    ``closed``: connections closed since start; ``open_now``: connections open."""
    collected_at = closed()
    stretch = 1
    while True:
        await asyncio.sleep(CHECK_EVERY)
        since = closed() - collected_at
        if since >= max(AFTER_CLOSES, open_now() // 4) * stretch:
            started = time.perf_counter()
            found = gc.collect()
            collected_at = closed()
            stretch = min(stretch * 2, MAX_STRETCH) if found < since * LITTLE else 1
            logger.debug(
                "full garbage collection after {} closed connections: {} objects, {:.0f} ms; "
                "the next waits for {}x the usual closes",
                since,
                found,
                (time.perf_counter() - started) * 1000,
                stretch,
            )
