-- Store::refresh_presence: push the expiry of this node's presence entries to now + TTL, and
-- re-assert what a live connection implies, so state lost with Redis's data (a restart without
-- persistence, a flush) comes back by itself: the user is online, a member, and the room exists.
-- KEYS[1] nodes ZSET, KEYS[2] rooms SET, then for entry i: KEYS[3i] conns ZSET, KEYS[3i+1]
-- online ZSET, KEYS[3i+2] members SET of its room
-- ARGV[1] node id, ARGV[2] presence TTL ms, then for entry i: ARGV[2i+1] user, ARGV[2i+2] room id
-- Returns the number of entries refreshed.
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'set')
for i = 3, #KEYS, 3 do
  check_type(KEYS[i], 'zset')
  check_type(KEYS[i + 1], 'zset')
  check_type(KEYS[i + 2], 'set')
end
local now = now_ms()
local exp = now + tonumber(ARGV[2])
local node = ARGV[1]
redis.call('ZADD', KEYS[1], 'GT', exp, node)
-- Nodes that stopped refreshing: their conns entries have expired too.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local n = 0
for i = 3, #KEYS, 3 do
  local a = 3 + 2 * n
  local user, room = ARGV[a], ARGV[a + 1]
  redis.call('ZADD', KEYS[i], exp, user .. '|' .. node)
  redis.call('ZADD', KEYS[i + 1], 'GT', exp, user)
  redis.call('SADD', KEYS[i + 2], user)
  redis.call('SADD', KEYS[2], room)
  n = n + 1
end
return n
