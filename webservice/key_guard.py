"""Failed admin-key attempts, counted per client address: guessing is slowed to a few tries a
minute, and logged in one line a minute however many there are.

An address past ``allowed`` failures within a minute is answered 429 until its minute is
over, right key or not, so a guess cannot be confirmed meanwhile. The table is bounded
(``max_addresses``): a flood from many addresses starts it afresh rather than growing it.
"""

from __future__ import annotations

import time

from loguru import logger

from ..log_throttle import LogThrottle

WINDOW = 60.0


class KeyGuard:
    def __init__(self, what: str, allowed: int = 10, max_addresses: int = 10_000) -> None:
        self.what = what
        self.allowed = allowed
        self.max_addresses = max_addresses
        self._failures: dict[str, tuple[float, int]] = {}  # address: (window start, count)
        self._said = LogThrottle(WINDOW)

    def blocked(self, address: str) -> bool:
        """Whether ``address`` has used up its failed attempts for this minute."""
        entry = self._failures.get(address)
        if entry is None:
            return False
        started, count = entry
        if time.monotonic() - started >= WINDOW:
            del self._failures[address]
            return False
        return count >= self.allowed

    def failed(self, address: str) -> None:
        now = time.monotonic()
        started, count = self._failures.get(address, (now, 0))
        if now - started >= WINDOW:
            started, count = now, 0
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            self._failures.clear()
        self._failures[address] = (started, count + 1)
        unsaid = self._said.due()
        if unsaid is not None:
            logger.warning(
                "{} wrong {} attempts in the last minute (the latest from {}; said once a "
                "minute; {} tries a minute per address, then 429)",
                unsaid + 1,  # this one too
                self.what,
                address,
                self.allowed,
            )
