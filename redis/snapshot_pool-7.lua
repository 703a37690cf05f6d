--[[ snapshot_pool: every VM record at one instant (read only).

  Reading the VM hashes one by one from the client would mix states from different moments
  (a VM counted provisioning with games already on it); one script reads them atomically.

  KEYS[1] vm_state    HASH vm_id -> state
  KEYS[2] vm_cap      HASH vm_id -> capacity
  KEYS[3] vm_games    HASH vm_id -> leased games
  KEYS[4] vm_running  HASH vm_id -> running executions
  KEYS[5] vm_hb       ZSET vm_id -> last heartbeat (ms)
  KEYS[6] vm_info     HASH vm_id -> JSON info
  KEYS[7] vm_since    HASH vm_id -> when it entered its state (ms)

  Returns {now_ms, HGETALL vm_state, HGETALL vm_cap, HGETALL vm_games, HGETALL vm_running,
           ZRANGE vm_hb WITHSCORES (as strings), HGETALL vm_info, HGETALL vm_since}

  Errors: none of its own (it only reads).
]]
local out = { tostring(now_ms()) }
out[#out + 1] = redis.call('HGETALL', KEYS[1])
out[#out + 1] = redis.call('HGETALL', KEYS[2])
out[#out + 1] = redis.call('HGETALL', KEYS[3])
out[#out + 1] = redis.call('HGETALL', KEYS[4])
out[#out + 1] = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
out[#out + 1] = redis.call('HGETALL', KEYS[6])
out[#out + 1] = redis.call('HGETALL', KEYS[7])
return out
