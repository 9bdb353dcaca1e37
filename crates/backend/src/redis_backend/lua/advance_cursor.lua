-- Store::advance_cursor: move a read cursor forward, never backward, and keep the cursors hash
-- alive for the offline-retention TTL.
-- KEYS[1] the user's cursors HASH, [KEYS[2] room members SET, for room streams]
-- ARGV[1] field, ARGV[2] seq (decimal text), ARGV[3] TTL s, ARGV[4] user
-- Returns 1 when the cursor moved, 0 otherwise.
check_type(KEYS[1], 'hash')
if KEYS[2] then
  check_type(KEYS[2], 'set')
end
if KEYS[2] and redis.call('SISMEMBER', KEYS[2], ARGV[4]) == 0 then
  -- A cursor only means something for a member; `logout` dropped it on purpose.
  return 0
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local moved = 0
if current and not string.match(current, '^%d+$') then
  corrupt('cursor ' .. ARGV[1] .. ' in ' .. KEYS[1] .. ' is not a number')
end
if not current or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  moved = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return moved
