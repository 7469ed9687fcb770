-- create.lua: store a new run: its record, its run.queued event, its place in the queued index.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] now        ARGV[3] retention (seconds)
-- ARGV[4] event      the run.queued event (JSON)
-- ARGV[5..] the record's field/value pairs
-- Returns 1 when it created the run, 0 when the run exists (a resend, or an idempotent
-- start that lost the race to the same run id).
local run_id, now, retention, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', run) == 1 then return 0 end
redis.call('HSET', run, unpack(ARGV, 5))
append(event)
redis.call('ZADD', queued, now, run_id)
touch(retention)
return 1
