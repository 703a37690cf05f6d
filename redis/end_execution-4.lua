--[[ end_execution: end a queued execution as expired or cancelled.

  Only a `queued` execution changes: one that an agent already started is left to its result.
  Safe to repeat.

  KEYS[1] exec         HASH the execution record
  KEYS[2] queued       ZSET execution_id -> queue deadline
  KEYS[3] game_queued  ZSET 'game_id:execution_id'
  KEYS[4] stats        HASH the pool's counters

  ARGV[1] execution_id
  ARGV[2] state          'expired' | 'cancelled'
  ARGV[3] error_code
  ARGV[4] error_message
  ARGV[5] channel        pub/sub channel that wakes waiting replicas
  ARGV[6] only_if_due    '1': only once the queue deadline has passed (the expiry sweeper)

  Returns 1 when the execution was ended here, 0 otherwise.

  Errors: an execution record without its retention fails it with CORRUPT, before it writes.
]]
local exec_key, queued, game_queued, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local exec_id, state, code, message = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local channel, only_if_due = ARGV[5], ARGV[6] == '1'
local now = now_ms()

local current = redis.call('HGET', exec_key, 'state')
if current ~= 'queued' then
  if not current then
    redis.call('ZREM', queued, exec_id)
  end
  return 0
end
if only_if_due and tonumber(redis.call('HGET', exec_key, 'deadline') or '0') > now then
  return 0
end
end_queued(exec_key, queued, game_queued, exec_id, state, code, message, retention_of(exec_key),
  channel, now, stats)
return 1
