-- trace.lua: append span records to a run's trace, which expires with the run's record.
-- A standalone script: the record and the trace share the run's hash tag (one slot).
-- KEYS[1] run        HASH   the run's record (only its expiry is read)
-- KEYS[2] trace      STREAM the run's trace span records
-- ARGV    the span records (JSON), oldest first
-- Returns how many were appended: 0 when the record is gone (the run expired).
--
-- A plain XADD keeps the stream's expiry, but creates the stream without one when it is
-- gone: a span written after compaction dropped the trace (compact.lua), say by a step of
-- a cancelled run that went on for minutes, would leave a key that never expires.
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
for i = 1, #ARGV do
  redis.call('XADD', KEYS[2], '*', 's', ARGV[i])
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end  -- live (-1): none, as lib.lua's touch
return #ARGV
