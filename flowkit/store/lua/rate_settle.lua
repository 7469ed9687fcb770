-- rate_settle.lua: settle a request's token cost once the real count is known.
-- A standalone script: no run keys, no lib.lua.
-- KEYS[1] bucket     HASH (rate_acquire.lua)
-- ARGV[1] delta      tokens to give back (negative: to take)
-- A bucket Redis forgot is full again: nothing to settle. Returns 0.
local bucket, delta = KEYS[1], ARGV[1]
if redis.call('HEXISTS', bucket, 'tok') == 1 then
  redis.call('HINCRBYFLOAT', bucket, 'tok', delta)
end
return 0
