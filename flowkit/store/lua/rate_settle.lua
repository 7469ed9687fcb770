-- rate_settle.lua: settle a request's token cost once the real count is known.
-- A standalone script: no run keys, no lib.lua.
-- KEYS[1] bucket     HASH (rate_acquire.lua)
-- ARGV[1] delta      tokens to give back (negative: to take)
-- A bucket Redis forgot is full again: nothing to settle. One that took more is kept until
-- it is full again (as rate_acquire.lua keeps it): forgotten sooner, it came back full.
-- Returns 0.
local bucket, delta = KEYS[1], ARGV[1]
if redis.call('HEXISTS', bucket, 'tok') == 1 then
  local tok = tonumber(redis.call('HINCRBYFLOAT', bucket, 'tok', delta))
  local stored = redis.call('HMGET', bucket, 'tok_rate', 'tok_cap')
  local rate, cap = tonumber(stored[1]), tonumber(stored[2])
  if rate and cap and rate > 0 then
    local keep = math.ceil((cap - tok) / rate) + 1
    if redis.call('TTL', bucket) < keep then redis.call('EXPIRE', bucket, keep) end
  end
end
return 0
