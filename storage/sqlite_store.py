"""SQLite store: the embedded default for a single node.

One connection, in WAL mode. aiosqlite runs statements on one thread in the order they are
sent, so a transaction is kept whole by a lock around it: this is SQLite's own single-writer
rule made explicit, not a lock across users. ``synchronous=FULL`` (the default here) makes a
committed /send survive a power loss as well as a crash of the process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import orjson
from loguru import logger

from storage.base import AckItem, Delivery, HeadAck, Message, StoredMessage, StoreUnavailable
from storage.coalesce import WriteCoalescer

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL, user TEXT NOT NULL, device TEXT NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0,
    conns INTEGER NOT NULL DEFAULT 0,
    expires_at REAL,
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
"""

LIVE = "(expires_at IS NULL OR expires_at > :now)"
SWEEP_INTERVAL = 60.0


class SQLiteStore:
    def __init__(
        self, path: str | Path, device_ttl: int, synchronous: str = "FULL", node_id: str = "local"
    ) -> None:
        self.path = Path(path)
        self.device_ttl = device_ttl
        self.node_id = node_id
        self.synchronous = synchronous
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._acks: WriteCoalescer[AckItem, int] = WriteCoalescer(self._write_acks)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.executescript(SCHEMA)
        await self._recover_connections()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="sqlite-sweeper")

    async def close(self) -> None:
        await self._acks.drain()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._db is not None:
            async with self._lock:
                await self._db.close()
            self._db = None

    async def ping(self) -> None:
        async with self._read() as db:
            await db.execute("SELECT 1")

    async def heartbeat(self) -> list[str]:
        return []  # a single node: its crash is recovered at the next open()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._db is None:
            raise StoreUnavailable("SQLite store is not open")
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock, self._read() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    def _expiry(self, now: float) -> float | None:
        return now + self.device_ttl if self.device_ttl > 0 else None

    async def _recover_connections(self) -> None:
        """A single node owns every connection, so any count left at start-up is from a crash:
        those devices went offline when the process died and start to expire now."""
        now = time.time()
        params = {"exp": self._expiry(now)}
        async with self._transaction() as db:
            await db.execute(
                "UPDATE devices SET conns = 0, expires_at = :exp WHERE conns > 0", params
            )
            await db.execute(
                "UPDATE users SET conns = 0, expires_at = :exp WHERE conns > 0", params
            )

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                logger.warning("SQLite sweep failed: {}", exc)

    async def sweep(self) -> None:
        """Delete what has expired; reads already ignore it, this only reclaims space."""
        params = {"now": time.time()}
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM messages WHERE (site, user, device) IN (SELECT site, user, device "
                "FROM devices WHERE expires_at IS NOT NULL AND expires_at <= :now)",
                params,
            )
            await db.execute(
                "DELETE FROM devices WHERE expires_at IS NOT NULL AND expires_at <= :now", params
            )
            await db.execute(
                "DELETE FROM memberships WHERE (site, user) IN (SELECT site, user FROM users "
                "WHERE expires_at IS NOT NULL AND expires_at <= :now)",
                params,
            )
            await db.execute(
                "DELETE FROM users WHERE expires_at IS NOT NULL AND expires_at <= :now", params
            )

    async def connect_device(
        self, site: str, user: str, device: str, shared_rooms: Sequence[str]
    ) -> bool:
        now = time.time()
        key = {"site": site, "user": user, "device": device, "now": now}
        async with self._transaction() as db:
            # A device or user past its expiry is gone, as a Redis key would be.
            await db.execute(
                "DELETE FROM messages WHERE site = :site AND user = :user AND device = :device "
                "AND EXISTS (SELECT 1 FROM devices WHERE site = :site AND user = :user "
                "AND device = :device AND NOT " + LIVE + ")",
                key,
            )
            await db.execute(
                "DELETE FROM devices WHERE site = :site AND user = :user AND device = :device "
                "AND NOT " + LIVE,
                key,
            )
            await db.execute(
                "DELETE FROM users WHERE site = :site AND user = :user AND NOT " + LIVE, key
            )
            await db.execute(
                "INSERT INTO devices (site, user, device, conns) VALUES (:site, :user, :device, 1) "
                "ON CONFLICT DO UPDATE SET conns = conns + 1, expires_at = NULL",
                key,
            )
            cursor = await db.execute(
                "INSERT INTO users (site, user, conns) VALUES (:site, :user, 1) "
                "ON CONFLICT DO UPDATE SET conns = conns + 1, expires_at = NULL RETURNING conns",
                key,
            )
            row = await cursor.fetchone()
            await db.execute("DELETE FROM memberships WHERE site = :site AND user = :user", key)
            await db.executemany(
                "INSERT OR IGNORE INTO memberships (site, room, user) VALUES (?, ?, ?)",
                [(site, room.lower(), user) for room in shared_rooms],
            )
        return row is not None and row[0] == 1

    async def disconnect_device(self, site: str, user: str, device: str, *, forget: bool) -> bool:
        now = time.time()
        key = {"site": site, "user": user, "device": device, "exp": self._expiry(now)}
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE devices SET conns = MAX(conns - 1, 0) "
                "WHERE site = :site AND user = :user AND device = :device RETURNING conns",
                key,
            )
            device_row = await cursor.fetchone()
            if device_row is not None and device_row[0] == 0:
                if forget:
                    await db.execute(
                        "DELETE FROM messages WHERE site = :site AND user = :user "
                        "AND device = :device",
                        key,
                    )
                    await db.execute(
                        "DELETE FROM devices WHERE site = :site AND user = :user "
                        "AND device = :device",
                        key,
                    )
                else:
                    await db.execute(
                        "UPDATE devices SET expires_at = :exp WHERE site = :site AND user = :user "
                        "AND device = :device",
                        key,
                    )
            cursor = await db.execute(
                "UPDATE users SET conns = MAX(conns - 1, 0) WHERE site = :site AND user = :user "
                "RETURNING conns",
                key,
            )
            user_row = await cursor.fetchone()
            if user_row is not None and user_row[0] == 0:
                await db.execute(
                    "UPDATE users SET expires_at = :exp WHERE site = :site AND user = :user", key
                )
        return user_row is not None and user_row[0] == 0

    async def enqueue(
        self, site: str, users: Sequence[str], shared_rooms: Sequence[str], message: Message
    ) -> list[Delivery]:
        params = {
            "site": site,
            "now": time.time(),
            "users": orjson.dumps(list(users)).decode(),
            "rooms": orjson.dumps([room.lower() for room in shared_rooms]).decode(),
        }
        record = message.encode()
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE devices SET seq = seq + 1 WHERE site = :site AND " + LIVE + " AND user IN ("
                "SELECT value FROM json_each(:users) UNION "
                "SELECT m.user FROM memberships m "
                "JOIN users u ON u.site = m.site AND u.user = m.user "
                "WHERE m.site = :site AND m.room IN (SELECT value FROM json_each(:rooms)) "
                "AND (u.expires_at IS NULL OR u.expires_at > :now)"
                ") RETURNING user, device, seq, conns",
                params,
            )
            rows = await cursor.fetchall()
            await db.executemany(
                "INSERT INTO messages (site, user, device, seq, event, record) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(site, user, device, seq, message.event, record) for user, device, seq, _ in rows],
            )
        here = (self.node_id,)  # one node holds every connection
        return [
            Delivery(user, device, seq, here if conns else ()) for user, device, seq, conns in rows
        ]

    async def pending(
        self, site: str, user: str, device: str, after_seq: int = 0
    ) -> list[StoredMessage]:
        params = {
            "site": site,
            "user": user,
            "device": device,
            "after": after_seq,
            "now": time.time(),
        }
        async with self._read() as db:
            cursor = await db.execute(
                "SELECT seq, record FROM messages WHERE site = :site AND user = :user "
                "AND device = :device AND seq > :after AND EXISTS (SELECT 1 FROM devices "
                "WHERE site = :site AND user = :user AND device = :device AND " + LIVE + ") "
                "ORDER BY seq",
                params,
            )
            rows = await cursor.fetchall()
        return [StoredMessage.decode(seq, record) for seq, record in rows]

    def ack(
        self, site: str, user: str, device: str, acked: Sequence[tuple[int, str]]
    ) -> asyncio.Future[int]:
        return self._acks.submit((site, user, device, acked))

    async def _write_acks(self, items: Sequence[AckItem]) -> list[int]:
        """Every ack of this turn in one statement and one transaction (one fsync)."""
        rows = [
            [site, user, device, seq]
            for site, user, device, acked in items
            for seq, _event in acked
        ]
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM messages WHERE (site, user, device, seq) IN ("
                "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
                "json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?)"
                ") RETURNING site, user, device, seq",
                (orjson.dumps(rows).decode(),),
            )
            removed = {tuple(row) for row in await cursor.fetchall()}
        return [
            sum((site, user, device, seq) in removed for seq, _event in acked)
            for site, user, device, acked in items
        ]

    async def ack_head(self, site: str, user: str, device: str, seq: int, event: str) -> HeadAck:
        key = {"site": site, "user": user, "device": device, "event": event, "seq": seq}
        where = "site = :site AND user = :user AND device = :device AND event = :event"
        async with self._transaction() as db:
            cursor = await db.execute(f"SELECT MIN(seq) FROM messages WHERE {where}", key)
            head = await cursor.fetchone()
            cursor = await db.execute(f"SELECT 1 FROM messages WHERE {where} AND seq = :seq", key)
            present = await cursor.fetchone() is not None
            if not present:
                return HeadAck(cleared=False)
            if head is not None and head[0] == seq:
                await db.execute(f"DELETE FROM messages WHERE {where} AND seq = :seq", key)
                return HeadAck(cleared=False)
            await db.execute(f"DELETE FROM messages WHERE {where}", key)
            cursor = await db.execute(
                "SELECT seq FROM devices WHERE site = :site AND user = :user AND device = :device",
                key,
            )
            through = await cursor.fetchone()
        return HeadAck(cleared=True, cleared_through=through[0] if through else seq)

    async def shared_room_members(self, site: str, room: str) -> set[str]:
        async with self._read() as db:
            cursor = await db.execute(
                "SELECT m.user FROM memberships m JOIN users u ON u.site = m.site "
                "AND u.user = m.user WHERE m.site = ? AND m.room = ? "
                "AND (u.expires_at IS NULL OR u.expires_at > ?)",
                (site, room.lower(), time.time()),
            )
            rows = await cursor.fetchall()
        return {row[0] for row in rows}
