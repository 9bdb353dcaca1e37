-- Store::refresh_presence: push the expiry of this node's presence entries to now + lease, and
-- re-assert what a live connection implies, so state lost with Redis's data (a restart without
-- persistence, a flush) comes back by itself: the user is online, a member with a display name,
-- and the room exists.
--
-- But a user who is no longer a member although the room's log still has the epoch the node's
-- join saw, and whose presence seq has moved past that join, logged out (on another connection,
-- maybe another node) after it: the node missed the `left` notice. Such an entry is reported back
-- and not restored.
-- KEYS[1] nodes ZSET, KEYS[2] rooms SET, then for entry i (stride 5, from KEYS[3]): conns ZSET,
-- online ZSET, members SET, names HASH, meta HASH of its room
-- ARGV[1] node id, ARGV[2] lease ms, then for entry i (stride 5, from ARGV[3]): user, room id,
-- user name, epoch at the join, presence seq of the join
-- Returns {kind, entry index (1-based), presence seq, num, total} per reported entry, flattened:
-- kind 1 = put back online (revived), kind 2 = departed.
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'set')
for i = 3, #KEYS, 5 do
  check_type(KEYS[i], 'zset')
  check_type(KEYS[i + 1], 'zset')
  check_type(KEYS[i + 2], 'set')
  check_type(KEYS[i + 3], 'hash')
  check_type(KEYS[i + 4], 'hash')
  check_presence_seq(KEYS[i + 4])
end
local now = now_ms()
local exp = now + tonumber(ARGV[2])
local node = ARGV[1]
redis.call('ZADD', KEYS[1], 'GT', exp, node)
-- Nodes that stopped refreshing: their conns entries have expired too.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local out = {}
local n = 0
for i = 3, #KEYS, 5 do
  n = n + 1
  local a = 3 + 5 * (n - 1)
  local user, room, name = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local joined_epoch, joined_at = ARGV[a + 3], tonumber(ARGV[a + 4])
  local conns, online, members, names, meta = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3], KEYS[i + 4]
  local departed = false
  if redis.call('SISMEMBER', members, user) == 0 then
    local pseq = tonumber(redis.call('HGET', meta, 'pseq') or '0')
    if redis.call('HGET', meta, 'epoch') == joined_epoch and pseq >= joined_at then
      departed = true
      local num, total = counts(online, members, now)
      table.insert(out, 2)
      table.insert(out, n)
      table.insert(out, pseq)
      table.insert(out, num)
      table.insert(out, total)
    end
  end
  if not departed then
    redis.call('ZADD', conns, exp, user .. '|' .. node)
    local added = redis.call('ZADD', online, 'GT', exp, user)
    redis.call('SADD', members, user)
    redis.call('HSETNX', names, user, name)
    redis.call('SADD', KEYS[2], room)
    if added == 1 then
      local pseq = next_presence_seq(meta)
      local num, total = counts(online, members, now)
      table.insert(out, 1)
      table.insert(out, n)
      table.insert(out, pseq)
      table.insert(out, num)
      table.insert(out, total)
    end
  end
end
return out
