--[[ release_leader: give up the lease at shutdown, if this replica still holds it.

  KEYS[1] leader  STRING 'replica_id|token'

  ARGV[1] replica_id
  ARGV[2] token

  Returns 1 when released, 0 when the lease was not this replica's.

  Errors: none of its own.
]]
if redis.call('GET', KEYS[1]) == ARGV[1] .. '|' .. ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
