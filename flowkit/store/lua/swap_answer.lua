-- swap_answer.lua: put the older event a wait's look-back found in place of a newer one that
-- answered the wait early (deliver.lua, while the step was between indexing its waker and
-- looking back), only if that newer one is still the answer: the wait has not begun, so no
-- one has read it, and the newer event stays unseen for the run's next wait.
-- A standalone script: one key.
-- KEYS[1] ckpt      HASH the run's checkpoints (a wait's answer under its wait key)
-- ARGV[1] wait_key  where the answer is checkpointed
-- ARGV[2] early     the answer (JSON) delivered early
-- ARGV[3] older     the answer (JSON) to put in its place
-- Returns 1 when it swapped them, 0 when another answer stands there (or none).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
