--[[ heartbeat: an agent says its VM is alive; it learns the state the pool holds for it, and
  whether anybody still leads the pool (the agent's dead-man's switch: a VM with nothing
  running and no leader for long enough shuts itself down).

  KEYS[1] vm_state    HASH vm_id -> state
  KEYS[2] vm_hb       ZSET vm_id -> last heartbeat (ms)
  KEYS[3] leader      STRING the leader lease (absent: no replica leads the pool)
  KEYS[4] vm_running  HASH vm_id -> running executions
  KEYS[5] stats       HASH the pool's counters: sandbox kills by reason, sandbox start times
  KEYS[6] vm_agent    HASH vm_id -> JSON {busy, spares}: the agent's gauges, summed by /metrics
  KEYS[7] vm_info     HASH vm_id -> JSON info (the VM's secret)

  ARGV[1] vm_id
  ARGV[2] figures JSON  {busy, spares, kills: {reason: n}, start_ms: [ms...]}: the gauges now,
                        and the kills and sandbox start times since the last heartbeat that
                        went through ('' for none); kept only for a VM the pool knows alive
  ARGV[3] secret        the VM's secret: only the agent of that VM heartbeats for it

  Returns {state, led, running} | {'unknown', led, running} (the pool has no record of the VM:
  no heartbeat is written then, nor for a dead VM) | {'refused', led, running} (the secret is
  not the VM's: nothing written); led is 1 while a leader lease exists.

  Errors: figures or an info record that are not JSON fail the script (cjson) before it
  writes.
]]
local vm_state, vm_hb, leader, vm_running = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats, vm_agent, vm_info = KEYS[5], KEYS[6], KEYS[7]
local vm, figures, secret = ARGV[1], ARGV[2], ARGV[3]
local led = redis.call('EXISTS', leader)
local running = tonumber(redis.call('HGET', vm_running, vm) or '0')
local state = redis.call('HGET', vm_state, vm)
local f
if figures ~= '' then
  f = cjson.decode(figures)
end
if not state then
  return { 'unknown', led, running }
end
if not proves(vm_info, vm, secret) then
  return { 'refused', led, running }
end
if state ~= 'dead' then
  redis.call('ZADD', vm_hb, now_ms(), vm)
  if f then
    redis.call('HSET', vm_agent, vm, cjson.encode({ busy = f.busy or 0, spares = f.spares or 0 }))
    for reason, n in pairs(f.kills or {}) do
      count(stats, 'sandbox_kills|' .. reason, n)
    end
    for _, ms in ipairs(f.start_ms or {}) do
      observe(stats, 'sandbox_start', ms)
    end
  end
end
return { state, led, running }
