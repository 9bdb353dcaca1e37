-- Store::post_direct: append to the recipient's inbox and, unless they are the same user, to the
-- sender's inbox; publish each copy on its owner's channel. One script, so both copies share one
-- ts and either both exist or neither does.
-- KEYS[1] recipient inbox meta, KEYS[2] recipient inbox log, [KEYS[3] sender meta, KEYS[4] sender log]
-- ARGV[1] recipient epoch candidate, ARGV[2] sender epoch candidate, ARGV[3] body JSON,
-- ARGV[4] log cap, ARGV[5] recipient channel, ARGV[6] sender channel
-- Returns {recipient seq, recipient epoch, sender seq, sender epoch, ts}.
check_log(KEYS[1], KEYS[2])
if #KEYS >= 4 then
  check_log(KEYS[3], KEYS[4])
end
local ts = now_ms()
local cap = tonumber(ARGV[4])
local rseq, repoch, rframe = append(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ts, cap)
redis.call('PUBLISH', ARGV[5], rframe)
local sseq, sepoch = rseq, repoch
if #KEYS >= 4 then
  local sframe
  sseq, sepoch, sframe = append(KEYS[3], KEYS[4], ARGV[2], ARGV[3], ts, cap)
  redis.call('PUBLISH', ARGV[6], sframe)
end
return {rseq, repoch, sseq, sepoch, ts}
