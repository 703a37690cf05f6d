--[[ heartbeat: an agent says its VM is alive; it learns the state the pool holds for it, and
  whether anybody still leads the pool (the agent's dead-man's switch: a VM with nothing
  running and no leader for long enough shuts itself down).

  KEYS[1] vm_state    HASH vm_id -> state
  KEYS[2] vm_hb       ZSET vm_id -> last heartbeat (ms)
  KEYS[3] leader      STRING the leader lease (absent: no replica leads the pool)
  KEYS[4] vm_running  HASH vm_id -> running executions

  ARGV[1] vm_id

  Returns {state, led, running} | {'unknown', led, running} (the pool has no record of the VM:
  no heartbeat is written then, nor for a dead VM); led is 1 while a leader lease exists.

  Errors: none of its own.
]]
local vm_state, vm_hb, leader, vm_running = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local vm = ARGV[1]
local led = redis.call('EXISTS', leader)
local running = tonumber(redis.call('HGET', vm_running, vm) or '0')
local state = redis.call('HGET', vm_state, vm)
if not state then
  return { 'unknown', led, running }
end
if state ~= 'dead' then
  redis.call('ZADD', vm_hb, now_ms(), vm)
end
return { state, led, running }
