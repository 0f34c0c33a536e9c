"""Every Redis key and channel this service uses: the grammar, once, for Python and for Lua.

User and device names are escaped (``%``, ``:`` and tab) so that no two (user, device) pairs
can name the same key. The Python helpers take names as the service knows them and escape
them; the Lua functions of :data:`LUA_PRELUDE`, generated from the same constants, take the
escaped names the scripts receive. No key is spelt anywhere else.

    {prefix}{site}:dev:{user}:{device}   HASH  seq (last assigned), conns (all nodes),
                                               overflow, n:{node} (connections on that node)
    {prefix}{site}:msg:{user}:{device}   HASH  seq -> record (flags byte + JSON [event, *args])
    {prefix}{site}:evt:{user}:{device}   ZSET  "event\\0<seq, 20 digits>", score 0: per-event order
    {prefix}{site}:user:{user}           HASH  conns
    {prefix}{site}:devices:{user}        SET   device names
    {prefix}{site}:rooms:{user}          SET   shared rooms (lower case) from the latest auth
    {prefix}{site}:members:{room}        SET   users holding the shared room
    {prefix}{site}:idem:{key}            STRING how many devices the message sent with this
                                               idempotency key reached (expires)
    {prefix}expiring:users               ZSET  "{site prefix}\t{user}", score: when the user's
                                               keys expire (ms); the sweep then takes it out of
                                               its rooms' member sets
    {prefix}expiring:devices             ZSET  "{site prefix}\t{user}\t{device}", likewise: the
                                               sweep takes it out of its user's device set
    {prefix}nodes                        ZSET  node id, score: its last heartbeat (ms, Redis time)
    {prefix}node:{node}:devices          SET   "{site prefix}\\t{user}\\t{device}" it holds, so
                                               a dead node's connections can be released
    {prefix}health:{node}                STRING the write probe of /healthcheck
    {prefix}deliver:{node}               pub/sub channel: deliveries for devices on that node
    {prefix}socketio                     pub/sub channel: python-socketio's broadcasts
"""

from __future__ import annotations

from functools import lru_cache

DEFAULT_PREFIX = "sws:"
SEQ_DIGITS = 20
SEP = ":"
HELD_SEP = "\t"
DEVICE, MESSAGES, EVENTS = "dev", "msg", "evt"
USER, DEVICES, ROOMS, MEMBERS = "user", "devices", "rooms", "members"
IDEMPOTENCY = "idem"
NODE = "node"
EXPIRING = "expiring"
NODE_FIELD = "n:"  # the field of a device hash counting its connections on one node


# Every ack and every delivery names a user and a device. Bounded: names are at most a few
# hundred characters (limits), so the cache stays under ~10 MB whatever clients send.
@lru_cache(maxsize=32_768)
def escape(name: str) -> str:
    return name.replace("%", "%25").replace(":", "%3A").replace("\t", "%09")


@lru_cache(maxsize=32_768)
def unescape(name: str) -> str:
    return name.replace("%09", "\t").replace("%3A", ":").replace("%25", "%")


@lru_cache(maxsize=256)  # one per configured site
def site_prefix(prefix: str, site: str) -> str:
    """The part every key of ``site`` starts with: a script's ``p``."""
    return f"{prefix}{escape(site)}{SEP}"


def device_keys(p: str, user: str, device: str) -> tuple[str, str, str]:
    """The device's hash, its messages and its per-event index, under site prefix ``p``."""
    tail = f"{escape(user)}{SEP}{escape(device)}"
    return f"{p}{DEVICE}{SEP}{tail}", f"{p}{MESSAGES}{SEP}{tail}", f"{p}{EVENTS}{SEP}{tail}"


def user_keys(p: str, user: str) -> tuple[str, str, str]:
    """The user's hash, its set of devices and its set of shared rooms."""
    name = escape(user)
    return f"{p}{USER}{SEP}{name}", f"{p}{DEVICES}{SEP}{name}", f"{p}{ROOMS}{SEP}{name}"


def user_key(p: str, escaped_user: str) -> str:
    """For a name read back from a set, which is stored escaped."""
    return f"{p}{USER}{SEP}{escaped_user}"


def idempotency(p: str, key: str) -> str:
    """The record of a message sent with an Idempotency-Key (and its index in the send)."""
    return f"{p}{IDEMPOTENCY}{SEP}{escape(key)}"


def members(p: str, room: str) -> str:
    """``room`` as stored: lower case (shared rooms compare case-insensitively)."""
    return f"{p}{MEMBERS}{SEP}{escape(room)}"


def messages_pattern(p: str) -> str:
    """A SCAN pattern for every message hash of a site (site names hold no glob character)."""
    return f"{p}{MESSAGES}{SEP}*"


def event_member(event: str, seq: int) -> str:
    return f"{event}\0{seq:0{SEQ_DIGITS}d}"


def nodes(prefix: str) -> str:
    return f"{prefix}nodes"


def expiring(prefix: str) -> tuple[str, str]:
    """The users and the devices whose keys expire, by when (see the sweep)."""
    return f"{prefix}{EXPIRING}{SEP}users", f"{prefix}{EXPIRING}{SEP}devices"


def node_devices(prefix: str, node: str) -> str:
    return f"{prefix}{NODE}{SEP}{node}{SEP}{DEVICES}"


def node_field(node: str) -> str:
    return f"{NODE_FIELD}{node}"


def health(prefix: str, node: str) -> str:
    return f"{prefix}health{SEP}{node}"


def deliver_channel(prefix: str, node: str) -> str:
    return f"{prefix}deliver{SEP}{node}"


def socketio_channel(prefix: str) -> str:
    return f"{prefix}socketio"


def _lua(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("\t", "\\t").replace("\0", "\\0") + "'"


_HELD_PATTERN = (
    f"^([^{HELD_SEP}]*){HELD_SEP}([^{HELD_SEP}]*){HELD_SEP}([^{HELD_SEP}]*)$"  # a Lua pattern
)

_USER_ENTRY_PATTERN = f"^([^{HELD_SEP}]*){HELD_SEP}([^{HELD_SEP}]*)$"

# The same grammar for the scripts; every script starts with it (see ``redis_scripts``).
LUA_PRELUDE = f"""
local SEQ_DIGITS = {SEQ_DIGITS}
local function device_keys(p, user, device)
  local tail = user .. {_lua(SEP)} .. device
  return p .. {_lua(DEVICE + SEP)} .. tail, p .. {_lua(MESSAGES + SEP)} .. tail,
    p .. {_lua(EVENTS + SEP)} .. tail
end
local function user_keys(p, user)
  return p .. {_lua(USER + SEP)} .. user, p .. {_lua(DEVICES + SEP)} .. user,
    p .. {_lua(ROOMS + SEP)} .. user
end
local function members_key(p, room) return p .. {_lua(MEMBERS + SEP)} .. room end
local function user_key(p, user) return p .. {_lua(USER + SEP)} .. user end
local function node_devices_key(g, node) return g .. {_lua(NODE + SEP)} .. node ..
  {_lua(SEP + DEVICES)} end
local function node_field(node) return {_lua(NODE_FIELD)} .. node end
local NODE_FIELD = {_lua(NODE_FIELD)}
local function held_entry(p, user, device)
  return p .. {_lua(HELD_SEP)} .. user .. {_lua(HELD_SEP)} .. device
end
local function split_held(entry)
  return string.match(entry, {_lua(_HELD_PATTERN)})
end
local function user_entry(p, user) return p .. {_lua(HELD_SEP)} .. user end
local function split_user_entry(entry)
  return string.match(entry, {_lua(_USER_ENTRY_PATTERN)})
end
local function event_member(event, seq)
  return event .. '\\0' .. string.format('%0' .. SEQ_DIGITS .. 'd', tonumber(seq))
end
local function expire_all(ttl, ...)
  for _, k in ipairs({{...}}) do
    if ttl > 0 then redis.call('PEXPIRE', k, ttl) else redis.call('PERSIST', k) end
  end
end
"""


def held_entry(p: str, user: str, device: str) -> str:
    """A member of ``node_devices``: which site's device a node holds a connection of."""
    return f"{p}{HELD_SEP}{escape(user)}{HELD_SEP}{escape(device)}"
