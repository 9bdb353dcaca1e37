-- Store::leave (logout): no longer a member, offline on every node, cursor dropped.
-- KEYS[1] members SET, KEYS[2] names HASH, KEYS[3] online ZSET, KEYS[4] conns ZSET,
-- KEYS[5] the user's cursors HASH, KEYS[6] nodes ZSET, KEYS[7] room meta HASH
-- ARGV[1] user, ARGV[2] cursor field
-- Returns {num, total, presence seq of the logout, was online 0/1}.
check_type(KEYS[1], 'set')
check_type(KEYS[2], 'hash')
check_type(KEYS[3], 'zset')
check_type(KEYS[4], 'zset')
check_type(KEYS[5], 'hash')
check_type(KEYS[6], 'zset')
check_type(KEYS[7], 'hash')
check_presence_seq(KEYS[7])
local now = now_ms()
local user = ARGV[1]
redis.call('SREM', KEYS[1], user)
redis.call('HDEL', KEYS[2], user)
local prev = redis.call('ZSCORE', KEYS[3], user)
local was_online = 0
if prev and tonumber(prev) > now then
  was_online = 1
end
redis.call('ZREM', KEYS[3], user)
-- Every node that may hold a `user|node` entry is in the nodes ZSET (a node's entry there always
-- outlives its conns entries); anything older has expired and goes with the range removal.
for _, node in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
  redis.call('ZREM', KEYS[4], user .. '|' .. node)
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', int(now))
redis.call('HDEL', KEYS[5], ARGV[2])
local pseq = next_presence_seq(KEYS[7])
local num, total = counts(KEYS[3], KEYS[1], now)
return {num, total, pseq, was_online}
