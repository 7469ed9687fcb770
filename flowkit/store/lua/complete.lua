-- complete.lua: checkpoint a step. The first checkpoint written wins; the caller carries on
-- with whichever won. The worker is recorded: until the next step begins, the run's
-- progress depends on that worker publishing the next message (the reaper checks it lives,
-- unless that message was handed off: handoff.lua).
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] step       ARGV[3] token      ARGV[4] output (JSON)
-- ARGV[5] now        ARGV[6] retention  ARGV[7] event (step.completed, JSON)
-- ARGV[8] worker
-- Returns {the checkpoint that won, gen, over}: gen > 0 when this step was the last in flight
-- of a run whose waits were all answered meanwhile: the caller enqueues its frontier; over
-- 1 when the run had ended already (cancelled, or failed by another branch, while this step
-- ran on): the caller gives back the run's concurrency slot, kept while the step ran.
local run_id, step, token, output = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, retention, event, worker = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local added = redis.call('HSETNX', ckpt, step, output)
release(run_id, step, token)
local state = redis.call('HGET', run, 'state')
if added == 1 and (state == STATE_RUNNING or state == STATE_WAITING) then
  append(event)
  redis.call('HSET', run, 'updated_at', now, 'worker', worker, 'checkpoint_at', now)
  redis.call('ZADD', running, 'XX', now, run_id)
  -- progress: the restarts before it no longer count in a row (restart.lua's rule, which
  -- judged it at the next restart only: flowkit status said "1 in a row without progress"
  -- of a run that had checkpointed every step since)
  local stuck = redis.call('HGET', run, 'stuck_restarts')
  if stuck and stuck ~= '0' then redis.call('HSET', run, 'stuck_restarts', 0) end
end
local gen = settle(run_id, now)
touch(retention)
return {redis.call('HGET', ckpt, step), gen, is_live(state) and 0 or 1}
