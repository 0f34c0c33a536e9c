"""What the Node original queued for offline devices, read from its Redis, which is never changed.

The original keeps one list per device and event (docs/switching.md):

    /<site>:socket.io:<user room>:<deviceId>:<event>   LIST of "<flake id>:<JSON [event, *args]>"

pushed in send order, with the device TTL while the device is offline and none while it is
connected. The flake id (64 bits: milliseconds, datacenter, worker, sequence; written in
decimal) is time-ordered, so a device's items sorted by it across its lists are in the order
the original stored them.

Only the user room's end is ambiguous in a key name (a deviceId or an event may hold ``:``):
the room is the site's public channel or starts with its ``userRoomPrefix`` and ends at the
next ``:``; the event is the one each item names, which the key must end with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from .redis_wire import FAILURES, RedisWire
from .store import ImportedMessage, Message, StoreUnavailable

KEY_MARK = ":socket.io:"
SCAN_COUNT = 1000  # keys SCAN looks at per call
MAX_ID = 2**64 - 1
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})


class UserRooms(NamedTuple):
    """What tells a user room of a site in a key: its prefix and its public channel."""

    prefix: str
    public_channel: str

    def split(self, rest: str) -> tuple[str, str] | None:
        """``<room>:<deviceId>:<event>`` -> (room, ``<deviceId>:<event>``); None if the
        key's room is not a user room of the site."""
        if self.prefix and rest.startswith(self.prefix):
            colon = rest.find(":", len(self.prefix))
            if colon > 0:
                return rest[:colon], rest[colon + 1 :]
        channel = self.public_channel
        if channel and rest.startswith(channel + ":"):
            return channel, rest[len(channel) + 1 :]
        return None


class QueueKey(NamedTuple):
    key: bytes
    site: str
    rest: str  # "<room>:<deviceId>:<event>"


class DeviceQueue(NamedTuple):
    """One device's items, merged from its lists; ``ttl``: seconds its lists had left (the
    longest), None if one had no expiry (the device was connected)."""

    site: str
    user: str
    device: str
    messages: list[ImportedMessage]
    ttl: int | None


@dataclass
class Skipped:
    """Items (messages) not imported, by reason; a key that is not a list counts as one
    malformed item."""

    unknown_sites: Counter[str] = field(default_factory=Counter)
    malformed: int = 0
    no_device: int = 0  # for a client without deviceId: no device here can be given them
    not_user_room: int = 0

    @property
    def total(self) -> int:
        return (
            sum(self.unknown_sites.values())
            + self.malformed
            + self.no_device
            + (self.not_user_room)
        )


def parse_key(key: bytes) -> QueueKey | None:
    """The site and the rest of one of the original's queue keys; None for other keys."""
    text = key.decode(errors="replace")
    site, mark, rest = text.partition(KEY_MARK)
    if not mark or not site.startswith("/") or len(site) < 2:
        return None
    return QueueKey(key, site[1:], rest)


def parse_item(item: bytes) -> tuple[int, Message] | None:
    """``<flake id>:<JSON [event, *args]>``; None if it is not one."""
    original_id, colon, payload = item.partition(b":")
    if not colon or not original_id.isdigit() or int(original_id) > MAX_ID:
        return None
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, list) or not data or not isinstance(data[0], str) or not data[0]:
        return None
    return int(original_id), Message(event=data[0], args=data[1:])


class OriginalRedis:
    """The original's Redis, read only: SCAN (never KEYS), TYPE, PTTL, LRANGE. A failure is
    a :class:`StoreUnavailable` naming it."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self._wire = RedisWire.from_url(url, timeout)

    async def _pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        try:
            return await self._wire.pipeline(commands)
        except FAILURES as exc:
            raise StoreUnavailable(f"the original's Redis: {exc}") from exc

    async def scan(self, site: str | None = None) -> list[QueueKey]:
        """Every queue key of the original (of ``site`` only, if given)."""
        pattern = f"/{site.translate(_GLOB)}{KEY_MARK}*" if site else f"/*{KEY_MARK}*"
        found: list[QueueKey] = []
        cursor: Any = b"0"
        while True:
            ((cursor, keys),) = await self._pipeline(
                [(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", SCAN_COUNT)]
            )
            found += filter(None, map(parse_key, keys))
            if cursor == b"0":
                return found

    async def lengths(self, keys: Sequence[QueueKey]) -> int:
        """How many items these keys hold (the queues of sites not configured here)."""
        types = await self._pipeline([(b"TYPE", k.key) for k in keys])
        lists = [k.key for k, kind in zip(keys, types, strict=True) if kind == b"list"]
        counted = await self._pipeline([(b"LLEN", key) for key in lists])
        return int(sum(counted)) + len(keys) - len(lists)

    async def read(self, keys: Sequence[QueueKey], per_list: int) -> list[tuple[int, list[bytes]]]:
        """For each key: the ms it has left (-1: no expiry; -3: not a list), and its first
        ``per_list`` items."""
        types = await self._pipeline([(b"TYPE", k.key) for k in keys])
        commands: list[tuple[Any, ...]] = []
        for k, kind in zip(keys, types, strict=True):
            if kind == b"list":
                commands += [(b"PTTL", k.key), (b"LRANGE", k.key, 0, per_list - 1)]
        replies = iter(await self._pipeline(commands))
        return [
            (int(next(replies)), list(next(replies))) if kind == b"list" else (-3, [])
            for kind in types
        ]

    async def close(self) -> None:
        await self._wire.close()


def device_queues(
    keys: Sequence[QueueKey],
    read: Sequence[tuple[int, list[bytes]]],
    rooms: UserRooms,
    skipped: Skipped,
) -> list[DeviceQueue]:
    """The items of one site's keys, merged per device and sorted by original id."""
    merged: dict[tuple[str, str], tuple[list[ImportedMessage], list[int]]] = {}
    for queue_key, (left_ms, items) in zip(keys, read, strict=True):
        if left_ms == -3:
            skipped.malformed += 1
            continue
        split = rooms.split(queue_key.rest)
        if split is None:
            skipped.not_user_room += len(items)
            continue
        user, device_and_event = split
        for item in items:
            parsed = parse_item(item)
            suffix = f":{parsed[1].event}" if parsed else ""
            if parsed is None or not device_and_event.endswith(suffix):
                skipped.malformed += 1
                continue
            device = device_and_event[: -len(suffix)]
            if not device:
                skipped.no_device += 1
                continue
            messages, ttls = merged.setdefault((user, device), ([], []))
            messages.append(ImportedMessage(*parsed))
            ttls.append(left_ms)
    site = keys[0].site if keys else ""
    return [
        DeviceQueue(
            site,
            user,
            device,
            sorted(messages, key=lambda m: m.original_id),
            None if min(ttls) < 0 else (max(ttls) + 999) // 1000,
        )
        for (user, device), (messages, ttls) in merged.items()
    ]


def by_user(
    keys: Sequence[QueueKey], rooms: Mapping[str, UserRooms]
) -> dict[tuple[str, str], list[QueueKey]]:
    """Keys grouped by (site, user room), so that each device's lists are read together."""
    groups: dict[tuple[str, str], list[QueueKey]] = {}
    for key in keys:
        split = rooms[key.site].split(key.rest)
        groups.setdefault((key.site, split[0] if split else ""), []).append(key)
    return groups
