--[[ acquire_leader: take or renew the pool's leadership; each new term gets a fencing token.

  The lease is one key with a PX expiry holding 'replica_id|token'. The holder renews it; anyone
  may take it once it expired, and taking it increments the fencing counter, so every script
  that changes VM records can refuse a token that is no longer current.

  KEYS[1] leader  STRING 'replica_id|token', expires after the lease
  KEYS[2] fence   STRING fencing counter

  ARGV[1] replica_id
  ARGV[2] ttl_ms      lease length

  Returns the token (> 0) while this replica leads, 0 when another replica holds the lease.

  Errors: none of its own.
]]
local leader, fence = KEYS[1], KEYS[2]
local replica, ttl_ms = ARGV[1], tonumber(ARGV[2])

local current = redis.call('GET', leader)
if current then
  local holder, token = string.match(current, '^(.*)|(%d+)$')
  if holder == replica then
    redis.call('PEXPIRE', leader, ttl_ms)
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', fence)
redis.call('SET', leader, replica .. '|' .. token, 'PX', ttl_ms)
return token
