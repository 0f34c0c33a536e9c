"""SQLite store: the embedded default for a single node.

One connection in WAL mode, owned by aiosqlite's thread. Each store operation is one plain
function run in that thread as a single transaction: one hop between threads per operation
instead of one per statement, and no lock, since the thread runs operations one at a time
(SQLite's own single-writer rule). In WAL mode ``synchronous=NORMAL`` (the default here) makes
a committed /send survive a crash of the process (SIGKILL included); ``FULL`` adds an fsync per
transaction so it also survives a power loss.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson

from .store import (
    DEFAULT_IDEMPOTENCY_TTL,
    DEFAULT_MAX_DEVICES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_STEP_MS,
    ORIGINAL_ID_DIGITS,
    RECORDED_DELIVERIES,
    AckItem,
    Backlog,
    Connected,
    ConnectItem,
    Delivery,
    DeviceState,
    EnqueueItem,
    HeadAck,
    Imported,
    ImportedMessage,
    Repeated,
    StoredMessage,
    StoreUnavailable,
)
from .store_base import ReadItem, StoreBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL, user TEXT NOT NULL, device TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    conns INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
    overflow INTEGER NOT NULL DEFAULT 0,
    queued INTEGER NOT NULL DEFAULT 0,
    seen REAL NOT NULL DEFAULT 0,
    imported TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (site, user, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    site TEXT NOT NULL, user TEXT NOT NULL,
    conns INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
    PRIMARY KEY (site, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS memberships (
    site TEXT NOT NULL, room TEXT NOT NULL, user TEXT NOT NULL,
    PRIMARY KEY (site, room, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memberships_by_user ON memberships (site, user);
CREATE TABLE IF NOT EXISTS messages (
    site TEXT NOT NULL, user TEXT NOT NULL, device TEXT NOT NULL,
    seq INTEGER NOT NULL, event TEXT NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (site, user, device, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_event ON messages (site, user, device, event, seq);
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    site TEXT NOT NULL, key TEXT NOT NULL, stored INTEGER NOT NULL, expires_at REAL NOT NULL,
    deliveries TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (site, key)
) WITHOUT ROWID;
"""

LIVE = "(expires_at IS NULL OR expires_at > :now)"
DEVICE = "site = :site AND user = :user AND device = :device"

T = TypeVar("T")
Db = sqlite3.Connection


class SQLiteStore(StoreBase):
    def __init__(
        self,
        path: str | Path,
        device_ttl: int,
        synchronous: str = "NORMAL",
        node_id: str = "local",
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_devices: int = DEFAULT_MAX_DEVICES,
        step_ms: int = DEFAULT_STEP_MS,
        idempotency_ttl: int = DEFAULT_IDEMPOTENCY_TTL,
    ) -> None:
        super().__init__(
            device_ttl=device_ttl,
            node_id=node_id,
            max_queue=max_queue,
            max_devices=max_devices,
            step_ms=step_ms,
            idempotency_ttl=idempotency_ttl,
        )
        self.path = Path(path)
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file we opened

    async def open(self) -> None:
        await self.attach()
        await self._transaction("recover", self._recover_connections)
        self.start_sweeping()

    async def attach(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            stat = os.stat(self.path)
            self._file_id = (stat.st_dev, stat.st_ino)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
            await self._db.execute("PRAGMA busy_timeout=5000")
            await self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            reason: object = exc
            if isinstance(exc, OSError) and exc.strerror:
                reason = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
            raise StoreUnavailable(f"SQLite {self.path}: {reason}") from None
        await self._transaction("migrate", _migrate)

    async def _close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _transaction(self, name: str, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(db, *args)`` in the database thread, as one transaction, counted in
        ``stats`` under ``name``."""
        if self._db is None:
            raise StoreUnavailable("SQLite store is not open")

        def in_thread() -> T:
            db = self._db._conn  # type: ignore[union-attr]
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db, *args)
                self._check_file()
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        started = time.perf_counter()
        try:
            # aiosqlite's own hook for running a function in its thread (pinned in pyproject).
            result: T = await self._db._execute(in_thread)  # type: ignore[no-untyped-call]
        except sqlite3.Error as exc:
            self.stats.observe(name, started, failed=True)
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        except StoreUnavailable:
            self.stats.observe(name, started, failed=True)
            raise
        self.stats.observe(name, started)
        return result

    def _check_file(self) -> None:
        """SQLite writes on into a file that was deleted (its directory removed, say), and all
        of it is gone at the next start: refuse, as for any store failure, instead."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise StoreUnavailable(f"SQLite: the database file is gone ({exc.strerror})") from None
        if (stat.st_dev, stat.st_ino) != self._file_id:
            raise StoreUnavailable("SQLite: the database file was replaced")

    async def ping(self) -> None:
        """A write, so that a full disk or a read-only file shows, not only a lost file."""
        await self._transaction("probe", _probe, time.time())

    async def heartbeat(self) -> list[str]:
        return []  # a single node: its crash is recovered at the next open()

    def _expiry(self, now: float) -> float | None:
        return now + self.device_ttl if self.device_ttl > 0 else None

    def _recover_connections(self, db: Db) -> None:
        """A single node owns every connection, so any count left at start-up is from a crash:
        those devices went offline when the process died and start to expire now."""
        params = {"exp": self._expiry(time.time())}
        db.execute("UPDATE devices SET conns = 0, expires_at = :exp WHERE conns > 0", params)
        db.execute("UPDATE users SET conns = 0, expires_at = :exp WHERE conns > 0", params)

    async def sweep(self) -> None:
        """Delete what has expired; reads already ignore it, this only reclaims space."""
        self.stats.expired += await self._transaction("sweep", _sweep, time.time())

    async def _write_connects(self, items: Sequence[ConnectItem]) -> list[Connected]:
        """Connects of the same moment in one transaction (one fsync)."""
        now = time.time()
        connects = [
            (
                {"site": site, "user": user, "device": device, "now": now},
                [(site, room, user) for room in rooms],
            )
            for site, user, device, rooms in items
        ]
        return await self._transaction(
            "connect_device", _connect_devices, connects, self.max_devices
        )

    async def disconnect_device(self, site: str, user: str, device: str, *, forget: bool) -> bool:
        now = time.time()
        key = {"site": site, "user": user, "device": device, "exp": self._expiry(now), "now": now}
        return await self._transaction("disconnect_device", _disconnect_device, key, forget)

    async def _write_enqueues(self, items: Sequence[EnqueueItem]) -> list[list[Delivery]]:
        """The messages of concurrent /sends in one transaction (one fsync), in submit order,
        as many as it stores in ``step_ms``."""
        now = time.time()
        batches = [
            (
                {
                    "site": site,
                    "now": now,
                    "users": orjson.dumps(list(users)).decode(),
                    "rooms": orjson.dumps(list(rooms)).decode(),
                    "max_queue": self.max_queue,
                    "key": message.idempotency_id,
                    "key_expires": now + self.idempotency_ttl,
                },
                message.event,
                message.encode(),
            )
            for site, users, rooms, message in items
        ]
        results = await self._transaction("enqueue", _enqueue_all, batches, self.step_ms / 1000)
        here = (self.node_id,)  # one node holds every connection
        deliveries: list[list[Delivery]] = []
        for (site, *_), (rows, full) in zip(items, results, strict=False):
            if isinstance(rows, tuple):  # an idempotent repeat: how many it reached then
                stored, again = rows
                deliveries.append(
                    Repeated(
                        stored,
                        [
                            Delivery(user, device, seq, here if conns else ())
                            for user, device, seq, conns in again
                        ],
                    )
                )
                continue
            for user, device in full:
                self.stats.overflowed(site, user, device, self.max_queue)
            deliveries.append(
                [
                    Delivery(user, device, seq, here if conns else ())
                    for user, device, seq, conns in rows
                ]
            )
        return deliveries

    async def _import_queue(
        self, site: str, user: str, device: str, messages: Sequence[ImportedMessage], ttl: int
    ) -> Imported:
        now = time.time()
        key = {"site": site, "user": user, "device": device, "now": now}
        items = [
            (f"{m.original_id:0{ORIGINAL_ID_DIGITS}d}", m.message.event, m.message.encode())
            for m in messages
        ]
        expires_at = now + ttl if ttl > 0 else None
        return await self._transaction(
            "import_queue", _import_queue, key, items, expires_at, self.max_queue
        )

    async def _read_queues(self, items: Sequence[ReadItem]) -> list[Backlog]:
        now = time.time()
        keys = [
            {"site": site, "user": user, "device": device, "after": after, "now": now}
            for site, user, device, after in items
        ]
        return [
            _backlog(rows, last_seq)
            for rows, last_seq in await self._transaction("read_queue", _read_queues, keys)
        ]

    async def _write_acks(self, items: Sequence[AckItem]) -> list[int]:
        """Every ack of this turn in one statement and one transaction (one fsync)."""
        return await self._transaction("ack", _write_acks, items)

    async def ack_head(self, site: str, user: str, device: str, seq: int, event: str) -> HeadAck:
        key = {"site": site, "user": user, "device": device, "event": event, "seq": seq}
        return await self._transaction("ack_head", _ack_head, key)

    async def _room_members(self, site: str, room: str) -> set[str]:
        rows = await self._transaction("room_members", _members, site, room, time.time())
        return {row[0] for row in rows}

    async def alive_nodes(self) -> list[str]:
        return [self.node_id]

    async def devices_of(self, site: str, user: str) -> list[DeviceState]:
        key = {"site": site, "user": user, "now": time.time()}
        rows = await self._transaction("devices_of", _devices_of, key)
        return [
            DeviceState(
                device,
                conns,
                queued,
                None if expires is None else expires - key["now"],
                (self.node_id,) if conns else (),
            )
            for device, conns, queued, expires in rows
        ]

    async def purge_queue(self, site: str, user: str, device: str) -> int | None:
        key = {"site": site, "user": user, "device": device, "now": time.time()}
        return await self._transaction("purge_queue", _purge_queue, key)

    async def online(self, site: str, users: Sequence[str]) -> set[str]:
        rows = await self._transaction("online", _online, site, list(users))
        return {user for (user,) in rows}

    async def queue_depths(self, sites: Sequence[str]) -> dict[str, int]:
        rows = await self._transaction("queue_depths", _queue_depths, time.time())
        counts = dict(rows)
        return {site: counts.get(site, 0) for site in sites}


# Each function below runs in the database thread inside one transaction.


def _sweep(db: Db, now: float) -> int:
    """Returns how many messages expired with their devices."""
    params = {"now": now}
    expired = db.execute(
        "DELETE FROM messages WHERE (site, user, device) IN (SELECT site, user, device "
        "FROM devices WHERE expires_at IS NOT NULL AND expires_at <= :now)",
        params,
    )
    db.execute("DELETE FROM devices WHERE expires_at IS NOT NULL AND expires_at <= :now", params)
    db.execute(
        "DELETE FROM memberships WHERE (site, user) IN (SELECT site, user FROM users "
        "WHERE expires_at IS NOT NULL AND expires_at <= :now)",
        params,
    )
    db.execute("DELETE FROM users WHERE expires_at IS NOT NULL AND expires_at <= :now", params)
    db.execute("DELETE FROM idempotency WHERE expires_at <= :now", params)
    return expired.rowcount


def _queue_depths(db: Db, now: float) -> list[Any]:
    return db.execute(
        f"SELECT d.site, count(*) FROM messages m JOIN devices d USING (site, user, device) "
        f"WHERE {LIVE.replace('expires_at', 'd.expires_at')} GROUP BY d.site",
        {"now": now},
    ).fetchall()


def _probe(db: Db, now: float) -> None:
    db.execute("INSERT OR REPLACE INTO health (id, checked_at) VALUES (1, ?)", (now,))


def _migrate(db: Db) -> None:
    """Columns added since a file may have been created."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(devices)")}
    if "overflow" not in columns:
        db.execute("ALTER TABLE devices ADD COLUMN overflow INTEGER NOT NULL DEFAULT 0")
    if "seen" not in columns:
        db.execute("ALTER TABLE devices ADD COLUMN seen REAL NOT NULL DEFAULT 0")
    if "imported" not in columns:
        db.execute("ALTER TABLE devices ADD COLUMN imported TEXT NOT NULL DEFAULT ''")
    if "queued" not in columns:
        db.execute("ALTER TABLE devices ADD COLUMN queued INTEGER NOT NULL DEFAULT 0")
        db.execute(
            "UPDATE devices SET queued = (SELECT COUNT(*) FROM messages m WHERE "
            "m.site = devices.site AND m.user = devices.user AND m.device = devices.device)"
        )


def _connect_devices(
    db: Db, connects: Sequence[tuple[dict[str, Any], list[tuple[str, str, str]]]], max_devices: int
) -> list[Connected]:
    return [_connect_device(db, key, rooms, max_devices) for key, rooms in connects]


def _connect_device(
    db: Db, key: dict[str, Any], rooms: list[tuple[str, str, str]], max_devices: int
) -> Connected:
    # A device or user past its expiry is gone, as a Redis key would be.
    expired = db.execute(f"SELECT 1 FROM devices WHERE {DEVICE} AND NOT {LIVE}", key).fetchone()
    if expired is not None:
        db.execute(f"DELETE FROM messages WHERE {DEVICE}", key)
        db.execute(f"DELETE FROM devices WHERE {DEVICE}", key)
    retired: list[str] = []
    if db.execute(f"SELECT 1 FROM devices WHERE {DEVICE}", key).fetchone() is None:  # new
        others = db.execute(
            f"SELECT device, conns FROM devices WHERE site = :site AND user = :user "
            f"AND {LIVE} ORDER BY seen",
            key,
        ).fetchall()
        offline = [device for device, conns in others if conns <= 0]
        over = len(others) - max_devices + 1
        if over > len(offline):
            return Connected(first=False, overflowed=False, refused=True)
        for device in offline[: max(over, 0)]:
            gone = {**key, "device": device}
            db.execute(f"DELETE FROM messages WHERE {DEVICE}", gone)
            db.execute(f"DELETE FROM devices WHERE {DEVICE}", gone)
            retired.append(device)
    flagged = db.execute(
        f"UPDATE devices SET overflow = 0 WHERE {DEVICE} AND overflow = 1 RETURNING 1", key
    ).fetchone()
    db.execute(f"DELETE FROM users WHERE site = :site AND user = :user AND NOT {LIVE}", key)
    db.execute(
        "INSERT INTO devices (site, user, device, conns, seen) VALUES (:site, :user, :device, 1, "
        ":now) ON CONFLICT DO UPDATE SET conns = conns + 1, expires_at = NULL, seen = :now",
        key,
    )
    (conns,) = db.execute(
        "INSERT INTO users (site, user, conns) VALUES (:site, :user, 1) "
        "ON CONFLICT DO UPDATE SET conns = conns + 1, expires_at = NULL RETURNING conns",
        key,
    ).fetchone()
    db.execute("DELETE FROM memberships WHERE site = :site AND user = :user", key)
    db.executemany("INSERT OR IGNORE INTO memberships (site, room, user) VALUES (?, ?, ?)", rooms)
    return Connected(
        first=conns == 1,
        overflowed=flagged is not None,
        retired="\t".join(retired),
        backlog=_backlog(*_read_queue(db, {**key, "after": 0})),
    )


def _disconnect_device(db: Db, key: dict[str, Any], forget: bool) -> bool:
    device_row = db.execute(
        f"UPDATE devices SET conns = MAX(conns - 1, 0), seen = :now WHERE {DEVICE} RETURNING conns",
        key,
    ).fetchone()
    if device_row is not None and device_row[0] == 0:
        if forget:
            db.execute(f"DELETE FROM messages WHERE {DEVICE}", key)
            db.execute(f"DELETE FROM devices WHERE {DEVICE}", key)
        else:
            db.execute(f"UPDATE devices SET expires_at = :exp WHERE {DEVICE}", key)
    user_row = db.execute(
        "UPDATE users SET conns = MAX(conns - 1, 0) WHERE site = :site AND user = :user "
        "RETURNING conns",
        key,
    ).fetchone()
    if user_row is not None and user_row[0] == 0:
        db.execute("UPDATE users SET expires_at = :exp WHERE site = :site AND user = :user", key)
    return user_row is not None and user_row[0] == 0


def _enqueue_all(
    db: Db, batches: list[tuple[dict[str, Any], str, bytes]], step: float
) -> list[tuple[list[Any] | tuple[int, list[Any]], list[Any]]]:
    """The first of ``batches`` that fit in ``step`` seconds (one at least)."""
    started = time.monotonic()
    done: list[tuple[list[Any] | tuple[int, list[Any]], list[Any]]] = []
    for params, event, record in batches:
        if done and time.monotonic() - started >= step:
            break
        done.append(_enqueue(db, params, event, record))
    return done


TARGETS = (
    f"site = :site AND {LIVE} AND user IN ("
    "SELECT value FROM json_each(:users) UNION "
    "SELECT m.user FROM memberships m "
    "JOIN users u ON u.site = m.site AND u.user = m.user "
    "WHERE m.site = :site AND m.room IN (SELECT value FROM json_each(:rooms)) "
    "AND (u.expires_at IS NULL OR u.expires_at > :now))"
)


def _enqueue(
    db: Db, params: dict[str, Any], event: str, record: bytes
) -> tuple[list[Any] | tuple[int, list[Any]], list[Any]]:
    """Store for every target device with room in its queue; flag the full ones. Returns the
    stored (user, device, seq, conns) and the (user, device) that overflowed just now; or,
    for a message whose idempotency key is recorded, how many it reached then and those
    deliveries (their devices' connections as they are now)."""
    if params["key"]:
        prior = db.execute(
            "SELECT stored, deliveries FROM idempotency WHERE site = :site AND key = :key "
            "AND expires_at > :now",
            params,
        ).fetchone()
        if prior is not None:
            again = [
                (user, device, seq, _connections(db, params["site"], user, device))
                for user, device, seq in orjson.loads(prior[1])
            ]
            return (prior[0], again), []
    full = db.execute(
        f"UPDATE devices SET overflow = 1 WHERE {TARGETS} AND overflow = 0 "
        "AND queued >= :max_queue RETURNING user, device",
        params,
    ).fetchall()
    rows = db.execute(
        f"UPDATE devices SET seq = seq + 1, queued = queued + 1 WHERE {TARGETS} "
        "AND queued < :max_queue RETURNING user, device, seq, conns",
        params,
    ).fetchall()
    site = params["site"]
    db.executemany(
        "INSERT INTO messages (site, user, device, seq, event, record) VALUES (?, ?, ?, ?, ?, ?)",
        [(site, user, device, seq, event, record) for user, device, seq, _ in rows],
    )
    if params["key"]:
        recorded = [row[:3] for row in rows] if len(rows) <= RECORDED_DELIVERIES else []
        db.execute(
            "INSERT OR REPLACE INTO idempotency (site, key, stored, expires_at, deliveries) "
            "VALUES (:site, :key, :stored, :key_expires, :deliveries)",
            {**params, "stored": len(rows), "deliveries": orjson.dumps(recorded).decode()},
        )
    return rows, full


def _import_queue(
    db: Db,
    key: dict[str, Any],
    items: Sequence[tuple[str, str, bytes]],
    expires_at: float | None,
    max_queue: int,
) -> Imported:
    """See ``Store.import_queue``; ``items``: (padded original id, event, record), in order."""
    row = db.execute(
        f"SELECT conns, expires_at, seq, queued, imported FROM devices WHERE {DEVICE} AND {LIVE}",
        key,
    ).fetchone()
    created = row is None
    if created:  # new, or expired (gone, as a Redis key would be)
        db.execute(f"DELETE FROM messages WHERE {DEVICE}", key)
        db.execute(f"DELETE FROM devices WHERE {DEVICE}", key)
        row = (0, None, 0, 0, "")
    conns, old_expiry, seq, queued, mark = row
    stored: list[tuple[int, str, bytes]] = []
    known, full, last = 0, 0, mark
    for original_id, event, record in items:
        if original_id <= mark:
            known += 1
            continue
        last = original_id
        if queued + len(stored) >= max_queue:
            full += 1
            continue
        stored.append((seq + len(stored) + 1, event, record))
    if conns > 0:
        keep = None
    elif created:
        keep = expires_at
    elif old_expiry is None or expires_at is None:
        keep = None
    else:
        keep = max(old_expiry, expires_at)
    db.execute(
        "INSERT INTO devices (site, user, device, seq, queued, overflow, imported, expires_at, "
        "seen) VALUES (:site, :user, :device, :seq, :queued, :overflow, :imported, :keep, :now) "
        "ON CONFLICT DO UPDATE SET seq = :seq, queued = :queued, imported = :imported, "
        "expires_at = :keep, overflow = MAX(overflow, :overflow)",
        {
            **key,
            "seq": seq + len(stored),
            "queued": queued + len(stored),
            "overflow": 1 if full else 0,
            "imported": last,
            "keep": keep,
        },
    )
    db.executemany(
        "INSERT INTO messages (site, user, device, seq, event, record) VALUES (?, ?, ?, ?, ?, ?)",
        [(key["site"], key["user"], key["device"], *message) for message in stored],
    )
    return Imported(stored=len(stored), known=known, full=full)


def _connections(db: Db, site: str, user: str, device: str) -> int:
    row = db.execute(
        "SELECT conns FROM devices WHERE site = ? AND user = ? AND device = ?", (site, user, device)
    ).fetchone()
    return row[0] if row else 0


def _backlog(rows: list[Any], last_seq: int) -> Backlog:
    return Backlog([StoredMessage.decode(seq, record) for seq, record in rows], last_seq)


def _read_queues(db: Db, keys: Sequence[dict[str, Any]]) -> list[tuple[list[Any], int]]:
    return [_read_queue(db, key) for key in keys]


def _read_queue(db: Db, key: dict[str, Any]) -> tuple[list[Any], int]:
    live = db.execute(f"SELECT seq FROM devices WHERE {DEVICE} AND {LIVE}", key).fetchone()
    if live is None:
        return [], 0
    rows = db.execute(
        f"SELECT seq, record FROM messages WHERE {DEVICE} AND seq > :after ORDER BY seq", key
    ).fetchall()
    return rows, live[0]


def _write_acks(db: Db, items: Sequence[AckItem]) -> list[int]:
    rows = [
        [site, user, device, seq] for site, user, device, acked in items for seq, _event in acked
    ]
    removed = {
        tuple(row)
        for row in db.execute(
            "DELETE FROM messages WHERE (site, user, device, seq) IN ("
            "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
            "json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?)"
            ") RETURNING site, user, device, seq",
            (orjson.dumps(rows).decode(),),
        )
    }
    counts = [
        sum((site, user, device, seq) in removed for seq, _event in acked)
        for site, user, device, acked in items
    ]
    db.executemany(
        "UPDATE devices SET queued = MAX(queued - ?, 0) WHERE site = ? AND user = ? AND device = ?",
        [
            (count, site, user, device)
            for count, (site, user, device, _) in zip(counts, items, strict=True)
            if count
        ],
    )
    return counts


def _devices_of(db: Db, key: dict[str, Any]) -> list[Any]:
    return db.execute(
        "SELECT device, conns, queued, expires_at FROM devices "
        f"WHERE site = :site AND user = :user AND {LIVE} ORDER BY device",
        key,
    ).fetchall()


def _purge_queue(db: Db, key: dict[str, Any]) -> int | None:
    row = db.execute(
        f"UPDATE devices SET queued = 0, overflow = 1 WHERE {DEVICE} AND {LIVE} RETURNING 1",
        key,
    ).fetchone()
    if row is None:
        return None
    return db.execute(f"DELETE FROM messages WHERE {DEVICE}", key).rowcount


def _online(db: Db, site: str, users: list[str]) -> list[Any]:
    found: list[Any] = []
    for start in range(0, len(users), 500):  # SQLite's limit on variables per statement
        chunk = users[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found += db.execute(
            f"SELECT user FROM users WHERE site = ? AND conns > 0 AND user IN ({marks})",
            [site, *chunk],
        ).fetchall()
    return found


def _ack_head(db: Db, key: dict[str, Any]) -> HeadAck:
    where = f"{DEVICE} AND event = :event"
    if db.execute(f"SELECT 1 FROM messages WHERE {where} AND seq = :seq", key).fetchone() is None:
        return HeadAck(cleared=False)
    (head,) = db.execute(f"SELECT MIN(seq) FROM messages WHERE {where}", key).fetchone()
    if head == key["seq"]:
        db.execute(f"DELETE FROM messages WHERE {where} AND seq = :seq", key)
        db.execute(f"UPDATE devices SET queued = MAX(queued - 1, 0) WHERE {DEVICE}", key)
        return HeadAck(cleared=False)
    cleared = db.execute(f"DELETE FROM messages WHERE {where}", key).rowcount
    db.execute(
        f"UPDATE devices SET queued = MAX(queued - :n, 0) WHERE {DEVICE}", {**key, "n": cleared}
    )
    through = db.execute(f"SELECT seq FROM devices WHERE {DEVICE}", key).fetchone()
    return HeadAck(cleared=True, cleared_through=through[0] if through else key["seq"])


def _members(db: Db, site: str, room: str, now: float) -> list[Any]:
    return db.execute(
        "SELECT m.user FROM memberships m JOIN users u ON u.site = m.site AND u.user = m.user "
        "WHERE m.site = ? AND m.room = ? AND (u.expires_at IS NULL OR u.expires_at > ?)",
        (site, room, now),
    ).fetchall()
