-- Store::rooms: drops from the room list the rooms whose keys have expired (their meta HASH is
-- gone), so the list does not grow with every room id ever used. Checked and removed in one step,
-- so a join that brings a room back at the same moment (it re-adds the id) is never undone.
-- KEYS[1] rooms SET, then KEYS[1 + i] the meta HASH of room ARGV[i]
-- Returns the number of ids removed.
local removed = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[1 + i]) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return removed
