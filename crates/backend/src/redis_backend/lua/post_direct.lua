-- Store::post_direct: append to the recipient's inbox and, unless they are the same user, to the
-- sender's inbox; publish each copy on its owner's channel. One script, so both copies share one
-- ts and either both exist or neither does. Idempotent per (sender, recipient, clientMsgId).
-- KEYS[1] recipient inbox meta, KEYS[2] recipient inbox log, KEYS[3] sender meta, KEYS[4] sender
-- log, KEYS[5] sender's post ids ZSET (for a message to oneself KEYS[3..4] repeat KEYS[1..2])
-- ARGV[1] recipient epoch candidate, ARGV[2] sender epoch candidate, ARGV[3] body JSON,
-- ARGV[4] log cap, ARGV[5] recipient channel, ARGV[6] sender channel, ARGV[7] `to|clientMsgId`
-- or '', ARGV[8] '1' when sender and recipient are the same user
-- Returns {recipient seq, recipient epoch, sender seq, sender epoch, ts} for a new message, or
-- {0, '', sender seq, sender epoch, ts} of the earlier one for a retry (nothing stored or sent).
check_log(KEYS[1], KEYS[2])
check_log(KEYS[3], KEYS[4])
check_type(KEYS[5], 'zset')
local cap = tonumber(ARGV[4])
local id = ARGV[7]
local to_self = ARGV[8] == '1'
if id ~= '' then
  local earlier = redis.call('ZSCORE', KEYS[5], id)
  if earlier then
    local entry = redis.call('ZRANGEBYSCORE', KEYS[4], earlier, earlier)[1]
    local ok, decoded = pcall(cjson.decode, entry or '')
    if ok and type(decoded) == 'table' and tonumber(decoded.ts) then
      return {0, '', tonumber(earlier), redis.call('HGET', KEYS[3], 'epoch'), tonumber(decoded.ts)}
    end
  end
end
local ts = now_ms()
local rseq, repoch, rframe = append(KEYS[1], KEYS[2], ARGV[1], ARGV[3], ts, cap)
redis.call('PUBLISH', ARGV[5], rframe)
local sseq, sepoch = rseq, repoch
if not to_self then
  local sframe
  sseq, sepoch, sframe = append(KEYS[3], KEYS[4], ARGV[2], ARGV[3], ts, cap)
  redis.call('PUBLISH', ARGV[6], sframe)
end
if id ~= '' then
  redis.call('ZADD', KEYS[5], sseq, id)
end
-- Ids live as long as their messages stay in the sender's inbox.
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. int(sseq - cap + 1))
return {rseq, repoch, sseq, sepoch, ts}
