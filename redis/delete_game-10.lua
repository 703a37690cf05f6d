--[[ delete_game: end a game (DELETE, or its lease expired) and free its slot.

  Removes the game's lease, its pending entry and backlog, and returns its queued executions so
  the caller ends each `cancelled` (end_execution). Should the caller die before that,
  start_execution cancels them anyway: they carry the epoch of a game that no longer exists.

  KEYS[1]  games        HASH game_id -> game JSON
  KEYS[2]  free         ZSET Ready VMs with a free slot
  KEYS[3]  vm_games     HASH vm_id -> leased games
  KEYS[4]  vm_cap       HASH vm_id -> capacity
  KEYS[5]  vm_state     HASH vm_id -> state
  KEYS[6]  pending      ZSET pending games
  KEYS[7]  game_exp     ZSET game_id -> expiry (ms)
  KEYS[8]  backlog      HASH game_id -> JSON array of execution ids
  KEYS[9]  queued       ZSET execution_id -> queue deadline
  KEYS[10] game_queued  ZSET 'game_id:execution_id'

  ARGV[1] game_id
  ARGV[2] only_if_expired  '1': delete only if the lease has run out (the expiry sweeper)

  Returns {'gone'} | {'alive'} | {'deleted', vm_id or '', execution_id...}

  Errors: a game record that is not JSON fails the script (cjson) before it writes.
]]
local k = { games = KEYS[1], free = KEYS[2], vm_games = KEYS[3], vm_cap = KEYS[4],
            vm_state = KEYS[5], pending = KEYS[6], game_exp = KEYS[7], backlog = KEYS[8],
            queued = KEYS[9], game_queued = KEYS[10] }
local game_id, only_if_expired = ARGV[1], ARGV[2] == '1'

local raw = redis.call('HGET', k.games, game_id)
if not raw then
  redis.call('ZREM', k.game_exp, game_id)
  return { 'gone' }
end
local game = cjson.decode(raw)
if only_if_expired and game.expires > now_ms() then
  redis.call('ZADD', k.game_exp, game.expires, game_id)
  return { 'alive' }
end

redis.call('HDEL', k.games, game_id)
redis.call('ZREM', k.game_exp, game_id)
redis.call('ZREM', k.pending, game_id)
redis.call('HDEL', k.backlog, game_id)
if game.vm ~= '' then
  release_slot(k.free, k.vm_games, k.vm_cap, k.vm_state, game.vm)
end

local out = { 'deleted', game.vm }
local prefix = game_id .. ':'
local members = redis.call('ZRANGEBYLEX', k.game_queued, '[' .. prefix, '(' .. game_id .. ';')
for _, member in ipairs(members) do
  out[#out + 1] = string.sub(member, #prefix + 1)
end
return out
