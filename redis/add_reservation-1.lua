--[[ add_reservation: record an announced burst of games, unless the pool has `max` already.

  The count and the write are one step, so two replicas adding at once cannot both pass.

  KEYS[1] reservations  HASH reservation_id -> reservation JSON

  ARGV[1] reservation_id
  ARGV[2] reservation JSON
  ARGV[3] max             most reservations a pool holds

  Returns {'ok'} | {'full'} (nothing written)

  Errors: none of its own.
]]
local reservations = KEYS[1]
local id, json, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('HLEN', reservations) >= max then
  return { 'full' }
end
redis.call('HSET', reservations, id, json)
return { 'ok' }
