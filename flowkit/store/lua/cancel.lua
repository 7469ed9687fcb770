-- cancel.lua: cancel a live run; its running steps see it at their next event or check.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] now        ARGV[3] retention
-- ARGV[4] event (run.cancelled JSON)    ARGV[5] call_id
-- Returns 1 cancelled (by this call), 0 already ended, -1 unknown run.
local run_id, now, retention, event, call_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local state = redis.call('HGET', run, 'state')
if not state then return -1 end
if ended_by(call_id) then return 1 end
if not is_live(state) then return 0 end
end_run(run_id, STATE_CANCELLED, now, retention, call_id, {}, event)
return 1
