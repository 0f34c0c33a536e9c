"""Converts a Redis store written in an earlier key layout, once, when a node starts.

Layout 1 (release 0.1.0) kept each site's keys under one prefix; layout 2 keeps each user's
keys in a bucket (``redis_keys``); layout 3, this release's, keeps the devices of a room's
members in the room's member sets and each device's holders in its bucket's holders hash.
The first node of this release to start converts every key (queues with the time they had
left, devices, rooms, what expires, what each node held), so that nothing queued before the
upgrade is lost, then records the layout; the others wait for it. Nodes of an earlier release
must be stopped first: they write the old layout. Idempotency records of layout 1 are not
carried over (a retry, after the upgrade, of a send made before it stores again); those of
layout 2 are read as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from loguru import logger

from . import redis_keys as keys
from . import redis_scripts as scripts
from .redis_keys import HELD_SEP, LAYOUT, escape, layout_1_unescape
from .redis_wire import ClusterWire, RedisWire
from .store import StoreUnavailable

LOCK_MS = 120_000  # the converter's lock lasts this long at most
SCAN_COUNT = 1000

Wire = RedisWire | ClusterWire


async def upgrade(wire: Wire, prefix: str, dead_after: float) -> None:
    """Convert, or wait for the node converting, unless the layout is this release's."""
    marker = keys.layout(prefix)
    if await wire.command(b"GET", marker) == LAYOUT.encode():
        return
    lock = keys.layout_lock(prefix)
    if not await wire.command(b"SET", lock, b"1", b"NX", b"PX", LOCK_MS):
        for _ in range(LOCK_MS // 200):
            await asyncio.sleep(0.2)
            if await wire.command(b"GET", marker) == LAYOUT.encode():
                return
        raise StoreUnavailable("another node is converting the Redis layout and has not finished")
    try:
        recorded = await wire.command(b"GET", marker)  # again, under the lock
        if recorded == LAYOUT.encode():
            return
        if recorded not in (None, b"2"):
            raise StoreUnavailable(
                f"Redis holds layout {recorded.decode(errors='replace')}, which this release "
                f"(layout {LAYOUT}) does not know: run the release that wrote it"
            )
        found = [] if recorded else await _old_keys(wire, prefix)
        if found or recorded:
            await _refuse_if_old_nodes_run(wire, prefix, dead_after)
        if found:
            logger.info("Redis: converting {} keys of layout 1 to layout 2", len(found))
            await _convert(wire, prefix, found)
        if found or recorded:
            converted = await _convert_2(wire, prefix)
            logger.info("Redis: converted {} keys of layout 2 to layout {}", converted, LAYOUT)
        await wire.command(b"SET", marker, LAYOUT)
    finally:
        await wire.command(b"DEL", lock)


async def _scan(wire: Wire, pattern: str) -> list[str]:
    """Every key matching ``pattern``, on every primary."""
    found = []
    for node in wire.primaries():
        cursor: Any = b"0"
        while True:
            cursor, batch = await node.command(
                b"SCAN", cursor, b"MATCH", pattern, b"COUNT", SCAN_COUNT
            )
            found += [key.decode() for key in batch]
            if cursor == b"0":
                break
    return found


async def _old_keys(wire: Wire, prefix: str) -> list[tuple[str, tuple[str, str, str]]]:
    found = []
    for name in await _scan(wire, f"{prefix}*"):
        parsed = keys.layout_1_key(prefix, name)
        if parsed is not None:
            found.append((name, parsed))
    return found


async def _convert_2(wire: Wire, prefix: str) -> int:
    """Layout 2 to 3: each room's member set holds its users' device entries instead of the
    users; each device's holders move from its hash to the bucket's holders hash."""
    calls: list[tuple[Any, list[str], list[Any]]] = []
    for name in await _scan(wire, f"{prefix}{{b*"):
        parsed = keys.bucket_key(prefix, name)
        if parsed is None:
            continue
        p, kind, rest = parsed
        if kind == keys.MEMBERS:
            calls.append((scripts.CONVERT_MEMBERS, [name], [p]))
        elif kind == keys.DEVICE and keys.SEP in rest:
            calls.append((scripts.CONVERT_HOLDERS, [name], [p, rest]))
    for start in range(0, len(calls), 1000):
        await wire.run_scripts(calls[start : start + 1000])
    return len(calls)


async def _refuse_if_old_nodes_run(wire: Wire, prefix: str, dead_after: float) -> None:
    nodes = keys.nodes(prefix)
    node = wire.node_wire(nodes)
    seconds, micros = await node.command(b"TIME")
    since = int(seconds) * 1000 + int(micros) // 1000 - int(dead_after * 1000)
    alive = await node.command(b"ZRANGEBYSCORE", nodes, since, b"+inf")
    if alive:
        raise StoreUnavailable(
            f"nodes of the earlier release are running ({len(alive)}): stop them, then start "
            "this release, which converts their Redis layout (docs/deployment.md, Upgrading)"
        )


def _new_prefix(prefix: str, old_site: str, old_user: str) -> str:
    return keys.user_prefix(prefix, layout_1_unescape(old_site), layout_1_unescape(old_user))


def _entry(prefix: str, entry: bytes) -> tuple[str, str, str, str]:
    """(new prefix, new user, new device, bucket tag) of a layout 1 held or expiring entry."""
    old_p, user, *device = entry.decode().split(HELD_SEP)
    site = old_p[len(prefix) : -1]
    p = _new_prefix(prefix, site, user)
    new_device = escape(layout_1_unescape(device[0])) if device else ""
    return p, escape(layout_1_unescape(user)), new_device, keys.bucket_of_prefix(p)


async def _convert(
    wire: Wire, prefix: str, found: Sequence[tuple[str, tuple[str, str, str]]]
) -> None:
    renames: list[tuple[Any, list[str], list[Any]]] = []
    commands: list[tuple[Any, ...]] = []
    deletes: list[str] = []
    for name, (kind, site, rest) in found:
        if kind == keys.EVENTS:  # now in the message hash's field names
            deletes.append(name)
        elif kind in (keys.DEVICE, keys.MESSAGES):
            user, device = rest.split(keys.SEP)
            p = _new_prefix(prefix, site, user)
            dev, msg = keys.device_keys(p, layout_1_unescape(user), layout_1_unescape(device))
            if kind == keys.DEVICE:
                renames.append((scripts.RENAME_OLD, [name, dev], []))
            else:
                renames.append((scripts.CONVERT_QUEUE, [name, msg], []))
        elif kind in (keys.USER, keys.DEVICES, keys.ROOMS):
            p = _new_prefix(prefix, site, rest)
            index = (keys.USER, keys.DEVICES, keys.ROOMS).index(kind)
            new = keys.user_keys(p, layout_1_unescape(rest))[index]
            renames.append((scripts.RENAME_OLD, [name, new], []))
            if kind != keys.USER:  # names in these sets are escaped: braces are now too
                for member in await wire.command(b"SMEMBERS", name):
                    text = member.decode()
                    if escape(layout_1_unescape(text)) != text:
                        commands += [
                            (b"SREM", name, member),
                            (b"SADD", name, escape(layout_1_unescape(text))),
                        ]
        elif kind == keys.MEMBERS:
            room = layout_1_unescape(rest)
            room_index = keys.room_buckets(prefix, layout_1_unescape(site), room)
            for member in await wire.command(b"SMEMBERS", name):
                user = member.decode()
                p = _new_prefix(prefix, site, user)
                commands.append((b"SADD", keys.members(p, room), escape(layout_1_unescape(user))))
                commands.append((b"HINCRBY", room_index, keys.bucket_number(p), 1))
            deletes.append(name)
        elif kind == keys.EXPIRING:
            users = site == "users"
            for entry, score in _pairs(await wire.command(b"ZRANGE", name, 0, -1, b"WITHSCORES")):
                p, user, device, g = _entry(prefix, entry)
                new_entry = f"{p}{HELD_SEP}{user}" + ("" if users else f"{HELD_SEP}{device}")
                commands.append((b"ZADD", keys.expiring(g)[0 if users else 1], score, new_entry))
            deletes.append(name)
        elif kind == keys.NODE:
            for entry in await wire.command(b"SMEMBERS", name):
                p, user, device, g = _entry(prefix, entry)
                new_entry = f"{p}{HELD_SEP}{user}{HELD_SEP}{device}"
                commands.append((b"SADD", keys.node_devices(g, site), new_entry))
            deletes.append(name)
        else:  # idempotency records: not carried over
            deletes.append(name)
    # Set members are fixed before their sets are renamed; then the new keys are written.
    for start in range(0, len(commands), 1000):
        await wire.pipeline(commands[start : start + 1000])
    for start in range(0, len(renames), 1000):
        await wire.run_scripts(renames[start : start + 1000])
    for name in deletes:
        await wire.command(b"DEL", name)


def _pairs(flat: list[Any]) -> list[tuple[bytes, bytes]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
