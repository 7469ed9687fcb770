-- compact.lua: store a finished run's events and trace as one compacted archive (built by
-- the caller from what it read), empty the event stream and drop the trace, when nothing
-- changed since the caller read them; the run leaves the `ended` index either way unless it is live again
-- (a retry), which it leaves too: it is indexed again when it ends.
-- KEYS: the run's keys (lib.lua)
-- ARGV[1] run_id
-- ARGV[2] blob         the new archive (every event and span, the old archive's first)
-- ARGV[3] last_event   the id of the newest event the caller read ('' for none)
-- ARGV[4] spans        how many trace records the caller read
-- ARGV[5] archived     the byte length of the archive the caller read (0 for none)
-- Returns 1 (compacted), 0 (the run is live, or unknown: nothing to do) or -1 (it
-- changed since the caller read it: read it again).
local run_id, blob, last_event = ARGV[1], ARGV[2], ARGV[3]
local spans, archived = tonumber(ARGV[4]), tonumber(ARGV[5])

local state = redis.call('HGET', run, 'state')
if not state or is_live(state) then
  redis.call('ZREM', ended, run_id)
  return 0
end
local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
if (newest[1] and newest[1][1] or '') ~= last_event
    or redis.call('XLEN', trace) ~= spans
    or redis.call('STRLEN', archive) ~= archived then
  return -1
end
local ttl = redis.call('PTTL', run)
redis.call('SET', archive, blob)
if ttl > 0 then redis.call('PEXPIRE', archive, ttl) end
-- The event stream is emptied, not deleted: it keeps its last id, so an event a retry adds
-- gets a later id than every archived one (a new stream would start from the clock, and
-- an event id is a client's resume cursor).
redis.call('XTRIM', events, 'MAXLEN', 0)
redis.call('DEL', trace)
redis.call('ZREM', ended, run_id)
return 1
