-- Store::post: append to a room log and publish, atomically; idempotent per (user, clientMsgId).
-- KEYS[1] room meta HASH, KEYS[2] room log ZSET, KEYS[3] post ids ZSET, KEYS[4] members SET,
-- KEYS[5] names HASH, KEYS[6] online ZSET, KEYS[7] conns ZSET (all of one room: their TTLs are
-- renewed together)
-- ARGV[1] epoch candidate, ARGV[2] body JSON, ARGV[3] log cap, ARGV[4] room channel,
-- ARGV[5] `user|clientMsgId`, or '' for a post without a clientMsgId, ARGV[6] '1' to check the
-- key types first (see read_log), ARGV[7] room TTL s
-- Returns {seq, epoch, ts, duplicate, conflict}: of the new message ({..., 0, 0}), or of the
-- earlier one with the same id ({..., 1, conflict}: a retry after a timeout or an `unavailable`
-- whose first attempt did land, or with conflict = 1 a reuse of the id for other content), which
-- is then neither stored nor published again.
--
-- The room list (`rooms` SET) is not touched here: a room is listed by the join that must come
-- before any post, so every key a post writes belongs to its room.
check_draft(ARGV[1], ARGV[2])
local log = read_log(KEYS[1], KEYS[2], KEYS[3], ARGV[6] == '1')
local cap = tonumber(ARGV[3])
local id = ARGV[5]
local eseq, eepoch, ets, conflict = earlier_post(log, id, ARGV[2])
if eseq then
  return {eseq, eepoch, ets, 1, conflict}
end
local ts = now_ms()
local seq, epoch, frame = append(log, ARGV[1], ARGV[2], ts, cap)
remember_post(log.ids, id, seq, cap)
keep(ARGV[7], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('PUBLISH', ARGV[4], frame)
return {seq, epoch, ts, 0, 0}
