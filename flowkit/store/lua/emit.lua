-- emit.lua: an event sent from inside a step (progress, an output chunk).
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] gen        ARGV[2] event (JSON)   ARGV[3] step
-- ARGV[4] emit_id    names this call: resent after a lost reply, it is not appended twice
-- Returns the event's stream id, or false when the run is no longer live in generation gen.
-- The run is live: its keys have no expiry (lib.lua's touch), so none is set here.
local gen, event, step, emit_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local state = redis.call('HGET', run, 'state')
if not is_live(state) or redis.call('HGET', run, 'gen') ~= gen then return false end
local last = redis.call('HGET', emits, step)
if last then  -- this emit again, resent after its reply was lost: it is in the stream
  local sep = string.find(last, ' ', 1, true)
  if string.sub(last, 1, sep - 1) == emit_id then return string.sub(last, sep + 1) end
end
local id = append(event)
redis.call('HSET', emits, step, emit_id .. ' ' .. id)
return id
