--[[ place_pending: lease pending games (FIFO) to `vm` while `mode` still picks it.

  The same choice as put_game: each pending game goes to pick_vm(mode). This script can only
  write to the stream of the VM it was given, so when the choice moves to another VM it stops
  and names that VM; the caller calls again with it. Each placed game's backlog moves, in
  order, onto the VM's stream.

  KEYS[1] free       ZSET Ready VMs with a free slot
  KEYS[2] vm_games   HASH vm_id -> leased games
  KEYS[3] vm_cap     HASH vm_id -> capacity
  KEYS[4] pending    ZSET pending games (FIFO)
  KEYS[5] games      HASH game_id -> game JSON
  KEYS[6] backlog    HASH game_id -> JSON array of execution ids
  KEYS[7] queue      STREAM of ARGV[1]

  ARGV[1] vm_id      the VM the caller expects the choice to be
  ARGV[2] mode       'least-loaded' | 'packed'
  ARGV[3] max        most games to place in this call (bounds the script's run time)

  Returns {placed, next}: next is '' when nothing is left to do (no pending game or no free
  slot), else the VM to call again with (ARGV[1] itself when `max` was reached).

  Errors: a game record or backlog that is not JSON fails the script (cjson); games placed
  before it in the same call stay placed, with their backlogs moved.
]]
local free, vm_games, vm_cap, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local games, backlog, queue = KEYS[5], KEYS[6], KEYS[7]
local vm, mode, max = ARGV[1], ARGV[2], tonumber(ARGV[3])

local placed = 0
while placed < max do
  if redis.call('ZCARD', pending) == 0 then
    return { placed, '' }
  end
  local choice = pick_vm(free, mode)
  if not choice then
    return { placed, '' }
  end
  if choice ~= vm then
    return { placed, choice }
  end
  local popped = redis.call('ZPOPMIN', pending)
  local game_id = popped[1]
  local raw = redis.call('HGET', games, game_id)
  if raw then
    local game = cjson.decode(raw)
    take_slot(free, vm_games, vm_cap, vm)
    game.vm = vm
    redis.call('HSET', games, game_id, cjson.encode(game))
    local list = cjson.decode(redis.call('HGET', backlog, game_id) or '[]')
    for _, exec_id in ipairs(list) do
      redis.call('XADD', queue, '*', 'e', exec_id)
    end
    redis.call('HDEL', backlog, game_id)
    placed = placed + 1
  end
end
return { placed, vm }
