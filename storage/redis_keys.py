"""Every Redis key this service writes, in one place.

User and device names are escaped (``%``, ``:`` and tab) so that no two (user, device) pairs
can name the same key; the Lua scripts receive escaped names and only ever join them with ``:``.

    {prefix}{site}:dev:{user}:{device}   HASH  seq (last assigned), conns (all nodes),
                                               n:{node} (connections on that node)
    {prefix}{site}:msg:{user}:{device}   HASH  seq -> record (flags byte + JSON [event, *args])
    {prefix}{site}:evt:{user}:{device}   ZSET  "event\\0<seq, 20 digits>", score 0: per-event order
    {prefix}{site}:user:{user}           HASH  conns
    {prefix}{site}:devices:{user}        SET   device names
    {prefix}{site}:rooms:{user}          SET   shared rooms (lower case) from the latest auth
    {prefix}{site}:members:{room}        SET   users holding the shared room
    {prefix}nodes                        ZSET  node id, score: its last heartbeat (ms, Redis time)
    {prefix}node:{node}:devices          SET   "{site prefix}\t{user}\t{device}" it holds, so
                                               a dead node's connections can be released
    {prefix}deliver:{node}               pub/sub channel: deliveries for devices on that node
"""

from __future__ import annotations

from functools import lru_cache

DEFAULT_PREFIX = "sws:"
SEQ_DIGITS = 20


# Every ack and every delivery names a user and a device. Bounded: names are at most a few
# hundred characters (limits), so the cache stays under ~10 MB whatever clients send.
@lru_cache(maxsize=32_768)
def escape(name: str) -> str:
    return name.replace("%", "%25").replace(":", "%3A").replace("\t", "%09")


@lru_cache(maxsize=32_768)
def unescape(name: str) -> str:
    return name.replace("%09", "\t").replace("%3A", ":").replace("%25", "%")


def site_prefix(prefix: str, site: str) -> str:
    """The part every key of ``site`` starts with; scripts append the rest."""
    return f"{prefix}{escape(site)}:"


def event_member(event: str, seq: int) -> str:
    return f"{event}\0{seq:0{SEQ_DIGITS}d}"


def nodes(prefix: str) -> str:
    return f"{prefix}nodes"


def node_devices(prefix: str, node: str) -> str:
    return f"{prefix}node:{node}:devices"


def node_field(node: str) -> str:
    return f"n:{node}"


def deliver_channel(prefix: str, node: str) -> str:
    return f"{prefix}deliver:{node}"
