-- release.lua: an attempt that stopped because its run ended (another branch failed it, a
-- user cancelled it) lets go of its lease at once: held until it lapsed, a retry of the
-- failed run said the step "still runs" for up to the lapse. A live run's lease stays: an
-- attempt that ends there without its checkpoint is recovered by the lapse (the reaper).
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id     ARGV[2] step       ARGV[3] token (the holder's)   ARGV[4] retention
-- Returns 1 released, 0 when the run is live, or the lease is gone or another attempt's.
local run_id, step, token, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if is_live(redis.call('HGET', run, 'state')) then return 0 end
local held = redis.call('HGET', inflight, step)
if not held or cjson.decode(held).token ~= token then return 0 end
release(run_id, step, token)
touch(retention)  -- a sub-step's checkpoint written since the end expires with the rest
return 1
