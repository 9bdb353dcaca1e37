-- Store::post: append to a room log and publish, atomically; idempotent per (user, clientMsgId).
-- KEYS[1] room meta HASH, KEYS[2] room log ZSET, KEYS[3] rooms SET, KEYS[4] post ids ZSET
-- ARGV[1] epoch candidate, ARGV[2] body JSON, ARGV[3] log cap, ARGV[4] room channel, ARGV[5] room id,
-- ARGV[6] `user|clientMsgId`, or '' for a post without a clientMsgId
-- Returns {seq, epoch, ts, duplicate, conflict}: of the new message ({..., 0, 0}), or of the
-- earlier one with the same id ({..., 1, conflict}: a retry after a timeout or an `unavailable`
-- whose first attempt did land, or with conflict = 1 a reuse of the id for other content), which
-- is then neither stored nor published again.
check_append(KEYS[1], KEYS[2], KEYS[4], ARGV[1], ARGV[2])
check_type(KEYS[3], 'set')
local cap = tonumber(ARGV[3])
local id = ARGV[6]
local eseq, eepoch, ets, conflict = earlier_post(KEYS[4], KEYS[1], KEYS[2], id, ARGV[2])
if eseq then
  return {eseq, eepoch, ets, 1, conflict}
end
local ts = now_ms()
local seq, epoch, frame = append(KEYS[1], KEYS[2], KEYS[4], ARGV[1], ARGV[2], ts, cap)
remember_post(KEYS[4], id, seq, cap)
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('PUBLISH', ARGV[4], frame)
return {seq, epoch, ts, 0, 0}
