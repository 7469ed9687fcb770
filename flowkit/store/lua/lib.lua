-- lib.lua: what every run script shares. The loader (flowkit/store/scripts.py) runs a
-- script as: the state constants (STATE_QUEUED = 'queued', ... from flowkit.states),
-- then this file, then the script itself.
--
-- KEYS, the same for every run script (flowkit.store.keys.Keys.script_keys):
--   KEYS[1] run        HASH   the run record
--   KEYS[2] events     STREAM the run's events; each is a JSON document in field "e"
--   KEYS[3] ckpt       HASH   step key -> output JSON
--   KEYS[4] attempts   HASH   step key -> attempts started
--   KEYS[5] inflight   HASH   step key -> lease JSON {token, worker, attempt, expires}
--   KEYS[6] emits      HASH   step key -> "<emit id> <stream id>" of the step's last emit
--   KEYS[7] running    ZSET   (the run's shard) run id -> last sign of life
--   KEYS[8] queued     ZSET   (the run's shard) run id -> when it was (re)queued
--   KEYS[9] leases     ZSET   (the run's shard) "<run id> <step>" -> when the lease lapses
local run, events, ckpt, attempts, inflight, emits, running, queued, leases =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]

local function is_live(state)
  return state == STATE_QUEUED or state == STATE_RUNNING
end

local function lease_member(run_id, step) return run_id .. ' ' .. step end

-- Drop the lease of `step` when `token` holds it (any token when token is nil).
local function release(run_id, step, token)
  local held = redis.call('HGET', inflight, step)
  if held and (token == nil or cjson.decode(held).token == token) then
    redis.call('HDEL', inflight, step)
    redis.call('ZREM', leases, lease_member(run_id, step))
  end
end

-- Append an event (a JSON string) to the run's stream; returns its id.
local function append(event_json)
  return redis.call('XADD', events, '*', 'e', event_json)
end

-- Keep the run's keys for `retention` seconds after this write (a no-op on a missing key).
local function touch(retention)
  for i = 1, 6 do redis.call('EXPIRE', KEYS[i], retention) end
end

-- Whether call `call_id` ended the run: this call again, resent after its reply was lost.
local function ended_by(call_id)
  return call_id ~= '' and redis.call('HGET', run, 'ended_by') == call_id
end

-- End a live run as `state` (a terminal state): record the call that ended it, leave the
-- indexes, append the terminal event and tell flowkit.wait() callers (channel Keys.done).
-- `fields` are more field/value pairs of the run record (the error, the output).
local function end_run(run_id, state, now, retention, call_id, fields, event_json)
  redis.call('HSET', run, 'state', state, 'finished_at', now, 'updated_at', now,
             'ended_by', call_id, unpack(fields))
  redis.call('ZREM', running, run_id)
  redis.call('ZREM', queued, run_id)
  append(event_json)
  touch(retention)
  redis.call('PUBLISH', run .. ':done', state)
end
