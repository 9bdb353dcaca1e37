-- Store::go_offline: this node has no connection of the user in the room anymore.
-- KEYS[1] online ZSET, KEYS[2] conns ZSET, KEYS[3] nodes ZSET, KEYS[4] members SET, KEYS[5] room meta
-- ARGV[1] user, ARGV[2] node id, ARGV[3] room TTL s
-- Returns {went offline 0/1, num, total, presence seq of the change}.
--
-- The user stays online if another live node still holds an unexpired `user|node` entry. Only
-- the live nodes are probed (ZSCORE each), so this is O(nodes), not O(connections in the room).
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'zset')
check_type(KEYS[4], 'set')
check_type(KEYS[5], 'hash')
check_presence_seq(KEYS[5])
local now = now_ms()
local user = ARGV[1]
redis.call('ZREM', KEYS[2], user .. '|' .. ARGV[2])
local best = nil
local live = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. int(now), '+inf')
for _, node in ipairs(live) do
  if node ~= ARGV[2] then
    local score = redis.call('ZSCORE', KEYS[2], user .. '|' .. node)
    if score then
      score = tonumber(score)
      if score > now and (best == nil or score > best) then
        best = score
      end
    end
  end
end
local went = 0
if best then
  -- Online exactly as long as the remaining node keeps refreshing.
  redis.call('ZADD', KEYS[1], best, user)
else
  -- 1 even when the entry had already expired unreaped: this call removed it, so this caller
  -- must send the logout notice (reap_presence will not see it anymore).
  went = redis.call('ZREM', KEYS[1], user)
end
local pseq = next_presence_seq(KEYS[5])
keep_if_unset(ARGV[3], KEYS[5])
keep_if_unset(ARGV[3], KEYS[1])
local num, total = counts(KEYS[1], KEYS[4], now)
return {went, num, total, pseq}
