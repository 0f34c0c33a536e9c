"""The Lua scripts behind every Redis store decision, each one atomic.

Each starts with ``redis_keys.LUA_PRELUDE``, the key grammar, and builds no key name of its
own. Each works on one bucket (``redis_keys``: one hash slot), except BEAT, FORGET_NODE and
PRUNE_ROOM, which work on one key of their own, and the batched ENQUEUE and ACK, which take
parts of several buckets in one call (on Redis Cluster, the buckets of one primary: see
``key_names``). The keys a script can name before it runs come as ``KEYS``; those it finds
in sets as it goes (a user's devices, a room's members in the bucket) it builds from ``p``,
the bucket's prefix for a site, in ARGV: they are in the bucket's slot by construction.

**Reads before writes.** While Redis Cluster moves a slot to another master, a key already
moved (or not yet created) is not there: a command on it fails the script. So every script
reads each key it will write before its first write: if the slot is moving, it fails having
changed nothing, and is run again once the move is done (``redis_wire``). Times are in
milliseconds; a ttl of 0 means never expire.
"""

import re

from .redis_keys import LUA_PRELUDE
from .redis_wire import Script
from .store import RECORDED_DELIVERIES

# Redis's clock, in milliseconds (HEARTBEAT's "now", and the deadline check), and in
# microseconds.
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function now_us()  -- when a device was last seen: two disconnects may share a ms
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
"""

# How long a user's shared rooms outlive its keys, so that the sweep can read them and take
# the user out of each room's members (ms; the sweep runs every minute).
ROOMS_GRACE_MS = 86_400_000
# How long a queue outlives its device's expiry, for the sweep to count it out (ms).
QUEUE_GRACE_MS = 86_400_000


# What a device's, and a user's, last disconnect leaves: keys that expire in ttl ms (0: never),
# and an entry saying when, for the sweep.
_GONE = f"""
local ROOMS_GRACE_MS = {ROOMS_GRACE_MS}
local QUEUE_GRACE_MS = {QUEUE_GRACE_MS}
-- A queue outlives its device by QUEUE_GRACE_MS: the sweep deletes it when the device has
-- expired and counts its messages out of the depth (Redis's own expiry is the backstop).
local function device_gone(ttl, exp_devices, p, user, device)
  local dev, msg = device_keys(p, user, device)
  if ttl > 0 then
    redis.call('PEXPIRE', dev, ttl)
    redis.call('PEXPIRE', msg, ttl + QUEUE_GRACE_MS)
    redis.call('ZADD', exp_devices, now_ms() + ttl, held_entry(p, user, device))
  else
    redis.call('PERSIST', dev); redis.call('PERSIST', msg)
  end
end
local function count_out(key, n)  -- n messages of the site of key left the bucket
  if n > 0 then redis.call('HINCRBY', depth_key(key), site_field(key), -n) end
end
local function user_gone(ttl, exp_users, p, user)
  local ukey, devices, rooms = user_keys(p, user)
  expire_all(ttl, ukey, devices)
  if ttl > 0 then
    redis.call('PEXPIRE', rooms, ttl + ROOMS_GRACE_MS)
    redis.call('ZADD', exp_users, now_ms() + ttl, user_entry(p, user))
  else
    redis.call('PERSIST', rooms)
  end
end
"""

# The first lines of a script whose caller may give up on it: ARGV[1] is the caller's deadline
# on Redis's clock (ms), put there by the wire; run past it, the script changes nothing and
# answers a LATE error, since its caller was already told it failed.
_DEADLINE = """
local called_at = now_ms()
if called_at > tonumber(ARGV[1]) then
  return redis.error_reply('LATE Redis ran this after its caller gave up: nothing changed')
end
"""


def _definitions(prelude: str) -> list[tuple[str, str]]:
    """The prelude's top-level ``local`` definitions, in order: (name, its lines)."""
    found: list[tuple[str, str]] = []
    comments = ""
    for line in prelude.splitlines(keepends=True):
        if line.startswith("local "):
            words = line.split()
            name = words[2] if words[1] == "function" else words[1]
            found.append((name.split("(")[0].rstrip(","), comments + line))
            comments = ""
        elif line.startswith("--"):
            comments += line
        elif found:
            found[-1] = (found[-1][0], found[-1][1] + line)
    return found


def _needed(body: str, definitions: list[tuple[str, str]]) -> str:
    """The definitions ``body`` uses, and those they use: a script pays, on every call, for
    each closure its prelude makes (a few microseconds for all of them: as much as a small
    script's own work)."""
    used = {name for name, _ in definitions if re.search(rf"\b{name}\b", body)}
    while True:
        more = {
            other
            for name, text in definitions
            if name in used
            for other, _ in definitions
            if other not in used and re.search(rf"\b{other}\b", text.split("\n", 1)[1])
        }
        if not more:
            break
        used |= more
    return "".join(text for name, text in definitions if name in used)


# The key names a call works on: its KEYS, or (n > 0) the last n of its ARGV, which then ends
# its arguments. A call to one primary of Redis Cluster for buckets of several slots declares
# one key only (Redis refuses declared keys of several slots), and reads every key it will
# write before the first write (a key of a slot moving away fails the call unchanged).
_ARGUMENTS = """
local function key_names(n)
  if n == 0 then return KEYS, #ARGV end
  local names, last = {}, #ARGV - n
  for k = 1, n do names[k] = ARGV[last + k] end
  return names, last
end
-- A count in ARGV: mostly 0 or 1, which need no parsing (tonumber is strtod's work).
local function count(s)
  if s == '0' then return 0 elseif s == '1' then return 1 end
  return tonumber(s)
end
"""

# A device seen now; and its nodes field, when the caller's count_on_node changed it.
_SEEN = """
local function mark_seen(dev, nodes)
  if nodes then
    redis.call('HSET', dev, 'seen', now_us(), NODES_FIELD, nodes)
  else
    redis.call('HSET', dev, 'seen', now_us())
  end
end
"""

_PRELUDE = _definitions(LUA_PRELUDE + _NOW + _GONE + _ARGUMENTS + _SEEN)


def _script(body: str, with_deadline: bool = False) -> Script:
    """``with_deadline``: for the scripts whose late run would leave a change behind that a
    retry repeats (a second copy of a send, a connection counted or released twice)."""
    body = (_DEADLINE if with_deadline else "") + body
    return Script(_needed(body, _PRELUDE) + body, with_deadline=with_deadline)


# KEYS: the device's hash and messages; the user's hash, devices, rooms; the bucket's
#   held-devices set of this node, expiring users and devices. ARGV: deadline, bucket prefix,
#   node, user, device, max devices, shared rooms...
#   -> {the user's connection count, this one included, or -1: refused (the user has max
#      devices, all connected; nothing changed); 1 if the device's queue overflowed since it
#      last connected (the flag is cleared), else 0; the devices retired to make room for
#      this new one, tab-separated (the least recently seen offline ones); then, unless
#      refused, the device's last assigned seq and its queue (HGETALL), as read_queue reads}
CONNECT_DEVICE = _script(
    """
local dev, msg, ukey, devices, rooms, held, exp_users, exp_devices = unpack(KEYS)
local p, node, user, device = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_devices = tonumber(ARGV[6])
-- reads
local expired, retire = {}, {}
local exists = redis.call('EXISTS', dev) == 1
if not exists then  -- new to the user: it needs a place among max_devices
  local live, offline = 0, {}
  for _, other in ipairs(redis.call('SMEMBERS', devices)) do
    local odev, omsg = device_keys(p, user, other)
    if other == device then
    elseif redis.call('EXISTS', odev, omsg) == 0 or redis.call('EXISTS', odev) == 0 then
      expired[#expired + 1] = other
    else
      live = live + 1
      local conns, seen = unpack(redis.call('HMGET', odev, 'conns', 'seen'))
      if tonumber(conns or '0') <= 0 then offline[#offline + 1] = {tonumber(seen or '0'), other} end
    end
  end
  local over = live - max_devices + 1
  if over > #offline then return {-1, 0, ''} end
  table.sort(offline, function(a, b) return a[1] < b[1] end)
  for k = 1, math.max(over, 0) do retire[k] = offline[k][2] end
end
-- a reconnect with the rooms it had (most are) leaves the rooms' members as they are
local old_rooms = redis.call('SMEMBERS', rooms)
local same_rooms = #old_rooms == #ARGV - 6
if same_rooms then
  local had = {}
  for _, room in ipairs(old_rooms) do had[room] = true end
  for i = 7, #ARGV do same_rooms = same_rooms and had[ARGV[i]] == true end
else
  for _, room in ipairs(old_rooms) do redis.call('EXISTS', members_key(p, room)) end
  for i = 7, #ARGV do redis.call('EXISTS', members_key(p, ARGV[i])) end
end
redis.call('EXISTS', depth_key(p))
-- the device's state, the queue of a device that expired (not swept yet), and those of the
-- retired ones
local overflowed, seq, nodes = 0, '0', ''
if exists then
  local state = redis.call('HMGET', dev, 'overflow', 'seq', NODES_FIELD)
  overflowed, seq, nodes = state[1] and 1 or 0, state[2] or '0', state[3]
end
local stale = not exists and redis.call('HLEN', msg) or 0
local retired_queued = {}
for k, name in ipairs(retire) do
  local _, omsg = device_keys(p, user, name)
  retired_queued[k] = redis.call('HLEN', omsg)
end
-- writes
for _, name in ipairs(expired) do redis.call('SREM', devices, name) end
for k, name in ipairs(retire) do
  local odev, omsg = device_keys(p, user, name)
  redis.call('DEL', odev, omsg)
  count_out(p, retired_queued[k])
  redis.call('SREM', devices, name)
  redis.call('ZREM', exp_devices, held_entry(p, user, name))
end
if stale > 0 then
  redis.call('DEL', msg)
  count_out(p, stale)
end
if overflowed == 1 then redis.call('HDEL', dev, 'overflow') end
-- A new hash starts with the two fields each send reads: Redis looks a field of a hash this
-- small up by walking its fields from the first.
if not exists then redis.call('HSET', dev, 'seq', '0', NODES_FIELD, '') end
redis.call('HINCRBY', dev, 'conns', 1)
local _, now_nodes = count_on_node(dev, node, 1, nodes)
mark_seen(dev, now_nodes)
redis.call('SADD', held, held_entry(p, user, device))
redis.call('PERSIST', dev); redis.call('PERSIST', msg)
redis.call('ZREM', exp_devices, held_entry(p, user, device))
redis.call('SADD', devices, device)
redis.call('PERSIST', devices)
redis.call('ZREM', exp_users, user_entry(p, user))
if same_rooms then
  redis.call('PERSIST', rooms)  -- as a new set would be: its user is connected
else
  for _, room in ipairs(old_rooms) do
    redis.call('SREM', members_key(p, room), user)
  end
  redis.call('DEL', rooms)
  for i = 7, #ARGV do
    redis.call('SADD', rooms, ARGV[i])
    redis.call('SADD', members_key(p, ARGV[i]), user)
  end
end
local conns = redis.call('HINCRBY', ukey, 'conns', 1)
redis.call('PERSIST', ukey)
return {conns, overflowed, table.concat(retire, '\t'), seq, redis.call('HGETALL', msg)}
""",
    with_deadline=True,
)

# KEYS: as CONNECT_DEVICE. ARGV: deadline, bucket prefix, node, user, device, ttl_ms,
#   forget (0/1) -> the user's connection count left
DISCONNECT_DEVICE = _script(
    """
local dev, msg, ukey, devices, rooms, held, exp_users, exp_devices = unpack(KEYS)
local p, node, user, device = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ttl, forget = tonumber(ARGV[6]), ARGV[7] == '1'
redis.call('EXISTS', depth_key(dev))  -- reads first (cluster)
if redis.call('EXISTS', dev) == 1 then
  local left, nodes = count_on_node(dev, node, -1)
  mark_seen(dev, nodes)
  if left <= 0 then
    redis.call('SREM', held, held_entry(p, user, device))
  end
  if redis.call('HINCRBY', dev, 'conns', -1) <= 0 then
    redis.call('HSET', dev, 'conns', 0)
    if forget then
      count_out(p, redis.call('HLEN', msg))
      redis.call('DEL', dev, msg)
      redis.call('SREM', devices, device)
    else
      device_gone(ttl, exp_devices, p, user, device)
    end
  end
end
if redis.call('EXISTS', ukey) == 0 then return 0 end
local left = redis.call('HINCRBY', ukey, 'conns', -1)
if left <= 0 then
  redis.call('HSET', ukey, 'conns', 0)
  user_gone(ttl, exp_users, p, user)
end
return left
""",
    with_deadline=True,
)

# KEYS (or the names at ARGV's end, see key_names): for each part in order, its bucket's depth
#   hash, then its idempotency record if its message has a key.
# ARGV: deadline, max_queue, step_ms, idempotency ttl_ms, guarded (1 on Redis Cluster: every
#   part of the call read before any is written, as a slot may be moving; a message whose
#   idempotency record an earlier one of the call writes is left for the next call), how
#   many key names end ARGV (0: they are KEYS), then for each message:
#   event, record, has a key (0/1), n_parts, then its parts: (bucket prefix, n_users,
#   n_rooms, users..., shared rooms...). A part is one bucket's share of a message: its
#   users, and the rooms whose members in the bucket it reaches. Messages are stored in this
#   order; after one that ends past step_ms, the rest is left for the next call.
#   -> how many parts were handled; then for each: n, then user, device, seq, nodes
#      (comma-separated ids of the nodes where the device is connected) for each of the n
#      devices that stored it; then m, then user, device for each of the m devices whose
#      queue is full and overflowed just now; then r, then the r rooms that have no members
#      in the bucket. A part whose idempotency record exists stores nothing: -1, how many
#      devices the first attempt stored it for, then n and its n deliveries as above
#      (recorded when there were at most RECORDED_DELIVERIES), then 0, 0.
ENQUEUE = _script(
    f"local RECORDED_DELIVERIES = {RECORDED_DELIVERIES}"
    + """
local max_queue, idem_ttl = tonumber(ARGV[2]), ARGV[4]
local guarded = ARGV[5] == '1'  -- Redis Cluster: a slot may be moving (reads before writes)
-- This script runs for every delivery: its loops avoid what Lua makes costly (closures and
-- tables per part or device, numbers turned into strings, arrays read where a field does).
local n_names = count(ARGV[6])
local in_argv = n_names > 0  -- the key names end ARGV: only the first is declared
local names, last_arg = key_names(n_names)
local out, n_out = {0}, 1
local added = guarded and {}  -- messages this call stored per queue (see below)
local NONE = {}  -- no rooms without members, no devices whose queue filled: most parts
-- One part's reads, returned as (depth, idem, repeated, found, empty rooms, plans): plans
-- holds 8 values per device. On Redis Cluster every part of the call is read before the
-- first write (a key already moved to another primary fails the script having stored
-- nothing); elsewhere each part is written as soon as it is read.
local function read_part(p, depth, idem, first_user, first_room, n_rooms)
  if in_argv then redis.call('EXISTS', depth) end  -- written below, and not declared
  local prior = idem and redis.call('GET', idem)
  if prior then
    -- "count" or "count:user\tdevice\tseq:..." (names are escaped: no ':' or tab in them)
    local entries, found = {}, {}
    for entry in string.gmatch(prior, '[^:]+') do entries[#entries + 1] = entry end
    for k = 2, #entries do
      local user, device, seq = string.match(entries[k], '^([^\t]*)\t([^\t]*)\t(%d+)$')
      local nodes = nodes_of((device_keys(p, user, device))) or ''
      found[#found + 1] = {user, device, tonumber(seq), nodes}
    end
    return depth, idem, tonumber(entries[1]), found
  end
  -- the users: those named (distinct: the store sends each once), then the rooms' members
  local targets, n_targets, empty_rooms = ARGV, first_room - 1, NONE
  if n_rooms == 1 and first_user == first_room then  -- one room: a set has no duplicates
    targets = redis.call('SMEMBERS', members_key(p, ARGV[first_room]))
    first_user, n_targets = 1, #targets
    if n_targets == 0 then empty_rooms = {ARGV[first_room]} end
  elseif n_rooms > 0 then
    local seen = {}
    targets = {}
    for k = first_user, first_room - 1 do seen[ARGV[k]] = true; targets[#targets + 1] = ARGV[k] end
    for k = first_room, first_room + n_rooms - 1 do
      local found = redis.call('SMEMBERS', members_key(p, ARGV[k]))
      if #found == 0 then
        if empty_rooms == NONE then empty_rooms = {} end
        empty_rooms[#empty_rooms + 1] = ARGV[k]
      end
      for _, user in ipairs(found) do  -- expired users have no devices; swept later
        if not seen[user] then seen[user] = true; targets[#targets + 1] = user end
      end
    end
    first_user, n_targets = 1, #targets
  end
  local plans, n = {}, 0
  for t = first_user, n_targets do
    local user = targets[t]
    local devices = devices_key(p, user)
    local device_names = redis.call('SMEMBERS', devices)
    for d = 1, #device_names do
      local device = device_names[d]
      local dev, msg = device_keys(p, user, device)
      local holders, queued, ttl = nodes_of(dev), 0, 0  -- holders false: the device expired
      if holders then
        queued = redis.call('HLEN', msg)
        -- An offline device's messages expire with it; its first one makes a new hash.
        if queued == 0 and holders == '' then ttl = redis.call('PTTL', dev) end
      end
      plans[n + 1], plans[n + 2], plans[n + 3], plans[n + 4] = devices, user, device, dev
      plans[n + 5], plans[n + 6], plans[n + 7], plans[n + 8] = msg, holders, queued, ttl
      n = n + 8
    end
  end
  return depth, idem, false, false, empty_rooms, plans
end
-- One part's writes, and its answer appended to out.
local function write_part(event, record, site, depth, idem, repeated, found, empty_rooms, plans)
  if repeated then
    out[n_out + 1], out[n_out + 2], out[n_out + 3] = -1, repeated, #found
    n_out = n_out + 3
    for _, f in ipairs(found) do
      out[n_out + 1], out[n_out + 2], out[n_out + 3], out[n_out + 4] = f[1], f[2], f[3], f[4]
      n_out = n_out + 4
    end
    out[n_out + 1], out[n_out + 2] = 0, 0
    n_out = n_out + 2
    return
  end
  local count_at, stored, full = n_out + 1, 0, NONE
  n_out = count_at
  for k = 1, #plans, 8 do
    local devices, user, device, dev, msg, holders, queued, ttl = unpack(plans, k, k + 7)
    if not holders then
      redis.call('SREM', devices, device)
    elseif queued + (added and added[msg] or 0) >= max_queue then
      if redis.call('HSETNX', dev, 'overflow', '1') == 1 then
        if full == NONE then full = {} end
        full[#full + 1] = user; full[#full + 1] = device
      end
    else
      local seq = redis.call('HINCRBY', dev, 'seq', '1')
      redis.call('HSET', msg, message_field(seq, event), record)
      if ttl > 0 then redis.call('PEXPIRE', msg, ttl + QUEUE_GRACE_MS) end
      if added then added[msg] = (added[msg] or 0) + 1 end
      out[n_out + 1], out[n_out + 2], out[n_out + 3], out[n_out + 4] = user, device, seq, holders
      n_out = n_out + 4
      stored = stored + 1
    end
  end
  out[count_at] = stored
  if stored > 0 then
    redis.call('HINCRBY', depth, site, string.format('%d', stored))
  end
  if idem then
    local record_of = {stored}
    if stored <= RECORDED_DELIVERIES then
      for k = count_at + 1, n_out, 4 do
        record_of[#record_of + 1] = out[k] .. '\t' .. out[k + 1] .. '\t' .. out[k + 2]
      end
    end
    redis.call('SET', idem, table.concat(record_of, ':'), 'PX', idem_ttl)
  end
  out[n_out + 1] = #full / 2
  n_out = n_out + 1
  for _, name in ipairs(full) do n_out = n_out + 1; out[n_out] = name end
  out[n_out + 1] = #empty_rooms
  n_out = n_out + 1
  for _, room in ipairs(empty_rooms) do n_out = n_out + 1; out[n_out] = room end
end

local i, key_at = 7, 1
local reads, idems = guarded and {}, guarded and {}  -- Redis Cluster: the writes come last
while i <= last_arg do
 local event, record, keyed = ARGV[i], ARGV[i + 1], ARGV[i + 2] == '1'
 local parts, site = count(ARGV[i + 3]), site_field(ARGV[i + 4])  -- one site per message
 if idems and keyed then  -- one written by an earlier message of this call: next call
  local again = false
  for k = 0, parts - 1 do again = again or idems[names[key_at + 2 * k + 1]] ~= nil end
  if again then break end
 end
 i = i + 4
 for _ = 1, parts do
  out[1] = out[1] + 1
  local p = ARGV[i]
  local depth = names[key_at]  -- the part's bucket's depth: a key of its slot
  local idem = keyed and names[key_at + 1] or nil
  key_at = key_at + (idem and 2 or 1)
  local n_users, n_rooms = count(ARGV[i + 1]), count(ARGV[i + 2])
  local first_user, first_room = i + 3, i + 3 + n_users
  i = first_room + n_rooms
  if reads then
    if idem then idems[idem] = true end
    local read = {event, record, site, read_part(p, depth, idem, first_user, first_room, n_rooms)}
    reads[#reads + 1] = read
  else
    write_part(event, record, site, read_part(p, depth, idem, first_user, first_room, n_rooms))
  end
 end
 -- past step_ms (on Redis Cluster, half of it: the writes follow), the rest is left
 if i <= last_arg and now_ms() - called_at >= tonumber(ARGV[3]) / (guarded and 2 or 1) then
  break
 end
end
for _, read in ipairs(reads or NONE) do write_part(unpack(read, 1, 9)) end
return out
""",
    with_deadline=True,
)

# KEYS (or the names at ARGV's end, see key_names): the depth hash of each group (a site in a
#   bucket), then the messages of each acking device, group by group. ARGV: how many key
#   names end ARGV (0: they are KEYS), the number of groups; for each group, its site's depth
#   field and its number of devices; then for each device in turn, n and the n fields of its
#   acked messages -> for each device, how many were still stored and are now removed
ACK = _script("""
local n_names, groups = count(ARGV[1]), count(ARGV[2])
local names = key_names(n_names)
if n_names > 0 then  -- keys not declared: each group's read before the first write
  local key = groups + 1
  for g = 1, groups do
    local last = key + count(ARGV[2 * g + 2]) - 1
    redis.call('EXISTS', names[g], unpack(names, key, math.min(key + 998, last)))
    for j = key + 999, last, 1000 do
      redis.call('EXISTS', unpack(names, j, math.min(j + 999, last)))
    end
    key = last + 1
  end
end
local out, n_out, key, i = {}, 0, groups + 1, 2 * groups + 3
for g = 1, groups do
  local site, removed = ARGV[2 * g + 1], 0
  for _ = 1, count(ARGV[2 * g + 2]) do
    local last, gone = i + count(ARGV[i]), 0
    for j = i + 1, last, 1000 do  -- unpack's limit: a batch's ack may hold thousands
      gone = gone + redis.call('HDEL', names[key], unpack(ARGV, j, math.min(j + 999, last)))
    end
    n_out = n_out + 1
    out[n_out] = gone
    removed = removed + gone
    key, i = key + 1, last + 1
  end
  if removed > 0 then redis.call('HINCRBY', names[g], site, string.format('%d', -removed)) end
end
return out
""")

# KEYS: the device's hash and messages. ARGV: seq, event
#   -> -1 if removed as the head (the event's oldest message) or not stored; else the
#   device's last seq (the event's messages cleared). Reads the queue's field names, not its
#   payloads: bounded by max_queue.
ACK_HEAD = _script("""
local dev, msg = unpack(KEYS)
local seq, event = tonumber(ARGV[1]), ARGV[2]
local mine = message_field(seq, event)
if redis.call('HEXISTS', msg, mine) == 0 then return -1 end
local head, same = seq, {}
for _, field in ipairs(redis.call('HKEYS', msg)) do
  local other, other_event = split_message_field(field)
  if other_event == event then
    same[#same + 1] = field
    if other < head then head = other end
  end
end
local last = tonumber(redis.call('HGET', dev, 'seq') or seq)
redis.call('EXISTS', depth_key(msg))
if head == seq then
  redis.call('HDEL', msg, mine)
  count_out(msg, 1)
  return -1
end
for j = 1, #same, 1000 do
  redis.call('HDEL', msg, unpack(same, j, math.min(j + 999, #same)))
end
count_out(msg, #same)
return last
""")

# KEYS: the nodes' heartbeat set. ARGV: this node, dead_after_ms
#   -> {1 if this node was not in the set (its first beat, or the others took it for dead),
#       the ids of the nodes silent for dead_after_ms (Redis's clock: nodes' clocks need not
#       agree)}: their connections are to be released (RELEASE_NODE), then FORGET_NODE.
BEAT = _script("""
local nodes = KEYS[1]
local me, dead_after = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local absent = redis.call('ZADD', nodes, now, me)
local cutoff = '(' .. string.format('%d', now - dead_after)
return {absent, redis.call('ZRANGEBYSCORE', nodes, '-inf', cutoff)}
""")

# KEYS: the bucket's held-devices set of a dead node, expiring users and devices.
#   ARGV: the dead node, ttl_ms -> how many devices were released
#   Each connection the node held in the bucket is released as if it had disconnected.
RELEASE_NODE = _script("""
local held, exp_users, exp_devices = unpack(KEYS)
local node, ttl = ARGV[1], tonumber(ARGV[2])
-- reads
local entries = redis.call('SMEMBERS', held)
redis.call('EXISTS', exp_users, exp_devices)
local counts = {}
for k, entry in ipairs(entries) do
  local p, user, device = split_held(entry)
  local dev, msg = device_keys(p, user, device)
  local ukey, devices, rooms = user_keys(p, user)
  redis.call('EXISTS', dev, msg, ukey, devices, rooms)
  counts[k] = tonumber(redis.call('HGET', dev, node_field(node)) or '0')
end
-- writes
for k, entry in ipairs(entries) do
  local count = counts[k]
  if count > 0 then
    local p, user, device = split_held(entry)
    local dev = device_keys(p, user, device)
    local _, nodes = count_on_node(dev, node, -count)
    redis.call('HSET', dev, NODES_FIELD, nodes)
    if redis.call('HINCRBY', dev, 'conns', -count) <= 0 then
      redis.call('HSET', dev, 'conns', 0)
      device_gone(ttl, exp_devices, p, user, device)
    end
    local ukey = user_keys(p, user)
    if redis.call('EXISTS', ukey) == 1 and redis.call('HINCRBY', ukey, 'conns', -count) <= 0 then
      redis.call('HSET', ukey, 'conns', 0)
      user_gone(ttl, exp_users, p, user)
    end
  end
end
redis.call('DEL', held)
return #entries
""")

# KEYS: the nodes' heartbeat set. ARGV: a dead node whose connections were all released.
FORGET_NODE = _script("""
return redis.call('ZREM', KEYS[1], ARGV[1])
""")

# KEYS: the bucket's expiring users and devices. ARGV: how many of each to look at, at most
#   -> {how many set entries were removed, how many due entries were looked at, then the
#       rooms (as "p\troom") left without members in the bucket}
#   A device whose keys expired leaves its user's device set; a user whose keys expired leaves
#   the member set of each of its shared rooms (its rooms set outlives it for this).
SWEEP = _script("""
local exp_users, exp_devices = unpack(KEYS)
local limit, now = tonumber(ARGV[1]), now_ms()
-- reads
local due_devices = redis.call('ZRANGEBYSCORE', exp_devices, '-inf', now, 'LIMIT', 0, limit)
local due_users = redis.call('ZRANGEBYSCORE', exp_users, '-inf', now, 'LIMIT', 0, limit)
local gone_devices, gone_users, left, later = {}, {}, {}, {}
-- A key that is still there (due this very millisecond, or kept by a reconnect that did not
-- clear its entry) keeps its entry, due again when its time is up; one without expiry, none.
local function not_yet(zset, entry, key)
  local ttl = redis.call('PTTL', key)
  later[#later + 1] = {zset, entry, ttl >= 0 and now + ttl + 1 or nil}  -- -1: persisted
end
local queues = {}  -- the queues of expired devices: deleted, and counted out of the depth
for _, entry in ipairs(due_devices) do
  local p, user, device = split_held(entry)
  local _, devices = user_keys(p, user)
  local dev, msg = device_keys(p, user, device)
  if redis.call('EXISTS', dev) == 1 then
    not_yet(exp_devices, entry, dev)
  else
    local queued = redis.call('HLEN', msg)
    if queued > 0 then
      redis.call('EXISTS', depth_key(msg))
      queues[#queues + 1] = {msg, queued}
    end
    if redis.call('SISMEMBER', devices, device) == 1 then
      gone_devices[#gone_devices + 1] = {devices, device}
    end
  end
end
for _, entry in ipairs(due_users) do
  local p, user = split_user_entry(entry)
  local ukey, _, rooms = user_keys(p, user)
  if redis.call('EXISTS', ukey) == 1 then
    not_yet(exp_users, entry, ukey)
  else
    local held = redis.call('SMEMBERS', rooms)
    for _, room in ipairs(held) do
      local key = members_key(p, room)
      if left[key] == nil then left[key] = redis.call('SCARD', key) end
    end
    gone_users[#gone_users + 1] = {p, user, rooms, held}
  end
end
-- writes
local removed, emptied = 0, {}
for _, queue in ipairs(queues) do
  redis.call('DEL', queue[1])
  count_out(queue[1], queue[2])
end
for _, gone in ipairs(gone_devices) do removed = removed + redis.call('SREM', gone[1], gone[2]) end
for _, gone in ipairs(gone_users) do
  local p, user, rooms, held = unpack(gone)
  for _, room in ipairs(held) do
    local key = members_key(p, room)
    if left[key] > 0 and redis.call('SREM', key, user) == 1 then
      removed = removed + 1
      left[key] = left[key] - 1
      if left[key] == 0 then emptied[#emptied + 1] = p .. '\t' .. room end
    end
  end
  redis.call('DEL', rooms)
end
for _, entry in ipairs(due_devices) do redis.call('ZREM', exp_devices, entry) end
for _, entry in ipairs(due_users) do redis.call('ZREM', exp_users, entry) end
for _, again in ipairs(later) do
  if again[3] then redis.call('ZADD', again[1], again[3], again[2]) end
end
local out = {removed, #due_devices + #due_users}
for _, room in ipairs(emptied) do out[#out + 1] = room end
return out
""")

# KEYS: a room's bucket index. ARGV: bucket, the version read before the bucket was seen
#   without members -> 1 if the bucket left the index (no connect added a member since)
PRUNE_ROOM = _script("""
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
""")

# KEYS: the device's hash and messages; the user's hash and devices; the bucket's
#   expiring devices. ARGV: bucket prefix, user, device, ttl_ms (0: never), max_queue, then
#   (original id padded to ORIGINAL_ID_DIGITS, event, record) per message, in original id order
#   -> {stored, known (not above the device's import mark), full (the queue held max_queue)}
IMPORT_QUEUE = _script("""
local dev, msg, ukey, devices, exp_devices = unpack(KEYS)
local p, user, device = ARGV[1], ARGV[2], ARGV[3]
local ttl, max_queue = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('EXISTS', depth_key(msg))  -- reads first (cluster)
local created = redis.call('EXISTS', dev) == 0
if created then
  count_out(msg, redis.call('HLEN', msg))  -- an expired device's queue, not swept yet
  redis.call('DEL', msg)
  redis.call('HSET', dev, 'seq', 0, NODES_FIELD, '', 'conns', 0, 'seen', now_us())  -- as connect
end
local set_existed = redis.call('EXISTS', devices) == 1
redis.call('SADD', devices, device)
local mark = redis.call('HGET', dev, 'imported') or ''
local last, stored, known, full = mark, 0, 0, 0
local queued = redis.call('HLEN', msg)
for i = 6, #ARGV, 3 do
  local id = ARGV[i]
  if id <= mark then  -- ids of one width: string order is number order
    known = known + 1
  else
    last = id
    if queued >= max_queue then
      full = full + 1
      redis.call('HSET', dev, 'overflow', 1)
    else
      local seq = redis.call('HINCRBY', dev, 'seq', 1)
      redis.call('HSET', msg, message_field(seq, ARGV[i + 1]), ARGV[i + 2])
      queued, stored = queued + 1, stored + 1
    end
  end
end
redis.call('HSET', dev, 'imported', last)
if stored > 0 then redis.call('HINCRBY', depth_key(msg), site_field(msg), stored) end
if tonumber(redis.call('HGET', dev, 'conns') or '0') <= 0 then
  local left, keep = redis.call('PTTL', dev), ttl
  if not created then
    if left < 0 or ttl == 0 then keep = 0 else keep = math.max(left, ttl) end
  end
  device_gone(keep, exp_devices, p, user, device)
  if tonumber(redis.call('HGET', ukey, 'conns') or '0') <= 0 then
    -- an offline user's device set lasts as long as its longest-lived device
    local set_left = redis.call('PTTL', devices)
    if keep == 0 or (set_existed and set_left < 0) then redis.call('PERSIST', devices)
    else redis.call('PEXPIRE', devices, math.max(set_left, keep)) end
  end
end
return {stored, known, full}
""")

# KEYS: a key of an earlier layout, its name in this one -> 1 if it was there and is renamed
#   (the converter's; it may have expired since the converter found it)
RENAME_OLD = _script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
""")

# KEYS: the device's hash and messages -> how many messages were removed (the device is
#   flagged overflowed: its client gets _resync when it next connects); -1: no such device
PURGE_QUEUE = _script("""
local dev, msg = unpack(KEYS)
if redis.call('EXISTS', dev) == 0 then return -1 end
local queued = redis.call('HLEN', msg)
redis.call('EXISTS', depth_key(msg))
redis.call('DEL', msg)
count_out(msg, queued)
redis.call('HSET', dev, 'overflow', 1)
return queued
""")

# KEYS: a layout 1 message hash (seq -> record), its name in this one. Its messages are
#   written under this layout's field names (the event read from each record), with the time
#   the old hash had left -> 1 if it was there and is converted
CONVERT_QUEUE = _script("""
local old, new = unpack(KEYS)
local flat = redis.call('HGETALL', old)
if #flat == 0 then return 0 end
local ttl = redis.call('PTTL', old)
for i = 1, #flat, 2 do
  local record = flat[i + 1]
  local event = string.sub(record, 2, string.find(record, '\\0', 2, true) - 1)
  redis.call('HSET', new, message_field(flat[i], event), record)
end
redis.call('HINCRBY', depth_key(new), site_field(new), #flat / 2)
if ttl > 0 then redis.call('PEXPIRE', new, ttl + QUEUE_GRACE_MS) end
redis.call('DEL', old)
return 1
""")
