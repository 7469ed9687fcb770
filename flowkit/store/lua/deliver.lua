-- deliver.lua: answer a wait: input sent to the run, an event it waits for, a timer that
-- fired. The answer is checkpointed under the wait key (the first one wins), run.resumed
-- appended, and with nothing in flight the run resumes: a new generation, queued, its
-- frontier to be enqueued by the caller (branches whose waits are still open run again and
-- pause again at once, saying nothing new). With steps still in flight (other branches) it
-- resumes when the last of them lets go (lib.lua's settle).
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id
-- ARGV[2] by         'key' (ARGV[3] is the wait key) or a WaitKind (ARGV[3] is its name)
-- ARGV[3] match      the wait key, or the input's name
-- ARGV[4] answer     JSON checkpointed for the step to find
-- ARGV[5] now        ARGV[6] retention
-- ARGV[7] event      run.resumed (JSON)
-- ARGV[8] step       by kind and name: only that step's wait ('' for any); several steps
--                    waiting under one name at once (fan-out items, parallel branches)
--                    are told apart by it
-- Returns {WAIT_RESUMED, gen} | {WAIT_DELIVERED} | {WAIT_SAME} | {WAIT_ANSWERED}
--       | {WAIT_TIMED_OUT} | {WAIT_NOT_WAITING}
local run_id, by, match, answer = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, retention, event = ARGV[5], ARGV[6], ARGV[7]
local step = ARGV[8] or ''

-- whether the wait ``doc`` (its spec) is the one asked for by kind and name
local function named(doc)
  return doc.kind == by and doc.name == match and (step == '' or doc.step == step)
end

-- answered already: with this same answer (a resend, a double click: SAME, also once the
-- run ended, as the resumed run may have by the time a lost response is resent), or with
-- another one (ANSWERED: the first answer stands), or by its timeout (TIMED_OUT); nil when
-- this wait was never answered
local function answered_before()
  local found = nil
  local done = redis.call('HGETALL', answered)
  for i = 1, #done, 2 do
    local doc = cjson.decode(done[i + 1])
    local same_wait = (by == 'key' and done[i] == match) or named(doc)
    if same_wait then
      local given = redis.call('HGET', ckpt, done[i])
      if given == answer then return WAIT_SAME end
      -- answered by its timeout (store.TIMED_OUT): nobody answered it first
      found = given == '{"timeout":true}' and WAIT_TIMED_OUT or WAIT_ANSWERED
    end
  end
  return found
end

local state = redis.call('HGET', run, 'state')
if not state then return {WAIT_NOT_WAITING} end
if not is_live(state) then return {answered_before() or WAIT_NOT_WAITING} end

-- the wait to answer: by its key, or the open wait of that kind and name
local wait_key, spec = nil, nil
if by == 'key' then
  wait_key, spec = match, redis.call('HGET', waits, match)
else
  local open = redis.call('HGETALL', waits)
  for i = 1, #open, 2 do
    local doc = cjson.decode(open[i + 1])
    if named(doc) then wait_key, spec = open[i], open[i + 1] break end
  end
end
if not spec then
  local before = answered_before()
  if before then return {before} end
  -- an event for a wait indexed but not yet begun (the step is between add_waker and
  -- begin_wait): answered early, begin_wait will find it (READY) instead of pausing
  if by == 'key' and redis.call('HSETNX', ckpt, match, answer) == 1 then
    touch(retention)
    return {WAIT_DELIVERED}
  end
  return {WAIT_NOT_WAITING}
end

-- past its timeout the answer is the timeout's, whenever beat's sweep fires it: an event
-- (an input is refused before it gets here) answered it up to a sweep late
local deadline = cjson.decode(spec).expires_at
if type(deadline) == 'number' and tonumber(now) > deadline then return {WAIT_TIMED_OUT} end

redis.call('HSETNX', ckpt, wait_key, answer)
redis.call('HDEL', waits, wait_key)
redis.call('HSET', answered, wait_key, spec)
redis.call('ZREM', timers, timer_member(run_id, wait_key))
append(event)
touch(retention)
if redis.call('HLEN', inflight) > 0 or state == STATE_RUNNING then
  redis.call('HSET', run, 'resume_pending', 1)  -- the last step in flight resumes it
  return {WAIT_DELIVERED}
end
return {WAIT_RESUMED, open_generation(run_id, now)}
