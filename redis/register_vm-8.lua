--[[ register_vm: an agent declares its VM Ready with its capacity and languages.

  Creates the VM's stream and consumer group, keeps the games already leased to it (an agent
  restarting on the same VM), and offers its free slots. A VM declared dead stays dead.

  KEYS[1] vm_state    HASH vm_id -> state
  KEYS[2] vm_cap      HASH vm_id -> capacity
  KEYS[3] vm_games    HASH vm_id -> leased games
  KEYS[4] vm_running  HASH vm_id -> running executions
  KEYS[5] vm_hb       ZSET vm_id -> last heartbeat (ms)
  KEYS[6] vm_info     HASH vm_id -> JSON {created, ready, languages, agent}
  KEYS[7] free        ZSET Ready VMs with a free slot
  KEYS[8] queue       STREAM of this VM

  ARGV[1] vm_id
  ARGV[2] capacity        games this VM takes
  ARGV[3] languages JSON  [{name, version, aliases}]
  ARGV[4] agent           agent version string

  Returns {'ok', games} | {'dead'}
]]
local vm_state, vm_cap, vm_games, vm_running = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local vm_hb, vm_info, free, queue = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local vm, capacity, languages, agent = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local now = now_ms()

if redis.call('HGET', vm_state, vm) == 'dead' then
  return { 'dead' }
end
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', queue, 'agents', '0', 'MKSTREAM')
if not ok and not string.find(tostring(err), 'BUSYGROUP') then
  return redis.error_reply(tostring(err))
end

local info = cjson.decode(redis.call('HGET', vm_info, vm) or '{}')
info.created = info.created or now
info.ready = now
info.languages = cjson.decode(languages)
info.agent = agent
redis.call('HSET', vm_info, vm, cjson.encode(info))
redis.call('HSET', vm_state, vm, 'ready')
redis.call('HSET', vm_cap, vm, capacity)
redis.call('HSETNX', vm_games, vm, 0)
redis.call('HSETNX', vm_running, vm, 0)
redis.call('ZADD', vm_hb, now, vm)
local games = tonumber(redis.call('HGET', vm_games, vm))
if games < capacity then
  redis.call('ZADD', free, games, vm)
else
  redis.call('ZREM', free, vm)
end
return { 'ok', games }
