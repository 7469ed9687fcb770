-- heartbeat.lua: one running step's heartbeat: push its lease's lapse forward.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] step       ARGV[3] token      ARGV[4] now
-- ARGV[5] lapse      ARGV[6] worker
-- Returns 1, or 0 when the lease is no longer this attempt's (restarted, handed over).
local run_id, step, token = ARGV[1], ARGV[2], ARGV[3]
local now, lapse, worker = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

local held = redis.call('HGET', inflight, step)
if not held then return 0 end
local lease = cjson.decode(held)
if lease.token ~= token then return 0 end
lease.expires = now + lapse
redis.call('HSET', inflight, step, cjson.encode(lease))
redis.call('ZADD', leases, 'XX', lease.expires, lease_member(run_id, step))
redis.call('HSET', run, 'heartbeat_at', ARGV[4], 'worker', worker)
redis.call('ZADD', running, 'XX', now, run_id)
return 1
