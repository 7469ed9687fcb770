-- take_buffered.lua: take the tick a schedule holds back (overlap="buffer") to start its
-- run: once, however many beats (reapers) sweep at the same moment, and without dropping a
-- newer tick held back meanwhile. A standalone script: no run keys.
-- KEYS[1] buffered   HASH schedule id -> the tick it holds back (a Unix time)
-- ARGV[1] id         the schedule
-- ARGV[2] expected   the tick the caller read
-- Returns 1 when this call took the tick, 0 when another did (or a newer one replaced it).
local buffered, id, expected = KEYS[1], ARGV[1], tonumber(ARGV[2])
local current = redis.call('HGET', buffered, id)
if not current or math.abs(tonumber(current) - expected) > 1e-6 then return 0 end
redis.call('HDEL', buffered, id)
return 1
