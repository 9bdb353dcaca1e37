-- Store::post_direct: append to the recipient's inbox and, unless they are the same user, to the
-- sender's inbox; publish each copy on its owner's channel. One script, so both copies share one
-- ts and either both exist or neither does. Idempotent per (sender, recipient, clientMsgId).
-- KEYS[1] recipient inbox meta, KEYS[2] recipient inbox log, KEYS[3] sender meta, KEYS[4] sender
-- log, KEYS[5] sender's post ids ZSET, KEYS[6] recipient's post ids ZSET (for a message to
-- oneself KEYS[3..4] repeat KEYS[1..2] and KEYS[6] repeats KEYS[5])
-- ARGV[1] recipient epoch candidate, ARGV[2] sender epoch candidate, ARGV[3] body JSON,
-- ARGV[4] log cap, ARGV[5] recipient channel, ARGV[6] sender channel, ARGV[7] `to|clientMsgId`
-- or '', ARGV[8] '1' when sender and recipient are the same user, ARGV[9] '1' to check the key
-- types first (see read_log), ARGV[10] inbox TTL s
-- Returns {recipient seq, recipient epoch, sender seq, sender epoch, ts, 0} for a new message, or
-- {0, '', sender seq, sender epoch, ts, conflict} of the earlier one for a retry (nothing stored
-- or sent); conflict is 1 when the earlier message's content differs (the id was reused).
--
-- Redis does not undo earlier writes when a later command fails, so the order is: every check
-- (both inboxes' seq and epoch, their key types when asked, both candidates, the body), then the
-- writes, then the PUBLISHes. Once the first write is done nothing can fail (given the key types
-- the node checked), so no copy is ever stored or published alone.
check_draft(ARGV[1], ARGV[3])
check_draft(ARGV[2], ARGV[3])
local check_types = ARGV[9] == '1'
local recipient = read_log(KEYS[1], KEYS[2], KEYS[6], check_types)
local sender = recipient
if ARGV[8] ~= '1' then
  sender = read_log(KEYS[3], KEYS[4], KEYS[5], check_types)
end
local cap = tonumber(ARGV[4])
local id = ARGV[7]
local eseq, eepoch, ets, conflict = earlier_post(sender, id, ARGV[3])
if eseq then
  return {0, '', eseq, eepoch, ets, conflict}
end
local ts = now_ms()
local rseq, repoch, rframe = append(recipient, ARGV[1], ARGV[3], ts, cap)
local sseq, sepoch, sframe = rseq, repoch, nil
if sender ~= recipient then
  sseq, sepoch, sframe = append(sender, ARGV[2], ARGV[3], ts, cap)
end
remember_post(sender.ids, id, sseq, cap)
keep(ARGV[10], KEYS[1], KEYS[2], KEYS[6], KEYS[3], KEYS[4], KEYS[5])
redis.call('PUBLISH', ARGV[5], rframe)
if sframe then
  redis.call('PUBLISH', ARGV[6], sframe)
end
return {rseq, repoch, sseq, sepoch, ts, 0}
