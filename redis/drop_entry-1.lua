--[[ drop_entry: acknowledge a stream entry and delete it, in one step (an entry is never left
  acknowledged but still on the stream, nor deleted but pending in the group).

  KEYS[1] queue  STREAM of a VM

  ARGV[1] group     the streams' consumer group
  ARGV[2] entry_id

  Returns 1.

  Errors: none of its own.
]]
drop_entry(KEYS[1], ARGV[1], ARGV[2])
return 1
