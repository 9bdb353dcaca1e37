-- Store::leave (logout): no longer a member, offline on every node, cursor dropped.
-- KEYS[1] members SET, KEYS[2] names HASH, KEYS[3] online ZSET, KEYS[4] conns ZSET,
-- KEYS[5] the user's cursors HASH, KEYS[6] nodes ZSET
-- ARGV[1] user, ARGV[2] cursor field
-- Returns {num, total}.
check_type(KEYS[1], 'set')
check_type(KEYS[2], 'hash')
check_type(KEYS[3], 'zset')
check_type(KEYS[4], 'zset')
check_type(KEYS[5], 'hash')
check_type(KEYS[6], 'zset')
local now = now_ms()
local user = ARGV[1]
redis.call('SREM', KEYS[1], user)
redis.call('HDEL', KEYS[2], user)
redis.call('ZREM', KEYS[3], user)
-- Every node that may hold a `user|node` entry is in the nodes ZSET (a node's entry there always
-- outlives its conns entries); anything older has expired and goes with the range removal.
for _, node in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
  redis.call('ZREM', KEYS[4], user .. '|' .. node)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', int(now))
redis.call('HDEL', KEYS[5], ARGV[2])
local num, total = counts(KEYS[3], KEYS[1], now)
return {num, total}
