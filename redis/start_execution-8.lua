--[[ start_execution: an agent takes an execution from its stream and marks it running.

  Runs only an execution that is queued, or one already running on this same VM (the agent
  restarted and reads its unacknowledged entries again: a new attempt). An execution whose game
  was deleted or expired (its epoch no longer matches) ends `cancelled` here.

  KEYS[1] exec         HASH the execution record
  KEYS[2] queued       ZSET execution_id -> queue deadline
  KEYS[3] game_queued  ZSET 'game_id:execution_id'
  KEYS[4] games        HASH game_id -> game JSON
  KEYS[5] vm_running   HASH vm_id -> running executions
  KEYS[6] vm_state     HASH vm_id -> state
  KEYS[7] stats        HASH the pool's counters: cancelled executions, queue waits
  KEYS[8] vm_info      HASH vm_id -> JSON info (the VM's secret)

  ARGV[1] execution_id
  ARGV[2] vm_id         the VM starting it
  ARGV[3] channel       pub/sub channel that wakes waiting replicas
  ARGV[4] secret        the VM's secret: only the agent of that VM starts its work

  Returns {'run', attempt, job JSON, trace id or ''} | {'skip', state or 'gone' or 'elsewhere'}
        | {'cancelled'} | {'dead'} | {'refused'} (the secret is not the VM's: nothing written)

  Errors: a game record that is not JSON fails the script (cjson) before it writes; an
  execution record without its retention fails it with CORRUPT, before it writes.
]]
local exec_key, queued, game_queued, games = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local vm_running, vm_state, stats, vm_info = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local exec_id, vm, channel, secret = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()

if redis.call('HGET', vm_state, vm) == 'dead' then
  return { 'dead' }
end
if not proves(vm_info, vm, secret) then
  return { 'refused' }
end
local fields = redis.call('HMGET', exec_key, 'state', 'vm', 'game', 'epoch')
local state, ran_on, game_id, epoch = fields[1], fields[2], fields[3], fields[4]
if not state then
  return { 'skip', 'gone' }
end
local rerun = state == 'running' and ran_on == vm
if state ~= 'queued' and not rerun then
  return { 'skip', state }
end

if game_ended(games, game_id, epoch) then
  local retention_ms = retention_of(exec_key)
  if rerun then
    redis.call('HINCRBY', vm_running, vm, -1)
  end
  end_queued(exec_key, queued, game_queued, exec_id, 'cancelled', 'game_ended',
    'the game was deleted or expired before the execution ran', retention_ms, channel, now, stats)
  return { 'cancelled' }
end
-- Only the VM its game is leased to runs it (an entry left elsewhere is stale).
local game = cjson.decode(redis.call('HGET', games, game_id))
if game.vm ~= vm then
  return { 'skip', 'elsewhere' }
end

if not rerun then
  redis.call('HINCRBY', vm_running, vm, 1)
end
local attempt = redis.call('HINCRBY', exec_key, 'attempts', 1)
if attempt == 1 then
  observe(stats, 'queue_wait', now - tonumber(redis.call('HGET', exec_key, 'created') or now))
end
redis.call('HSET', exec_key, 'state', 'running', 'vm', vm, 'started', now)
redis.call('ZREM', queued, exec_id)
redis.call('ZREM', game_queued, game_id .. ':' .. exec_id)
return { 'run', attempt, redis.call('HGET', exec_key, 'job'), redis.call('HGET', exec_key, 'trace') or '' }
