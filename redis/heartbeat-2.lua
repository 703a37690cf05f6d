--[[ heartbeat: an agent says its VM is alive; it learns the state the pool holds for it.

  KEYS[1] vm_state  HASH vm_id -> state
  KEYS[2] vm_hb     ZSET vm_id -> last heartbeat (ms)

  ARGV[1] vm_id

  Returns the VM's state ('unknown' when the pool has no record; no heartbeat is written then,
  nor for a dead VM).
]]
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then
  return 'unknown'
end
if state ~= 'dead' then
  redis.call('ZADD', KEYS[2], now_ms(), ARGV[1])
end
return state
