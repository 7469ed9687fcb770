-- hold.lua: a new run waits for a concurrency slot: it stays queued in Redis (not in the
-- broker, not in the queued index the reaper re-drives), saying what it waits for.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] reason     ARGV[3] now        ARGV[4] retention
-- ARGV[5] event      run.held (JSON)
-- Returns 1, or 0 when the run is not queued (admitted meanwhile, or ended).
local run_id, reason, now, retention, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HGET', run, 'state') ~= STATE_QUEUED then return 0 end
redis.call('HSET', run, 'held_for', reason, 'updated_at', now)
redis.call('ZREM', queued, run_id)
append(event)
touch(retention)
return 1
