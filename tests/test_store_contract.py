"""One contract, both stores: every test here runs on SQLite and on a real redis-server."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import redis.asyncio

from socketio_webservice.storage import Message, Store, redis_keys, redis_url, redis_wire
from socketio_webservice.storage.sqlite_store import SQLiteStore
from tests.conftest import make_store

SITE = "shop"


@pytest.fixture(params=["sqlite", "redis", "sentinel", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """The contract holds on SQLite, on a plain Redis, on Redis behind Sentinel, and on
    Redis Cluster."""
    kind: str = request.param
    return kind


def msg(event: str, *args: object, resync: bool = False) -> Message:
    return Message(event=event, args=list(args), resync=resync)


async def until(predicate_coro, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for a time-based store change (TTL expiry), polling the store itself."""
    deadline = time.monotonic() + timeout
    while not await predicate_coro():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_messages_are_kept_in_send_order_across_events(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "phone", [])
    for i, event in enumerate(["a", "b", "a", "c"]):
        await store.enqueue(SITE, ["user_1"], [], msg(event, i))
    pending = await store.pending(SITE, "user_1", "phone")
    assert [(m.event, m.args) for m in pending] == [("a", [0]), ("b", [1]), ("a", [2]), ("c", [3])]
    assert [m.seq for m in pending] == [1, 2, 3, 4]


async def test_a_connect_returns_the_devices_queue_as_read_queue_reads_it(store: Store) -> None:
    assert (await store.connect_device(SITE, "user_1", "phone", [])).backlog.messages == []
    for event in ["a", "b", "c"]:
        await store.enqueue(SITE, ["user_1"], [], msg(event, event))
    await store.ack(SITE, "user_1", "phone", [(2, "b")])
    await store.disconnect_device(SITE, "user_1", "phone", forget=False)
    await store.enqueue(SITE, ["user_1"], [], msg("d", "d"))  # while it was away

    backlog = (await store.connect_device(SITE, "user_1", "phone", ["staff"])).backlog
    assert [(m.seq, m.event, m.args) for m in backlog.messages] == [
        (1, "a", ["a"]),
        (3, "c", ["c"]),
        (4, "d", ["d"]),
    ]
    assert backlog == await store.read_queue(SITE, "user_1", "phone")
    assert backlog.last_seq == 4
    assert (await store.connect_device(SITE, "user_1", "tablet", [])).backlog.messages == []


async def test_enqueue_reports_each_device_once(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "phone", ["Staff"])
    await store.connect_device(SITE, "user_1", "laptop", ["Staff"])
    await store.connect_device(SITE, "user_2", "phone", ["staff"])
    deliveries = await store.enqueue(SITE, ["user_1", "user_1"], ["STAFF", "staff"], msg("e"))
    assert sorted((d.user, d.device) for d in deliveries) == [
        ("user_1", "laptop"),
        ("user_1", "phone"),
        ("user_2", "phone"),
    ]
    assert {
        len(await store.pending(SITE, u, d))
        for u, d in [("user_1", "phone"), ("user_1", "laptop"), ("user_2", "phone")]
    } == {1}


async def test_unknown_user_stores_nothing(store: Store) -> None:
    assert await store.enqueue(SITE, ["user_9"], ["nobody-here"], msg("e")) == []


async def test_sites_do_not_share_queues_or_rooms(store: Store) -> None:
    await store.connect_device("a", "user_1", "d", ["staff"])
    await store.connect_device("b", "user_1", "d", ["staff"])
    await store.enqueue("a", [], ["staff"], msg("only-a"))
    assert [m.event for m in await store.pending("a", "user_1", "d")] == ["only-a"]
    assert await store.pending("b", "user_1", "d") == []


async def test_ack_removes_exactly_the_acked_messages(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "d", [])
    for i in range(3):
        await store.enqueue(SITE, ["user_1"], [], msg("e", i))
    assert await store.ack(SITE, "user_1", "d", [(2, "e")]) == 1
    assert [m.seq for m in await store.pending(SITE, "user_1", "d")] == [1, 3]
    assert await store.ack(SITE, "user_1", "d", [(2, "e")]) == 0


async def test_batch_ack_never_removes_a_message_stored_after_the_read(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "d", [])
    await store.enqueue(SITE, ["user_1"], [], msg("a"))
    await store.enqueue(SITE, ["user_1"], [], msg("b"))
    batch = await store.pending(SITE, "user_1", "d")
    await store.enqueue(SITE, ["user_1"], [], msg("late"))
    assert await store.ack(SITE, "user_1", "d", [(m.seq, m.event) for m in batch]) == 2
    assert [m.event for m in await store.pending(SITE, "user_1", "d")] == ["late"]


async def test_pending_after_seq(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "d", [])
    for i in range(4):
        await store.enqueue(SITE, ["user_1"], [], msg("e", i))
    assert [m.seq for m in await store.pending(SITE, "user_1", "d", after_seq=2)] == [3, 4]


async def test_resync_ack_of_the_head_removes_it(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "d", [])
    await store.enqueue(SITE, ["user_1"], [], msg("other"))
    await store.enqueue(SITE, ["user_1"], [], msg("e", 1, resync=True))
    await store.enqueue(SITE, ["user_1"], [], msg("e", 2, resync=True))
    outcome = await store.ack_head(SITE, "user_1", "d", 2, "e")
    assert not outcome.cleared
    assert [(m.event, m.resync) for m in await store.pending(SITE, "user_1", "d")] == [
        ("other", False),
        ("e", True),
    ]


async def test_resync_ack_past_the_head_clears_only_that_event(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "d", [])
    await store.enqueue(SITE, ["user_1"], [], msg("e", 1))
    await store.enqueue(SITE, ["user_1"], [], msg("other"))
    await store.enqueue(SITE, ["user_1"], [], msg("e", 2))
    outcome = await store.ack_head(SITE, "user_1", "d", 3, "e")
    assert outcome.cleared and outcome.cleared_through == 3
    assert [m.event for m in await store.pending(SITE, "user_1", "d")] == ["other"]


async def test_resync_ack_of_a_message_no_longer_stored_changes_nothing(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "d", [])
    await store.enqueue(SITE, ["user_1"], [], msg("e", 1))
    await store.enqueue(SITE, ["user_1"], [], msg("e", 2))
    await store.ack(SITE, "user_1", "d", [(2, "e")])
    assert not (await store.ack_head(SITE, "user_1", "d", 2, "e")).cleared
    assert [m.seq for m in await store.pending(SITE, "user_1", "d")] == [1]


async def test_queue_expires_ttl_after_disconnect(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=1)
    await store.open()
    try:
        await store.connect_device(SITE, "user_1", "d", ["staff"])
        await store.enqueue(SITE, ["user_1"], [], msg("e"))
        assert await store.disconnect_device(SITE, "user_1", "d", forget=False)
        assert len(await store.pending(SITE, "user_1", "d")) == 1

        async def expired() -> bool:
            return await store.pending(SITE, "user_1", "d") == []

        await until(expired)
        assert await store.enqueue(SITE, ["user_1"], ["staff"], msg("after-expiry")) == []
        assert await store.shared_room_members(SITE, "staff") == set()
        assert (await store.connect_device(SITE, "user_1", "d", [])).backlog.messages == []
        assert await store.pending(SITE, "user_1", "d") == []
    finally:
        await store.close()


async def test_reconnect_before_ttl_keeps_queue_forever_while_connected(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=1)
    await store.open()
    try:
        await store.connect_device(SITE, "user_1", "d", [])
        await store.enqueue(SITE, ["user_1"], [], msg("e"))
        await store.disconnect_device(SITE, "user_1", "d", forget=False)
        await store.connect_device(SITE, "user_1", "d", [])
        # A second device that disconnects expires on its own schedule; "d" must outlive it.
        await store.connect_device(SITE, "user_1", "other", [])
        await store.enqueue(SITE, ["user_1"], [], msg("e2"))
        await store.disconnect_device(SITE, "user_1", "other", forget=False)

        async def other_expired() -> bool:
            return await store.pending(SITE, "user_1", "other") == []

        await until(other_expired)
        assert [m.event for m in await store.pending(SITE, "user_1", "d")] == ["e", "e2"]
    finally:
        await store.close()


async def test_zero_ttl_keeps_offline_queues(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=0)
    await store.open()
    try:
        await store.connect_device(SITE, "user_1", "d", [])
        await store.disconnect_device(SITE, "user_1", "d", forget=False)
        assert len(await store.enqueue(SITE, ["user_1"], [], msg("offline"))) == 1
        assert [m.event for m in await store.pending(SITE, "user_1", "d")] == ["offline"]
    finally:
        await store.close()


async def test_forget_drops_a_device_at_once(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "sid-1", [])
    await store.connect_device(SITE, "user_1", "phone", [])
    await store.enqueue(SITE, ["user_1"], [], msg("e"))
    await store.disconnect_device(SITE, "user_1", "sid-1", forget=True)
    assert await store.pending(SITE, "user_1", "sid-1") == []
    deliveries = await store.enqueue(SITE, ["user_1"], [], msg("e2"))
    assert [d.device for d in deliveries] == ["phone"]


async def test_connection_counts_decide_first_and_last(store: Store) -> None:
    assert (await store.connect_device(SITE, "user_1", "a", [])).first
    assert not (
        await store.connect_device(SITE, "user_1", "a", [])
    ).first  # second tab, same device
    assert not (await store.connect_device(SITE, "user_1", "b", [])).first
    assert not await store.disconnect_device(SITE, "user_1", "a", forget=False)
    assert not await store.disconnect_device(SITE, "user_1", "b", forget=False)
    assert await store.disconnect_device(SITE, "user_1", "a", forget=False)


async def test_membership_follows_the_latest_auth_answer(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "d", ["Staff", "admins"])
    await store.connect_device(SITE, "user_2", "d", ["staff"])
    assert await store.shared_room_members(SITE, "STAFF") == {"user_1", "user_2"}
    await store.connect_device(SITE, "user_1", "d2", ["admins"])
    assert await store.shared_room_members(SITE, "staff") == {"user_2"}
    deliveries = await store.enqueue(SITE, [], ["staff"], msg("e"))
    assert {d.user for d in deliveries} == {"user_2"}


async def test_names_with_separators_do_not_collide(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "z:q", [])
    await store.connect_device(SITE, "user_1:z", "q", [])
    await store.enqueue(SITE, ["user_1"], [], msg("for-user-1"))
    assert [m.event for m in await store.pending(SITE, "user_1:z", "q")] == []
    assert [m.event for m in await store.pending(SITE, "user_1", "z:q")] == ["for-user-1"]


async def test_reopening_keeps_queues_devices_and_membership(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    first = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600)
    if store_kind == "sqlite":
        path = first.path  # type: ignore[attr-defined]
    await first.open()
    await first.connect_device(SITE, "user_1", "d", ["staff"])
    await first.enqueue(SITE, ["user_1"], [], msg("before", {"n": 1}))
    await first.close()

    if store_kind == "sqlite":
        from socketio_webservice.storage.sqlite_store import SQLiteStore

        second: Store = SQLiteStore(path, device_ttl=3600)
    else:
        second = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600)
    await second.open()
    try:
        assert await second.shared_room_members(SITE, "staff") == {"user_1"}
        await second.enqueue(SITE, [], ["staff"], msg("after"))
        pending = await second.pending(SITE, "user_1", "d")
        assert [(m.event, m.args) for m in pending] == [("before", [{"n": 1}]), ("after", [])]
    finally:
        await second.close()


async def test_concurrent_enqueues_get_distinct_dense_seqs(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "d", ["staff"])
    await asyncio.gather(*(store.enqueue(SITE, [], ["staff"], msg("e", i)) for i in range(50)))
    pending = await store.pending(SITE, "user_1", "d")
    assert [m.seq for m in pending] == list(range(1, 51))
    assert sorted(m.args[0] for m in pending) == list(range(50))


async def test_a_full_queue_stores_no_more_and_says_so_once(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600, max_queue=3)
    await store.open()
    try:
        await store.connect_device(SITE, "user_1", "away", ["staff"])
        await store.disconnect_device(SITE, "user_1", "away", forget=False)
        await store.connect_device(SITE, "user_2", "here", ["staff"])
        for i in range(5):
            deliveries = await store.enqueue(SITE, [], ["staff"], msg("e", i))
            assert {d.user for d in deliveries} == ({"user_1", "user_2"} if i < 3 else {"user_2"})
            for d in deliveries:
                if d.user == "user_2":  # this one acks as it goes: its queue never fills
                    await store.ack(SITE, "user_2", "here", [(d.seq, "e")])
        assert [m.args for m in await store.pending(SITE, "user_1", "away")] == [[0], [1], [2]]
        await store.ack(SITE, "user_1", "away", [(1, "e")])  # an ack makes room again
        assert {d.user for d in await store.enqueue(SITE, ["user_1"], [], msg("e", 5))} == {
            "user_1"
        }
        connected = await store.connect_device(SITE, "user_1", "away", ["staff"])
        assert connected.overflowed and connected.first  # its only device was away
        assert not (await store.connect_device(SITE, "user_1", "away", ["staff"])).overflowed
    finally:
        await store.close()


async def test_every_device_of_a_user_follows_its_latest_rooms(store: Store) -> None:
    """The auth answer of one device's connect moves the user's other devices, offline ones
    included, out of the rooms it no longer names and into the new ones."""
    await store.connect_device(SITE, "user_1", "away", ["staff", "news"])
    await store.disconnect_device(SITE, "user_1", "away", forget=False)
    await store.connect_device(SITE, "user_1", "here", ["staff", "news"])
    await store.connect_device(SITE, "user_1", "here", ["buyers", "news"])  # a second tab
    assert await store.enqueue(SITE, [], ["staff"], msg("e", 1)) == []
    reached = await store.enqueue(SITE, [], ["buyers", "news"], msg("e", 2))
    assert sorted((d.device, d.seq) for d in reached) == [("away", 1), ("here", 1)]
    assert await store.shared_room_members(SITE, "staff") == set()
    assert await store.shared_room_members(SITE, "buyers") == {"user_1"}


async def test_the_limit_holds_when_it_is_lowered_and_for_a_device_made_again(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    """A queue's length is checked against the limit in force (a node started with a lower
    max_queue), and a device forgotten and made again starts from an empty queue's room, not
    from what its earlier self had acked (Redis keeps a bound per device: storage/
    redis_scripts.py, ENQUEUE)."""
    roomy = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600, max_queue=5)
    await roomy.open()
    try:
        await roomy.connect_device(SITE, "user_1", "phone", [])
        for n in range(10):  # acked as it goes: the queue never holds more than one
            (delivery,) = await roomy.enqueue(SITE, ["user_1"], [], msg("e", n))
            await roomy.ack(SITE, "user_1", "phone", [(delivery.seq, "e")])
        await roomy.disconnect_device(SITE, "user_1", "phone", forget=True)
        await roomy.connect_device(SITE, "user_1", "phone", [])
        stored = [len(await roomy.enqueue(SITE, ["user_1"], [], msg("e", n))) for n in range(7)]
        assert stored == [1, 1, 1, 1, 1, 0, 0]
        for seq in (1, 2, 3, 4):
            await roomy.ack(SITE, "user_1", "phone", [(seq, "e")])
        assert len(await roomy.enqueue(SITE, ["user_1"], [], msg("e", 7))) == 1  # room for 4
    finally:
        await roomy.close()
    path = getattr(roomy, "path", None)
    tight = (
        make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600, max_queue=2)
        if path is None
        else type(roomy)(path, device_ttl=3600, max_queue=2)  # type: ignore[call-arg]
    )
    await tight.open()
    try:  # two stored, at the new limit: nothing more
        assert await tight.enqueue(SITE, ["user_1"], [], msg("e", 8)) == []
        assert [m.args for m in await tight.pending(SITE, "user_1", "phone")] == [[4], [7]]
    finally:
        await tight.close()


async def test_a_bulk_send_fills_a_queue_to_the_limit_and_no_further(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    """The messages of one bulk step count against the limit as they are stored (on Redis
    Cluster every part of a step is read before the first is written)."""
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600, max_queue=3)
    await store.open()
    try:
        await store.connect_device(SITE, "user_1", "away", [])
        await store.enqueue(SITE, ["user_1"], [], msg("e", 0))
        stored = await store.enqueue_all([(SITE, ["user_1"], [], msg("e", n)) for n in (1, 2, 3)])
        assert [len(deliveries) for deliveries in stored] == [1, 1, 0]
        assert [m.args for m in await store.pending(SITE, "user_1", "away")] == [[0], [1], [2]]
        assert (await store.connect_device(SITE, "user_1", "away", [])).overflowed
    finally:
        await store.close()


def test_redis_commands_are_packed_the_same_by_hiredis() -> None:
    """The store's connection packs commands with hiredis (storage/redis_wire.py): the
    bytes must be redis-py's own, for every kind of argument a script call carries."""
    import hiredis
    from redis.asyncio.connection import Connection

    args = ("EVALSHA", "f" * 40, 2, "sws:shop:msg:user_%3A1:d", b"\x00\xffraw", 17, "Zoë 🚀", 2.5)
    assert hiredis.pack_command(args) == b"".join(Connection().pack_command(*args))


async def test_a_burst_of_uncoalesced_calls_all_get_their_own_answers(store: Store) -> None:
    """Hundreds of calls at once, as a thousand clients connecting at once make: none fails
    for want of a connection (SQLite's is one; Redis's calls share one socket)."""
    await store.connect_device(SITE, "user_1", "d", ["staff"])
    answers = await asyncio.gather(*(store.shared_room_members(SITE, "staff") for _ in range(300)))
    assert answers == [{"user_1"}] * 300


async def test_a_new_device_past_the_limit_retires_the_least_recently_seen_offline_one(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600, max_devices=3)
    await store.open()
    try:
        for device in ("old", "older", "kept"):
            await store.connect_device(SITE, "user_1", device, [])
        await store.enqueue(SITE, ["user_1"], [], msg("e", 1))
        for device in ("older", "old"):  # "older" was seen first
            await store.disconnect_device(SITE, "user_1", device, forget=False)
        connected = await store.connect_device(SITE, "user_1", "new", [])
        assert (connected.refused, connected.retired) == (False, "older")
        assert await store.pending(SITE, "user_1", "older") == []
        assert [m.args for m in await store.pending(SITE, "user_1", "old")] == [[1]]
        deliveries = await store.enqueue(SITE, ["user_1"], [], msg("e", 2))
        assert sorted(d.device for d in deliveries) == ["kept", "new", "old"]
        # a device the user has already is never refused nor retires another
        again = await store.connect_device(SITE, "user_1", "old", [])
        assert (again.refused, again.retired) == (False, "")
    finally:
        await store.close()


async def test_a_new_device_is_refused_when_every_device_is_connected(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600, max_devices=2)
    await store.open()
    try:
        await store.connect_device(SITE, "user_1", "a", [])
        await store.connect_device(SITE, "user_1", "b", [])
        refused = await store.connect_device(SITE, "user_1", "c", ["staff"])
        assert refused.refused
        assert await store.shared_room_members(SITE, "staff") == set()  # nothing changed
        assert sorted(d.device for d in await store.enqueue(SITE, ["user_1"], [], msg("e"))) == [
            "a",
            "b",
        ]
        assert not (await store.connect_device(SITE, "user_2", "c", [])).refused  # per user
        await store.disconnect_device(SITE, "user_1", "a", forget=True)
        assert not (await store.connect_device(SITE, "user_1", "c", [])).refused
    finally:
        await store.close()


async def test_a_bulk_send_is_stored_in_steps_whole_and_in_order(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    """With a step of 0 ms every message is a step of its own: other calls can run between
    them, and the result is the same as one step."""
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=3600, step_ms=0)
    await store.open()
    try:
        for device in ("phone", "laptop"):
            await store.connect_device(SITE, "user_1", device, ["staff"])
        items = [(SITE, ["user_1"], ["staff"], msg("e", i)) for i in range(50)]
        bulk = asyncio.ensure_future(store.enqueue_all(items))
        other = await store.connect_device(SITE, "user_2", "d", [])  # while it runs
        assert not bulk.done() and other.first
        stored = await bulk
        assert [len(deliveries) for deliveries in stored] == [2] * 50
        for device in ("phone", "laptop"):
            pending = await store.pending(SITE, "user_1", device)
            assert [m.args for m in pending] == [[i] for i in range(50)]
            assert [m.seq for m in pending] == list(range(1, 51))
    finally:
        await store.close()


@pytest.mark.parametrize("store_kind", ["sqlite"])
async def test_an_sqlite_file_of_the_previous_release_keeps_its_queue_lengths(
    tmp_path: Path, store_kind: str
) -> None:
    """Queue lengths are kept in the devices' rows now; a file written before has its rows'
    lengths counted once, when it is opened."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE devices (site TEXT NOT NULL, user TEXT NOT NULL, device TEXT NOT NULL, "
        "seq INTEGER NOT NULL DEFAULT 0, conns INTEGER NOT NULL DEFAULT 0, expires_at REAL, "
        "overflow INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (site, user, device)) WITHOUT ROWID;"
        "CREATE TABLE messages (site TEXT NOT NULL, user TEXT NOT NULL, device TEXT NOT NULL, "
        "seq INTEGER NOT NULL, event TEXT NOT NULL, record BLOB NOT NULL, "
        "PRIMARY KEY (site, user, device, seq)) WITHOUT ROWID;"
    )
    db.execute("INSERT INTO devices VALUES ('shop', 'user_1', 'phone', 3, 0, NULL, 0)")
    for seq in (1, 2, 3):
        db.execute(
            "INSERT INTO messages VALUES ('shop', 'user_1', 'phone', ?, 'e', ?)",
            (seq, msg("e", seq).encode()),
        )
    db.commit()
    db.close()
    store = SQLiteStore(path, device_ttl=3600, max_queue=4)
    await store.open()
    try:
        await store.connect_device(SITE, "user_1", "phone", [])
        assert len(await store.enqueue(SITE, ["user_1"], [], msg("e", 4))) == 1
        assert await store.enqueue(SITE, ["user_1"], [], msg("e", 5)) == []  # 4 queued: full
        assert [m.args for m in await store.pending(SITE, "user_1", "phone")] == [
            [1],
            [2],
            [3],
            [4],
        ]
    finally:
        await store.close()


async def raw_index(store: Store, url: str | None) -> tuple[set[str], set[str]]:
    """The store's own index of room ``staff``'s members' devices ("user:device") and of
    user_2's devices."""
    if url is not None:
        p1, p2 = (redis_keys.user_prefix("sws:", SITE, user) for user in ("user_1", "user_2"))
        if redis_url.parse(url).is_cluster:
            client = redis.asyncio.RedisCluster.from_url(url.replace("redis+cluster", "redis"))
        else:
            client = redis_wire.client(url)
        try:
            members = set()  # staff's members in the buckets of user_1 and user_2
            for p in {p1, p2}:
                members |= await client.smembers(redis_keys.members(p, "staff"))
            devices = await client.smembers(redis_keys.user_keys(p2, "user_2")[1])
        finally:
            await client.aclose()
        return {m.decode() for m in members}, {d.decode() for d in devices}
    db = sqlite3.connect(store.path)  # type: ignore[attr-defined]
    try:
        members = {
            f"{user}:{device}"
            for user, device in db.execute(
                "SELECT memberships.user, devices.device FROM memberships"
                " JOIN devices ON devices.site = memberships.site"
                " AND devices.user = memberships.user"
            )
        }
        devices = {row[0] for row in db.execute("SELECT device FROM devices WHERE user='user_2'")}
    finally:
        db.close()
    return members, devices


async def test_the_sweep_takes_what_expired_out_of_the_indexes(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    """Not only when a send next touches them: the stale entries of expired users and
    devices do not pile up."""
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=1)
    await store.open()
    try:
        await store.connect_device(SITE, "user_1", "a", ["staff"])
        await store.connect_device(SITE, "user_2", "b", ["staff"])
        await store.connect_device(SITE, "user_2", "c", ["staff"])
        await store.disconnect_device(SITE, "user_2", "c", forget=False)  # user_2 stays
        await store.disconnect_device(SITE, "user_1", "a", forget=False)  # user_1 is gone
        everyone = {"user_1:a", "user_2:b", "user_2:c"}
        assert await raw_index(store, store_redis_url) == (everyone, {"b", "c"})

        async def swept() -> bool:
            await store.sweep()
            return await raw_index(store, store_redis_url) == ({"user_2:b"}, {"b"})

        await until(swept, timeout=15)
        assert await store.shared_room_members(SITE, "staff") == {"user_2"}
    finally:
        await store.close()


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_two_key_prefixes_in_one_redis_do_not_see_each_other(
    store_kind: str, redis_url: str
) -> None:
    from socketio_webservice import storage

    staging, production = (
        storage.make_store(
            redis_url=redis_url, redis_key_prefix=prefix, device_ttl=3600, node_id="n"
        )
        for prefix in ("stg:", "prod:")
    )
    for store in (staging, production):
        await store.open()
    try:
        for store in (staging, production):
            await store.connect_device(SITE, "user_1", "phone", ["staff"])
        await staging.enqueue(SITE, ["user_1"], ["staff"], msg("e", 1))
        assert [m.args for m in await staging.pending(SITE, "user_1", "phone")] == [[1]]
        assert await production.pending(SITE, "user_1", "phone") == []
        assert await production.queue_depths([SITE]) == {SITE: 0}
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            assert all(key.startswith((b"stg:", b"prod:")) for key in await client.keys("*"))
        finally:
            await client.aclose()
    finally:
        for store in (staging, production):
            await store.close()


async def test_a_message_with_a_recorded_idempotency_id_is_stored_once(store: Store) -> None:
    from socketio_webservice.storage import Repeated

    await store.connect_device(SITE, "user_1", "phone", ["staff"])
    await store.connect_device(SITE, "user_2", "phone", ["staff"])
    first = await store.enqueue(SITE, [], ["staff"], Message("e", [1], idempotency_id="k#0"))
    assert len(first) == 2 and not isinstance(first, Repeated)
    again = await store.enqueue(SITE, [], ["staff"], Message("e", [1], idempotency_id="k#0"))
    assert isinstance(again, Repeated) and again.stored == 2
    assert sorted(again) == sorted(first)  # handed on again; a device that had it skips it
    assert len(await store.pending(SITE, "user_1", "phone")) == 1
    # a bulk retried after its first part was stored: the rest is stored, the first not again
    items = [(SITE, ["user_1"], [], Message("e", [n], idempotency_id=f"k#{n}")) for n in range(3)]
    stored = await store.enqueue_all(items)
    assert [isinstance(d, Repeated) for d in stored] == [True, False, False]
    assert [m.args for m in await store.pending(SITE, "user_1", "phone")] == [[1], [1], [2]]
    other_site = await store.enqueue(
        "blog", ["user_1"], [], Message("e", [9], idempotency_id="k#0")
    )
    assert not isinstance(other_site, Repeated)  # keys are per site


async def test_an_operator_sees_a_users_devices_and_purges_one_queue(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "phone", [])
    await store.connect_device(SITE, "user_1", "tab:let", [])
    await store.disconnect_device(SITE, "user_1", "tab:let", forget=False)
    for i in range(3):
        await store.enqueue(SITE, ["user_1"], [], msg("n", i))
    devices = await store.devices_of(SITE, "user_1")
    assert [(d.device, d.connections, d.queued) for d in devices] == [
        ("phone", 1, 3),
        ("tab:let", 0, 3),
    ]
    assert devices[0].expires_in is None
    assert devices[1].expires_in is not None and 0 < devices[1].expires_in <= 3600

    assert await store.purge_queue(SITE, "user_1", "tab:let") == 3
    assert await store.pending(SITE, "user_1", "tab:let") == []
    assert len(await store.pending(SITE, "user_1", "phone")) == 3  # the other device keeps its
    assert await store.purge_queue(SITE, "user_1", "nothing") is None
    assert await store.devices_of(SITE, "nobody") == []
    # The purged device learns on its next connection that it missed messages.
    assert (await store.connect_device(SITE, "user_1", "tab:let", [])).overflowed
    await store.enqueue(SITE, ["user_1"], [], msg("n", 3))
    assert [m.args for m in await store.pending(SITE, "user_1", "tab:let")] == [[3]]


async def test_online_says_which_users_have_a_connection_now(store: Store) -> None:
    await store.connect_device(SITE, "user_1", "phone", [])
    await store.connect_device(SITE, "user_2", "phone", [])
    await store.connect_device(SITE, "user_2", "laptop", [])
    await store.disconnect_device(SITE, "user_2", "phone", forget=False)
    await store.connect_device(SITE, "user_3", "phone", [])
    await store.disconnect_device(SITE, "user_3", "phone", forget=False)
    users = ["user_1", "user_2", "user_3", "user_4"]
    assert await store.online(SITE, users) == {"user_1", "user_2"}
    assert await store.online("other-site", users) == set()
    assert await store.online(SITE, []) == set()


async def stored(store: Store, devices: list[tuple[str, str]]) -> int:
    """What the users' devices hold: what the depth must say."""
    return sum([len(await store.pending(SITE, user, device)) for user, device in devices])


async def test_queue_depth_is_what_is_stored_and_not_acked(store: Store) -> None:
    devices = [("user_1", "phone"), ("user_1", "tablet"), ("user_2", "phone")]
    for user, device in devices:
        await store.connect_device(SITE, user, device, ["staff"])
    await store.disconnect_device(SITE, "user_1", "tablet", forget=False)
    sent = []
    for n in range(3):
        sent.append(await store.enqueue(SITE, [], ["staff"], msg("n", n)))
    await store.enqueue("other-site", ["user_1"], [], msg("n", 0))
    assert await store.queue_depths([SITE]) == {SITE: 9} == {SITE: await stored(store, devices)}

    phone = [(d.seq, "n") for ds in sent for d in ds if (d.user, d.device) == devices[0]]
    await store.ack(SITE, "user_1", "phone", phone[:2])
    await store.ack(SITE, "user_1", "phone", phone[:2])  # a repeated ack removes nothing more
    assert await store.queue_depths([SITE]) == {SITE: await stored(store, devices)} == {SITE: 7}

    first = await store.enqueue(SITE, ["user_2"], [], msg("r", 1, resync=True))
    await store.enqueue(SITE, ["user_2"], [], msg("r", 2, resync=True))
    cleared = await store.ack_head(SITE, "user_2", "phone", first[0].seq + 1, "r")
    assert cleared.cleared  # not the head: both r messages go
    assert await store.queue_depths([SITE]) == {SITE: await stored(store, devices)}

    assert await store.purge_queue(SITE, "user_1", "tablet") == 3
    await store.disconnect_device(SITE, "user_2", "phone", forget=True)
    assert await store.queue_depths([SITE]) == {SITE: await stored(store, devices)} == {SITE: 1}
    assert await store.queue_depths([SITE, "other-site", "none"]) == {
        SITE: 1,
        "other-site": 0,  # its user has no device: nothing was stored
        "none": 0,
    }


async def test_acks_arriving_together_count_each_device_and_site_out(store: Store) -> None:
    """Concurrent acks share one store call: each device's count, and each site's depth."""
    sites = [SITE, "other-site"]
    users = [f"user_{n}" for n in range(6)]
    for site in sites:
        for user in users:
            await store.connect_device(site, user, "phone", ["staff"])
        for k in range(3):
            await store.enqueue(site, [], ["staff"], msg("n", k))
    # user_n acks its first 1 + n % 3 messages (seqs 1 to 3 on every device)
    acks = [
        (site, user, [(seq, "n") for seq in range(1, 2 + n % 3)])
        for site in sites
        for n, user in enumerate(users)
    ]
    removed = await asyncio.gather(
        *(store.ack(site, user, "phone", acked) for site, user, acked in acks),
        store.ack(SITE, "user_0", "phone", [(99, "n")]),  # never stored
    )
    assert removed == [len(acked) for *_, acked in acks] + [0]
    left = {site: 3 * len(users) - sum(len(a) for s, _, a in acks if s == site) for site in sites}
    assert left == {SITE: 6, "other-site": 6}
    assert await store.queue_depths(sites) == left
    for site in sites:
        assert left[site] == sum([len(await store.pending(site, u, "phone")) for u in users])


async def test_an_expired_devices_queue_leaves_the_depth(
    store_kind: str, tmp_path: Path, store_redis_url: str | None
) -> None:
    store = make_store(store_kind, tmp_path, store_redis_url, device_ttl=1)
    await store.open()
    try:
        for device in ("a", "b"):
            await store.connect_device(SITE, "user_1", device, [])
            await store.disconnect_device(SITE, "user_1", device, forget=False)
        await store.enqueue(SITE, ["user_1"], [], msg("n", 1))
        await store.enqueue(SITE, ["user_1"], [], msg("n", 2))
        assert await store.queue_depths([SITE]) == {SITE: 4}

        async def expired() -> bool:
            return await store.devices_of(SITE, "user_1") == []

        await until(expired, timeout=15)
        # SQLite counts live devices only; Redis counts an expired device's queue until the
        # sweep deletes it (within a minute). Back before the sweep, a is a new device with
        # an empty queue, and its old queue is counted out at once.
        unswept = 0 if store_kind == "sqlite" else 2
        assert await store.queue_depths([SITE]) == {SITE: 2 * unswept}
        await store.connect_device(SITE, "user_1", "a", [])
        assert await store.pending(SITE, "user_1", "a") == []
        assert await store.queue_depths([SITE]) == {SITE: unswept}

        async def swept() -> bool:  # b never came back: the sweep counts its queue out
            await store.sweep()
            return await store.queue_depths([SITE]) == {SITE: 0}

        await until(swept, timeout=15)
    finally:
        await store.close()


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_queue_depth_reads_counters_not_the_keyspace(store: Store, redis_url: str) -> None:
    """Scrapes cost the same whatever else the Redis holds (500k keys took 0.3 s to SCAN)."""
    await store.connect_device(SITE, "user_1", "phone", [])
    await store.enqueue(SITE, ["user_1"], [], msg("n", 1))
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.mset({f"foreign:{n}": "x" for n in range(5000)})
        await client.config_resetstat()
        assert await store.queue_depths([SITE]) == {SITE: 1}
        stats = await client.info("commandstats")
        assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats
        assert stats["cmdstat_hgetall"]["calls"] == redis_keys.BUCKETS
    finally:
        await client.aclose()
