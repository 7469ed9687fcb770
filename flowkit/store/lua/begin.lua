-- begin.lua: one delivery of a step's message asks to run it. Decides (flowkit.states.StepStart):
-- its checkpoint exists, it is stale or a duplicate, the run ended, or it takes the lease.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] step       ARGV[3] gen        ARGV[4] token (this attempt's)
-- ARGV[5] worker     ARGV[6] now        ARGV[7] lapse      ARGV[8] retention
-- ARGV[9] component
-- Returns {START_RUN, attempt} | {START_CHECKPOINT, output} | {START_STALE} | {START_LEASED}
--         | {START_TERMINAL, state} | {START_GONE}
local run_id, step, gen, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local worker, now, lapse, retention = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local component = ARGV[9]

local state = redis.call('HGET', run, 'state')
if not state then return {START_GONE} end
if not is_live(state) then return {START_TERMINAL, state} end
if redis.call('HGET', run, 'gen') ~= gen then return {START_STALE} end
local done = redis.call('HGET', ckpt, step)
if done then return {START_CHECKPOINT, done} end
if state == STATE_SCHEDULED then return {START_STALE} end  -- not due: nothing of it runs
local held = redis.call('HGET', inflight, step)
if held then
  local lease = cjson.decode(held)
  -- the same token: this call again, resent after its reply was lost; it already began
  if lease.token == token then return {START_RUN, tostring(lease.attempt)} end
  if lease.expires > now then return {START_LEASED} end
end
local attempt = redis.call('HINCRBY', attempts, step, 1)
redis.call('HSET', inflight, step, cjson.encode({
  token = token, worker = worker, attempt = attempt, expires = now + lapse}))
redis.call('ZADD', leases, now + lapse, lease_member(run_id, step))
if state == STATE_QUEUED then
  redis.call('HSET', run, 'state', STATE_RUNNING)
  redis.call('HSETNX', run, 'started_at', ARGV[6])
  redis.call('ZREM', queued, run_id)
  append(cjson.encode({type = 'run.started', ts = now, run = run_id}))
elseif state == STATE_WAITING then  -- a branch's message came after another branch paused
  redis.call('HSET', run, 'state', STATE_RUNNING)
  redis.call('ZREM', waiting, run_id)
end
redis.call('HSET', run, 'heartbeat_at', ARGV[6], 'worker', worker, 'updated_at', ARGV[6])
redis.call('ZADD', running, now, run_id)
append(cjson.encode({type = 'step.started', ts = now, run = run_id, step = step,
                     attempt = attempt, component = component, worker = worker}))
touch(retention)
return {START_RUN, tostring(attempt)}
