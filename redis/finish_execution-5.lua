--[[ finish_execution: an agent records the end of an execution, exactly once.

  The record changes only if the execution is running on this VM under this attempt: a
  re-delivered or late result (another attempt, another VM) never writes a second result. The
  stream entry is acknowledged and deleted either way, since this VM is done with it.

  KEYS[1] exec        HASH the execution record
  KEYS[2] vm_running  HASH vm_id -> running executions
  KEYS[3] queue       STREAM of this VM
  KEYS[4] stats       HASH the pool's counters: executions by final state and outcome, run times
  KEYS[5] vm_info     HASH vm_id -> JSON info (the VM's secret)

  ARGV[1] execution_id
  ARGV[2] vm_id
  ARGV[3] attempt       the attempt start_execution returned
  ARGV[4] entry_id      the stream entry
  ARGV[5] state         'finished' | 'failed'
  ARGV[6] result JSON   '' for none
  ARGV[7] error JSON    '' for none
  ARGV[8] channel       pub/sub channel that wakes waiting replicas
  ARGV[9] group         the streams' consumer group
  ARGV[10] secret       the VM's secret: only the agent of that VM records its results

  Returns 1 when this call wrote the result, 0 when it was stale (nothing written), -1 when
  the secret is not the VM's (nothing written, the entry stays).

  Errors: an execution record without its retention fails it with CORRUPT, and a result or
  error that is not JSON fails it (cjson): the entry was acknowledged, the record untouched.
]]
local exec_key, vm_running, queue, stats, vm_info = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local exec_id, vm, attempt, entry_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state, result, err = ARGV[5], ARGV[6], ARGV[7]
local channel, group, secret = ARGV[8], ARGV[9], ARGV[10]

if not proves(vm_info, vm, secret) then
  return -1
end
drop_entry(queue, group, entry_id)

local fields = redis.call('HMGET', exec_key, 'state', 'vm', 'attempts', 'started')
if fields[1] ~= 'running' or fields[2] ~= vm or fields[3] ~= attempt then
  return 0
end
local retention_ms = retention_of(exec_key)
-- The outcome (finished) or the error code (failed), for the counters: bounded sets.
local kind
if result ~= '' then
  kind = cjson.decode(result).outcome
else
  kind = cjson.decode(err).code
end
local now = now_ms()
redis.call('HSET', exec_key, 'state', state, 'finished', now)
if result ~= '' then
  redis.call('HSET', exec_key, 'result', result)
end
if err ~= '' then
  redis.call('HSET', exec_key, 'error', err)
end
redis.call('PEXPIRE', exec_key, retention_ms)
local running = redis.call('HINCRBY', vm_running, vm, -1)
if running < 0 then
  redis.call('HSET', vm_running, vm, 0)
end
redis.call('PUBLISH', channel, exec_id)
count(stats, 'executions|' .. state .. '|' .. tostring(kind))
observe(stats, 'run_time', now - tonumber(fields[4] or now))
return 1
