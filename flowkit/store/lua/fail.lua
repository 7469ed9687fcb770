-- fail.lua: a step gave up (or the workflow found an error): the run fails.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] gen        ARGV[3] step ('' for none)   ARGV[4] token
-- ARGV[5] now        ARGV[6] error (JSON)   ARGV[7] retention
-- ARGV[8] step_event (step.failed JSON, '' for none)   ARGV[9] run_event (run.failed JSON)
-- ARGV[10] call_id   names this call (lib.lua's ended_by)
-- Returns 1 when this call failed the run, 0 when it was no longer live in gen.
local run_id, gen, step, token, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local err, retention, step_event, run_event, call_id = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]

if step ~= '' then release(run_id, step, token) end
if ended_by(call_id) then return 1 end
local state = redis.call('HGET', run, 'state')
if not is_live(state) or redis.call('HGET', run, 'gen') ~= gen then
  -- what its step wrote since the run ended, outside these scripts (a sub-step's checkpoint
  -- made the run's checkpoints hash anew), expires with the rest: it was kept for ever
  touch(retention)
  return 0
end
if step_event ~= '' then append(step_event) end
end_run(run_id, STATE_FAILED, now, retention, call_id, {'error', err, 'failed_step', step},
        run_event)
return 1
