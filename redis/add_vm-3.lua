--[[ add_vm: record a VM the provider is about to create, once.

  KEYS[1] vm_state  HASH vm_id -> state
  KEYS[2] vm_cap    HASH vm_id -> capacity
  KEYS[3] vm_info   HASH vm_id -> JSON {created, ready, languages, ...}

  ARGV[1] vm_id
  ARGV[2] capacity

  Returns 1 when recorded here (the caller then creates it), 0 when the VM was known already.
]]
local vm_state, vm_cap, vm_info = KEYS[1], KEYS[2], KEYS[3]
local vm, capacity = ARGV[1], ARGV[2]
if redis.call('HSETNX', vm_state, vm, 'provisioning') == 0 then
  return 0
end
redis.call('HSET', vm_cap, vm, capacity)
redis.call('HSET', vm_info, vm, cjson.encode({ created = now_ms(), languages = {} }))
return 1
