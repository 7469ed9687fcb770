-- begin_wait.lua: a step pauses to wait for input, an event or a timer. Its lease is let
-- go (the worker slot frees); the wait is recorded (and its deadline, if any, in the
-- timers index); with nothing else in flight the run is now waiting. The step runs again
-- from its start once the wait is answered, and finds the answer checkpointed.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] gen        ARGV[3] step       ARGV[4] token (the attempt's)
-- ARGV[5] wait_key   where the answer is checkpointed (step key, call index, name)
-- ARGV[6] spec       the wait (JSON object: kind, name, step, attempt, prompt, schema, key,
--                    expires_at)
-- ARGV[7] due        when a timer fires it (timeout or wake-up), '' for never
-- ARGV[8] now        ARGV[9] retention
-- ARGV[10] event     run.waiting (JSON)
-- Returns {WAIT_READY, answer} (answered already: go on), {WAIT_PAUSED, '', gen} (stop the
-- attempt, the worker is free; gen > 0: this was the last step in flight of a run whose
-- other waits were answered meanwhile, so a new generation is open and the caller enqueues
-- its frontier) or {WAIT_STOPPED} (the run moved on: stop the attempt).
local run_id, gen, step, token, wait_key = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local spec, due, now, retention, event = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]

local state = redis.call('HGET', run, 'state')
if not is_live(state) or redis.call('HGET', run, 'gen') ~= gen then return {WAIT_STOPPED} end
local answer = redis.call('HGET', ckpt, wait_key)
if answer then
  -- an event delivered early (between the waker and this call): its wait, never opened,
  -- is recorded as answered all the same, with what it knew (its floor: step.py), and as
  -- one that did not pause (no replay runs up to it: Store.pause_point)
  if cjson.decode(spec).kind == KIND_EVENT then
    redis.call('HSETNX', answered, wait_key, '{"paused":false,' .. string.sub(spec, 2))
  end
  return {WAIT_READY, answer}
end
if redis.call('HEXISTS', waits, wait_key) == 0 then
  -- a new wait; one met again after a restart keeps its deadline and says nothing new
  redis.call('HSET', waits, wait_key, spec)
  if due ~= '' then redis.call('ZADD', timers, due, timer_member(run_id, wait_key)) end
  append(event)
end
release(run_id, step, token)
local resumed = settle(run_id, now)
touch(retention)
return {WAIT_PAUSED, '', resumed}
