--[[ register_vm: an agent declares its VM Ready with its capacity and languages.

  Creates the VM's stream and consumer group, keeps the games already leased to it (an agent
  restarting on the same VM), and offers its free slots. A VM declared dead stays dead; a
  draining VM stays draining. The first registration records the boot time (created -> ready)
  for the formula's boot_s. The reply hands the agent the pool's settings (its placement),
  which the orchestrator replicas published: the agent has none of its own. Before any replica
  published them the reply holds none (no replica has run, so no game can be pending yet).

  KEYS[1] vm_state    HASH vm_id -> state
  KEYS[2] vm_cap      HASH vm_id -> capacity
  KEYS[3] vm_games    HASH vm_id -> leased games
  KEYS[4] vm_running  HASH vm_id -> running executions
  KEYS[5] vm_hb       ZSET vm_id -> last heartbeat (ms)
  KEYS[6] vm_info     HASH vm_id -> JSON {created, ready, languages, agent, secret}
  KEYS[7] free        ZSET Ready VMs with a free slot
  KEYS[8] queue       STREAM of this VM
  KEYS[9] vm_since    HASH vm_id -> when it entered its state (ms)
  KEYS[10] boots      LIST recent boot times (ms), newest first, at most 20
  KEYS[11] settings   HASH the pool settings (placement)
  KEYS[12] stats      HASH the pool's counters: cold starts (create -> Ready)

  ARGV[1] vm_id
  ARGV[2] capacity        games this VM takes
  ARGV[3] languages JSON  [{name, version, aliases}]
  ARGV[4] agent           agent version string
  ARGV[5] secret          the secret from the VM's metadata ('' for none)
  ARGV[6] group           the consumer group of the VM's stream

  Returns {'ok', games, state, HGETALL settings (empty before a replica published them)}
        | {'dead'} | {'refused'} (the record holds a secret this agent does not know: it is not
        the VM it claims to be)

  Errors: creating the consumer group fails for a reason other than BUSYGROUP (the key holds
  something that is not a stream): the error is returned, nothing else was written.
]]
local vm_state, vm_cap, vm_games, vm_running = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local vm_hb, vm_info, free, queue = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local vm_since, boots, settings, stats = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local vm, capacity, languages, agent = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local secret, group = ARGV[5], ARGV[6]
local now = now_ms()

local before = redis.call('HGET', vm_state, vm)
if before == 'dead' then
  return { 'dead' }
end
local info = cjson.decode(redis.call('HGET', vm_info, vm) or '{}')
if info.secret and info.secret ~= secret then
  return { 'refused' }
end
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')
if not ok and not string.find(tostring(err), 'BUSYGROUP') then
  return redis.error_reply(tostring(err))
end


info.created = info.created or now
if before == 'provisioning' or before == 'booting' then
  redis.call('LPUSH', boots, now - info.created)
  redis.call('LTRIM', boots, 0, 19)
  observe(stats, 'cold_start', now - info.created)
end
info.ready = now
info.languages = cjson.decode(languages)
info.agent = agent
redis.call('HSET', vm_info, vm, cjson.encode(info))
local state = 'ready'
if before == 'draining' then
  state = 'draining'
end
if before ~= state then
  redis.call('HSET', vm_state, vm, state)
  redis.call('HSET', vm_since, vm, now)
end
redis.call('HSET', vm_cap, vm, capacity)
redis.call('HSETNX', vm_games, vm, 0)
redis.call('HSETNX', vm_running, vm, 0)
redis.call('ZADD', vm_hb, now, vm)
local games = tonumber(redis.call('HGET', vm_games, vm))
if state == 'ready' and games < capacity then
  redis.call('ZADD', free, games, vm)
else
  redis.call('ZREM', free, vm)
end
return { 'ok', games, state, redis.call('HGETALL', settings) }
