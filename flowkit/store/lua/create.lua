-- create.lua: store a new run: its record, its first event, its place in the queued index
-- (or, for a delayed start, in the timers index: it is scheduled).
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] now        ARGV[3] retention (seconds)
-- ARGV[4] event      the run.queued (or run.scheduled) event (JSON)
-- ARGV[5] start_at   when a scheduled run is due ('' for a run queued now)
-- ARGV[6] broker_db  the broker's database on this server ('' when it pushes no message)
-- ARGV[7] n          how many broker messages follow (0: none)
-- ARGV[8..7+2n]      each message as its broker list key and its payload (kombu's
--                    envelope, as Celery would LPUSH it: flowkit.engine.publish)
-- ARGV[8+2n..] the record's field/value pairs
-- Returns 1 when it created the run, 0 when the run exists (a resend, or an idempotent
-- start that lost the race to the same run id): then it pushes no message either.
-- The messages go last, into the broker's database (SELECT in a script changes only the
-- script's own database): a message never exists without its run. Their keys are not in
-- KEYS, as they live in another database; a Cluster store never gets here (its broker is
-- always another server).
local run_id, now, retention, event, start_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local broker_db, messages = ARGV[6], tonumber(ARGV[7])
if redis.call('EXISTS', run) == 1 then return 0 end
redis.call('HSET', run, unpack(ARGV, 8 + 2 * messages))
count('started|' .. (redis.call('HGET', run, 'workflow') or ''))
append(event)
if start_at ~= '' then
  redis.call('HSET', run, 'state', STATE_SCHEDULED)
  redis.call('ZADD', timers, start_at, timer_member(run_id, '$start'))
else
  redis.call('ZADD', queued, now, run_id)
end
touch(retention)
if messages > 0 then
  redis.call('SELECT', broker_db)
  for i = 8, 6 + 2 * messages, 2 do redis.call('LPUSH', ARGV[i], ARGV[i + 1]) end
end
return 1
