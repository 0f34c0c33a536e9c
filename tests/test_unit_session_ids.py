"""Engine.IO session ids (and python-socketio's sids, made by the same method): unique,
unpredictable, in Engine.IO's own spelling, across refills of the random pool."""

from __future__ import annotations

import re

from socketio_webservice.transport.socketio_adapter.server import RANDOM_POOL, _EngineIOServer


def test_ids_are_unique_url_safe_and_their_random_part_never_repeats() -> None:
    server = _EngineIOServer(async_mode="aiohttp")
    count = 3 * RANDOM_POOL // 12 + 5  # three refills of the pool, and part of a fourth
    ids = [server.generate_id() for _ in range(count)]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{20}", sid) for sid in ids)
    assert len(set(ids)) == count
    random_parts = {sid[:16] for sid in ids}  # 12 random bytes: the first 16 characters
    assert len(random_parts) == count
