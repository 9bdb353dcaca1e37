-- Store::head: the log's epoch and seq, creating the epoch if the log has none, so the epoch a
-- first subscriber sees is the one the first post will use.
-- KEYS[1] meta HASH, KEYS[2] log ZSET, KEYS[3] post ids ZSET of the log (both emptied when the
-- epoch is created), [KEYS[4] rooms SET (room logs only)]
-- ARGV[1] epoch candidate, [ARGV[2] room id]
-- Returns {epoch, seq as text}.
check_log(KEYS[1])
if KEYS[4] then
  check_type(KEYS[4], 'set')
end
local epoch = ensure_epoch(KEYS[1], ARGV[1], KEYS[2], KEYS[3])
if KEYS[4] then
  redis.call('SADD', KEYS[4], ARGV[2])
end
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
return {epoch, seq}
