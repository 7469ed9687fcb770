-- admission.lua: the slots of one concurrency group (a workflow and a key): a run asks for
-- a slot, a run that ended gives its slot back, and free slots go to the runs waiting, in
-- order (lowest score first: higher priority, then older). A standalone script: no run keys.
-- KEYS[1] active     ZSET run id -> when it was admitted (holds a slot)
-- KEYS[2] pending    ZSET run id -> its place in line
-- ARGV[1] add        the run asking for a slot ('' for none)
-- ARGV[2] order      its place in line
-- ARGV[3] release    the run giving its slot back ('' for none)
-- ARGV[4] limit      slots of the group
-- ARGV[5] now
-- Returns {holds, active, admitted...}: holds = 1 when `add` holds a slot after this call,
-- active = slots taken, admitted = the runs that got a slot by this call (in order).
local active, pending = KEYS[1], KEYS[2]
local add, order, release, limit, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]

if release ~= '' then
  redis.call('ZREM', active, release)
  redis.call('ZREM', pending, release)
end
if add ~= '' and not redis.call('ZSCORE', active, add) then
  redis.call('ZADD', pending, 'NX', order, add)
end
local result = {0, 0}
while redis.call('ZCARD', active) < limit do
  local head = redis.call('ZPOPMIN', pending)
  if #head == 0 then break end
  redis.call('ZADD', active, now, head[1])
  table.insert(result, head[1])
end
if add ~= '' and redis.call('ZSCORE', active, add) then result[1] = 1 end
result[2] = redis.call('ZCARD', active)
return result
