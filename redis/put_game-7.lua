--[[ put_game: start a game, or refresh the lease of one that exists.

  A new game is leased to the Ready VM that `mode` picks (least-loaded or packed) or, with no
  free Ready slot, becomes pending (FIFO). An existing game keeps its VM (sticky lease); its
  expiry moves to at least now + ttl.

  KEYS[1] games       HASH game_id -> game JSON {vm, epoch, created, expires, ttl}
  KEYS[2] free        ZSET Ready VMs with a free slot, scored by leased games
  KEYS[3] vm_games    HASH vm_id -> leased games
  KEYS[4] vm_cap      HASH vm_id -> capacity in games
  KEYS[5] pending     ZSET pending game_id, scored by arrival sequence
  KEYS[6] game_exp    ZSET game_id -> expiry (ms)
  KEYS[7] seq         STRING pool-wide sequence (game epochs, FIFO order)

  ARGV[1] game_id
  ARGV[2] ttl_ms      lease length asked for; '' keeps an existing game's own
  ARGV[3] mode        'least-loaded' | 'packed'
  ARGV[4] default_ttl_ms  lease length of a new game when ARGV[2] is ''

  Returns {created (1|0), vm_id or '', created_ms, expires_ms}

  Errors: a game record that is not JSON fails the script (cjson) before it writes.
]]
local k = { games = KEYS[1], free = KEYS[2], vm_games = KEYS[3], vm_cap = KEYS[4],
            pending = KEYS[5], game_exp = KEYS[6], seq = KEYS[7] }
local game_id, ttl_ms, mode, default_ttl_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local now = now_ms()

local raw = redis.call('HGET', k.games, game_id)
if raw then
  local game = cjson.decode(raw)
  touch_game(k, game_id, game, ttl_ms or game.ttl or default_ttl_ms, now)
  return { 0, game.vm, tostring(game.created), tostring(game.expires) }
end
local game = create_game(k, game_id, ttl_ms or default_ttl_ms, mode, now)
return { 1, game.vm, tostring(game.created), tostring(game.expires) }
