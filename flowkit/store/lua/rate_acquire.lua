-- rate_acquire.lua: take one request's cost from a shared token bucket (flowkit.llm, and any
-- rate-limited component), or say how long to wait. Refilled from Redis's own clock.
-- A standalone script: no run keys, no lib.lua.
-- KEYS[1] bucket     HASH req, req_at, tok, tok_at, tok_rate, tok_cap
-- ARGV[1] req_rate   requests per second (0: no request budget)
-- ARGV[2] req_cap    the request bucket's size
-- ARGV[3] tok_rate   tokens per second (0: no token budget)
-- ARGV[4] tok_cap    the token bucket's size
-- ARGV[5] cost       tokens this request takes
-- ARGV[6] ttl        seconds an idle bucket is kept at least
-- A bucket is kept until it is full again, however long its period: Redis forgetting it
-- made it full (an hour's or a day's budget came back whole after a fixed TTL).
-- Returns 0 (taken) or the milliseconds to wait before asking again.
local bucket = KEYS[1]
local req_rate, req_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tok_rate, tok_cap, cost, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function level(name, rate, cap)
  local stored = redis.call('HMGET', bucket, name, name .. '_at')
  local lvl = tonumber(stored[1]) or cap
  local at = tonumber(stored[2]) or now
  return math.min(cap, lvl + math.max(0, now - at) * rate)
end
local wait = 0
local req, tok
if req_rate > 0 then
  req = level('req', req_rate, req_cap)
  if req < 1 then wait = math.max(wait, (1 - req) / req_rate) end
end
if tok_rate > 0 then
  tok = level('tok', tok_rate, tok_cap)
  local need = math.min(cost, tok_cap)  -- a request larger than the bucket waits for a full one
  if tok < need then wait = math.max(wait, (need - tok) / tok_rate) end
end
if wait > 0 then return math.ceil(wait * 1000) end
local keep = tonumber(ttl)
if req then
  redis.call('HSET', bucket, 'req', req - 1, 'req_at', now)
  keep = math.max(keep, math.ceil((req_cap - (req - 1)) / req_rate) + 1)
end
if tok then  -- its rate and size kept for rate_settle.lua, which may take more
  redis.call('HSET', bucket, 'tok', tok - cost, 'tok_at', now, 'tok_rate', tok_rate,
             'tok_cap', tok_cap)
  keep = math.max(keep, math.ceil((tok_cap - (tok - cost)) / tok_rate) + 1)
end
redis.call('EXPIRE', bucket, keep)
return 0
