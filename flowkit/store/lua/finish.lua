-- finish.lua: the run's last task: it succeeded with `output`.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] gen        ARGV[3] now        ARGV[4] output (JSON)
-- ARGV[5] retention  ARGV[6] event (run.succeeded JSON)  ARGV[7] call_id
-- ARGV[8] step, ARGV[9] its output (JSON), both optional: the run's last step, completed
--   just before in the same pipeline (Store.complete_last_step); the run ends only if
--   that output is the step's checkpoint (that completion won)
-- Returns {1, concurrency_group, concurrency_limit} when this call ended the run (the
-- two nil when the run holds no concurrency slot: the caller releases it without reading
-- the run again), 0 when it was no longer live in gen (or the step's checkpoint is
-- another output).
local run_id, gen, now, output = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retention, event, call_id = ARGV[5], ARGV[6], ARGV[7]
local step, step_output = ARGV[8], ARGV[9]

local function ended()
  return {1, redis.call('HGET', run, 'concurrency_group'),
          redis.call('HGET', run, 'concurrency_limit')}
end

if ended_by(call_id) then return ended() end
local state = redis.call('HGET', run, 'state')
if not is_live(state) or redis.call('HGET', run, 'gen') ~= gen then return 0 end
if step and redis.call('HGET', ckpt, step) ~= step_output then return 0 end
redis.call('HSETNX', run, 'started_at', now)
end_run(run_id, STATE_SUCCEEDED, now, retention, call_id, {'output', output}, event)
return ended()
