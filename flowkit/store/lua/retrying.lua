-- retrying.lua: a failed attempt of a step will be retried: count the next attempt and
-- the failure (the run record's "failures|<step>": the step's retry budget, whichever
-- execution of it runs next: Store.step_failures), renew the lease for it and append
-- step.retrying.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] step       ARGV[3] gen        ARGV[4] token
-- ARGV[5] event (step.retrying, JSON)   ARGV[6] now        ARGV[7] lapse
-- ARGV[8] failed     the attempt that failed
-- Returns the next attempt's number, or false when the run is no longer live in gen.
local run_id, step, gen, token, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, lapse, failed = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

local state = redis.call('HGET', run, 'state')
if not is_live(state) or redis.call('HGET', run, 'gen') ~= gen then return false end
local recorded = tonumber(redis.call('HGET', attempts, step) or '0')
-- already past the failed attempt: this call again, resent after its reply was lost
if recorded > failed then return recorded end
local attempt = redis.call('HINCRBY', attempts, step, 1)
redis.call('HINCRBY', run, 'failures|' .. step, 1)
redis.call('HSET', inflight, step, cjson.encode({
  token = token, worker = redis.call('HGET', run, 'worker'), attempt = attempt,
  expires = now + lapse}))
redis.call('ZADD', leases, now + lapse, lease_member(run_id, step))
append(event)
return attempt
