--[[ requeue_execution: an execution left on a dead VM's stream is queued again, or fails.

  Queued there: it goes back to its game (which vm_transition sent back to pending, or which is
  already placed elsewhere) keeping its deadline. Running there: a new attempt is queued with a
  fresh deadline, unless it already had `max_attempts` deliveries: then it ends `failed` with
  error `vm_lost`. Its result, should the dead VM still send one, is rejected by
  finish_execution (the execution is no longer running there). The entry leaves the dead stream.
  Like submit_execution, it answers 'moved' when the game is placed on another VM than the
  caller expected, so the new VM's stream is always a declared key.

  KEYS[1] exec         HASH the execution record
  KEYS[2] games        HASH game_id -> game JSON
  KEYS[3] backlog      HASH game_id -> JSON array of execution ids
  KEYS[4] queued       ZSET execution_id -> queue deadline
  KEYS[5] game_queued  ZSET 'game_id:execution_id'
  KEYS[6] dead_queue   STREAM of the dead VM
  KEYS[7] queue        STREAM of the VM the caller expects the game on (placeholder if none)
  KEYS[8] stats        HASH the pool's counters

  ARGV[1] execution_id
  ARGV[2] entry_id          the entry on the dead stream
  ARGV[3] dead_vm
  ARGV[4] expected_vm       '' when the caller expects the game pending
  ARGV[5] max_attempts
  ARGV[6] queue_timeout_ms  deadline of a re-queued attempt
  ARGV[7] channel
  ARGV[8] group             the streams' consumer group

  Returns {'requeued', vm or ''} | {'failed'} | {'cancelled'} | {'skip', state} | {'moved', vm}

  Errors: a game record or backlog that is not JSON fails the script (cjson) before it
  writes; so does an execution record without its retention (CORRUPT).
]]
local exec_key, games, backlog, queued = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local game_queued, dead_queue, queue, stats = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local exec_id, entry_id, dead_vm, expected_vm = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_attempts, queue_timeout_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local channel, group = ARGV[7], ARGV[8]
local now = now_ms()

local f = redis.call('HMGET', exec_key, 'state', 'vm', 'game', 'epoch', 'attempts')
local state, ran_on, game_id, epoch, attempts = f[1], f[2], f[3], f[4], tonumber(f[5] or '0')
local was_running = state == 'running' and ran_on == dead_vm
if not was_running and state ~= 'queued' then
  drop_entry(dead_queue, group, entry_id)
  return { 'skip', state or 'gone' }
end
local retention_ms = retention_of(exec_key)
if was_running and attempts >= max_attempts then
  redis.call('HSET', exec_key, 'state', 'failed', 'finished', now, 'error', cjson.encode({
    code = 'vm_lost',
    message = 'the VM running it was lost ' .. attempts .. ' times (WARMPOOL_MAX_ATTEMPTS)' }))
  redis.call('PEXPIRE', exec_key, retention_ms)
  redis.call('PUBLISH', channel, exec_id)
  count(stats, 'executions|failed|vm_lost')
  drop_entry(dead_queue, group, entry_id)
  return { 'failed' }
end

local ended, game = game_ended(games, game_id, epoch)
if ended then
  end_queued(exec_key, queued, game_queued, exec_id, 'cancelled', 'game_ended',
    'the game was deleted or expired before the execution ran', retention_ms, channel, now, stats)
  drop_entry(dead_queue, group, entry_id)
  return { 'cancelled' }
end
if game.vm ~= expected_vm then
  return { 'moved', game.vm }
end

if was_running then
  redis.call('HSET', exec_key, 'state', 'queued')
  redis.call('HDEL', exec_key, 'vm', 'started')
  redis.call('ZADD', queued, now + queue_timeout_ms, exec_id)
  redis.call('ZADD', game_queued, 0, game_id .. ':' .. exec_id)
end
if game.vm ~= '' then
  redis.call('XADD', queue, '*', 'e', exec_id)
else
  append_backlog(backlog, game_id, exec_id)
end
drop_entry(dead_queue, group, entry_id)
return { 'requeued', game.vm }
