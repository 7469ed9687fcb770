-- handoff.lua: a message of the run's canvas was published (Celery's after_task_publish):
-- until its task begins, the run's progress waits in the broker, not in a worker, so the
-- reaper must not take "no step in flight" for a worker lost between steps.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] gen        the generation the message belongs to
-- ARGV[2] now
-- ARGV[3] queues     the queues its messages went to, space-separated ('' for unknown):
--                    kept in `handoff_queues` (the reaper looks for the run's messages
--                    there too: a step reached by continue_with, a workflow it lacks)
-- Returns 1, or 0 when the run is unknown or in another generation.
if redis.call('HGET', run, 'gen') ~= ARGV[1] then return 0 end
-- a batch written late (Redis refused it first) must not move the hand-off back in time
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', run, 'handoff_at') or '0') then
  redis.call('HSET', run, 'handoff_at', ARGV[2])
end
local known = redis.call('HGET', run, 'handoff_queues') or ''
local before = known
for queue in string.gmatch(ARGV[3], '%S+') do
  if not string.find(' ' .. known .. ' ', ' ' .. queue .. ' ', 1, true) then
    known = known == '' and queue or known .. ' ' .. queue
  end
end
if known ~= before then redis.call('HSET', run, 'handoff_queues', known) end
return 1
