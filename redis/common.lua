-- common.lua: helpers prepended to every script at build time (see src/store/scripts.rs).
-- Every key a helper touches is passed in by the calling script, which got it from KEYS.

-- Milliseconds of the Redis server's clock: one clock for every replica and agent.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The VM a game goes to under `mode`, or nil when no Ready VM has a free slot.
-- free: ZSET vm_id -> leased games, holding exactly the Ready VMs with games < capacity.
-- least-loaded takes the lowest score, packed the highest (ties: lexicographic order).
local function pick_vm(free, mode)
  local r
  if mode == 'packed' then
    r = redis.call('ZRANGE', free, -1, -1)
  else
    r = redis.call('ZRANGE', free, 0, 0)
  end
  return r[1]
end

-- Lease one slot of `vm`; the VM leaves `free` when it is full.
local function take_slot(free, vm_games, vm_cap, vm)
  local games = redis.call('HINCRBY', vm_games, vm, 1)
  local cap = tonumber(redis.call('HGET', vm_cap, vm) or '0')
  if games >= cap then
    redis.call('ZREM', free, vm)
  else
    redis.call('ZADD', free, games, vm)
  end
end

-- Return one slot of `vm`; it is offered again only while it is Ready.
local function release_slot(free, vm_games, vm_cap, vm_state, vm)
  local games = redis.call('HINCRBY', vm_games, vm, -1)
  if games < 0 then
    games = 0
    redis.call('HSET', vm_games, vm, 0)
  end
  local cap = tonumber(redis.call('HGET', vm_cap, vm) or '0')
  if redis.call('HGET', vm_state, vm) == 'ready' and games < cap then
    redis.call('ZADD', free, games, vm)
  end
end

-- Place a new game: leased to pick_vm(mode), or pending (FIFO by a pool-wide sequence).
-- Returns the game record (a Lua table) after writing it.
local function create_game(k, game_id, ttl_ms, mode, now)
  local epoch = redis.call('INCR', k.seq)
  local game = { vm = '', epoch = epoch, created = now, expires = now + ttl_ms, ttl = ttl_ms }
  local vm = pick_vm(k.free, mode)
  if vm then
    take_slot(k.free, k.vm_games, k.vm_cap, vm)
    game.vm = vm
  else
    redis.call('ZADD', k.pending, epoch, game_id)
  end
  redis.call('HSET', k.games, game_id, cjson.encode(game))
  redis.call('ZADD', k.game_exp, game.expires, game_id)
  return game
end

-- Extend a game's lease to at least now + ttl (activity keeps a game alive).
local function touch_game(k, game_id, game, ttl_ms, now)
  game.ttl = ttl_ms
  if now + ttl_ms > game.expires then
    game.expires = now + ttl_ms
  end
  redis.call('HSET', k.games, game_id, cjson.encode(game))
  redis.call('ZADD', k.game_exp, game.expires, game_id)
end

-- Move a queued execution to a final state (expired, cancelled) and wake its waiters.
local function end_queued(exec_key, queued, game_queued, exec_id, state, code, message, retention_ms, channel, now,
    stats)
  local game_id = redis.call('HGET', exec_key, 'game')
  redis.call('HSET', exec_key, 'state', state, 'finished', now,
    'error', cjson.encode({ code = code, message = message }))
  redis.call('PEXPIRE', exec_key, retention_ms)
  redis.call('ZREM', queued, exec_id)
  if game_id then
    redis.call('ZREM', game_queued, game_id .. ':' .. exec_id)
  end
  redis.call('PUBLISH', channel, exec_id)
  redis.call('HINCRBY', stats, 'c|executions|' .. state .. '|' .. code, 1)
end

-- Append `exec_id` to a pending game's backlog (its executions waiting for placement).
local function append_backlog(backlog, game_id, exec_id)
  local list = cjson.decode(redis.call('HGET', backlog, game_id) or '[]')
  list[#list + 1] = exec_id
  redis.call('HSET', backlog, game_id, cjson.encode(list))
end

-- Whether the game an execution belongs to has ended: gone, or replaced by a new game of the
-- same id (its epoch differs from the execution's). Returns ended, the game record (a table).
local function game_ended(games, game_id, epoch)
  local raw = redis.call('HGET', games, game_id)
  if not raw then
    return true, nil
  end
  local game = cjson.decode(raw)
  return tostring(game.epoch) ~= epoch, game
end

-- Acknowledge a stream entry and delete it: the VM is done with it.
local function drop_entry(queue, group, entry_id)
  redis.call('XACK', queue, group, entry_id)
  redis.call('XDEL', queue, entry_id)
end

-- How long an execution's record stays readable once it ended (ms): its own, set by the replica
-- that accepted it. A record without one is not one this build wrote: the script stops, before
-- writing anything, with a CORRUPT error.
local function retention_of(exec_key)
  local ms = tonumber(redis.call('HGET', exec_key, 'retention'))
  if not ms then
    error({ err = 'CORRUPT the execution record ' .. exec_key .. ' has no retention' })
  end
  return ms
end

-- The pool's counters and histograms, in its stats hash (`{wp:P}:stats`), read by every
-- replica's /metrics (warmpool_core::store::stats): pool-wide, whichever replica is scraped.
-- Fields: 'c|NAME|LABEL|…' counters, 'h|NAME|LE' histogram buckets (not cumulative; LE one of
-- BUCKETS_MS or 'inf') and 'h|NAME|sum' (ms).

-- Histogram bucket bounds (ms) of every duration the pool counts; the one list (the Rust side
-- reads it from this file).
local BUCKETS_MS = { 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000 }

local function count(stats, field, n)
  redis.call('HINCRBY', stats, 'c|' .. field, n or 1)
end

local function observe(stats, name, ms)
  local bucket = 'inf'
  for _, le in ipairs(BUCKETS_MS) do
    if ms <= le then
      bucket = tostring(le)
      break
    end
  end
  redis.call('HINCRBY', stats, 'h|' .. name .. '|' .. bucket, 1)
  redis.call('HINCRBY', stats, 'h|' .. name .. '|sum', math.floor(ms))
end

-- Whether an agent that presents `secret` may act as `vm`: the VM's record holds no secret
-- (a VM started elsewhere and adopted), or holds this one. Every agent call that changes
-- state proves it, so one VM cannot speak for another.
local function proves(vm_info, vm, secret)
  local raw = redis.call('HGET', vm_info, vm)
  if not raw then
    return true
  end
  local info = cjson.decode(raw)
  return info.secret == nil or info.secret == secret
end
