--[[ submit_execution: accept an execution durably, on the game's VM queue or its backlog.

  The game is created if unknown and its lease refreshed. A placed game's execution goes onto
  its VM's stream; a pending game's execution waits in the game's backlog and moves to a VM
  stream when the game is placed (place_pending). Either way it is in `queued` with a deadline,
  so the sweeper ends it `expired` if no VM takes it in time. The caller names the VM stream it
  expects (KEYS[13]); if the game is leased elsewhere nothing is written and the script answers
  'moved' with the right VM, so every key stays declared (Redis Cluster) and the caller retries.

  KEYS[1]  exec         HASH the execution record
  KEYS[2]  idem         STRING idempotency key -> execution_id (a placeholder when none)
  KEYS[3]  games        HASH game_id -> game JSON
  KEYS[4]  free         ZSET Ready VMs with a free slot
  KEYS[5]  vm_games     HASH vm_id -> leased games
  KEYS[6]  vm_cap       HASH vm_id -> capacity
  KEYS[7]  pending      ZSET pending games (FIFO)
  KEYS[8]  game_exp     ZSET game_id -> expiry (ms)
  KEYS[9]  seq          STRING pool-wide sequence
  KEYS[10] backlog      HASH game_id -> JSON array of execution ids waiting for placement
  KEYS[11] queued       ZSET execution_id -> queue deadline (ms)
  KEYS[12] game_queued  ZSET 'game_id:execution_id' (score 0), for cancelling a game's queue
  KEYS[13] queue        STREAM of the VM the caller expects the game on (placeholder if none)

  ARGV[1] game_id
  ARGV[2] execution_id
  ARGV[3] job JSON
  ARGV[4] queue_timeout_ms
  ARGV[5] game_ttl_ms   lease length of a game created here
  ARGV[6] mode          'least-loaded' | 'packed'
  ARGV[7] expected_vm   '' when the caller expects the game pending or unknown
  ARGV[8] retention_ms  how long the ended record and the idempotency key stay readable; kept in
                        the record, so whoever ends it (an agent too) keeps it that long
  ARGV[9] has_idem      '1' when KEYS[2] is a real idempotency key
  ARGV[10] trace_id     the trace the request belongs to (32 hex digits): the agent's log lines
                        of this execution carry it too

  Returns {'dup', execution_id}                 the idempotency key was seen: nothing written
        | {'moved', vm_id}                      the game is on another VM: retry with its stream
        | {'ok', execution_id, vm_id or '', created_ms}

  Errors: a game record or backlog that is not JSON fails the script (cjson); a game it
  created in the same call stays created.
]]
local k = { exec = KEYS[1], idem = KEYS[2], games = KEYS[3], free = KEYS[4], vm_games = KEYS[5],
            vm_cap = KEYS[6], pending = KEYS[7], game_exp = KEYS[8], seq = KEYS[9],
            backlog = KEYS[10], queued = KEYS[11], game_queued = KEYS[12], queue = KEYS[13] }
local game_id, exec_id, job = ARGV[1], ARGV[2], ARGV[3]
local queue_timeout_ms, ttl_ms, mode = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local expected_vm, retention_ms, has_idem = ARGV[7], tonumber(ARGV[8]), ARGV[9] == '1'
local trace_id = ARGV[10]
local now = now_ms()

if has_idem then
  local seen = redis.call('GET', k.idem)
  if seen then
    return { 'dup', seen }
  end
end

local game
local raw = redis.call('HGET', k.games, game_id)
if raw then
  game = cjson.decode(raw)
else
  game = create_game(k, game_id, ttl_ms, mode, now)
end
if game.vm ~= expected_vm then
  return { 'moved', game.vm }
end
-- Activity extends the lease by the game's own ttl (ARGV[5] only for a game created here).
touch_game(k, game_id, game, game.ttl or ttl_ms, now)

redis.call('HSET', k.exec, 'game', game_id, 'epoch', game.epoch, 'state', 'queued',
  'created', now, 'deadline', now + queue_timeout_ms, 'job', job, 'attempts', 0,
  'retention', retention_ms, 'trace', trace_id)
redis.call('ZADD', k.queued, now + queue_timeout_ms, exec_id)
redis.call('ZADD', k.game_queued, 0, game_id .. ':' .. exec_id)
if game.vm ~= '' then
  redis.call('XADD', k.queue, '*', 'e', exec_id)
else
  append_backlog(k.backlog, game_id, exec_id)
end
if has_idem then
  redis.call('SET', k.idem, exec_id, 'PX', retention_ms)
end
return { 'ok', exec_id, game.vm, tostring(now) }
