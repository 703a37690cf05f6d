--[[ vm_transition: the leader changes a VM record, fenced by its leadership token.

  Actions:
  - add      record a new VM (id PREFIX-N from a counter) as provisioning; the caller creates it
  - drain    ready -> draining: it takes no new games
  - undrain  draining -> ready: it takes games again
  - retire   -> dead, only if nothing runs on it and (without evict) no game is leased to it,
             checked here atomically; with evict its games go back to pending first
  - fail     -> dead at once (heartbeat lost, boot timeout): its games go back to pending
  - forget   remove a dead VM's record (after the provider deleted it)
  A game sent back to pending keeps its original arrival order (its epoch), so it is placed
  before games that came later. Its executions are queued again by requeue_execution.

  KEYS[1]  fence       STRING current fencing token
  KEYS[2]  vm_state    HASH vm_id -> state
  KEYS[3]  vm_cap      HASH vm_id -> capacity
  KEYS[4]  vm_games    HASH vm_id -> leased games
  KEYS[5]  vm_running  HASH vm_id -> running executions
  KEYS[6]  vm_hb       ZSET vm_id -> last heartbeat
  KEYS[7]  vm_info     HASH vm_id -> JSON info
  KEYS[8]  vm_since    HASH vm_id -> when it entered its state (ms)
  KEYS[9]  free        ZSET Ready VMs with a free slot
  KEYS[10] games       HASH game_id -> game JSON
  KEYS[11] pending     ZSET pending games (FIFO by epoch)
  KEYS[12] vm_seq      STRING counter of VM ids
  KEYS[13] vm_agent    HASH vm_id -> the agent's gauges (forgotten with the VM)

  ARGV[1] token       the caller's fencing token
  ARGV[2] action
  ARGV[3] vm_id       (add: the id prefix)
  ARGV[4] capacity    (add) | '1' to evict (retire)
  ARGV[5] secret      (add) the VM's secret, kept in its info: register_vm checks the
                      agent's against it, a resumed create hands it out again ('' for none)

  Returns {'fenced'} (the token is stale: nothing written) | {'ok', vm_id, moved game ids...}
        | {'busy', games, running} (retire refused) | {'skip', state} (not in the expected state)

  Errors: an unknown action is an error reply (nothing written); a game record that is not
  JSON fails an evicting retire or a fail midway (cjson), with the games before it moved.
]]
local fence, vm_state, vm_cap, vm_games = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local vm_running, vm_hb, vm_info, vm_since = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local free, games, pending, vm_seq = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local vm_agent = KEYS[13]
local token, action, vm, extra = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()

if redis.call('GET', fence) ~= token then
  return { 'fenced' }
end

-- Every game leased to `vm` goes back to pending, in its original order.
local function evict_games()
  local moved = {}
  local all = redis.call('HGETALL', games)
  for i = 1, #all, 2 do
    local game = cjson.decode(all[i + 1])
    if game.vm == vm then
      game.vm = ''
      redis.call('HSET', games, all[i], cjson.encode(game))
      redis.call('ZADD', pending, game.epoch, all[i])
      moved[#moved + 1] = all[i]
    end
  end
  redis.call('HSET', vm_games, vm, 0)
  return moved
end

local function set_state(state)
  redis.call('HSET', vm_state, vm, state)
  redis.call('HSET', vm_since, vm, now)
end

if action == 'add' then
  local id = vm .. '-' .. redis.call('INCR', vm_seq)
  redis.call('HSET', vm_state, id, 'provisioning')
  redis.call('HSET', vm_since, id, now)
  redis.call('HSET', vm_cap, id, extra)
  redis.call('HSET', vm_games, id, 0)
  redis.call('HSET', vm_running, id, 0)
  local info = { created = now, languages = {} }
  if ARGV[5] and ARGV[5] ~= '' then
    info.secret = ARGV[5]
  end
  redis.call('HSET', vm_info, id, cjson.encode(info))
  return { 'ok', id }
end

local state = redis.call('HGET', vm_state, vm)
if not state then
  return { 'skip', 'unknown' }
end

if action == 'drain' then
  if state ~= 'ready' then return { 'skip', state } end
  set_state('draining')
  redis.call('ZREM', free, vm)
  return { 'ok', vm }
elseif action == 'undrain' then
  if state ~= 'draining' then return { 'skip', state } end
  set_state('ready')
  local n = tonumber(redis.call('HGET', vm_games, vm) or '0')
  if n < tonumber(redis.call('HGET', vm_cap, vm) or '0') then
    redis.call('ZADD', free, n, vm)
  end
  return { 'ok', vm }
elseif action == 'retire' or action == 'fail' then
  if state == 'dead' then return { 'skip', state } end
  local n = tonumber(redis.call('HGET', vm_games, vm) or '0')
  local running = tonumber(redis.call('HGET', vm_running, vm) or '0')
  if action == 'retire' and (running > 0 or (n > 0 and extra ~= '1')) then
    return { 'busy', n, running }
  end
  redis.call('ZREM', free, vm)
  redis.call('ZREM', vm_hb, vm)
  set_state('dead')
  local out = { 'ok', vm }
  for _, g in ipairs(evict_games()) do
    out[#out + 1] = g
  end
  redis.call('HSET', vm_running, vm, 0)
  return out
elseif action == 'forget' then
  if state ~= 'dead' then return { 'skip', state } end
  for _, h in ipairs({ vm_state, vm_cap, vm_games, vm_running, vm_info, vm_since, vm_agent }) do
    redis.call('HDEL', h, vm)
  end
  redis.call('ZREM', vm_hb, vm)
  redis.call('ZREM', free, vm)
  return { 'ok', vm }
end
return redis.error_reply('unknown action ' .. tostring(action))
