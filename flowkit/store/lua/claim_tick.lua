-- claim_tick.lua: claim one tick of a schedule: its next fire time moves on, once, however
-- many beats (reapers) sweep at the same moment; the run the claim owes is kept as
-- unsettled until the claimer settles it (a sweep that dies first leaves it to the next).
-- A standalone script: no run keys.
-- KEYS[1] due        ZSET schedule id -> its next fire time
-- KEYS[2] claimed    ZSET "<schedule id> <tick>" -> when it was claimed (unsettled ticks)
-- ARGV[1] id         the schedule
-- ARGV[2] expected   the fire time the caller read (the tick it claims)
-- ARGV[3] next       the fire time after it
-- ARGV[4] fires      the tick whose run the claim owes ('' for none: a missed tick)
-- ARGV[5] now
-- Returns 1 when this call claimed the tick, 0 when another did (or the schedule is gone
-- or paused).
local due, id, expected, nxt = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local current = redis.call('ZSCORE', due, id)
if not current or math.abs(tonumber(current) - expected) > 1e-6 then return 0 end
redis.call('ZADD', due, nxt, id)
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[2], ARGV[5], id .. ' ' .. ARGV[4]) end
return 1
