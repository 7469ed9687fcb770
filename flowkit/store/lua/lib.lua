-- lib.lua: what every run script shares. The loader (flowkit/store/scripts.py) runs a
-- script as: the vocabularies of flowkit.states as constants (STATE_QUEUED = 'queued',
-- START_RUN = 'run', CAUSE_ORPHANED = 'orphaned', WAIT_PAUSED = 'paused', ...), then this
-- file, then the script itself.
--
-- KEYS, the same for every run script (flowkit.store.keys.Keys.script_keys):
--   KEYS[1]  run       HASH   the run record
--   KEYS[2]  events    STREAM the run's events; each is a JSON document in field "e"
--   KEYS[3]  ckpt      HASH   step key (or wait key) -> output JSON
--   KEYS[4]  attempts  HASH   step key -> attempts started
--   KEYS[5]  inflight  HASH   step key -> lease JSON {token, worker, attempt, expires}
--   KEYS[6]  emits     HASH   step key -> "<emit id> <stream id>" of the step's last emit
--   KEYS[7]  waits     HASH   wait key -> spec JSON of an open wait {kind, name, step, ...}
--   KEYS[8]  answered  HASH   wait key -> spec JSON of a wait that was answered
--   KEYS[9]  running   ZSET   (the run's shard) run id -> last sign of life
--   KEYS[10] queued    ZSET   (the run's shard) run id -> when it was (re)queued
--   KEYS[11] leases    ZSET   (the run's shard) "<run id> <step>" -> when the lease lapses
--   KEYS[12] timers    ZSET   (the run's shard) "<run id> <wait key>" -> when it fires
--                             ("<run id> $start": a delayed start)
--   KEYS[13] archive   STRING a finished run's events and trace, compacted (compact.lua)
--   KEYS[14] trace     STREAM the run's trace span records (written outside the scripts)
--   KEYS[15] ended     ZSET   (the run's shard) run id -> when it ended, until compacted
--   KEYS[16] waiting   ZSET   (the run's shard) run id -> since when it waits
--   KEYS[17] stats     HASH   (the run's shard) counters for flowkit.metrics: field -> count
local run, events, ckpt, attempts, inflight, emits, waits, answered =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local running, queued, leases, timers = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local archive, trace, ended = KEYS[13], KEYS[14], KEYS[15]
local waiting, stats = KEYS[16], KEYS[17]

local function is_live(state)
  return state == STATE_QUEUED or state == STATE_RUNNING or state == STATE_WAITING
    or state == STATE_SCHEDULED
end

-- Count one more `field` (``started|<workflow>``, ``ended|<state>|<workflow>``,
-- ``restarts|<cause>``): flowkit.metrics serves the sums of every shard as counters.
local function count(field) redis.call('HINCRBY', stats, field, 1) end

local function lease_member(run_id, step) return run_id .. ' ' .. step end
local function timer_member(run_id, key) return run_id .. ' ' .. key end

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

-- After a write: a live run's keys do not expire (it may wait weeks for a person, or be
-- scheduled months ahead); an ended run's keys expire `retention` seconds after this write
-- (a no-op on a missing key). Its trace stream, written outside the scripts, goes alike.
-- Only this function gives the keys an expiry, all at once, so the record's tells: a live
-- run whose record has one (retried after it ended) has every expiry taken off once.
local function touch(retention)
  if is_live(redis.call('HGET', run, 'state')) then
    if redis.call('TTL', run) ~= -1 then
      for i = 1, 8 do redis.call('PERSIST', KEYS[i]) end
      redis.call('PERSIST', archive)
      redis.call('PERSIST', trace)
    end
    return
  end
  for i = 1, 8 do redis.call('EXPIRE', KEYS[i], retention) end
  redis.call('EXPIRE', archive, retention)
  redis.call('EXPIRE', trace, retention)
end

-- Whether call `call_id` ended the run: this call again, resent after its reply was lost.
local function ended_by(call_id)
  return call_id ~= '' and redis.call('HGET', run, 'ended_by') == call_id
end

-- Forget the run's open waits and timers (it ended).
local function drop_waits(run_id)
  for _, key in ipairs(redis.call('HKEYS', waits)) do
    redis.call('ZREM', timers, timer_member(run_id, key))
  end
  redis.call('ZREM', timers, timer_member(run_id, '$start'))
  redis.call('DEL', waits)
end

-- End a live run as `state` (a terminal state): record the call that ended it, leave the
-- indexes, drop its waits, append the terminal event and tell flowkit.wait() callers
-- (channel Keys.done) with the ended run itself, {record = HGETALL, attempts = HGETALL},
-- which spares each of them a read. `fields` are more field/value pairs of the run record.
local function end_run(run_id, state, now, retention, call_id, fields, event_json)
  redis.call('HSET', run, 'state', state, 'finished_at', now, 'updated_at', now,
             'ended_by', call_id, unpack(fields))
  redis.call('HDEL', run, 'held_for')  -- an ended run waits for no slot (one cancelled in line)
  redis.call('ZREM', running, run_id)
  redis.call('ZREM', queued, run_id)
  redis.call('ZREM', waiting, run_id)
  redis.call('ZADD', ended, now, run_id)
  count('ended|' .. state .. '|' .. (redis.call('HGET', run, 'workflow') or ''))
  drop_waits(run_id)
  append(event_json)
  touch(retention)
  redis.call('PUBLISH', run .. ':done', cjson.encode({
    record = redis.call('HGETALL', run), attempts = redis.call('HGETALL', attempts)}))
end

-- Open the next generation of the run: it is queued again, its frontier to be enqueued by
-- the caller (every message of older generations is stale from now on). Returns the gen.
local function open_generation(run_id, now)
  local gen = redis.call('HINCRBY', run, 'gen', 1)
  redis.call('HSET', run, 'state', STATE_QUEUED, 'updated_at', now)
  redis.call('HDEL', run, 'resume_pending')
  redis.call('ZREM', running, run_id)
  redis.call('ZREM', waiting, run_id)
  redis.call('ZADD', queued, now, run_id)
  return gen
end

-- After a step let go of its lease: with nothing in flight, a run with a wait answered
-- meanwhile resumes (its new gen is returned, for the caller to enqueue its frontier: the
-- branches still waiting run again and pause again at once), and one with only open waits
-- is waiting now. Else 0.
local function settle(run_id, now)
  if redis.call('HLEN', inflight) > 0 then return 0 end
  local state = redis.call('HGET', run, 'state')
  if state ~= STATE_RUNNING and state ~= STATE_WAITING then return 0 end
  if redis.call('HGET', run, 'resume_pending') then return open_generation(run_id, now) end
  if redis.call('HLEN', waits) > 0 and state == STATE_RUNNING then
    redis.call('HSET', run, 'state', STATE_WAITING, 'updated_at', now)
    redis.call('ZREM', running, run_id)
    redis.call('ZADD', waiting, now, run_id)
  end
  return 0
end
