-- Helpers shared by every script of the chat backend; the Rust side prepends this file to each
-- script (see scripts.rs), so a script is one self-contained EVALSHA body.
--
-- All times are Redis server time (TIME) in milliseconds: presence expiries written by one node
-- are compared by another, so they must come from one clock, not from each node's own.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integer to decimal text. Plain `..` on a Lua number may produce "1.7e+12".
local function int(n)
  return string.format('%d', n)
end

local function corrupt(message)
  error({err = 'CORRUPT ' .. message})
end

-- Redis does not roll a script back when a command fails halfway, so every script first checks
-- the keys it will touch and only then writes: damaged data fails the whole call (CORRUPT or
-- WRONGTYPE) without leaving half an update behind.
local function check_type(key, want)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want then
    corrupt(key .. ' is a ' .. tostring(found) .. ', expected a ' .. want)
  end
end

-- A stored seq counter `append` can take the next seq from: exactly what HINCRBY accepts (decimal
-- digits, no leading zero except "0" itself, a signed 64-bit integer with room for +1), and
-- further below 2^53, so that the next seq is still exact as a Lua number (a double) and as a ZSET
-- score. Anything else would make HINCRBY fail, or return a seq other than the one it stored,
-- after the script may already have written something.
local function valid_seq(seq)
  if type(seq) ~= 'string' or not string.match(seq, '^%d+$') then
    return false
  end
  if #seq > 1 and string.sub(seq, 1, 1) == '0' then
    return false
  end
  return #seq <= 16 and tonumber(seq) < 9007199254740992
end

local function valid_epoch(epoch)
  return type(epoch) == 'string' and #epoch <= 64 and string.match(epoch, '^[%w_%-]+$') ~= nil
end

-- A stored read cursor, `seq:epoch` or (written by older versions) a plain `seq`: returns the seq
-- as a number and the epoch ('' for the plain form), or fails as corrupt.
local function parse_cursor(text, where)
  local seq, epoch = string.match(text, '^(%d+):([%w_%-]+)$')
  if not seq then
    seq, epoch = string.match(text, '^(%d+)$'), ''
  end
  if not seq then
    corrupt('cursor ' .. where .. ' is not a position')
  end
  return tonumber(seq), epoch
end

-- A log's meta HASH (and its ZSET when given) must be readable before anything is appended.
local function check_log(meta, log)
  check_type(meta, 'hash')
  if log then
    check_type(log, 'zset')
  end
  local seq = redis.call('HGET', meta, 'seq')
  if seq and not valid_seq(seq) then
    corrupt('the seq in ' .. meta .. ' is not a usable number')
  end
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch and not valid_epoch(epoch) then
    corrupt('the epoch in ' .. meta .. ' is not a plain id')
  end
end

-- The log's epoch, created from `candidate` when the log has none yet (first post, first head,
-- first join, or after the data was lost). The stored value is spliced raw into message JSON,
-- so anything but a plain id is refused rather than trusted.
--
-- A log holds one epoch. When this call creates the epoch, whatever `log` (the log ZSET) and
-- `ids` (the post ids ZSET tied to the log's seqs) still hold belongs to a lost one: a deleted
-- meta key leaves them behind. So a new epoch starts a clean log: both are deleted and `seq`
-- restarts, or the new seqs 1, 2, ... would interleave with the old ones, trimming by rank would
-- evict the new epoch's messages first, and an old clientMsgId would return an old receipt.
local function ensure_epoch(meta, candidate, log, ids)
  if not valid_epoch(candidate) then
    corrupt('the epoch candidate is not a plain id')
  end
  if redis.call('HSETNX', meta, 'epoch', candidate) == 1 then
    redis.call('DEL', log, ids)
    redis.call('HDEL', meta, 'seq')
  end
  local epoch = redis.call('HGET', meta, 'epoch')
  if not valid_epoch(epoch) then
    corrupt('the epoch in ' .. meta .. ' is not a plain id')
  end
  return epoch
end

-- A log about to be appended to, read once: its meta's `seq` and `epoch` (one HMGET), validated
-- exactly as the later HINCRBY and the frame splice need them. Key types are checked only when
-- `check_types` is set: the node asks for that on a stream's first post and after any error, and
-- trusts the types it has seen since (TYPE on every key of every post was a third of a post's
-- commands). With the types right, nothing `append` does can fail.
local function read_log(meta, log, ids, check_types)
  if check_types then
    check_type(meta, 'hash')
    check_type(log, 'zset')
    check_type(ids, 'zset')
  end
  local fields = redis.call('HMGET', meta, 'seq', 'epoch')
  local seq, epoch = fields[1], fields[2]
  if seq and not valid_seq(seq) then
    corrupt('the seq in ' .. meta .. ' is not a usable number')
  end
  if epoch and not valid_epoch(epoch) then
    corrupt('the epoch in ' .. meta .. ' is not a plain id')
  end
  return {meta = meta, log = log, ids = ids, epoch = epoch or nil}
end

-- The parts of an append that come from the caller: the epoch candidate and the message body.
local function check_draft(candidate, body)
  if not valid_epoch(candidate) then
    corrupt('the epoch candidate is not a plain id')
  end
  if string.sub(body, 1, 1) ~= '{' then
    corrupt('message body is not a JSON object')
  end
end

-- Appends one message to a log read with read_log: next seq, stored frame, trim. A log without an
-- epoch (first use, or its meta was lost) gets `candidate` and starts clean, as in ensure_epoch.
-- `body` is the message's wire JSON object without event/seq/epoch/ts; the frame is spliced in
-- front of it so the stored member is byte for byte the frame clients receive.
local function append(log, candidate, body, ts, cap)
  if not log.epoch then
    redis.call('HSET', log.meta, 'epoch', candidate)
    redis.call('DEL', log.log, log.ids)
    redis.call('HDEL', log.meta, 'seq')
    log.epoch = candidate
  end
  local seq = redis.call('HINCRBY', log.meta, 'seq', 1)
  local frame = '{"event":"message","seq":' .. int(seq) .. ',"epoch":"' .. log.epoch ..
    '","ts":' .. int(ts) .. ',' .. string.sub(body, 2)
  redis.call('ZADD', log.log, seq, frame)
  redis.call('ZREMRANGEBYRANK', log.log, 0, -(cap + 1))
  return seq, log.epoch, frame
end

-- Distinct users online (presence expiry still in the future) and members of a room.
local function counts(online, members, now)
  return redis.call('ZCOUNT', online, '(' .. int(now), '+inf'), redis.call('SCARD', members)
end

-- Retried posts: `log.ids` maps `author-side id` -> seq in `log` (read with read_log: the log the
-- author's copy lives in). Returns seq, epoch, ts of the earlier post with this id while it is still in
-- the log, and a conflict flag: 1 when the earlier post's content differs from the content of
-- `body` (this post's body JSON), i.e. the id was reused for a different message, else 0. Returns
-- nil when there is no such earlier post.
local function earlier_post(log, id, body)
  if id == '' or not log.epoch then
    -- Without an epoch the log is about to start again: nothing in it counts.
    return nil
  end
  local earlier = redis.call('ZSCORE', log.ids, id)
  if not earlier then
    return nil
  end
  local entry = redis.call('ZRANGEBYSCORE', log.log, earlier, earlier)[1]
  local ok, decoded = pcall(cjson.decode, entry or '')
  if ok and type(decoded) == 'table' and tonumber(decoded.ts) and decoded.epoch == log.epoch then
    local draft_ok, draft = pcall(cjson.decode, body)
    local conflict = 1
    if draft_ok and type(draft) == 'table' and type(draft.content) == 'string'
        and draft.content == decoded.content then
      conflict = 0
    end
    return tonumber(earlier), log.epoch, tonumber(decoded.ts), conflict
  end
  return nil
end

local function remember_post(ids, id, seq, cap)
  if id ~= '' then
    redis.call('ZADD', ids, seq, id)
  end
  redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. int(seq - cap + 1))
end

-- The room's presence seq (`pseq` in its meta HASH): every presence change takes the next one, so
-- notices about one user can be ordered and a join told from a later logout. Checked before any
-- write, like every other counter a script increments.
local function check_presence_seq(meta)
  local pseq = redis.call('HGET', meta, 'pseq')
  if pseq and not (string.match(pseq, '^[1-9]%d*$') and #pseq <= 15) then
    corrupt('the presence seq in ' .. meta .. ' is not a number')
  end
end

local function next_presence_seq(meta)
  return redis.call('HINCRBY', meta, 'pseq', 1)
end

-- Keys of one room (or one inbox) expire together, `ttl` seconds (offline.ttl_secs) after the last
-- activity that refreshed them: a join or post for a room, a post or head for an inbox, a presence
-- refresh while someone is connected. EXPIRE on a key that does not exist does nothing; a key
-- created later by the same stream is given the TTL by the activity that creates it.
local function keep(ttl, ...)
  for _, key in ipairs({...}) do
    redis.call('EXPIRE', key, ttl)
  end
end

-- A key a script may have just created (HINCRBY of a presence seq on an expired room) gets the
-- TTL if it has none, so nothing of a room outlives it without one.
local function keep_if_unset(ttl, key)
  if redis.call('TTL', key) == -1 then
    redis.call('EXPIRE', key, ttl)
  end
end

-- A command whose failure (damaged data: a wrong type, a number that is not one) must not stop a
-- batch script: the result, or nil and the error. Batch scripts skip the entry instead of failing
-- every other entry with it, and check nothing up front (a TYPE per key per entry cost more than
-- the work itself).
local function try(...)
  local result = redis.pcall(...)
  if type(result) == 'table' and result.err then
    return nil, result.err
  end
  return result
end
