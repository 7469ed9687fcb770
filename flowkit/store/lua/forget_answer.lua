-- forget_answer.lua: drop a wait's answer that its step refused (its schema changed, or
-- its validators refuse it), only if it is still that answer: an attempt that a restart
-- has made stale must not drop the corrected answer given to the wait opened again.
-- A standalone script: one key.
-- KEYS[1] ckpt      HASH the run's checkpoints (a wait's answer under its wait key)
-- ARGV[1] wait_key  where the answer is checkpointed
-- ARGV[2] answer    the answer (JSON) the step refused
-- Returns 1 when it dropped the answer, 0 when another one stands there (or none).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
