"""How often a line about a repeated event is said: a flood costs a line a minute, not a line
an event.

Rejected sends, failed broadcasts, wrong admin keys and malformed HTTP requests are each said
at most once a window for each of their keys, with how many went unsaid in between.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable


class LogThrottle:
    """At most one line per ``every`` seconds for each key; the keys must be a bounded set
    (a site and a status, say: never something a client names)."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._said: dict[Hashable, tuple[float, int]] = {}  # key -> (said at, unsaid since)

    def due(self, key: Hashable = None) -> int | None:
        """If this event is to be said now, how many of ``key``'s went unsaid since the last
        line; else None, and it is counted."""
        now = time.monotonic()
        said_at, unsaid = self._said.get(key, (-math.inf, 0))
        if now - said_at >= self.every:
            self._said[key] = (now, 0)
            return unsaid
        self._said[key] = (said_at, unsaid + 1)
        return None
