-- Store::head: the log's epoch and seq, creating the epoch if the log has none, so the epoch a
-- first subscriber sees is the one the first post will use.
-- KEYS[1] meta HASH, KEYS[2] log ZSET, KEYS[3] post ids ZSET of the log (both emptied when the
-- epoch is created), [KEYS[4] rooms SET (room logs only)]
-- ARGV[1] epoch candidate, ARGV[2] TTL s of the log's keys, [ARGV[3] room id]
-- Returns {epoch, seq as text}.
check_log(KEYS[1])
if KEYS[4] then
  check_type(KEYS[4], 'set')
end
local epoch = ensure_epoch(KEYS[1], ARGV[1], KEYS[2], KEYS[3])
if KEYS[4] then
  redis.call('SADD', KEYS[4], ARGV[3])
  -- A room's other keys are renewed by its joins and posts; its log keys only when they have
  -- no TTL yet (a first head), so a head never keeps a log alive past its members.
  keep_if_unset(ARGV[2], KEYS[1])
else
  -- An inbox is renewed by its owner connecting, as by a direct message.
  keep(ARGV[2], KEYS[1], KEYS[2], KEYS[3])
end
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
return {epoch, seq}
