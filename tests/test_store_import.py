"""The store's side of import-original, on SQLite, a plain Redis and Redis behind Sentinel:
what the Node original had queued lands in a device's queue as if this service had stored it."""

from __future__ import annotations

from pathlib import Path

import pytest

from socketio_webservice.storage import ImportedMessage, Message, Store
from tests.conftest import make_store
from tests.test_store_contract import until

SITE = "shop"
BASE_ID = 7_390_000_000_000_000_000  # a flake id of 2026: above 2**62, below 2**64


@pytest.fixture(params=["sqlite", "redis", "sentinel", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


def original(*items: tuple[int, str, object]) -> list[ImportedMessage]:
    return [ImportedMessage(BASE_ID + n, Message(event, [arg])) for n, event, arg in items]


async def test_imported_messages_are_pending_in_original_id_order(store: Store) -> None:
    result = await store.import_queue(
        SITE, "user_1", "phone", original((3, "b", 3), (1, "a", 1), (2, "b", 2)), ttl=None
    )
    assert (result.stored, result.known, result.full) == (3, 0, 0)
    pending = await store.pending(SITE, "user_1", "phone")
    assert [(m.event, m.args) for m in pending] == [("a", [1]), ("b", [2]), ("b", [3])]
    assert [m.seq for m in pending] == [1, 2, 3]
    # The device is one of the user's now: a send reaches it after the imported ones.
    deliveries = await store.enqueue(SITE, ["user_1"], [], Message("c", [4]))
    assert [(d.device, d.seq) for d in deliveries] == [("phone", 4)]


async def test_a_device_imported_for_a_user_with_rooms_gets_their_sends(store: Store) -> None:
    """Its user's shared rooms reach it as they reach the user's other devices."""
    await store.connect_device(SITE, "user_1", "web", ["staff"])
    await store.import_queue(SITE, "user_1", "phone", original((1, "a", 1)), ttl=None)
    deliveries = await store.enqueue(SITE, [], ["staff"], Message("c", [2]))
    assert sorted((d.device, d.seq) for d in deliveries) == [("phone", 2), ("web", 1)]


async def test_importing_again_adds_nothing_and_only_newer_ids_are_added(store: Store) -> None:
    first = original((1, "a", 1), (2, "a", 2))
    await store.import_queue(SITE, "user_1", "phone", first, ttl=None)
    again = await store.import_queue(SITE, "user_1", "phone", first, ttl=None)
    assert (again.stored, again.known) == (0, 2)
    later = await store.import_queue(
        SITE, "user_1", "phone", [*first, *original((3, "a", 3))], ttl=None
    )
    assert (later.stored, later.known) == (1, 2)
    pending = await store.pending(SITE, "user_1", "phone")
    assert [m.args for m in pending] == [[1], [2], [3]]


async def test_ids_that_differ_past_double_precision_are_told_apart(store: Store) -> None:
    """Flake ids are 64-bit: two ids a unit apart near 2**63 are one double in Lua."""
    high = 2**63 + 1
    await store.import_queue(
        SITE, "user_1", "phone", [ImportedMessage(high, Message("a", [1]))], ttl=None
    )
    result = await store.import_queue(
        SITE, "user_1", "phone", [ImportedMessage(high + 1, Message("a", [2]))], ttl=None
    )
    assert result.stored == 1


async def test_an_offline_imported_device_expires_with_the_ttl_its_list_had_left(
    store: Store,
) -> None:
    await store.import_queue(SITE, "user_1", "phone", original((1, "a", 1)), ttl=1)
    await store.import_queue(SITE, "user_1", "tablet", original((1, "a", 1)), ttl=None)

    async def phone_gone() -> bool:
        return not await store.pending(SITE, "user_1", "phone")

    await until(phone_gone)
    assert len(await store.pending(SITE, "user_1", "tablet")) == 1  # device_ttl: an hour


async def test_a_connected_device_keeps_no_expiry_and_an_offline_one_the_later(
    store: Store,
) -> None:
    await store.connect_device(SITE, "user_1", "phone", [])
    await store.import_queue(SITE, "user_1", "phone", original((1, "a", 1)), ttl=1)
    await store.connect_device(SITE, "user_1", "tablet", [])
    await store.disconnect_device(SITE, "user_1", "tablet", forget=False)  # an hour left
    await store.import_queue(SITE, "user_1", "tablet", original((1, "a", 1)), ttl=1)
    await store.import_queue(SITE, "user_1", "laptop", original((1, "a", 1)), ttl=1)

    async def laptop_gone() -> bool:
        return not await store.pending(SITE, "user_1", "laptop")

    await until(laptop_gone)
    assert len(await store.pending(SITE, "user_1", "phone")) == 1
    assert len(await store.pending(SITE, "user_1", "tablet")) == 1


async def test_a_queue_past_max_queue_keeps_the_oldest_and_flags_the_device(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600, max_queue=3)
    await store.open()
    try:
        items = original(*((n, "a", n) for n in range(1, 6)))
        result = await store.import_queue(SITE, "user_1", "phone", items, ttl=None)
        assert (result.stored, result.full) == (3, 2)
        assert [m.args for m in await store.pending(SITE, "user_1", "phone")] == [[1], [2], [3]]
        connected = await store.connect_device(SITE, "user_1", "phone", [])
        assert connected.overflowed  # it missed messages: the client is told to resync
    finally:
        await store.close()
