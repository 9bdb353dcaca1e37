-- Store::refresh_presence: push the expiry of this node's presence entries to now + lease, and
-- re-assert what a live connection implies, so state lost with Redis's data (a restart without
-- persistence, a flush) comes back by itself: the user is online, a member with a display name,
-- and the room exists.
-- KEYS[1] nodes ZSET, KEYS[2] rooms SET, then for entry i: KEYS[4i-1] conns ZSET, KEYS[4i] online
-- ZSET, KEYS[4i+1] members SET, KEYS[4i+2] names HASH of its room
-- ARGV[1] node id, ARGV[2] lease ms, then for entry i: ARGV[3i] user, ARGV[3i+1] room id,
-- ARGV[3i+2] user name
-- Returns, for every entry whose user this put back online (their `online` entry had been reaped
-- or lost): {entry index (1-based), num, total}, flattened.
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'set')
for i = 3, #KEYS, 4 do
  check_type(KEYS[i], 'zset')
  check_type(KEYS[i + 1], 'zset')
  check_type(KEYS[i + 2], 'set')
  check_type(KEYS[i + 3], 'hash')
end
local now = now_ms()
local exp = now + tonumber(ARGV[2])
local node = ARGV[1]
redis.call('ZADD', KEYS[1], 'GT', exp, node)
-- Nodes that stopped refreshing: their conns entries have expired too.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local revived = {}
local n = 0
for i = 3, #KEYS, 4 do
  n = n + 1
  local a = 3 * n
  local user, room, name = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  redis.call('ZADD', KEYS[i], exp, user .. '|' .. node)
  local added = redis.call('ZADD', KEYS[i + 1], 'GT', exp, user)
  redis.call('SADD', KEYS[i + 2], user)
  redis.call('HSETNX', KEYS[i + 3], user, name)
  redis.call('SADD', KEYS[2], room)
  if added == 1 then
    table.insert(revived, n)
  end
end
local out = {}
for _, idx in ipairs(revived) do
  local k = 3 + 4 * (idx - 1)
  local num, total = counts(KEYS[k + 1], KEYS[k + 2], now)
  table.insert(out, idx)
  table.insert(out, num)
  table.insert(out, total)
end
return out
