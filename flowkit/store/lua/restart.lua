-- restart.lua: open a new generation of a run when `cause` holds (flowkit.states.RestartCause):
-- its in-flight leases are dropped (their attempts are superseded), it is queued again and
-- run.restarted says why; the caller then has its frontier enqueued (what remains). A run
-- that restarted max_restarts times without progress (no new checkpoint since the last
-- restart) is failed instead: a restart after which the run checkpointed a step does not
-- count. Its open waits stay open: a paused step pauses again when its branch runs.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] expected (the state the caller saw)   ARGV[3] now
-- ARGV[4] retention  ARGV[5] reason (for run.restarted)
-- ARGV[6] max_restarts  restarts without progress allowed before giving up; -1: not
--                    counted (a request: retry, drain handover)
-- ARGV[7] cause      a RestartCause
-- ARGV[8] step       CAUSE_LEASE_LAPSED: the step whose lease lapsed
-- ARGV[9] before     QUEUED_TOO_LONG, ORPHANED, STALLED, STRANDED: no sign of life
--                    since then
-- ARGV[10] holder    ORPHANED: the worker that last held the run, as the caller read it
-- ARGV[11] holder_beat  ORPHANED: that worker's last heartbeat ('' for none)
-- ARGV[12] give_up   the error (JSON) of a run that used up its restarts
-- ARGV[13] call_id   names this call: resent after a lost reply, it answers as it did
-- Returns {new_gen} or {0, refusal} (flowkit.states.RestartRefusal).
local run_id, expected, now, retention = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local reason, max_restarts, cause, step = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
local before, holder, holder_beat = tonumber(ARGV[9]), ARGV[10], ARGV[11]
local give_up, call_id = ARGV[12], ARGV[13]

local state = redis.call('HGET', run, 'state')
if not state then return {0, REFUSED_GONE} end
if ended_by(call_id) then return {0, REFUSED_GAVE_UP} end
if redis.call('HGET', run, 'restarted_by') == call_id then
  return {tonumber(redis.call('HGET', run, 'gen'))}
end

if cause == CAUSE_LEASE_LAPSED then
  local lapses = redis.call('ZSCORE', leases, lease_member(run_id, step))
  if not lapses or tonumber(lapses) > now then return {0, REFUSED_ALIVE} end
  if state ~= expected then
    release(run_id, step, nil)
    -- nothing may be in flight now: a waiting run waits, and one whose waits were answered
    -- meanwhile goes on (a new generation: the caller enqueues its frontier)
    local resumed = settle(run_id, ARGV[3])
    if resumed > 0 then return {resumed} end
    return {0, REFUSED_STATE}
  end
elseif state ~= expected then
  return {0, REFUSED_STATE}
elseif cause == CAUSE_QUEUED_TOO_LONG then
  local since = redis.call('ZSCORE', queued, run_id)
  if not since or tonumber(since) > before then return {0, REFUSED_ALIVE} end
elseif cause == CAUSE_ORPHANED or cause == CAUSE_STALLED then
  local seen = redis.call('ZSCORE', running, run_id)
  if redis.call('HLEN', inflight) > 0 or not seen or tonumber(seen) > before then
    return {0, REFUSED_ALIVE}
  end
  -- orphaned: the worker that had to send the next message has not been seen either,
  -- and that message was never handed off to the broker after the last checkpoint
  if cause == CAUSE_ORPHANED then
    if (redis.call('HGET', run, 'worker') or '') ~= holder then return {0, REFUSED_ALIVE} end
    if holder_beat ~= '' and tonumber(holder_beat) > before then return {0, REFUSED_ALIVE} end
    local handoff = tonumber(redis.call('HGET', run, 'handoff_at') or '0')
    if handoff >= tonumber(redis.call('HGET', run, 'checkpoint_at') or '0') and handoff > 0 then
      return {0, REFUSED_ALIVE}  -- its next message waits in the broker
    end
  end
elseif cause == CAUSE_STRANDED then
  -- the caller found none of the run's queues holding a message: nothing is in flight and
  -- nothing waits in line (a worker took its next message and died; a branch's worker died
  -- before the join counted it; the broker refused the next message). A worker that took
  -- a message a moment ago begins it within that moment (a new sign of life): only the same
  -- last sign of life seen so again, `before` or longer after the first sighting, is lost.
  -- A first sighting older than two such spans went stale (sweeps between found a message
  -- in its queues: a redelivery, a drain's requeue): this one is the first.
  -- A queued run's sign of life is when it was queued; its first step's begin ends that.
  local seen = redis.call('ZSCORE', state == STATE_QUEUED and queued or running, run_id)
  if redis.call('HLEN', inflight) > 0 or not seen or tonumber(seen) > before then
    return {0, REFUSED_ALIVE}
  end
  local sighting = redis.call('HMGET', run, 'stranded_seen', 'stranded_at')
  local span = now - before
  if sighting[1] ~= seen or tonumber(sighting[2]) < before - 2 * span then
    redis.call('HSET', run, 'stranded_seen', seen, 'stranded_at', ARGV[3])
    return {0, REFUSED_ALIVE}
  end
  if tonumber(sighting[2]) > before then return {0, REFUSED_ALIVE} end
end

-- decoded before any write: a script that fails half-way keeps what it wrote
local err = cjson.decode(give_up)
if type(err.message) ~= 'string' then err.message = 'gave up after ' .. max_restarts .. ' restarts' end

local superseded = {}
local entries = redis.call('HGETALL', inflight)
for i = 1, #entries, 2 do
  local lease = cjson.decode(entries[i + 1])
  table.insert(superseded, {step = entries[i], attempt = lease.attempt, worker = lease.worker})
  redis.call('ZREM', leases, lease_member(run_id, entries[i]))
end
redis.call('DEL', inflight)

-- a restart counts only when the run checkpointed nothing since the last one
local checkpoints = redis.call('HLEN', ckpt)
local stuck = tonumber(redis.call('HGET', run, 'stuck_restarts') or '0')
if checkpoints > tonumber(redis.call('HGET', run, 'checkpoints_at_restart') or '-1') then
  stuck = 0
end
if max_restarts ~= -1 and stuck >= max_restarts then
  local failed_step = superseded[1] and superseded[1].step or ''
  err.step = failed_step
  if failed_step ~= '' then err.message = err.message .. ' during step ' .. failed_step end
  -- cjson writes an empty array as {} (Redis 7.0 has no array metatable): the error's
  -- attempts read as an object, where every other failure gives a list
  local function with_arrays(json) return (string.gsub(json, '"attempts":{}', '"attempts":[]')) end
  end_run(run_id, STATE_FAILED, ARGV[3], retention, call_id,
          {'error', with_arrays(cjson.encode(err)), 'failed_step', failed_step},
          with_arrays(cjson.encode({type = 'run.failed', ts = now, run = run_id,
                                    step = failed_step, error = err})))
  return {0, REFUSED_GAVE_UP}
end

local new_gen = open_generation(run_id, ARGV[3])
count('restarts|' .. cause)
if max_restarts ~= -1 then
  redis.call('HINCRBY', run, 'restarts', 1)
  redis.call('HSET', run, 'stuck_restarts', stuck + 1, 'checkpoints_at_restart', checkpoints)
end
redis.call('HSET', run, 'error', '', 'failed_step', '', 'restarted_by', call_id)
redis.call('HDEL', run, 'finished_at', 'ended_by')
local doc = {type = 'run.restarted', ts = now, run = run_id, reason = reason, gen = new_gen}
if #superseded > 0 then doc.superseded = superseded end
append(cjson.encode(doc))
touch(retention)
return {new_gen}
