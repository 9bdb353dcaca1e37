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
-- user name, epoch at the join, presence seq of the join; last, ARGV[#ARGV] the rooms' key TTL s
-- Returns {kind, entry index (1-based), presence seq, num, total} per reported entry, flattened:
-- kind 1 = put back online (revived), kind 2 = departed.
check_type(KEYS[1], 'zset')
check_type(KEYS[2], 'set')
local now = now_ms()
local exp = now + tonumber(ARGV[2])
local node = ARGV[1]
redis.call('ZADD', KEYS[1], 'GT', exp, node)
-- Nodes that stopped refreshing: their conns entries have expired too.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local out = {}
local room_ttl = tonumber(ARGV[#ARGV])
-- A room with a live connection must not expire under it: its keys are renewed when less than
-- half their TTL is left (one PTTL per distinct room and call; the EXPIREs about twice per TTL).
local renewed_rooms = {}
local function keep_room(conns, online, members, names, meta)
  if renewed_rooms[meta] then
    return
  end
  renewed_rooms[meta] = true
  local left = try('PTTL', meta)
  if left ~= nil and left < room_ttl * 500 then
    for _, key in ipairs({conns, online, members, names, meta}) do
      try('EXPIRE', key, room_ttl)
    end
  end
end
local function report(kind, n, pseq, online, members)
  local num = try('ZCOUNT', online, '(' .. int(now), '+inf') or 0
  local total = try('SCARD', members) or 0
  table.insert(out, kind)
  table.insert(out, n)
  table.insert(out, pseq)
  table.insert(out, num)
  table.insert(out, total)
end
local n = 0
for i = 3, #KEYS, 5 do
  n = n + 1
  local a = 3 + 5 * (n - 1)
  local user, room, name = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local joined_epoch, joined_at = ARGV[a + 3], tonumber(ARGV[a + 4])
  local conns, online, members, names, meta = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3], KEYS[i + 4]
  -- The common case costs three commands: still a member, renew both expiries. Damaged keys of
  -- one room skip that entry only (the others are still renewed).
  local member = try('SISMEMBER', members, user)
  local meta_fields = nil
  if member == 0 then
    meta_fields = try('HMGET', meta, 'epoch', 'pseq')
  end
  local pseq_ok = meta_fields == nil or meta_fields[2] == false
    or (string.match(meta_fields[2], '^[1-9]%d*$') ~= nil and #meta_fields[2] <= 15)
  if member ~= nil and pseq_ok then
    local departed = false
    if member == 0 and meta_fields then
      local pseq = tonumber(meta_fields[2] or '0')
      if meta_fields[1] == joined_epoch and pseq >= joined_at then
        departed = true
        report(2, n, pseq, online, members)
      end
    end
    if not departed then
      local renewed = try('ZADD', conns, exp, user .. '|' .. node)
      local added = try('ZADD', online, 'GT', exp, user)
      if renewed ~= nil and added ~= nil then
        if member == 0 then
          -- Lost with Redis's data: what a live connection implies comes back.
          try('SADD', members, user)
          try('HSETNX', names, user, name)
          try('SADD', KEYS[2], room)
        end
        if added == 1 then
          local pseq = try('HINCRBY', meta, 'pseq', 1)
          if pseq then
            report(1, n, pseq, online, members)
          end
        end
        keep_room(conns, online, members, names, meta)
      end
    end
  end
end
return out
