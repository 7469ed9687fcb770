-- claim_tick.lua: claim one tick of a schedule: its next fire time moves on, once, however
-- many beats (reapers) sweep at the same moment. A standalone script: no run keys.
-- KEYS[1] due        ZSET schedule id -> its next fire time
-- ARGV[1] id         the schedule
-- ARGV[2] expected   the fire time the caller read (the tick it claims)
-- ARGV[3] next       the fire time after it
-- Returns 1 when this call claimed the tick, 0 when another did (or the schedule is gone
-- or paused).
local due, id, expected, nxt = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local current = redis.call('ZSCORE', due, id)
if not current or math.abs(tonumber(current) - expected) > 1e-6 then return 0 end
redis.call('ZADD', due, nxt, id)
return 1
