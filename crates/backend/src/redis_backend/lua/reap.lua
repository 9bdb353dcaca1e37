-- Store::reap_presence(_many): remove users whose presence expired (their node stopped
-- refreshing), in many rooms at once. Atomic, so when several nodes reap the same room each
-- expired user is returned to exactly one of them. A room with nothing expired costs one
-- ZRANGEBYSCORE ... LIMIT 0 1 (the common case, every tick, for every room a node serves); a
-- room whose keys are damaged is skipped, not fatal to the others.
-- KEYS, stride 5 per room: online ZSET, conns ZSET, names HASH, members SET, meta HASH
-- Returns, per room that lost someone: {room index (1-based), num, total, n, user1, name1, pseq1,
-- ..., user_n, name_n, pseq_n} (counts after the removal; each reaped user takes its own presence
-- seq), flattened.
local now = now_ms()
local cutoff = int(now)
local out = {}
local room = 0
for i = 1, #KEYS, 5 do
  room = room + 1
  local online, conns, names, members, meta = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3], KEYS[i + 4]
  local first = try('ZRANGEBYSCORE', online, '-inf', cutoff, 'LIMIT', 0, 1)
  local pseq = first and #first > 0 and try('HGET', meta, 'pseq')
  local pseq_ok = pseq == false
    or (type(pseq) == 'string' and string.match(pseq, '^[1-9]%d*$') ~= nil and #pseq <= 15)
  if first and #first > 0 and pseq_ok then
    local expired = try('ZRANGEBYSCORE', online, '-inf', cutoff)
    if expired and #expired > 0 then
      try('ZREMRANGEBYSCORE', conns, '-inf', cutoff)
      redis.call('ZREMRANGEBYSCORE', online, '-inf', cutoff)
      local num = try('ZCOUNT', online, '(' .. cutoff, '+inf') or 0
      local total = try('SCARD', members) or 0
      table.insert(out, room)
      table.insert(out, num)
      table.insert(out, total)
      table.insert(out, #expired)
      for _, user in ipairs(expired) do
        local name = try('HGET', names, user)
        table.insert(out, user)
        table.insert(out, (type(name) == 'string' and name) or user)
        table.insert(out, redis.call('HINCRBY', meta, 'pseq', 1))
      end
    end
  end
end
return out
