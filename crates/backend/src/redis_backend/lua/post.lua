-- Store::post: append to a room log and publish, atomically.
-- KEYS[1] room meta HASH, KEYS[2] room log ZSET, KEYS[3] rooms SET
-- ARGV[1] epoch candidate, ARGV[2] body JSON, ARGV[3] log cap, ARGV[4] room channel, ARGV[5] room id
-- Returns {seq, epoch, ts}.
check_log(KEYS[1], KEYS[2])
check_type(KEYS[3], 'set')
local ts = now_ms()
local seq, epoch, frame = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ts, tonumber(ARGV[3]))
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('PUBLISH', ARGV[4], frame)
return {seq, epoch, ts}
