-- Store::reap_presence: remove users whose presence expired (their node stopped refreshing).
-- Atomic, so when several nodes reap the same room each expired user is returned to exactly one.
-- KEYS[1] online ZSET, KEYS[2] conns ZSET, KEYS[3] names HASH, KEYS[4] members SET,
-- KEYS[5] room meta HASH
-- Returns {num, total, user1, name1, pseq1, user2, name2, pseq2, ...} (counts after the removal;
-- each reaped user takes its own presence seq).
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'hash')
check_type(KEYS[4], 'set')
check_type(KEYS[5], 'hash')
check_presence_seq(KEYS[5])
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now))
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now))
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
end
local num, total = counts(KEYS[1], KEYS[4], now)
local out = {num, total}
for _, user in ipairs(expired) do
  out[#out + 1] = user
  out[#out + 1] = redis.call('HGET', KEYS[3], user) or user
  out[#out + 1] = next_presence_seq(KEYS[5])
end
return out
