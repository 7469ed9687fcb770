-- admit.lua: a held run got its concurrency slot: it is queued like any run from now on
-- (the queued index watches it), and says so.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] now        ARGV[3] retention
-- ARGV[4] event      run.admitted (JSON)
-- Returns 1 when the run was held and is admitted now, 0 otherwise (unknown, ended, admitted).
local run_id, now, retention, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', run, 'state') ~= STATE_QUEUED then return 0 end
if redis.call('HDEL', run, 'held_for') == 0 then return 0 end
redis.call('HSET', run, 'updated_at', now)
redis.call('ZADD', queued, now, run_id)
append(event)
touch(retention)
return 1
