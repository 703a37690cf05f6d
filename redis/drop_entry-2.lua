--[[ drop_entry: acknowledge a stream entry and delete it, in one step (an entry is never left
  acknowledged but still on the stream, nor deleted but pending in the group), for the VM
  whose stream it is.

  KEYS[1] queue    STREAM of the VM
  KEYS[2] vm_info  HASH vm_id -> JSON info (the VM's secret)

  ARGV[1] group     the streams' consumer group
  ARGV[2] entry_id
  ARGV[3] vm_id     the VM of the stream
  ARGV[4] secret    that VM's secret: one VM cannot drop another's work

  Returns 1, or 0 when the secret is not the VM's (nothing written).

  Errors: an info record that is not JSON fails the script (cjson) before it writes.
]]
if not proves(KEYS[2], ARGV[3], ARGV[4]) then
  return 0
end
drop_entry(KEYS[1], ARGV[1], ARGV[2])
return 1
