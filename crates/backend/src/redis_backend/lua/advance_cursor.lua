-- Store::advance_cursor: move a read cursor forward, never backward within an epoch, and keep the
-- cursors hash alive for the offline-retention TTL. A cursor is stored as `seq:epoch` (a plain
-- `seq`, written by older versions, is taken to be in the log's current epoch).
-- KEYS[1] the user's cursors HASH, KEYS[2] the stream's meta HASH, [KEYS[3] room members SET, for
-- room streams]
-- ARGV[1] field, ARGV[2] seq (decimal text), ARGV[3] epoch of that seq, ARGV[4] TTL s, ARGV[5] user
-- Returns 1 when the cursor moved, 0 otherwise.
check_type(KEYS[1], 'hash')
check_type(KEYS[2], 'hash')
if KEYS[3] then
  check_type(KEYS[3], 'set')
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local current_seq, current_epoch = nil, nil
if current then
  current_seq, current_epoch = parse_cursor(current, KEYS[1] .. ' ' .. ARGV[1])
end
if KEYS[3] and redis.call('SISMEMBER', KEYS[3], ARGV[5]) == 0 then
  -- A cursor only means something for a member; `logout` dropped it on purpose.
  return 0
end
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if epoch ~= ARGV[3] then
  -- A position in a log that no longer exists (or not yet) says nothing about the current one.
  return 0
end
local moved = 0
if not current_seq or (current_epoch ~= '' and current_epoch ~= epoch)
    or current_seq < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. epoch)
  moved = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return moved
