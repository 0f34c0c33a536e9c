"""Every Redis key and channel this service uses: the grammar, once, for Python and for Lua.

A user's keys live in one of ``BUCKETS`` buckets, chosen by a hash of its site and name, and a
bucket is a Redis Cluster hash tag (``{b17}``): every key of the bucket is in one slot, so a
script that works on one bucket runs on one Redis whatever the cluster looks like, and a
user's devices, queues, rooms, and the bucket's own indexes (which node holds which device,
what expires when, who holds a shared room) change together, atomically. A send to many
users is one script per primary on Redis Cluster, one script in all on a single Redis.

User and device names are escaped (``%``, ``:``, tab, braces) so that no two (user, device)
pairs can name the same key. The Python helpers take names as the service knows them and
escape them; the Lua functions of :data:`LUA_PRELUDE`, generated from the same constants, take
the escaped names the scripts receive, and ``p``, a bucket's prefix for one site. No key is
spelt anywhere else. A device entry, ``{user}:{device}`` (escaped: no ``:`` in either), names
a device within its bucket and site: the tail of its keys, and what a room's members hold.

    {prefix}{b<n>}:{site}:dev:{user}:{device}   HASH  seq (last assigned), conns (all nodes),
                                                      overflow, seen, imported, n:{node}
                                                      (connections on that node)
    {prefix}{b<n>}:{site}:msg:{user}:{device}   HASH  "{seq}:{event}" -> record (flags byte +
                                                      JSON); the event in the field name lets
                                                      a resync ack find an event's messages
                                                      without reading their payloads
    {prefix}{b<n>}:{site}:holders               HASH  "{user}:{device}" (a device entry) ->
                                                      the nodes holding its connections,
                                                      comma-separated ('' offline): a send
                                                      reads a bucket's in one HMGET; a
                                                      device has one while its hash is kept
    {prefix}{b<n>}:{site}:caps                  HASH  device entry -> the highest seq it can
                                                      take before its queue's length must be
                                                      read again (see ENQUEUE); "max" -> the
                                                      max_queue they were counted for
    {prefix}{b<n>}:{site}:user:{user}           HASH  conns
    {prefix}{b<n>}:{site}:devices:{user}        SET   device names
    {prefix}{b<n>}:{site}:rooms:{user}          SET   shared rooms (lower case), latest auth
    {prefix}{b<n>}:{site}:members:{room}        SET   the device entries of the bucket's
                                                      users holding the room: a send to the
                                                      room reads its devices, not its users
    {prefix}{b<n>}:{site}:idem:{key}            STRING what the part of a message sent with
                                                      this idempotency key stored (expires)
    {prefix}{b<n>}:depth                        HASH  site -> a share of the messages stored
                                                      (the queue_depth metric: the sum over
                                                      the buckets, read without walking the
                                                      keyspace)
    {prefix}{b<n>}:probe                        never written: a script that may meet its
                                                      bucket's slot on the move reads it first
                                                      (in such a slot, a key not there fails)
    {prefix}{b<n>}:expiring:users               ZSET  "{p}\\t{user}", score: when the user's
                                                      keys expire (ms)
    {prefix}{b<n>}:expiring:devices             ZSET  "{p}\\t{user}\\t{device}", likewise: the
                                                      sweep takes it out of its device set,
                                                      its rooms' members and the holders
    {prefix}{b<n>}:node:{node}:devices          SET   "{p}\\t{user}\\t{device}" the node holds
                                                      a connection of, so that a dead node's
                                                      connections can be released
    {prefix}{{site}:{room}}:buckets             HASH  bucket -> version: the buckets that may
                                                      hold members of the room (a superset)
    {prefix}nodes                               ZSET  node id, score: last heartbeat (Redis ms)
    {prefix}layout                              STRING the layout's version (``LAYOUT``)
    {prefix}{b<n>}:health:{node}                STRING the write probe of /healthcheck (one
                                                      bucket per primary)
    {prefix}deliver:{node}                      channel: deliveries for devices on that node
    {prefix}broadcast                           channel: plain sites' sends, for every node
"""

from __future__ import annotations

import zlib
from functools import lru_cache

DEFAULT_PREFIX = "sws:"
LAYOUT = "3"  # converted by ``redis_layout`` from 1 (0.1.0: one prefix per site, no buckets)
# and 2 (rooms' members were users; each device hash held its nodes field)
BUCKETS = 256
SEP = ":"
HELD_SEP = "\t"
DEVICE, MESSAGES = "dev", "msg"
EVENTS = "evt"  # layout 1 only: a per-event index, now in the message field names
USER, DEVICES, ROOMS, MEMBERS = "user", "devices", "rooms", "members"
HOLDERS, CAPS = "holders", "caps"
CAPS_MAX = "max"  # the caps hash's field of the max_queue its caps were counted for
IDEMPOTENCY = "idem"
NODE = "node"
EXPIRING = "expiring"
DEPTH = "depth"
PROBE = "probe"
NODE_FIELD = "n:"  # the field of a device hash counting its connections on one node
NODES_FIELD = "nodes"  # layout 2: the device hash's list of its holders (now in HOLDERS)


# Every ack and every delivery names a user and a device. Bounded: names are at most a few
# hundred characters (limits), so the cache stays under ~10 MB whatever clients send.
@lru_cache(maxsize=32_768)
def escape(name: str) -> str:
    return (
        name.replace("%", "%25")
        .replace(":", "%3A")
        .replace("\t", "%09")
        .replace("{", "%7B")
        .replace("}", "%7D")
    )


@lru_cache(maxsize=32_768)
def unescape(name: str) -> str:
    return (
        name.replace("%7D", "}")
        .replace("%7B", "{")
        .replace("%09", "\t")
        .replace("%3A", ":")
        .replace("%25", "%")
    )


def bucket_of(escaped_site: str, escaped_user: str) -> int:
    """The bucket of a user (of escaped names: the converter reads them from old keys)."""
    return zlib.crc32(f"{escaped_site}\0{escaped_user}".encode()) % BUCKETS


def bucket_tag(prefix: str, bucket: int) -> str:
    """What every key of ``bucket`` starts with: a script's ``g``."""
    return f"{prefix}{{b{bucket}}}{SEP}"


@lru_cache(maxsize=65_536)
def user_prefix(prefix: str, site: str, user: str) -> str:
    """The bucket prefix for ``site`` of ``user``'s bucket: a script's ``p``."""
    escaped_site = escape(site)
    return f"{bucket_tag(prefix, bucket_of(escaped_site, escape(user)))}{escaped_site}{SEP}"


def site_in_bucket(prefix: str, bucket: int, site: str) -> str:
    return f"{bucket_tag(prefix, bucket)}{escape(site)}{SEP}"


def device_keys(p: str, user: str, device: str) -> tuple[str, str]:
    """The device's hash and its messages, under bucket prefix ``p``."""
    entry = device_entry(user, device)
    return f"{p}{DEVICE}{SEP}{entry}", f"{p}{MESSAGES}{SEP}{entry}"


def device_entry(user: str, device: str) -> str:
    """A device within its bucket and site, as a room's members and the holders hash hold it."""
    return f"{escape(user)}{SEP}{escape(device)}"


def split_device_entry(entry: str) -> tuple[str, str]:
    """(user, device) of a device entry, unescaped."""
    user, _, device = entry.partition(SEP)
    return unescape(user), unescape(device)


def user_keys(p: str, user: str) -> tuple[str, str, str]:
    """The user's hash, its set of devices and its set of shared rooms."""
    name = escape(user)
    return f"{p}{USER}{SEP}{name}", f"{p}{DEVICES}{SEP}{name}", f"{p}{ROOMS}{SEP}{name}"


def user_key(p: str, escaped_user: str) -> str:
    """For a name read back from a set, which is stored escaped."""
    return f"{p}{USER}{SEP}{escaped_user}"


def idempotency(p: str, key: str) -> str:
    """The record of one bucket's part of a message sent with an Idempotency-Key."""
    return f"{p}{IDEMPOTENCY}{SEP}{escape(key)}"


def members(p: str, room: str) -> str:
    """The bucket's members of ``room``, as stored: lower case."""
    return f"{p}{MEMBERS}{SEP}{escape(room)}"


def room_buckets(prefix: str, site: str, room: str) -> str:
    """The buckets that may hold members of ``room`` (its own hash tag)."""
    return f"{prefix}{{{escape(site)}{SEP}{escape(room)}}}{SEP}buckets"


def message_field(seq: int, event: str) -> str:
    """A message's field in its device's message hash."""
    return f"{seq}{SEP}{event}"


def message_seq(field: bytes) -> int:
    return int(field.partition(SEP.encode())[0])


def nodes(prefix: str) -> str:
    return f"{prefix}nodes"


def layout(prefix: str) -> str:
    return f"{prefix}layout"


def layout_lock(prefix: str) -> str:
    """Held by the node that converts an earlier layout."""
    return f"{prefix}layout-lock"


# Layout 1 (release 0.1.0): {prefix}{site}:{kind}:{user}[:{device} | room], with names escaped
# for %, : and tab only; {prefix}expiring:users|devices, {prefix}node:{node}:devices, whose
# entries start with the site's prefix {prefix}{site}:. Read once, by ``redis_layout``.
LAYOUT_1_KINDS = (DEVICE, MESSAGES, EVENTS, USER, DEVICES, ROOMS, MEMBERS, IDEMPOTENCY)


def layout_1_unescape(name: str) -> str:
    return name.replace("%09", "\t").replace("%3A", ":").replace("%25", "%")


def layout_1_key(prefix: str, key: str) -> tuple[str, str, str] | None:
    """(kind, site, rest) of a per-site key of layout 1, names as stored (escaped); for
    the global ones, (``expiring``, ``users``/``devices``, "") or (``node``, node, "")."""
    if not key.startswith(prefix) or "{" in key:
        return None
    name = key[len(prefix) :]
    if name in (f"{EXPIRING}{SEP}users", f"{EXPIRING}{SEP}devices"):
        return EXPIRING, name.split(SEP)[1], ""
    if name.startswith(f"{NODE}{SEP}") and name.endswith(f"{SEP}{DEVICES}"):
        return NODE, name[len(NODE) + 1 : -len(DEVICES) - 1], ""
    parts = name.split(SEP, 2)
    if len(parts) == 3 and parts[1] in LAYOUT_1_KINDS:
        return parts[1], parts[0], parts[2]
    return None


def bucket_key(prefix: str, key: str) -> tuple[str, str, str] | None:
    """(bucket prefix ``p``, kind, rest) of a site's key in a bucket,
    ``{prefix}{b<n>}:{site}:{kind}:{rest}``; None for the bucket's own keys."""
    if not key.startswith(f"{prefix}{{b"):
        return None
    tag_end = key.find("}" + SEP, len(prefix))
    parts = key[tag_end + 2 :].split(SEP, 2) if tag_end > 0 else []
    if len(parts) != 3:
        return None
    site, kind, rest = parts
    return f"{key[: tag_end + 2]}{site}{SEP}", kind, rest


def depth(g: str) -> str:
    """A share of the stored messages, per site: a site's queue depth is the sum of its field
    over the buckets, and only the sum means anything (a call of ENQUEUE or ACK for several
    buckets counts all it stores or removes in its first). Every script that stores or
    removes messages changes it; the sweep removes an expired device's queue, and counts it
    out."""
    return f"{g}{DEPTH}"


def expiring(g: str) -> tuple[str, str]:
    """The bucket's users and devices whose keys expire, by when (see the sweep)."""
    return f"{g}{EXPIRING}{SEP}users", f"{g}{EXPIRING}{SEP}devices"


def node_devices(g: str, node: str) -> str:
    return f"{g}{NODE}{SEP}{node}{SEP}{DEVICES}"


def health(prefix: str, node: str) -> str:
    return f"{prefix}health{SEP}{node}"


def deliver_channel(prefix: str, node: str) -> str:
    return f"{prefix}deliver{SEP}{node}"


def broadcast_channel(prefix: str) -> str:
    return f"{prefix}broadcast"


def bucket_number(p: str) -> int:
    """The bucket of a bucket prefix ``{prefix}{b<n>}:...``."""
    return int(p[p.index("{b") + 2 : p.index("}")])


def bucket_of_prefix(p: str) -> str:
    """``g`` of a bucket prefix ``p`` (what precedes the site)."""
    return p[: p.index("}") + 2]


def site_field(p: str) -> str:
    """The field of bucket prefix ``p``'s site in its bucket's depth hash (the escaped site)."""
    return p[len(bucket_of_prefix(p)) : -1]


def _lua(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("\t", "\\t").replace("\0", "\\0") + "'"


_HELD_PATTERN = (
    f"^([^{HELD_SEP}]*){HELD_SEP}([^{HELD_SEP}]*){HELD_SEP}([^{HELD_SEP}]*)$"  # a Lua pattern
)

_USER_ENTRY_PATTERN = f"^([^{HELD_SEP}]*){HELD_SEP}([^{HELD_SEP}]*)$"

# The same grammar for the scripts; every script starts with it (see ``redis_scripts``).
LUA_PRELUDE = f"""
local SEP = {_lua(SEP)}
local function device_entry(user, device) return user .. SEP .. device end
local function entry_keys(p, entry)  -- a device's hash and messages, by its entry
  return p .. {_lua(DEVICE + SEP)} .. entry, p .. {_lua(MESSAGES + SEP)} .. entry
end
local function device_keys(p, user, device) return entry_keys(p, device_entry(user, device)) end
local function devices_key(p, user) return p .. {_lua(DEVICES + SEP)} .. user end
local function user_keys(p, user)
  return p .. {_lua(USER + SEP)} .. user, p .. {_lua(DEVICES + SEP)} .. user,
    p .. {_lua(ROOMS + SEP)} .. user
end
local function members_key(p, room) return p .. {_lua(MEMBERS + SEP)} .. room end
-- Of any key of a site in a bucket (or its prefix p): the bucket's depth hash, the site's field.
local function depth_key(key)
  return string.sub(key, 1, string.find(key, '}}', 1, true) + 1) .. {_lua(DEPTH)}
end
local function probe_key(key)  -- of any key of a bucket: its probe (never written)
  return string.sub(key, 1, string.find(key, '}}', 1, true) + 1) .. {_lua(PROBE)}
end
local function site_field(key)
  local from = string.find(key, '}}', 1, true) + 2
  return string.sub(key, from, string.find(key, {_lua(SEP)}, from, true) - 1)
end
local function user_key(p, user) return p .. {_lua(USER + SEP)} .. user end
local function node_field(node) return {_lua(NODE_FIELD)} .. node end
local NODE_FIELD = {_lua(NODE_FIELD)}
local NODES_FIELD = {_lua(NODES_FIELD)}  -- layout 2's (the converter reads it)
local function holders_key(p) return p .. {_lua(HOLDERS)} end
local function caps_key(p) return p .. {_lua(CAPS)} end
local CAPS_MAX = {_lua(CAPS_MAX)}
local function split_device_entry(entry)  -- user, device
  local at = string.find(entry, SEP, 1, true)
  return string.sub(entry, 1, at - 1), string.sub(entry, at + 1)
end
-- A device's count of connections on ``node`` changes by ``by`` -> the count left, and the
-- holders' new value if the node became, or stopped being, one of them (for the caller to
-- write); ``nodes``: the device's holders as the caller read them.
local function count_on_node(dev, node, by, nodes)
  local field = node_field(node)
  local left = redis.call('HINCRBY', dev, field, by)
  if left > 0 and left ~= by then return left end  -- the node was, and stays, a holder
  local kept = {{}}
  for other in string.gmatch(nodes, '[^,]+') do
    if other ~= node then kept[#kept + 1] = other end
  end
  if left > 0 then kept[#kept + 1] = node else redis.call('HDEL', dev, field) end
  return left, table.concat(kept, ',')
end
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
-- A message's field name, of its seq as decimal text and its event. (A seq becomes text with
-- string.format('%d'): a number's own conversion to a string is a float's, several times
-- slower.)
local function message_field(seq_text, event) return seq_text .. SEP .. event end
local function split_message_field(field)  -- seq (a number), event
  local seq, event = string.match(field, {_lua("^(%d+)" + SEP + "(.*)$")})
  return tonumber(seq), event
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
