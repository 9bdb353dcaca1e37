-- Store::join: membership, display names, room name, epoch and presence through this node.
-- KEYS[1] room meta, KEYS[2] members SET, KEYS[3] names HASH, KEYS[4] online ZSET,
-- KEYS[5] conns ZSET, KEYS[6] rooms SET, KEYS[7] the user's cursors HASH, KEYS[8] nodes ZSET
-- ARGV[1] user, ARGV[2] user name, ARGV[3] room name ('' = none given), ARGV[4] room id,
-- ARGV[5] epoch candidate, ARGV[6] node id, ARGV[7] presence TTL ms, ARGV[8] cursor field,
-- ARGV[9] cursor TTL s, ARGV[10] room TTL s (every key of the room, see `keep`)
-- Returns {room name, epoch, seq text, num, total, came online 0/1, new member 0/1,
-- cursor (`seq:epoch` or a legacy plain seq) or '', presence seq of this join}.
--
-- Expired `online` entries of other users are deliberately NOT pruned here: reap_presence owns
-- them, because each one must be reported exactly once so a `logout` notice goes out for it.
check_log(KEYS[1])
check_presence_seq(KEYS[1])
check_type(KEYS[2], 'set')
check_type(KEYS[3], 'hash')
check_type(KEYS[4], 'zset')
check_type(KEYS[5], 'zset')
check_type(KEYS[6], 'set')
check_type(KEYS[7], 'hash')
check_type(KEYS[8], 'zset')
local cursor = redis.call('HGET', KEYS[7], ARGV[8]) or ''
if cursor ~= '' then
  parse_cursor(cursor, ARGV[8] .. ' in ' .. KEYS[7])
end
local now = now_ms()
local exp = now + tonumber(ARGV[7])
local user = ARGV[1]

local new_member = redis.call('SADD', KEYS[2], user)
redis.call('HSET', KEYS[3], user, ARGV[2])

-- Same rule as the in-memory backend: a room is named by the first join that gives a name; until
-- then its name is its id.
local name = redis.call('HGET', KEYS[1], 'name')
if (not name or name == ARGV[4]) and ARGV[3] ~= '' then
  name = ARGV[3]
  redis.call('HSET', KEYS[1], 'name', name)
elseif not name then
  name = ARGV[4]
  redis.call('HSET', KEYS[1], 'name', name)
end

-- The last two KEYS are the room log ZSET and its post ids ZSET: emptied if this creates the epoch.
local epoch = ensure_epoch(KEYS[1], ARGV[5], KEYS[#KEYS - 1], KEYS[#KEYS])
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'

-- Expired per-node entries carry no notice of their own (the `online` entry does), so they can go.
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', int(now))
local prev = redis.call('ZSCORE', KEYS[4], user)
local came_online = 1
if prev and tonumber(prev) > now then
  came_online = 0
end
redis.call('ZADD', KEYS[5], exp, user .. '|' .. ARGV[6])
redis.call('ZADD', KEYS[4], 'GT', exp, user)
redis.call('ZADD', KEYS[8], 'GT', exp, ARGV[6])
redis.call('SADD', KEYS[6], ARGV[4])

if cursor ~= '' then
  redis.call('EXPIRE', KEYS[7], ARGV[9])
end
local pseq = next_presence_seq(KEYS[1])
keep(ARGV[10], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[#KEYS - 1], KEYS[#KEYS])
local num, total = counts(KEYS[4], KEYS[2], now)
return {name, epoch, seq, num, total, came_online, new_member, cursor, pseq}
