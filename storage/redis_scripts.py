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
reads each key it will write before its first write, or, for the batched ENQUEUE and ACK,
each bucket's probe, a key never written, which fails in a slot on the move whichever keys
have gone: it fails having changed nothing, and is run again once the move is done
(``redis_wire``). Times are in milliseconds; a ttl of 0 means never expire.
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
            if other not in used and re.search(rf"\b{other}\b", text)
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

# A device seen now; and its holders, when the caller's count_on_node changed them. A device
# that no longer exists leaves the bucket's indexes: its user's device set, the holders, the
# caps, and the members of ``rooms`` (its user's).
_DEVICE = """
local function mark_seen(dev, p, entry, nodes)
  redis.call('HSET', dev, 'seen', now_us())
  if nodes then redis.call('HSET', holders_key(p), entry, nodes) end
end
local function in_chunks(command, key, values)  -- unpack takes a few thousand at most
  for j = 1, #values, 1000 do
    redis.call(command, key, unpack(values, j, math.min(j + 999, #values)))
  end
end
local function unindex_device(p, devices, user, device, rooms)
  local entry = device_entry(user, device)
  redis.call('SREM', devices, device)
  redis.call('HDEL', holders_key(p), entry)
  redis.call('HDEL', caps_key(p), entry)
  for _, room in ipairs(rooms) do redis.call('SREM', members_key(p, room), entry) end
end
"""

_PRELUDE = _definitions(LUA_PRELUDE + _NOW + _GONE + _ARGUMENTS + _DEVICE)


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
local entry, holders = device_entry(user, device), holders_key(p)
-- reads
local exists = redis.call('EXISTS', dev) == 1
-- a reconnect with the rooms it had (most are) leaves the rooms' members as they are
local old_rooms = redis.call('SMEMBERS', rooms)
local same_rooms = #old_rooms == #ARGV - 6
if same_rooms then
  local had = {}
  for _, room in ipairs(old_rooms) do had[room] = true end
  for i = 7, #ARGV do same_rooms = same_rooms and had[ARGV[i]] == true end
end
-- the user's devices: for a new one's place among max_devices, or to follow new rooms
local names = (not exists or not same_rooms) and redis.call('SMEMBERS', devices) or {}
local expired, retire, dropped = {}, {}, {}
if not exists then  -- new to the user: it needs a place among max_devices
  local live, offline = 0, {}
  for _, other in ipairs(names) do
    local odev, omsg = device_keys(p, user, other)
    if other == device then
    elseif redis.call('EXISTS', odev, omsg) == 0 or redis.call('EXISTS', odev) == 0 then
      expired[#expired + 1] = other
      dropped[other] = true
    else
      live = live + 1
      local conns, seen = unpack(redis.call('HMGET', odev, 'conns', 'seen'))
      if tonumber(conns or '0') <= 0 then offline[#offline + 1] = {tonumber(seen or '0'), other} end
    end
  end
  local over = live - max_devices + 1
  if over > #offline then return {-1, 0, ''} end
  table.sort(offline, function(a, b) return a[1] < b[1] end)
  for k = 1, math.max(over, 0) do retire[k] = offline[k][2]; dropped[retire[k]] = true end
end
if not same_rooms or not exists then
  for _, room in ipairs(old_rooms) do redis.call('EXISTS', members_key(p, room)) end
  for i = 7, #ARGV do redis.call('EXISTS', members_key(p, ARGV[i])) end
end
redis.call('EXISTS', depth_key(p), holders, caps_key(p))
-- the device's state, the queue of a device that expired (not swept yet), and those of the
-- retired ones
local overflowed, seq, nodes = 0, '0', ''
if exists then
  local state = redis.call('HMGET', dev, 'overflow', 'seq')
  overflowed, seq = state[1] and 1 or 0, state[2] or '0'
  nodes = redis.call('HGET', holders, entry) or ''
end
local stale = not exists and redis.call('HLEN', msg) or 0
local retired_queued = {}
for k, name in ipairs(retire) do
  local _, omsg = device_keys(p, user, name)
  retired_queued[k] = redis.call('HLEN', omsg)
end
-- writes
for _, name in ipairs(expired) do unindex_device(p, devices, user, name, old_rooms) end
for k, name in ipairs(retire) do
  local odev, omsg = device_keys(p, user, name)
  redis.call('DEL', odev, omsg)
  count_out(p, retired_queued[k])
  unindex_device(p, devices, user, name, old_rooms)
  redis.call('ZREM', exp_devices, held_entry(p, user, name))
end
if stale > 0 then
  redis.call('DEL', msg)
  count_out(p, stale)
end
if overflowed == 1 then redis.call('HDEL', dev, 'overflow') end
if not exists then
  redis.call('HSET', dev, 'seq', '0')
  redis.call('HDEL', caps_key(p), entry)  -- its seq starts again: an old cap says nothing
end
redis.call('HINCRBY', dev, 'conns', 1)
local _, now_nodes = count_on_node(dev, node, 1, nodes)
mark_seen(dev, p, entry, now_nodes)
redis.call('SADD', held, held_entry(p, user, device))
redis.call('PERSIST', dev); redis.call('PERSIST', msg)
redis.call('ZREM', exp_devices, held_entry(p, user, device))
redis.call('SADD', devices, device)
redis.call('PERSIST', devices)
redis.call('ZREM', exp_users, user_entry(p, user))
if same_rooms then
  redis.call('PERSIST', rooms)  -- as a new set would be: its user is connected
  if not exists then
    for i = 7, #ARGV do redis.call('SADD', members_key(p, ARGV[i]), entry) end
  end
else  -- every device of the user follows the new rooms
  local entries = {entry}
  for _, name in ipairs(names) do
    if name ~= device and not dropped[name] then
      entries[#entries + 1] = device_entry(user, name)
    end
  end
  for _, room in ipairs(old_rooms) do in_chunks('SREM', members_key(p, room), entries) end
  redis.call('DEL', rooms)
  for i = 7, #ARGV do
    redis.call('SADD', rooms, ARGV[i])
    in_chunks('SADD', members_key(p, ARGV[i]), entries)
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
local entry, holders = device_entry(user, device), holders_key(p)
-- reads
redis.call('EXISTS', depth_key(dev), holders, caps_key(p))
local exists = redis.call('EXISTS', dev) == 1
local nodes = exists and (redis.call('HGET', holders, entry) or '')
local room_names, queued = {}, 0
if forget and exists then  -- a device forgotten leaves its rooms' members
  room_names = redis.call('SMEMBERS', rooms)
  for _, room in ipairs(room_names) do redis.call('EXISTS', members_key(p, room)) end
  queued = redis.call('HLEN', msg)
end
-- writes
if exists then
  local left, now_nodes = count_on_node(dev, node, -1, nodes)
  mark_seen(dev, p, entry, now_nodes)
  if left <= 0 then
    redis.call('SREM', held, held_entry(p, user, device))
  end
  if redis.call('HINCRBY', dev, 'conns', -1) <= 0 then
    redis.call('HSET', dev, 'conns', 0)
    if forget then
      count_out(p, queued)
      redis.call('DEL', dev, msg)
      unindex_device(p, devices, user, device, room_names)
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
#   -> how many parts were handled; then for each: n, then entry, seq, nodes (comma-separated
#      ids of the nodes where the device is connected) for each of the n devices that stored
#      it; then m, then the entries of the m devices whose queue is full and overflowed just
#      now; then r, then the r rooms that have no members in the bucket. A part whose
#      idempotency record exists stores nothing: -1, how many devices the first attempt
#      stored it for, then n and its n deliveries as above (recorded when there were at most
#      RECORDED_DELIVERIES), then 0, 0.
# A device's queue holds at most max_queue messages. Reading its length for every message
# would be a command per delivery; the bucket's caps hash says instead up to which seq it
# need not be read: a queue found with L messages when seq s was assigned can take seqs up to
# s + max_queue - L - 1 before it could be full (every message stored takes a seq; acks and
# expiry only shorten it). A device whose hash is made again starts without a cap.
ENQUEUE = _script(
    f"local RECORDED_DELIVERIES = {RECORDED_DELIVERIES}"
    + """
local max_text, idem_ttl = ARGV[2], ARGV[4]
local max_queue = tonumber(max_text)
local guarded = ARGV[5] == '1'  -- Redis Cluster: a slot may be moving (reads before writes)
-- This script runs for every delivery: its loops avoid what Lua makes costly (closures and
-- tables per device, numbers turned into strings, arrays read where a field does).
local n_names = count(ARGV[6])
local names, last_arg = key_names(n_names)
local out, n_out = {0}, 1
local counted = {}  -- site -> messages stored: the call's depth, counted in its first bucket
local NONE = {}  -- no rooms without members, no devices whose queue filled: most parts
local call = redis.call
-- A bucket hash's fields for every entry, in order (after ``first``'s, if given); unpack
-- takes a few thousand values at most.
local function fields_of(key, entries, first)
  if #entries <= 1000 then
    if first then return call('HMGET', key, first, unpack(entries)) end
    return call('HMGET', key, unpack(entries))
  end
  local all = first and {call('HGET', key, first)} or {}
  for j = 1, #entries, 1000 do
    local some = call('HMGET', key, unpack(entries, j, math.min(j + 999, #entries)))
    for k = 1, #some do all[#all + 1] = some[k] end
  end
  return all
end
-- One part's reads, returned as (idem, repeated, found, empty rooms, entries, holders,
-- caps, ttls): the devices' entries, their holders, caps and, for offline ones, time left.
-- On Redis Cluster every part of the call is read before the first write (a bucket whose
-- slot is on the move fails the script at its probe, having stored nothing); elsewhere
-- each part is written as soon as it is read.
local function read_part(p, depth, idem, first_user, first_room, n_rooms)
  if guarded then call('EXISTS', probe_key(depth)) end  -- the slot is not on the move
  local prior = idem and call('GET', idem)
  if prior then
    -- "count" or "count:user\tdevice\tseq:..." (names are escaped: no ':' or tab in them)
    local entries, found = {}, {}
    for entry in string.gmatch(prior, '[^:]+') do entries[#entries + 1] = entry end
    for k = 2, #entries do
      local user, device, seq = string.match(entries[k], '^([^\t]*)\t([^\t]*)\t(%d+)$')
      local entry = device_entry(user, device)
      local nodes = call('HGET', holders_key(p), entry) or ''
      found[#found + 1] = {entry, tonumber(seq), nodes}
    end
    return idem, tonumber(entries[1]), found
  end
  -- the devices: those of the users named (distinct: the store sends each once), then the
  -- rooms' members
  local entries, n, empty_rooms = NONE, 0, NONE
  if n_rooms == 1 and first_user == first_room then  -- one room: a set has no duplicates
    entries = call('SMEMBERS', members_key(p, ARGV[first_room]))
    n = #entries
    if n == 0 then empty_rooms = {ARGV[first_room]} end
  else
    entries = {}
    local seen = n_rooms > 0 and {}
    for k = first_user, first_room - 1 do
      local user = ARGV[k]
      local device_names = call('SMEMBERS', devices_key(p, user))
      for d = 1, #device_names do
        local entry = device_entry(user, device_names[d])
        n = n + 1
        entries[n] = entry
        if seen then seen[entry] = true end
      end
    end
    for k = first_room, first_room + n_rooms - 1 do
      local found = call('SMEMBERS', members_key(p, ARGV[k]))
      if #found == 0 then
        if empty_rooms == NONE then empty_rooms = {} end
        empty_rooms[#empty_rooms + 1] = ARGV[k]
      end
      for _, entry in ipairs(found) do
        if not seen[entry] then seen[entry] = true; n = n + 1; entries[n] = entry end
      end
    end
  end
  if n == 0 then return idem, false, false, empty_rooms, NONE end
  local holders = fields_of(holders_key(p), entries)
  local caps = fields_of(caps_key(p), entries, CAPS_MAX)
  -- An offline device (no holders) is stored for while its hash lasts; its queue expires
  -- with it. A device without holders is gone: its entries wait for the sweep.
  local ttls = NONE
  for d = 1, n do
    if holders[d] == '' then
      if ttls == NONE then ttls = {} end
      ttls[d] = call('PTTL', (entry_keys(p, entries[d])))
    end
  end
  return idem, false, false, empty_rooms, entries, holders, caps, ttls
end
-- One part's writes, and its answer appended to out.
local function write_part(
  event, record, site, p, idem, repeated, found, empty_rooms, entries, holders, caps, ttls
)
  if repeated then
    out[n_out + 1], out[n_out + 2], out[n_out + 3] = -1, repeated, #found
    n_out = n_out + 3
    for _, f in ipairs(found) do
      out[n_out + 1], out[n_out + 2], out[n_out + 3] = f[1], f[2], f[3]
      n_out = n_out + 3
    end
    out[n_out + 1], out[n_out + 2] = 0, 0
    n_out = n_out + 2
    return
  end
  local count_at, stored, full = n_out + 1, 0, NONE
  n_out = count_at
  if entries ~= NONE then
    local caps_valid = caps[1] == max_text  -- counted for this max_queue
    local new_caps, n_caps = NONE, 0
    for d = 1, #entries do
      local nodes, ttl = holders[d], ttls[d]
      if nodes and ttl ~= -2 then
        local entry = entries[d]
        local dev, msg = entry_keys(p, entry)
        local seq = call('HINCRBY', dev, 'seq', '1')
        -- seq and cap as decimal strings: compared without a strtod
        local text, cap = string.format('%d', seq), caps_valid and caps[d + 1]
        if not cap or #text > #cap or (#text == #cap and text > cap) then
          local space = max_queue - call('HLEN', msg)
          if space <= 0 then
            call('HINCRBY', dev, 'seq', '-1')  -- not stored: seqs stay without gaps
            seq = nil
            if call('HSETNX', dev, 'overflow', '1') == 1 then
              if full == NONE then full = {} end
              full[#full + 1] = entry
            end
          elseif space > 1 then
            if new_caps == NONE then new_caps = {} end
            new_caps[n_caps + 1] = entry
            new_caps[n_caps + 2] = string.format('%d', seq + space - 1)
            n_caps = n_caps + 2
          end
        end
        if seq then
          call('HSET', msg, message_field(text, event), record)
          if ttl and ttl > 0 then call('PEXPIRE', msg, ttl + QUEUE_GRACE_MS) end
          out[n_out + 1], out[n_out + 2], out[n_out + 3] = entry, seq, nodes
          n_out = n_out + 3
          stored = stored + 1
        end
      end
    end
    if n_caps > 0 then
      local key = caps_key(p)
      if not caps_valid then call('DEL', key) end  -- counted for another max_queue
      call('HSET', key, CAPS_MAX, max_text)
      for j = 1, n_caps, 1000 do
        call('HSET', key, unpack(new_caps, j, math.min(j + 999, n_caps)))
      end
    end
  end
  out[count_at] = stored
  if stored > 0 then counted[site] = (counted[site] or 0) + stored end
  if idem then
    local record_of = {stored}
    if stored <= RECORDED_DELIVERIES then
      for k = count_at + 1, n_out, 3 do
        local user, device = split_device_entry(out[k])
        record_of[#record_of + 1] = user .. '\t' .. device .. '\t' .. out[k + 1]
      end
    end
    call('SET', idem, table.concat(record_of, ':'), 'PX', idem_ttl)
  end
  out[n_out + 1] = #full
  n_out = n_out + 1
  for _, entry in ipairs(full) do n_out = n_out + 1; out[n_out] = entry end
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
    reads[#reads + 1] = {
      event, record, site, p, read_part(p, depth, idem, first_user, first_room, n_rooms)
    }
  else
    write_part(event, record, site, p, read_part(p, depth, idem, first_user, first_room, n_rooms))
  end
 end
 -- past step_ms (on Redis Cluster, half of it: the writes follow), the rest is left
 if i <= last_arg and now_ms() - called_at >= tonumber(ARGV[3]) / (guarded and 2 or 1) then
  break
 end
end
for _, read in ipairs(reads or NONE) do write_part(unpack(read, 1, 12)) end
for site, stored in pairs(counted) do
  call('HINCRBY', names[1], site, string.format('%d', stored))
end
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
if n_names > 0 then  -- keys not declared: no group's slot is on the move
  for g = 1, groups do redis.call('EXISTS', probe_key(names[g])) end
end
local out, n_out, key, i = {}, 0, groups + 1, 2 * groups + 3
local call = redis.call
local counted = {}  -- site -> messages removed: the call's depth, counted in its first bucket
for g = 1, groups do
  local site, removed = ARGV[2 * g + 1], 0
  for _ = 1, count(ARGV[2 * g + 2]) do
    local last, gone = i + count(ARGV[i]), 0
    if last == i + 1 then  -- one message, as most acks are
      gone = call('HDEL', names[key], ARGV[last])
    else
      for j = i + 1, last, 1000 do  -- unpack's limit: a batch's ack may hold thousands
        gone = gone + call('HDEL', names[key], unpack(ARGV, j, math.min(j + 999, last)))
      end
    end
    n_out = n_out + 1
    out[n_out] = gone
    removed = removed + gone
    key, i = key + 1, last + 1
  end
  if removed > 0 then counted[site] = (counted[site] or 0) + removed end
end
for site, removed in pairs(counted) do
  call('HINCRBY', names[1], site, string.format('%d', -removed))
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
local mine = message_field(string.format('%d', seq), event)
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
local counts, holders = {}, {}
for k, entry in ipairs(entries) do
  local p, user, device = split_held(entry)
  local dev, msg = device_keys(p, user, device)
  local ukey, devices, rooms = user_keys(p, user)
  redis.call('EXISTS', dev, msg, ukey, devices, rooms, holders_key(p))
  counts[k] = tonumber(redis.call('HGET', dev, node_field(node)) or '0')
  if counts[k] > 0 then
    holders[k] = redis.call('HGET', holders_key(p), device_entry(user, device)) or ''
  end
end
-- writes
for k, entry in ipairs(entries) do
  local count = counts[k]
  if count > 0 then
    local p, user, device = split_held(entry)
    local dev = device_keys(p, user, device)
    local _, nodes = count_on_node(dev, node, -count, holders[k])
    if nodes then redis.call('HSET', holders_key(p), device_entry(user, device), nodes) end
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
#   A device whose keys expired leaves its user's device set, the holders, the caps and the
#   members of its user's rooms (the rooms set outlives the user for this); a user whose keys
#   expired, its rooms set (and the entries of devices an import kept longer than the user).
#   A user's devices expire no later than it: users are looked at once no device is left
#   waiting, so that each device still finds its user's rooms.
SWEEP = _script("""
local exp_users, exp_devices = unpack(KEYS)
local limit, now = tonumber(ARGV[1]), now_ms()
-- reads
local due_devices = redis.call('ZRANGEBYSCORE', exp_devices, '-inf', now, 'LIMIT', 0, limit)
local due_users = {}
if #due_devices < limit then
  due_users = redis.call('ZRANGEBYSCORE', exp_users, '-inf', now, 'LIMIT', 0, limit)
end
local gone_devices, gone_users, left, later = {}, {}, {}, {}
-- A key that is still there (due this very millisecond, or kept by a reconnect that did not
-- clear its entry) keeps its entry, due again when its time is up; one without expiry, none.
local function not_yet(zset, entry, key)
  local ttl = redis.call('PTTL', key)
  later[#later + 1] = {zset, entry, ttl >= 0 and now + ttl + 1 or nil}  -- -1: persisted
end
local function read_rooms(p, rooms)  -- and each room's members, counted once
  local held = redis.call('SMEMBERS', rooms)
  for _, room in ipairs(held) do
    local key = members_key(p, room)
    if left[key] == nil then left[key] = redis.call('SCARD', key) end
  end
  return held
end
local queues = {}  -- the queues of expired devices: deleted, and counted out of the depth
for _, entry in ipairs(due_devices) do
  local p, user, device = split_held(entry)
  local _, devices, rooms = user_keys(p, user)
  local dev, msg = device_keys(p, user, device)
  if redis.call('EXISTS', dev) == 1 then
    not_yet(exp_devices, entry, dev)
  else
    local queued = redis.call('HLEN', msg)
    if queued > 0 then
      redis.call('EXISTS', depth_key(msg))
      queues[#queues + 1] = {msg, queued}
    end
    redis.call('EXISTS', devices, holders_key(p), caps_key(p))
    gone_devices[#gone_devices + 1] = {p, user, {device}, read_rooms(p, rooms)}
  end
end
for _, entry in ipairs(due_users) do
  local p, user = split_user_entry(entry)
  local ukey, devices, rooms = user_keys(p, user)
  if redis.call('EXISTS', ukey) == 1 then
    not_yet(exp_users, entry, ukey)
  else
    local kept = redis.call('SMEMBERS', devices)  -- an imported device may outlive its user
    gone_users[#gone_users + 1] = {p, user, kept, read_rooms(p, rooms), rooms}
  end
end
-- writes
local removed, emptied = 0, {}
local function leave(p, user, device_names, rooms)
  for _, device in ipairs(device_names) do
    local entry = device_entry(user, device)
    for _, room in ipairs(rooms) do
      local key = members_key(p, room)
      if left[key] > 0 and redis.call('SREM', key, entry) == 1 then
        removed = removed + 1
        left[key] = left[key] - 1
        if left[key] == 0 then emptied[#emptied + 1] = p .. '\t' .. room end
      end
    end
  end
end
for _, queue in ipairs(queues) do
  redis.call('DEL', queue[1])
  count_out(queue[1], queue[2])
end
for _, gone in ipairs(gone_devices) do
  local p, user, device_names, rooms = unpack(gone)
  local device = device_names[1]
  local entry = device_entry(user, device)
  removed = removed + redis.call('SREM', devices_key(p, user), device)
  redis.call('HDEL', holders_key(p), entry)
  redis.call('HDEL', caps_key(p), entry)
  leave(p, user, device_names, rooms)
end
for _, gone in ipairs(gone_users) do
  local p, user, device_names, rooms, rooms_key = unpack(gone)
  leave(p, user, device_names, rooms)
  redis.call('DEL', rooms_key)
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
local entry = device_entry(user, device)
redis.call('EXISTS', depth_key(msg), holders_key(p), caps_key(p))  -- reads first (cluster)
local created = redis.call('EXISTS', dev) == 0
local _, _, rooms_key = user_keys(p, user)
local rooms = created and redis.call('SMEMBERS', rooms_key) or {}
for _, room in ipairs(rooms) do redis.call('EXISTS', members_key(p, room)) end
if created then  -- as a connect makes it, offline; in its user's rooms
  count_out(msg, redis.call('HLEN', msg))  -- an expired device's queue, not swept yet
  redis.call('DEL', msg)
  redis.call('HSET', dev, 'seq', 0, 'conns', 0, 'seen', now_us())
  redis.call('HSET', holders_key(p), entry, '')
  redis.call('HDEL', caps_key(p), entry)
  for _, room in ipairs(rooms) do redis.call('SADD', members_key(p, room), entry) end
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
      redis.call('HSET', msg, message_field(string.format('%d', seq), ARGV[i + 1]), ARGV[i + 2])
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
  redis.call('HSET', new, message_field(string.format('%d', flat[i]), event), record)
end
redis.call('HINCRBY', depth_key(new), site_field(new), #flat / 2)
if ttl > 0 then redis.call('PEXPIRE', new, ttl + QUEUE_GRACE_MS) end
redis.call('DEL', old)
return 1
""")

# Layout 2 -> 3 (the converter's). KEYS: a room's members in a bucket. ARGV: the bucket's
#   prefix for the site -> how many users were replaced by their devices' entries
CONVERT_MEMBERS = _script("""
local members, p = KEYS[1], ARGV[1]
if redis.call('TYPE', members).ok ~= 'set' then return 0 end
local users = {}
for _, name in ipairs(redis.call('SMEMBERS', members)) do
  if not string.find(name, SEP, 1, true) then users[#users + 1] = name end  -- not an entry
end
for _, user in ipairs(users) do
  for _, device in ipairs(redis.call('SMEMBERS', devices_key(p, user))) do
    redis.call('SADD', members, device_entry(user, device))
  end
  redis.call('SREM', members, user)
end
return #users
""")

# KEYS: a device's hash. ARGV: the bucket's prefix for the site, the device's entry -> 1 if
#   its holders were moved to the bucket's holders hash (from its nodes field, or, for a hash
#   older than that field, from its n:{node} fields)
CONVERT_HOLDERS = _script("""
local dev, p, entry = KEYS[1], ARGV[1], ARGV[2]
if redis.call('TYPE', dev).ok ~= 'hash' then return 0 end  -- gone, or a node's (same grammar)
local nodes = redis.call('HGET', dev, NODES_FIELD)
if not nodes then
  local held = {}
  for _, field in ipairs(redis.call('HKEYS', dev)) do
    if string.find(field, NODE_FIELD, 1, true) == 1 then
      held[#held + 1] = string.sub(field, #NODE_FIELD + 1)
    end
  end
  nodes = table.concat(held, ',')
end
redis.call('HSET', holders_key(p), entry, nodes)
redis.call('HDEL', dev, NODES_FIELD)
return 1
""")
