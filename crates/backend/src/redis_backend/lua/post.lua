-- Store::post: append to a room log and publish, atomically; idempotent per (user, clientMsgId).
-- KEYS[1] room meta HASH, KEYS[2] room log ZSET, KEYS[3] rooms SET, KEYS[4] post ids ZSET
-- ARGV[1] epoch candidate, ARGV[2] body JSON, ARGV[3] log cap, ARGV[4] room channel, ARGV[5] room id,
-- ARGV[6] `user|clientMsgId`, or '' for a post without a clientMsgId
-- Returns {seq, epoch, ts}: of the new message, or of the earlier one with the same id (a retry
-- after a timeout or an `unavailable` whose first attempt did land), which is then neither
-- stored nor published again.
check_log(KEYS[1], KEYS[2])
check_type(KEYS[3], 'set')
check_type(KEYS[4], 'zset')
local cap = tonumber(ARGV[3])
local id = ARGV[6]
if id ~= '' then
  local earlier = redis.call('ZSCORE', KEYS[4], id)
  if earlier then
    local entry = redis.call('ZRANGEBYSCORE', KEYS[2], earlier, earlier)[1]
    local ok, decoded = pcall(cjson.decode, entry or '')
    if ok and type(decoded) == 'table' and tonumber(decoded.ts) then
      return {tonumber(earlier), redis.call('HGET', KEYS[1], 'epoch'), tonumber(decoded.ts)}
    end
  end
end
local ts = now_ms()
local seq, epoch, frame = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ts, cap)
if id ~= '' then
  redis.call('ZADD', KEYS[4], seq, id)
end
-- Ids live as long as their messages stay in the log.
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. int(seq - cap + 1))
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('PUBLISH', ARGV[4], frame)
return {seq, epoch, ts}
