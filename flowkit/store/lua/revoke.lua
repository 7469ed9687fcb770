-- revoke.lua: a draining worker hands a step over: its lease lapses now and carries a token
-- no attempt has, so no heartbeat renews it (the caller then restarts the run).
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] step       ARGV[3] token (the holder's)   ARGV[4] now
-- ARGV[5] handed_over   the token a revoked lease carries
-- Returns 1 revoked, 0 when the lease is gone or another attempt's.
local run_id, step, token, now, handed_over = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local held = redis.call('HGET', inflight, step)
if not held then return 0 end
local lease = cjson.decode(held)
if lease.token ~= token then return 0 end
lease.token = handed_over
lease.expires = tonumber(now)
redis.call('HSET', inflight, step, cjson.encode(lease))
redis.call('ZADD', leases, now, lease_member(run_id, step))
return 1
