"""The Lua scripts behind every Redis store decision, each one atomic.

They build key names from ARGV[1], the site's key prefix (see ``redis_keys``); every script
touches one site's keys only. Times are in milliseconds; a ttl of 0 means never expire.
"""

# Shared helpers, prepended to every script.
_HELPERS = """
local p = ARGV[1]
local function dev_keys(user, device)
  local tail = user .. ':' .. device
  return p .. 'dev:' .. tail, p .. 'msg:' .. tail, p .. 'evt:' .. tail
end
local function expire_all(ttl, ...)
  for _, k in ipairs({...}) do
    if ttl > 0 then redis.call('PEXPIRE', k, ttl) else redis.call('PERSIST', k) end
  end
end
"""

# ARGV: prefix, user, device, shared rooms...  -> user's connection count after this one
CONNECT_DEVICE = (
    _HELPERS
    + """
local user, device = ARGV[2], ARGV[3]
local dev, msg, evt = dev_keys(user, device)
redis.call('HINCRBY', dev, 'conns', 1)
redis.call('PERSIST', dev); redis.call('PERSIST', msg); redis.call('PERSIST', evt)
local devices, rooms, ukey = p .. 'devices:' .. user, p .. 'rooms:' .. user, p .. 'user:' .. user
redis.call('SADD', devices, device)
redis.call('PERSIST', devices)
for _, room in ipairs(redis.call('SMEMBERS', rooms)) do
  redis.call('SREM', p .. 'members:' .. room, user)
end
redis.call('DEL', rooms)
for i = 4, #ARGV do
  redis.call('SADD', rooms, ARGV[i])
  redis.call('SADD', p .. 'members:' .. ARGV[i], user)
end
local conns = redis.call('HINCRBY', ukey, 'conns', 1)
redis.call('PERSIST', ukey)
return conns
"""
)

# ARGV: prefix, user, device, ttl_ms, forget (0/1)  -> user's connection count left
DISCONNECT_DEVICE = (
    _HELPERS
    + """
local user, device, ttl, forget = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1'
local dev, msg, evt = dev_keys(user, device)
local devices, rooms, ukey = p .. 'devices:' .. user, p .. 'rooms:' .. user, p .. 'user:' .. user
if redis.call('EXISTS', dev) == 1 then
  local conns = redis.call('HINCRBY', dev, 'conns', -1)
  if conns <= 0 then
    redis.call('HSET', dev, 'conns', 0)
    if forget then
      redis.call('DEL', dev, msg, evt)
      redis.call('SREM', devices, device)
    else
      expire_all(ttl, dev, msg, evt)
    end
  end
end
if redis.call('EXISTS', ukey) == 0 then return 0 end
local left = redis.call('HINCRBY', ukey, 'conns', -1)
if left <= 0 then
  redis.call('HSET', ukey, 'conns', 0)
  expire_all(ttl, ukey, devices, rooms)
end
return left
"""
)

# ARGV: prefix, event, record, n_users, users..., shared rooms...
#   -> flat list user, device, seq for every device that stored the message
ENQUEUE = (
    _HELPERS
    + """
local event, record, n_users = ARGV[2], ARGV[3], tonumber(ARGV[4])
local targets, seen = {}, {}
local function add(user)
  if not seen[user] then seen[user] = true; targets[#targets + 1] = user end
end
for i = 5, 4 + n_users do add(ARGV[i]) end
for i = 5 + n_users, #ARGV do
  for _, user in ipairs(redis.call('SMEMBERS', p .. 'members:' .. ARGV[i])) do
    if redis.call('EXISTS', p .. 'user:' .. user) == 1 then add(user)
    else redis.call('SREM', p .. 'members:' .. ARGV[i], user) end
  end
end
local out = {}
for _, user in ipairs(targets) do
  local devices = p .. 'devices:' .. user
  for _, device in ipairs(redis.call('SMEMBERS', devices)) do
    local dev, msg, evt = dev_keys(user, device)
    local ttl = redis.call('PTTL', dev)
    if ttl == -2 then
      redis.call('SREM', devices, device)
    else
      local seq = redis.call('HINCRBY', dev, 'seq', 1)
      redis.call('HSET', msg, seq, record)
      redis.call('ZADD', evt, 0, event .. '\\0' .. string.format('%020d', seq))
      if ttl > 0 then redis.call('PEXPIRE', msg, ttl); redis.call('PEXPIRE', evt, ttl) end
      out[#out + 1] = user; out[#out + 1] = device; out[#out + 1] = seq
    end
  end
end
return out
"""
)

# ARGV: prefix, user, device, (seq, event member)...  -> number removed
ACK = (
    _HELPERS
    + """
local dev, msg, evt = dev_keys(ARGV[2], ARGV[3])
local removed = 0
for i = 4, #ARGV, 2 do
  removed = removed + redis.call('HDEL', msg, ARGV[i])
  redis.call('ZREM', evt, ARGV[i + 1])
end
return removed
"""
)

# ARGV: prefix, user, device, seq, event  -> -1 removed or not stored; else last seq (cleared)
ACK_HEAD = (
    _HELPERS
    + """
local seq, event = ARGV[4], ARGV[5]
local dev, msg, evt = dev_keys(ARGV[2], ARGV[3])
if redis.call('HEXISTS', msg, seq) == 0 then return -1 end
local lo, hi = '[' .. event .. '\\0', '(' .. event .. '\\1'
local head = redis.call('ZRANGEBYLEX', evt, lo, hi, 'LIMIT', 0, 1)[1]
if head == event .. '\\0' .. string.format('%020d', tonumber(seq)) then
  redis.call('HDEL', msg, seq)
  redis.call('ZREM', evt, head)
  return -1
end
for _, member in ipairs(redis.call('ZRANGEBYLEX', evt, lo, hi)) do
  redis.call('HDEL', msg, tostring(tonumber(string.sub(member, #event + 2))))
end
redis.call('ZREMRANGEBYLEX', evt, lo, hi)
return tonumber(redis.call('HGET', dev, 'seq') or seq)
"""
)
