-- slots.lua: the slots of one group: a run's concurrency key (engine.admission) or a
-- component's (engine.limits). A member asks for a slot, a member done gives its slot back,
-- slots whose holder's lease lapsed are taken back, and free slots go to the members in
-- line, in order (lowest score first). A standalone script: no run keys.
-- KEYS[1] active     ZSET member -> its holder score (admitted at, or its lease's expiry)
-- KEYS[2] pending    ZSET member -> its place in line
-- ARGV[1] add        the member asking for a slot ('' for none)
-- ARGV[2] order      its place in line (kept if it is in line already)
-- ARGV[3] release    the member giving its slot back ('' for none)
-- ARGV[4] limit      slots of the group
-- ARGV[5] score      the holder score of members given a slot by this call (and of `add`)
-- ARGV[6] lapsed     holders scored below this have lost their slot ('' for none)
-- Returns {holds, active, admitted...}: holds = 1 when `add` holds a slot after this call,
-- active = slots taken, admitted = the members given a slot by this call (in order).
local active, pending = KEYS[1], KEYS[2]
local add, order, release, limit, score = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local lapsed = ARGV[6]

if lapsed ~= '' then redis.call('ZREMRANGEBYSCORE', active, '-inf', '(' .. lapsed) end
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
  redis.call('ZADD', active, score, head[1])
  if head[1] ~= add then table.insert(result, head[1]) end
end
if add ~= '' and redis.call('ZSCORE', active, add) then
  result[1] = 1
  redis.call('ZADD', active, 'XX', score, add)
end
result[2] = redis.call('ZCARD', active)
return result
