-- Store::advance_cursors: advance_cursor.lua for a batch, in one call (a node writes the acks it
-- collected this way, every `cluster.cursor_flush_ms`). Same rules per entry: members only (room
-- streams), positions of another epoch than the log's are ignored, a cursor of an older epoch is
-- replaced, forward only within an epoch, and the cursors hash keeps the offline-retention TTL.
-- Damaged entries are skipped, not fatal: one user's bad data must not stop everyone's acks. The TTL
-- is renewed when a cursor moves (a repeated position is no new activity).
-- KEYS, stride 3 per entry: the user's cursors HASH, the stream's meta HASH, the room members SET
-- (for an inbox: the cursors HASH again, unused)
-- ARGV[1] TTL s, then stride 4 per entry: field, seq, epoch, user ('' for an inbox: no
-- membership check)
-- Returns the number of cursors moved.
local ttl = ARGV[1]
local moved = 0
for i = 1, #KEYS, 3 do
  local a = 2 + 4 * ((i - 1) / 3)
  local cursors, meta, members = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local field, seq, epoch, user = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local current = try('HGET', cursors, field)
  local cseq, cepoch = nil, nil
  if current then
    cseq, cepoch = string.match(current, '^(%d+):([%w_%-]+)$')
    if not cseq then
      cseq, cepoch = string.match(current, '^(%d+)$'), ''
    end
  end
  local member = user == '' or try('SISMEMBER', members, user) == 1
  -- `current == false`: no cursor yet; nil: the hash is damaged; a string that does not parse:
  -- a damaged cursor. Damaged entries are left alone.
  if (current == false or cseq) and member and try('HGET', meta, 'epoch') == epoch then
    if not cseq or (cepoch ~= '' and cepoch ~= epoch) or tonumber(cseq) < tonumber(seq) then
      try('HSET', cursors, field, seq .. ':' .. epoch)
      try('EXPIRE', cursors, ttl)
      moved = moved + 1
    end
  end
end
return moved
