--[[ save_reservation: write a reservation's new arrival counts, only if it still exists.

  The leader reads the reservations, counts arrivals, then writes each back: without this
  check, a reservation the API deleted in between would come back.

  KEYS[1] reservations  HASH reservation_id -> reservation JSON

  ARGV[1] reservation_id
  ARGV[2] reservation JSON

  Returns 1 when written, 0 when the reservation is gone (nothing written).

  Errors: none of its own.
]]
local reservations = KEYS[1]
local id, json = ARGV[1], ARGV[2]
if redis.call('HEXISTS', reservations, id) == 0 then
  return 0
end
redis.call('HSET', reservations, id, json)
return 1
