-- create.lua: store a new run: its record, its first event, its place in the queued index
-- (or, for a delayed start, in the timers index: it is scheduled).
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] now        ARGV[3] retention (seconds)
-- ARGV[4] event      the run.queued (or run.scheduled) event (JSON)
-- ARGV[5] start_at   when a scheduled run is due ('' for a run queued now)
-- ARGV[6..] the record's field/value pairs
-- Returns 1 when it created the run, 0 when the run exists (a resend, or an idempotent
-- start that lost the race to the same run id).
local run_id, now, retention, event, start_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', run) == 1 then return 0 end
redis.call('HSET', run, unpack(ARGV, 6))
count('started|' .. (redis.call('HGET', run, 'workflow') or ''))
append(event)
if start_at ~= '' then
  redis.call('HSET', run, 'state', STATE_SCHEDULED)
  redis.call('ZADD', timers, start_at, timer_member(run_id, '$start'))
else
  redis.call('ZADD', queued, now, run_id)
end
touch(retention)
return 1
