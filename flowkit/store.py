"""The Redis store: key layout and every state transition of a run.

Each transition that reads-then-writes is one Lua script, so it is atomic (two
reapers, a redelivered message and a live worker can race without corrupting a
run) and costs one round trip on the hot path of a step.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .config import Settings, get_settings
from .serialization import dumps

# -- key layout ---------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Names of flowkit's Redis keys. Per-run keys share a hash tag ``{id}``."""

    prefix: str

    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}"

    def events(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:events"

    def checkpoints(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:ckpt"

    def attempts(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:attempts"

    def inflight(self, run_id: str) -> str:
        return f"{self.prefix}:run:{{{run_id}}}:inflight"

    def emits(self, run_id: str) -> str:
        """HASH step -> "<emit id> <stream id>" of the last event sent from inside the step."""
        return f"{self.prefix}:run:{{{run_id}}}:emits"

    def done(self, run_id: str) -> str:
        """Pub/sub channel told the run's terminal state when it ends (``flowkit.wait``)."""
        return f"{self.run(run_id)}:done"

    def trace(self, run_id: str) -> str:
        """Stream of the run's trace spans (append-only; see flowkit.trace)."""
        return f"{self.prefix}:run:{{{run_id}}}:trace"

    def per_run(self, run_id: str) -> list[str]:
        return [
            self.run(run_id),
            self.events(run_id),
            self.checkpoints(run_id),
            self.attempts(run_id),
            self.inflight(run_id),
        ]

    @property
    def runs(self) -> str:
        return f"{self.prefix}:runs"

    def runs_of(self, workflow: str) -> str:
        return f"{self.prefix}:runs:wf:{workflow}"

    def idempotency(self, workflow: str, key: str) -> str:
        return f"{self.prefix}:idem:{workflow}:{key}"

    @property
    def running(self) -> str:
        """ZSET run id -> last sign of life (heartbeat or step boundary), seconds."""
        return f"{self.prefix}:running"

    @property
    def queued(self) -> str:
        """ZSET run id -> time it was (re)enqueued, seconds."""
        return f"{self.prefix}:queued"

    @property
    def leases(self) -> str:
        """ZSET "<run id> <step>" -> time its lease lapses, seconds (what the reaper scans)."""
        return f"{self.prefix}:leases"

    @property
    def workers(self) -> str:
        """ZSET worker id -> last heartbeat of the worker process."""
        return f"{self.prefix}:workers"

    def cache(self, component: str, version: str, digest: str) -> str:
        return f"{self.prefix}:cache:{component}:{version}:{digest}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    def llm_rate(self, provider: str, model: str) -> str:
        """Hash of the shared rate-limit buckets of one provider and model (flowkit.llm)."""
        return f"{self.prefix}:llm:rate:{provider}:{model}"


# -- Lua ----------------------------------------------------------------------
# Per-run KEYS are always, in order: run, events, ckpt, attempts, inflight, then
# the global running, queued, leases and workers sets. Events are JSON documents in field "e".

_LUA_HELPERS = """
local run, events, ckpt, attempts, inflight, running, queued, leases, workers =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local function member(step) return ARGV[1] .. ' ' .. step end
local function release(step, token)
  local held = redis.call('HGET', inflight, step)
  if held and (token == nil or cjson.decode(held).token == token) then
    redis.call('HDEL', inflight, step)
    redis.call('ZREM', leases, member(step))
  end
end
local function emit(doc)
  return redis.call('XADD', events, '*', 'e', cjson.encode(doc))
end
local function touch(retention)
  for i = 1, 5 do redis.call('EXPIRE', KEYS[i], retention) end  -- a no-op on a missing key
end
local function live(state)
  return state == 'queued' or state == 'running'
end
-- tell flowkit.wait() callers that the run ended (channel: Keys.done)
local function ended(state) redis.call('PUBLISH', run .. ':done', state) end
-- whether the run was ended by call <id>: this call again, resent after its reply was lost
local function ended_by(id)
  return id ~= '' and redis.call('HGET', run, 'ended_by') == id
end
"""

# ARGV: run_id, idem_key ('' = none), now, retention, event_json, then field/value pairs
_CREATE = """
if ARGV[2] ~= '' then
  local existing = redis.call('GET', ARGV[2])
  if existing then return existing end
  redis.call('SET', ARGV[2], ARGV[1], 'EX', ARGV[4])
end
redis.call('HSET', run, unpack(ARGV, 6))
redis.call('XADD', events, '*', 'e', ARGV[5])
redis.call('ZADD', queued, ARGV[3], ARGV[1])
touch(ARGV[4])
return ARGV[1]
"""

# ARGV: run_id, step, gen, token, worker, now, lapse, retention, component
_BEGIN = """
local state = redis.call('HGET', run, 'state')
if not state then return {'gone'} end
if not live(state) then return {'terminal', state} end
if redis.call('HGET', run, 'gen') ~= ARGV[3] then return {'stale'} end
local done = redis.call('HGET', ckpt, ARGV[2])
if done then return {'checkpoint', done} end
local now = tonumber(ARGV[6])
local held = redis.call('HGET', inflight, ARGV[2])
if held then
  local lease = cjson.decode(held)
  -- the same token: this call again, resent after its reply was lost; it already began
  if lease.token == ARGV[4] then return {'run', tostring(lease.attempt)} end
  if lease.expires > now then return {'leased'} end
end
local attempt = redis.call('HINCRBY', attempts, ARGV[2], 1)
redis.call('HSET', inflight, ARGV[2], cjson.encode({
  token = ARGV[4], worker = ARGV[5], attempt = attempt, expires = now + tonumber(ARGV[7])}))
redis.call('ZADD', leases, now + tonumber(ARGV[7]), member(ARGV[2]))
if state == 'queued' then
  redis.call('HSET', run, 'state', 'running')
  redis.call('HSETNX', run, 'started_at', ARGV[6])
  redis.call('ZREM', queued, ARGV[1])
  emit({type = 'run.started', ts = now, run = ARGV[1]})
end
redis.call('HSET', run, 'heartbeat_at', ARGV[6], 'worker', ARGV[5], 'updated_at', ARGV[6])
redis.call('ZADD', running, now, ARGV[1])
emit({type = 'step.started', ts = now, run = ARGV[1], step = ARGV[2], attempt = attempt,
      component = ARGV[9], worker = ARGV[5]})
touch(ARGV[8])
return {'run', tostring(attempt)}
"""

# ARGV: run_id, step, token, output_json, now, retention, event_json, worker
# The worker is recorded: until the next step begins, the run's progress depends on
# that worker publishing the next message (the reaper checks it is still alive).
_COMPLETE = """
local added = redis.call('HSETNX', ckpt, ARGV[2], ARGV[4])
release(ARGV[2], ARGV[3])
if added == 1 and redis.call('HGET', run, 'state') == 'running' then
  redis.call('XADD', events, '*', 'e', ARGV[7])
  redis.call('HSET', run, 'updated_at', ARGV[5], 'worker', ARGV[8])
  redis.call('ZADD', running, 'XX', ARGV[5], ARGV[1])
end
touch(ARGV[6])
return redis.call('HGET', ckpt, ARGV[2])
"""

# An event from inside a step. KEYS[10]: the run's emits hash.
# ARGV: gen, event_json, retention, step, emit_id.
# Returns the stream id, or false when the run is no longer live in this generation.
_EMIT = """
local state = redis.call('HGET', run, 'state')
if not live(state) or redis.call('HGET', run, 'gen') ~= ARGV[1] then return false end
local last = redis.call('HGET', KEYS[10], ARGV[4])
if last then  -- this emit again, resent after its reply was lost: it is in the stream
  local sep = string.find(last, ' ', 1, true)
  if string.sub(last, 1, sep - 1) == ARGV[5] then return string.sub(last, sep + 1) end
end
local id = redis.call('XADD', events, '*', 'e', ARGV[2])
redis.call('HSET', KEYS[10], ARGV[4], ARGV[5] .. ' ' .. id)
redis.call('EXPIRE', events, ARGV[3])
redis.call('EXPIRE', KEYS[10], ARGV[3])
return id
"""

# A failed attempt that will be retried. ARGV: run_id, step, gen, token, event_json, now, lapse,
# failed attempt. Returns the next attempt number, or false when the run is no longer live.
_RETRYING = """
local state = redis.call('HGET', run, 'state')
if not live(state) or redis.call('HGET', run, 'gen') ~= ARGV[3] then return false end
local recorded = tonumber(redis.call('HGET', attempts, ARGV[2]) or '0')
-- already past the failed attempt: this call again, resent after its reply was lost
if recorded > tonumber(ARGV[8]) then return recorded end
local attempt = redis.call('HINCRBY', attempts, ARGV[2], 1)
redis.call('HSET', inflight, ARGV[2], cjson.encode({
  token = ARGV[4], worker = redis.call('HGET', run, 'worker'), attempt = attempt,
  expires = tonumber(ARGV[6]) + tonumber(ARGV[7])}))
redis.call('ZADD', leases, tonumber(ARGV[6]) + tonumber(ARGV[7]), member(ARGV[2]))
redis.call('XADD', events, '*', 'e', ARGV[5])
return attempt
"""

# ARGV: run_id, gen, step ('' for none), token, now, error_json, retention, step_event ('' = none),
# run_event, call_id
_FAIL = """
if ARGV[3] ~= '' then release(ARGV[3], ARGV[4]) end
local state = redis.call('HGET', run, 'state')
if ended_by(ARGV[10]) then return 1 end
if not live(state) or redis.call('HGET', run, 'gen') ~= ARGV[2] then return 0 end
redis.call('HSET', run, 'state', 'failed', 'error', ARGV[6], 'failed_step', ARGV[3],
           'finished_at', ARGV[5], 'updated_at', ARGV[5], 'ended_by', ARGV[10])
redis.call('ZREM', running, ARGV[1])
redis.call('ZREM', queued, ARGV[1])
if ARGV[8] ~= '' then redis.call('XADD', events, '*', 'e', ARGV[8]) end
redis.call('XADD', events, '*', 'e', ARGV[9])
touch(ARGV[7])
ended('failed')
return 1
"""

# ARGV: run_id, gen, now, output_json, retention, event_json, call_id
_FINISH = """
local state = redis.call('HGET', run, 'state')
if ended_by(ARGV[7]) then return 1 end
if not live(state) or redis.call('HGET', run, 'gen') ~= ARGV[2] then return 0 end
redis.call('HSET', run, 'state', 'succeeded', 'output', ARGV[4], 'finished_at', ARGV[3],
           'updated_at', ARGV[3], 'ended_by', ARGV[7])
redis.call('HSETNX', run, 'started_at', ARGV[3])
redis.call('ZREM', running, ARGV[1])
redis.call('ZREM', queued, ARGV[1])
redis.call('XADD', events, '*', 'e', ARGV[6])
touch(ARGV[5])
ended('succeeded')
return 1
"""

# ARGV: run_id, now, retention, event_json, call_id
_CANCEL = """
local state = redis.call('HGET', run, 'state')
if not state then return -1 end
if ended_by(ARGV[5]) then return 1 end
if not live(state) then return 0 end
redis.call('HSET', run, 'state', 'cancelled', 'finished_at', ARGV[2], 'updated_at', ARGV[2],
           'ended_by', ARGV[5])
redis.call('ZREM', running, ARGV[1])
redis.call('ZREM', queued, ARGV[1])
redis.call('XADD', events, '*', 'e', ARGV[4])
touch(ARGV[3])
ended('cancelled')
return 1
"""

# Start a new generation of a run: its canvas is enqueued again and checkpointed
# steps return their stored output. ARGV: run_id, expected_state, now, retention,
# reason, max_restarts (-1: a retry by request, not counted), condition, give_up_json.
# condition: '' (none) | 'lease:<step>' (that step's lease has lapsed) |
# 'queued:<before>' (queued since before then) | 'stalled:<before>' (nothing in flight,
# no activity since then) | 'orphaned:<before>' (stalled since then, and the worker that
# last held the run has not beaten since then either). Returns {new_gen} or {0, why}.
_RESTART = """
local state = redis.call('HGET', run, 'state')
if not state then return {0, 'gone'} end
local now = tonumber(ARGV[3])
local cond = ARGV[7]
if cond:sub(1, 6) == 'lease:' then
  local step = cond:sub(7)
  local lapses = redis.call('ZSCORE', leases, member(step))
  if not lapses or tonumber(lapses) > now then return {0, 'alive'} end
  if state ~= ARGV[2] then release(step, nil) return {0, 'state'} end
elseif state ~= ARGV[2] then
  return {0, 'state'}
elseif cond:sub(1, 7) == 'queued:' then
  local since = redis.call('ZSCORE', queued, ARGV[1])
  if not since or tonumber(since) > tonumber(cond:sub(8)) then return {0, 'alive'} end
elseif cond:sub(1, 9) == 'orphaned:' then
  -- nothing in flight, no activity since <before>, and the worker that last held the
  -- run (and had to send its next message) has not been seen since <before> either
  local before = tonumber(cond:sub(10))
  local seen = redis.call('ZSCORE', running, ARGV[1])
  if redis.call('HLEN', inflight) > 0 or not seen or tonumber(seen) > before then
    return {0, 'alive'}
  end
  local holder = redis.call('HGET', run, 'worker')
  local beat = holder and redis.call('ZSCORE', workers, holder)
  if beat and tonumber(beat) > before then return {0, 'alive'} end
elseif cond:sub(1, 8) == 'stalled:' then
  local seen = redis.call('ZSCORE', running, ARGV[1])
  if redis.call('HLEN', inflight) > 0 or not seen or tonumber(seen) > tonumber(cond:sub(9)) then
    return {0, 'alive'}
  end
end
local superseded = {}
local entries = redis.call('HGETALL', inflight)
for i = 1, #entries, 2 do
  local lease = cjson.decode(entries[i + 1])
  table.insert(superseded, {step = entries[i], attempt = lease.attempt, worker = lease.worker})
  redis.call('ZREM', leases, member(entries[i]))
end
redis.call('DEL', inflight)
local restarts = tonumber(redis.call('HGET', run, 'restarts') or '0')
if ARGV[6] ~= '-1' and restarts >= tonumber(ARGV[6]) then
  local err = cjson.decode(ARGV[8])
  local step = superseded[1] and superseded[1].step or ''
  err.step = step
  if step ~= '' then err.message = err.message .. ' during step ' .. step end
  redis.call('HSET', run, 'state', 'failed', 'error', cjson.encode(err), 'failed_step', step,
             'finished_at', ARGV[3], 'updated_at', ARGV[3])
  redis.call('ZREM', running, ARGV[1])
  redis.call('ZREM', queued, ARGV[1])
  emit({type = 'run.failed', ts = now, run = ARGV[1], step = step, error = err})
  touch(ARGV[4])
  ended('failed')
  return {0, 'gave_up'}
end
local new_gen = redis.call('HINCRBY', run, 'gen', 1)
if ARGV[6] ~= '-1' then redis.call('HINCRBY', run, 'restarts', 1) end
redis.call('HSET', run, 'state', 'queued', 'updated_at', ARGV[3], 'error', '', 'failed_step', '')
redis.call('HDEL', run, 'finished_at', 'ended_by')
redis.call('ZREM', running, ARGV[1])
redis.call('ZADD', queued, now, ARGV[1])
local doc = {type = 'run.restarted', ts = now, run = ARGV[1], reason = ARGV[5], gen = new_gen}
if #superseded > 0 then doc.superseded = superseded end
emit(doc)
touch(ARGV[4])
return {new_gen}
"""

# One step's heartbeat. ARGV: run_id, step, token, now, lapse, worker
_HEARTBEAT = """
local held = redis.call('HGET', inflight, ARGV[2])
if not held then return 0 end
local lease = cjson.decode(held)
if lease.token ~= ARGV[3] then return 0 end
lease.expires = tonumber(ARGV[4]) + tonumber(ARGV[5])
redis.call('HSET', inflight, ARGV[2], cjson.encode(lease))
redis.call('ZADD', leases, 'XX', lease.expires, member(ARGV[2]))
redis.call('HSET', run, 'heartbeat_at', ARGV[4], 'worker', ARGV[6])
redis.call('ZADD', running, 'XX', ARGV[4], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Begin:
    """What ``begin_step`` decided: ``status`` is run, checkpoint, stale, leased, terminal or gone."""

    status: str
    attempt: int = 0
    checkpoint: str | None = None


class Store:
    """A connection to flowkit's Redis and the operations on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        # A blocking pool: a burst of clients (a reconnect storm after a deploy) waits for
        # a connection instead of failing with MaxConnectionsError.
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.connection_pool_size,
            timeout=settings.redis_socket_timeout,
            decode_responses=True,
            health_check_interval=30,
            # redis-py's default (5 s) would cut blocking reads (XREAD BLOCK, BLPOP) short
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=5,
            # ride out a Redis restart: commands wait for it instead of failing steps
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05),
                        retries=int(settings.redis_retry_seconds) + 5),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.redis: redis.Redis = redis.Redis(connection_pool=pool)
        s = self.redis.register_script
        self._create = s(_LUA_HELPERS + _CREATE)
        self._begin = s(_LUA_HELPERS + _BEGIN)
        self._complete = s(_LUA_HELPERS + _COMPLETE)
        self._emit = s(_LUA_HELPERS + _EMIT)
        self._retrying = s(_LUA_HELPERS + _RETRYING)
        self._fail = s(_LUA_HELPERS + _FAIL)
        self._finish = s(_LUA_HELPERS + _FINISH)
        self._cancel = s(_LUA_HELPERS + _CANCEL)
        self._restart = s(_LUA_HELPERS + _RESTART)
        self._heartbeat = s(_LUA_HELPERS + _HEARTBEAT)

    def run_keys(self, run_id: str) -> list[str]:
        k = self.keys
        return k.per_run(run_id) + [k.running, k.queued, k.leases, k.workers]

    # -- runs ------------------------------------------------------------------

    def create_run(
        self, record: dict[str, Any], event: dict[str, Any], idempotency_key: str | None
    ) -> str:
        """Store a new run (or return the run already holding ``idempotency_key``)."""
        run_id = record["id"]
        idem = self.keys.idempotency(record["workflow"], idempotency_key) if idempotency_key else ""
        created = record["created_at"]
        winner = self._create(
            keys=self.run_keys(run_id),
            args=[run_id, idem, created, self.settings.retention_seconds, dumps(event)]
            + [x for pair in record.items() for x in pair],
        )
        if winner == run_id:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.keys.runs, {run_id: created})
            pipe.zadd(self.keys.runs_of(record["workflow"]), {run_id: created})
            pipe.execute()
        return winner

    def get_run(self, run_id: str) -> dict[str, str]:
        return self.redis.hgetall(self.keys.run(run_id))

    def cancel(
        self, run_id: str, now: float, event: dict[str, Any], call_id: str | None = None
    ) -> int:
        """1 cancelled, 0 already ended, -1 unknown. ``call_id`` (default: a fresh one) names
        this call, so a resend after a lost reply answers 1 again (as do fail and finish)."""
        return int(
            self._cancel(
                keys=self.run_keys(run_id),
                args=[run_id, now, self.settings.retention_seconds, dumps(event),
                      call_id or uuid.uuid4().hex],
            )
        )

    def restart(
        self,
        run_id: str,
        *,
        expected_state: str,
        reason: str,
        now: float,
        max_restarts: int = -1,
        condition: str = "",
        give_up_error: dict[str, Any] | None = None,
    ) -> tuple[int, str]:
        """Open a new generation of the run; returns (new_gen, "") or (0, why not)."""
        result = self._restart(
            keys=self.run_keys(run_id),
            args=[
                run_id, expected_state, now, self.settings.retention_seconds, reason,
                max_restarts, condition, dumps(give_up_error or {}),
            ],
        )
        if int(result[0]):
            return int(result[0]), ""
        return 0, result[1]

    # -- steps -----------------------------------------------------------------

    def begin_step(
        self, run_id: str, step: str, gen: int, token: str, worker: str, now: float, component: str
    ) -> Begin:
        args = self._begin_args(run_id, step, gen, token, worker, now, component)
        return self._begun(self._begin(keys=self.run_keys(run_id), args=args))

    def begin_steps(
        self, run_id: str, steps: list[tuple[str, str]], gen: int, worker: str, now: float,
        component: str,
    ) -> list[Begin]:
        """``begin_step`` for each ``(step, token)``, in one round trip (a batched fan-out)."""
        keys = self.run_keys(run_id)
        pipe = self.redis.pipeline(transaction=False)
        for step, token in steps:  # queued by SHA, as complete_step does in a pipeline
            pipe.evalsha(self._begin.sha, len(keys), *keys,
                         *self._begin_args(run_id, step, gen, token, worker, now, component))
        try:
            return [self._begun(result) for result in pipe.execute()]
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot it: none ran
            return [self.begin_step(run_id, step, gen, token, worker, now, component)
                    for step, token in steps]

    def _begin_args(
        self, run_id: str, step: str, gen: int, token: str, worker: str, now: float, component: str
    ) -> list[Any]:
        return [run_id, step, gen, token, worker, now, self.settings.heartbeat_lapse,
                self.settings.retention_seconds, component]

    @staticmethod
    def _begun(result: list) -> Begin:
        status = result[0]
        if status == "run":
            return Begin("run", attempt=int(result[1]))
        if status == "checkpoint":
            return Begin("checkpoint", checkpoint=result[1])
        return Begin(status)

    def complete_step(
        self, run_id: str, step: str, token: str, output_json: str, now: float, event: dict,
        worker: str = "", client: Any = None,
    ) -> str:
        """Checkpoint a step; returns the checkpoint that won (the first one written).

        With a pipeline as ``client`` the script is queued by its SHA (redis-py would add a
        SCRIPT EXISTS round trip to every such pipeline); the pipeline raises NoScriptError
        if Redis restarted and forgot it: call again without ``client``, which loads it."""
        keys = self.run_keys(run_id)
        args = [run_id, step, token, output_json, now, self.settings.retention_seconds,
                dumps(event), worker]
        if client is not None:
            return client.evalsha(self._complete.sha, len(keys), *keys, *args)
        return self._complete(keys=keys, args=args)

    def run_queue(self, run_id: str) -> str | None:
        return self.redis.hget(self.keys.run(run_id), "queue") or None

    def touch(self, run_id: str, worker: str, now: float) -> None:
        """A task without a lease (fan-out, finish) holds the run: record who, for the reaper."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.run(run_id), mapping={"worker": worker, "updated_at": now})
        pipe.zadd(self.keys.running, {run_id: now}, xx=True)
        pipe.execute()

    def emit(
        self, run_id: str, gen: int, event: dict[str, Any], emit_id: str | None = None
    ) -> str | None:
        """Append an event from inside a step; None when the run stopped (or moved on).
        ``emit_id`` (default: a fresh one) names this call: resent after a lost reply,
        it returns the stream id of its first run instead of appending the event again."""
        return self._emit(
            keys=[*self.run_keys(run_id), self.keys.emits(run_id)],
            args=[gen, dumps(event), self.settings.retention_seconds, event["step"],
                  emit_id or uuid.uuid4().hex],
        ) or None

    def retrying(
        self, run_id: str, step: str, gen: int, token: str, event: dict, now: float
    ) -> int | None:
        """Record a failed attempt about to be retried; returns the next attempt number."""
        attempt = self._retrying(
            keys=self.run_keys(run_id),
            args=[run_id, step, gen, token, dumps(event), now, self.settings.heartbeat_lapse,
                  event["attempt"]],
        )
        return int(attempt) if attempt else None

    def fail(
        self,
        run_id: str,
        gen: int,
        step: str,
        token: str,
        now: float,
        error: dict[str, Any],
        step_event: dict[str, Any] | None,
        run_event: dict[str, Any],
        call_id: str | None = None,
    ) -> bool:
        """Whether this call failed the run (it was live, in generation ``gen``)."""
        return bool(
            self._fail(
                keys=self.run_keys(run_id),
                args=[
                    run_id, gen, step, token, now, dumps(error), self.settings.retention_seconds,
                    dumps(step_event) if step_event else "", dumps(run_event),
                    call_id or uuid.uuid4().hex,
                ],
            )
        )

    def finish(
        self, run_id: str, gen: int, now: float, output_json: str, event: dict,
        call_id: str | None = None,
    ) -> bool:
        """Whether this call ended the run as succeeded (it was live, in generation ``gen``)."""
        return bool(
            self._finish(
                keys=self.run_keys(run_id),
                args=[run_id, gen, now, output_json, self.settings.retention_seconds, dumps(event),
                      call_id or uuid.uuid4().hex],
            )
        )

    def checkpoint(self, run_id: str, step: str) -> str | None:
        return self.redis.hget(self.keys.checkpoints(run_id), step)

    def checkpoints(self, run_id: str) -> dict[str, str]:
        return self.redis.hgetall(self.keys.checkpoints(run_id))

    def save_checkpoint(self, run_id: str, step: str, output_json: str) -> str:
        """Checkpoint an inline call (a component called inside a step); first write wins."""
        key = self.keys.checkpoints(run_id)
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, step, output_json)
        pipe.hget(key, step)
        pipe.expire(key, self.settings.retention_seconds)
        return pipe.execute()[1]

    def heartbeat(self, entries: list[tuple[str, str, str]], worker: str, now: float) -> None:
        """Refresh the leases of the steps this process runs, and the worker's presence."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id, step, token in entries:
            self._heartbeat(
                keys=self.run_keys(run_id),
                args=[run_id, step, token, now, self.settings.heartbeat_lapse, worker],
                client=pipe,
            )
        pipe.zadd(self.keys.workers, {worker: now})
        pipe.execute()


_store: Store | None = None
_store_pid: int | None = None
_lock = threading.Lock()


def get_store() -> Store:
    """This process's store (a fresh connection pool after a fork)."""
    global _store, _store_pid
    if _store is None or _store_pid != os.getpid():
        with _lock:
            if _store is None or _store_pid != os.getpid():
                _store = Store(get_settings())
                _store_pid = os.getpid()
    return _store


def reset() -> None:
    global _store
    _store = None
