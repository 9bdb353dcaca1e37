-- Store::leave (logout): no longer a member, offline on every node, cursor dropped.
-- KEYS[1] members SET, KEYS[2] names HASH, KEYS[3] online ZSET, KEYS[4] conns ZSET,
-- KEYS[5] the user's cursors HASH, KEYS[6] nodes ZSET, KEYS[7] room meta HASH, KEYS[8] rooms
-- SET, KEYS[9] room log ZSET, KEYS[10] room post ids ZSET
-- ARGV[1] user, ARGV[2] cursor field, ARGV[3] room TTL s, ARGV[4] room id
--
-- A room this leaves with no member, nobody online (not even an expired entry reap_presence has
-- yet to report) and no message is deleted at once and leaves the room list: a `login` + `logout`
-- leaves nothing behind but the meta HASH, which keeps the epoch and presence seq (so both only
-- move forward if the room is used again) until its TTL.
-- Returns {num, total, presence seq of the logout, was online 0/1}.
check_type(KEYS[1], 'set')
check_type(KEYS[2], 'hash')
check_type(KEYS[3], 'zset')
check_type(KEYS[4], 'zset')
check_type(KEYS[5], 'hash')
check_type(KEYS[6], 'zset')
check_type(KEYS[7], 'hash')
check_presence_seq(KEYS[7])
check_type(KEYS[8], 'set')
check_type(KEYS[9], 'zset')
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
keep_if_unset(ARGV[3], KEYS[7])
if redis.call('SCARD', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[3]) == 0
    and redis.call('ZCARD', KEYS[9]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[9], KEYS[10])
  redis.call('SREM', KEYS[8], ARGV[4])
end
local num, total = counts(KEYS[3], KEYS[1], now)
return {num, total, pseq, was_online}
