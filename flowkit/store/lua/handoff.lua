-- handoff.lua: a message of the run's canvas was published (Celery's after_task_publish):
-- until its task begins, the run's progress waits in the broker, not in a worker, so the
-- reaper must not take "no step in flight" for a worker lost between steps.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] gen        the generation the message belongs to
-- ARGV[2] now
-- Returns 1, or 0 when the run is unknown or in another generation.
if redis.call('HGET', run, 'gen') ~= ARGV[1] then return 0 end
redis.call('HSET', run, 'handoff_at', ARGV[2])
return 1
