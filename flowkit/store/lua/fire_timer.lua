-- fire_timer.lua: a timer of the run is due (beat's sweep): a wait's deadline passed (its
-- answer becomes a timeout marker), a sleep ends, or a scheduled run's start is due. One
-- atomic claim: the timer leaves the index here, so two sweeps never fire it twice.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] key        a wait key, or '$start'
-- ARGV[3] now        ARGV[4] retention
-- Returns {WAIT_RESUMED, gen} (enqueue its frontier; gen 0: a scheduled run's start) |
--         {WAIT_DELIVERED} (answered; the run still runs: it resumes when the last
--         step in flight lets go) | {WAIT_NOT_WAITING}
local run_id, key, now, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if redis.call('ZREM', timers, timer_member(run_id, key)) == 0 then return {WAIT_NOT_WAITING} end
local state = redis.call('HGET', run, 'state')
if key == '$start' then
  if state ~= STATE_SCHEDULED then return {WAIT_NOT_WAITING} end
  redis.call('HSET', run, 'state', STATE_QUEUED, 'updated_at', now)
  redis.call('ZADD', queued, now, run_id)
  append(cjson.encode({type = 'run.queued', ts = tonumber(now), run = run_id,
                       workflow = redis.call('HGET', run, 'workflow'),
                       version = redis.call('HGET', run, 'version')}))
  touch(retention)
  return {WAIT_RESUMED, 0}
end
local spec = redis.call('HGET', waits, key)
if not spec or not is_live(state) then return {WAIT_NOT_WAITING} end
local doc = cjson.decode(spec)
local answer = doc.kind == KIND_SLEEP and '{"slept":true}' or '{"timeout":true}'
redis.call('HSETNX', ckpt, key, answer)
redis.call('HDEL', waits, key)
redis.call('HSET', answered, key, spec)
append(cjson.encode({type = 'run.resumed', ts = tonumber(now), run = run_id, step = doc.step,
                     by = doc.kind == KIND_SLEEP and 'timer' or 'timeout',
                     name = doc.name}))
touch(retention)
if redis.call('HLEN', inflight) > 0 or state == STATE_RUNNING then
  redis.call('HSET', run, 'resume_pending', 1)
  return {WAIT_DELIVERED}
end
return {WAIT_RESUMED, open_generation(run_id, now)}
