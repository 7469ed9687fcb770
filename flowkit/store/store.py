"""The store: the one class that reads and writes flowkit's Redis.

Every read and every transition of a run is a named method here; nothing else in the
library talks to Redis. Each transition that reads-then-writes is one Lua script
(``lua/``), so it is atomic (two reapers, a redelivered message and a live worker can
race without corrupting a run) and costs one round trip on the hot path of a step.

Redis being unreachable (past the retries of :mod:`.connection`) surfaces as
:class:`flowkit.errors.StoreUnavailable` from every method, never as a redis-py error.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import NEVER_DECODE
from redis.cluster import RedisCluster
from redis.exceptions import LockError
from redis.lock import Lock

from ..config import Settings
from ..serialization import dumps, loads
from ..states import RestartCause, RestartRefusal, StepStart, WaitKind, WaitOutcome
from . import archive, connection, scripts, server
from .connection import guarded as _op
from .keys import SHARDS, Keys, shard_of
from .streams import ClusterStreamReader, EndWatch, Entry, StreamReader, Subscriptions
from .streams import entries as _entries

#: The token a revoked lease carries: it matches no attempt, so no heartbeat renews it.
HANDED_OVER = "handed-over"
#: Most ids one index scan returns (the reaper's batch).
SCAN_BATCH = 500
#: Events kept per event key for waits that look back.
SENT_KEPT = 100
#: The suffix of a sub-step's checkpoint that counts its failed attempts (spend_sub_step).
SPENT = "!spent"
#: How long a schedule's firing lock outlives a sweep that died holding it (seconds).
FIRING_LOCK_SECONDS = 30.0
#: How long a sweep waits for a schedule's firing lock before it takes the schedule's run
#: as being started by the sweep that holds it (seconds).
FIRING_WAIT_SECONDS = 5.0

def _new_call() -> str:
    return uuid.uuid4().hex


#: The answer fire_timer.lua checkpoints for a wait whose timeout passed.
TIMED_OUT = '{"timeout":true}'

#: The run record's fields (``paused|<wait key>``: its spec) of the timed-out waits a retry
#: opened anew (forget_timeouts): where their attempts paused (pause_point).
FORGOTTEN_PAUSE = "paused|"


def _glob_escape(text: str) -> str:
    """``text`` matched literally by Redis's glob patterns (HSCAN MATCH)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _wait_fields(kind: str, name: str) -> str:
    """The HSCAN pattern of a run's fields for its waits of ``kind`` on ``name``, in any
    step (the wait keys of step.py: ``<step>/<n>:wait:<kind>:<name>``)."""
    return "*" + _glob_escape(f":wait:{kind}:{name}")


@dataclass(frozen=True)
class Begin:
    """What ``begin_step`` decided for one delivery of a step's message."""

    status: StepStart
    attempt: int = 0
    checkpoint: str | None = None


@dataclass(frozen=True)
class Ended:
    """A run this call ended (``finish``, ``complete_last_step``). ``slot``: its
    concurrency group and limit, None when it holds no slot; admission.released gives the
    slot on without reading the run again."""

    slot: tuple[str, int] | None = None

    @classmethod
    def of(cls, reply: Any) -> Ended | None:
        """From finish.lua's reply: 0, or ``[1, group, limit]``."""
        if not reply:
            return None
        _, group, limit = reply
        return cls((group, int(limit)) if group and limit else None)


@dataclass
class BrokerMessages:
    """Broker messages a script pushes with the run it creates (Store.create_run): each
    ``(list key, payload)`` as kombu's Redis transport would LPUSH it, into database ``db``
    of the store's server. ``pushed`` says afterwards whether they went out."""

    run_id: str
    db: int
    items: list[tuple[str, str]]
    pushed: bool = False


def _millisecond(created_at: float | str) -> float:
    """A run's place in the listings: the millisecond of its creation, which its id (a ULID
    made from the same clock reading) says too, runs of one millisecond in the order of their
    ids. Scored by the exact time, a page after an expired cursor (known only by its id's
    millisecond) skipped the runs made in that millisecond before it."""
    return math.floor(float(created_at) * 1000) / 1000


#: How much sooner an ended run's idempotency claim lapses than its record (milliseconds).
CLAIM_MARGIN_MS = 1000
#: How long a start waits for the run of an idempotency key another starter claimed that
#: long ago at most (seconds): the claim and the run are two writes, and a start that came
#: between them made the run itself, with its own input, under the other's id.
CLAIM_WAIT_SECONDS = 2.0


class Store:
    """A connection to flowkit's Redis and every operation on it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        #: The raw client: for tests and tools only; the library goes through methods.
        self.redis: redis.Redis = connection.client(settings)
        self._scripts = {
            name: self.redis.register_script(scripts.source(name))
            for name in (*scripts.RUN_SCRIPTS, *scripts.STANDALONE_SCRIPTS)
        }
        self._subscriptions = Subscriptions(lambda: connection.pubsub_client(settings))

    def _run_script(self, name: str, run_id: str, args: list[Any], client: Any = None) -> Any:
        keys = self.keys.script_keys(run_id)
        if client is not None:  # a pipeline: queued by SHA (see complete_step); as a raw
            # command, as redis-py's Cluster pipeline refuses its evalsha method
            return client.execute_command("EVALSHA", self._scripts[name].sha, len(keys),
                                          *keys, *args, **self._node_of(keys[0]))
        script = self._scripts[name]
        try:
            return script(keys=keys, args=args)
        except redis.exceptions.NoScriptError:
            # redis-py loaded the script where it could, and its EVALSHA still found none: a
            # Cluster failover's new primary, not yet in the client's map when the load went
            # to the primaries it knew (a step's emit failed so, once), or a script cache
            # flushed in between. EVAL carries the source itself, routed by its key like any
            # command (and caches it there); the script did not run.
            return self.redis.eval(script.script, len(keys), *keys, *args)

    def _node_of(self, key: str) -> dict[str, Any]:
        """A pipelined script's options: on Cluster, the node of ``key``'s slot, named (else
        the Cluster pipeline asks a server, COMMAND GETKEYS, for every script)."""
        if isinstance(self.redis, RedisCluster):
            return {"target_nodes": self.redis.get_node_from_key(key)}
        return {}

    # -- runs ------------------------------------------------------------------------

    @_op
    def create_run(
        self, record: dict[str, Any], event: dict[str, Any], idempotency_key: str | None,
        start_at: float | None = None, messages: BrokerMessages | None = None,
    ) -> tuple[str, bool]:
        """Store a new run; returns (its id, True). With ``idempotency_key``, a key already
        claimed (by the same owner: ``record["owner"]``) returns (the run holding it, False)
        and stores nothing. With ``start_at`` the run is scheduled: its timer starts it then
        (fire_timer).

        ``messages``: broker messages of the new run, pushed by the same script once the
        run is stored (the broker being a database of this Redis server), so a start is
        one round trip. None of them is pushed when it creates nothing, nor when an
        idempotency key's stalled claim makes it create the run under another id (the
        messages name the first): ``messages.pushed`` tells the caller."""
        run_id, retention = record["id"], self.settings.retention_seconds
        if idempotency_key:
            claim = self.keys.idempotency(record["workflow"], idempotency_key,
                                          record.get("owner") or None)
            if not self.redis.set(claim, run_id, nx=True, ex=retention):
                winner, stored = self._claimed_run(claim, retention, run_id)
                if stored:
                    return winner, False
                # the claim's maker stopped before creating its run: create it under that id
                run_id = winner or run_id
                record = {**record, "id": run_id}
                event = {**event, "run": run_id}
        if messages is not None and run_id != messages.run_id:
            messages = None
        pushed = [] if messages is None else [x for m in messages.items for x in m]
        args = [run_id, record["created_at"], retention, dumps(event),
                "" if start_at is None else start_at,
                "" if messages is None else messages.db, len(pushed) // 2, *pushed,
                *(x for pair in record.items() for x in pair)]
        # the script and the listing indexes in one round trip (a start's latency is
        # mostly round trips). Listing a run whose script found it already there (its
        # own resend) adds the same id at the same time again: nothing changes
        pipe = self.redis.pipeline(transaction=False)
        self._run_script("create", run_id, args, client=pipe)
        listed = {run_id: _millisecond(record["created_at"])}
        pipe.zadd(self.keys.runs, listed)
        pipe.zadd(self.keys.runs_of(record["workflow"]), listed)
        try:
            created = pipe.execute()[0]
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot it: loads it
            created = self._run_script("create", run_id, args)
        if messages is not None:
            messages.pushed = bool(created)
        return run_id, bool(created)

    def _claimed_run(self, claim: str, retention: int, own: str) -> tuple[str | None, bool]:
        """The run a claimed idempotency key names, and whether it is stored. A claim made
        less than :data:`CLAIM_WAIT_SECONDS` ago (its age read from its TTL, set to
        ``retention`` when claimed) is waited for: its maker stores the run next. One that
        names ``own`` (this start's claim, its reply lost and the call sent again) is not."""
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(claim)
            pipe.pttl(claim)
            winner, pttl = pipe.execute()
            if not winner:  # lapsed meanwhile
                return None, False
            if self.redis.exists(self.keys.run(winner)):
                return winner, True
            if winner == own:
                return winner, False
            age = retention - pttl / 1000 if pttl > 0 else math.inf
            if age >= CLAIM_WAIT_SECONDS or time.monotonic() >= deadline:
                return winner, False
            time.sleep(0.01)

    @_op
    def count_exported_end(self, run_id: str) -> int:
        """Count one more export of the ended run's workflow span: 1 at its first end, 2 once
        a retried run ended again, and so on (the run's record holds the count and its expiry;
        an unknown run's is 0)."""
        key = self.keys.run(run_id)
        if not self.redis.exists(key):  # expired: the count would be a key without one
            return 0
        return int(self.redis.hincrby(key, "exported_ends", 1))

    @_op
    def get_run(self, run_id: str) -> dict[str, str]:
        """The run's record ({} when unknown)."""
        return self.redis.hgetall(self.keys.run(run_id))

    @_op
    def load_run(
        self, run_id: str
    ) -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]:
        """The run's record, its attempts per step and its open waits, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.run(run_id))
        pipe.hgetall(self.keys.attempts(run_id))
        pipe.hvals(self.keys.waits(run_id))
        record, attempts, waits = pipe.execute()
        return record, attempts, [loads(spec) for spec in waits]

    @_op
    def live_leases(self, run_id: str, now: float) -> dict[str, dict[str, Any]]:
        """The run's steps whose lease has not lapsed (their worker still heartbeats):
        step key -> lease (token, worker, attempt, expires)."""
        return {step: lease for step, lease in self.leases_in_flight(run_id).items()
                if float(lease.get("expires") or 0) > now}

    @_op
    def leases_in_flight(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Every lease the run's steps hold, lapsed ones too: step key -> lease."""
        return {step: loads(lease) for step, lease in
                self.redis.hgetall(self.keys.inflight(run_id)).items()}

    @_op
    def steps_in_flight(self, run_id: str) -> int:
        """How many of the run's steps hold a lease (are running on a worker) now."""
        return self.redis.hlen(self.keys.inflight(run_id))

    @_op
    def run_fields(self, run_id: str, *names: str) -> list[str | None]:
        return self.redis.hmget(self.keys.run(run_id), list(names))

    @_op
    def list_runs(
        self, workflow: str | None, state: str | None, limit: int, before: str | None,
        owner: str | None = None, before_time: float | None = None,
    ) -> list[dict[str, str]]:
        """Records newest first, of one workflow, in one state and of one owner when given;
        ``before`` is a run id: only runs older than it (than ``before_time`` when it is not
        in the index: expired)."""
        index = self.keys.runs_of(workflow) if workflow else self.keys.runs
        bound, tie = "+inf", None
        if before:
            score = self.redis.zscore(index, before)
            if score is not None:
                # runs made at its instant too: Redis orders them by id, and the page goes
                # on from those listed after it (newest first, a lower id)
                bound, tie = repr(score), score
            elif before_time is not None:  # expired: the time its id says, as it was listed
                bound, tie = repr(before_time), before_time
        found: list[dict[str, str]] = []
        start, page = 0, max(limit * 2, 50)
        while len(found) < limit:
            scored = self.redis.zrevrangebyscore(index, bound, "-inf", start=start, num=page,
                                                 withscores=True)
            if not scored:
                break
            ids = [run_id for run_id, at in scored if at != tie or run_id < before]
            pipe = self.redis.pipeline(transaction=False)
            for run_id in ids:
                pipe.hgetall(self.keys.run(run_id))
            for record in pipe.execute():
                if record and (state is None or record.get("state") == state) \
                        and (owner is None or record.get("owner") == owner):
                    found.append(record)
                    if len(found) == limit:
                        break
            start += page
        return found

    @_op
    def cancel(
        self, run_id: str, now: float, event: dict[str, Any], call_id: str | None = None
    ) -> int:
        """1 cancelled, 0 already ended, -1 unknown. ``call_id`` (default: a fresh one) names
        this call, so a resend after a lost reply answers 1 again (as do fail and finish)."""
        return int(self._run_script("cancel", run_id, [
            run_id, now, self.settings.retention_seconds, dumps(event), call_id or _new_call(),
        ]))

    @_op
    def restart(
        self,
        run_id: str,
        *,
        expected_state: str,
        reason: str,
        now: float,
        cause: RestartCause = RestartCause.REQUESTED,
        step: str = "",
        before: float = 0.0,
        max_restarts: int = -1,
        give_up_error: dict[str, Any] | None = None,
        call_id: str | None = None,
    ) -> tuple[int, RestartRefusal | None]:
        """Open a new generation of the run when ``cause`` holds (restart.lua); returns
        (new_gen, None) or (0, why not). ``max_restarts`` -1: a request, not counted."""
        holder, holder_beat = "", ""
        if cause == RestartCause.ORPHANED:
            holder = self.redis.hget(self.keys.run(run_id), "worker") or ""
            beat = self.redis.zscore(self.keys.workers, holder) if holder else None
            holder_beat = "" if beat is None else repr(beat)
        result = self._run_script("restart", run_id, [
            run_id, expected_state, now, self.settings.retention_seconds, reason, max_restarts,
            cause, step, before, holder, holder_beat, dumps(give_up_error or {}),
            call_id or _new_call(),
        ])
        if int(result[0]):
            return int(result[0]), None
        return 0, RestartRefusal(result[1])

    @_op
    def fail(
        self, run_id: str, gen: int, step: str, token: str, now: float, error: dict[str, Any],
        step_event: dict[str, Any] | None, run_event: dict[str, Any], call_id: str | None = None,
    ) -> bool:
        """Whether this call failed the run (it was live, in generation ``gen``)."""
        return bool(self._run_script("fail", run_id, [
            run_id, gen, step, token, now, dumps(error), self.settings.retention_seconds,
            dumps(step_event) if step_event else "", dumps(run_event), call_id or _new_call(),
        ]))

    @_op
    def finish(
        self, run_id: str, gen: int, now: float, output_json: str, event: dict,
        call_id: str | None = None,
    ) -> Ended | None:
        """The run's end when this call ended it as succeeded (it was live, in generation
        ``gen``), else None."""
        return Ended.of(self._run_script("finish", run_id, [
            run_id, gen, now, output_json, self.settings.retention_seconds, dumps(event),
            call_id or _new_call(),
        ]))

    @_op
    def watch_end(self, run_id: str) -> EndWatch:
        """Listen for the run's end (lib.lua's end_run publishes it). Subscribe first, then
        read the run: no end can slip between."""
        return EndWatch(self._subscriptions, self.keys.done(run_id))

    @_op
    def claim_failure_notice(self, run_id: str, ended_at: str) -> bool:
        """True for the first caller only of each end (``ended_at``, the record's
        ``finished_at``): the one that notifies that failure. A run retried and failed again
        is notified again (it was notified once for good: no hook, webhook or root span)."""
        before = self.redis.set(self.keys.notified(run_id), ended_at, get=True,
                                ex=self.settings.retention_seconds)
        return before != ended_at

    # -- steps ------------------------------------------------------------------------

    @_op
    def begin_step(
        self, run_id: str, step: str, gen: int, token: str, worker: str, now: float, component: str
    ) -> Begin:
        args = self._begin_args(run_id, step, gen, token, worker, now, component)
        return self._begun(self._run_script("begin", run_id, args))

    @_op
    def begin_steps(
        self, run_id: str, steps: list[tuple[str, str]], gen: int, worker: str, now: float,
        component: str,
    ) -> list[Begin]:
        """``begin_step`` for each ``(step, token)``, in one round trip (a batched fan-out)."""
        pipe = self.redis.pipeline(transaction=False)
        for step, token in steps:
            self._run_script("begin", run_id,
                             self._begin_args(run_id, step, gen, token, worker, now, component),
                             client=pipe)
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
        status = StepStart(result[0])
        if status == StepStart.RUN:
            return Begin(status, attempt=int(result[1]))
        if status == StepStart.CHECKPOINT:
            return Begin(status, checkpoint=result[1])
        return Begin(status)

    @_op
    def complete_step(
        self, run_id: str, step: str, token: str, output_json: str, now: float, event: dict,
        worker: str = "", trace: Iterable[tuple[str, str]] = (),
    ) -> tuple[str, int, bool]:
        """Checkpoint a step; returns the checkpoint that won (the first one written), a
        generation > 0 when this step was the last in flight of a run whose waits were
        answered meanwhile (the caller enqueues its frontier), and whether the run had
        ended while the step ran (the caller gives back its concurrency slot).

        ``trace`` records (``(run_id, span JSON)``) are written
        first, in the same round trip, so a finished step's trace is complete before its
        checkpoint is. The script is queued by its SHA (redis-py would add a SCRIPT EXISTS
        round trip to a pipeline carrying a Script); if Redis restarted and forgot it, the
        call is made again on its own, which loads it."""
        args = self._complete_args(run_id, step, token, output_json, now, event, worker)
        [(won, gen, over)] = self._pipelined(run_id, trace, [("complete", args)])
        return won, int(gen), bool(over)

    @_op
    def complete_last_step(
        self, run_id: str, step: str, token: str, output_json: str, now: float, event: dict,
        worker: str, *, gen: int, run_output_json: str, run_event: dict,
        trace: Iterable[tuple[str, str]] = (),
    ) -> tuple[str, int, bool, Ended | None]:
        """:meth:`complete_step` of a run's last step, then the run's end (:meth:`finish`)
        in the same round trip; the run ends only if this completion won (the step's
        checkpoint is ``output_json``). Returns what ``complete_step`` does, and the run's
        end if it ended."""
        completion = self._complete_args(run_id, step, token, output_json, now, event, worker)
        end = [run_id, gen, now, run_output_json, self.settings.retention_seconds,
               dumps(run_event), _new_call(), step, output_json]
        (won, resume_gen, over), ended = self._pipelined(
            run_id, trace, [("complete", completion), ("finish", end)])
        return won, int(resume_gen), bool(over), Ended.of(ended)

    def _complete_args(
        self, run_id: str, step: str, token: str, output_json: str, now: float, event: dict,
        worker: str,
    ) -> list[Any]:
        return [run_id, step, token, output_json, now, self.settings.retention_seconds,
                dumps(event), worker]

    def _pipelined(
        self, run_id: str, trace: Iterable[tuple[str, str]], calls: list[tuple[str, list[Any]]],
    ) -> list[Any]:
        """The results of ``calls`` (run scripts of ``run_id``), queued after ``trace`` in
        one round trip, in order; a script Redis had forgotten (or never loaded) runs
        again on its own, which loads it."""
        pipe = self.redis.pipeline(transaction=False)
        queued = self._queue_trace(pipe, trace)
        for name, args in calls:
            self._run_script(name, run_id, args, client=pipe)
        replies = pipe.execute(raise_on_error=False)
        self._check_trace(queued, replies[:-len(calls)])
        results = []
        for (name, args), reply in zip(calls, replies[-len(calls):], strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                reply = self._run_script(name, run_id, args)
            elif isinstance(reply, Exception):
                raise reply
            results.append(reply)
        return results

    @_op
    def checkpoint(self, run_id: str, step: str) -> str | None:
        return self.redis.hget(self.keys.checkpoints(run_id), step)

    @_op
    def forget_checkpoint(self, run_id: str, key: str) -> None:
        """Drop a hint kept among the checkpoints (a limit wait's answer: engine.limits)."""
        self.redis.hdel(self.keys.checkpoints(run_id), key)

    @_op
    def forget_answer(self, run_id: str, key: str, answer: str) -> bool:
        """Drop the answer (JSON) checkpointed under the wait ``key`` if it is still
        ``answer`` (forget_answer.lua): True when dropped."""
        return bool(self._scripts["forget_answer"](keys=[self.keys.checkpoints(run_id)],
                                                   args=[key, answer]))

    @_op
    def swap_answer(self, run_id: str, key: str, early: str, older: str) -> bool:
        """Answer the wait ``key`` with ``older`` (JSON) if ``early`` still answers it
        (swap_answer.lua): True when swapped."""
        return bool(self._scripts["swap_answer"](keys=[self.keys.checkpoints(run_id)],
                                                 args=[key, early, older]))

    @_op
    def forget_timeouts(self, run_id: str) -> int:
        """Drop the timed-out answers (``{"timeout":true}``) of the waits of every step not
        completed, so each, run again, opens them anew with a fresh deadline; returns how
        many. Every step's, not only the failed one's: its siblings' waits (parallel
        branches, fan-out items) timed out in the same sweep, and each retry failed again at
        once on the next one. A wait inside a step or sub-step that completed (it caught its
        timeout) keeps its answer: that output was made from it.
        Where a step paused stays known (the run record's ``paused|<wait key>``, read by
        :meth:`pause_point`): retried, the step replays its text up to that wait, which the
        stream holds already, and sent it again."""
        key = self.keys.checkpoints(run_id)
        timed_out = [field for field, value in self.redis.hscan_iter(key, match="*:wait:*")
                     if value == TIMED_OUT]
        # what a wait is within: its step, and the sub-steps around it (each key up to a /)
        within = {field: [field[:at] for at, c in enumerate(field) if c == "/"]
                  for field in timed_out}
        around = sorted({prefix for prefixes in within.values() for prefix in prefixes})
        completed = {prefix for prefix, value in zip(
            around, self.redis.hmget(key, around) if around else [], strict=True)
            if value is not None}
        timed_out = [field for field in timed_out if completed.isdisjoint(within[field])]
        if not timed_out:
            return 0
        specs = self.redis.hmget(self.keys.answered(run_id), timed_out)
        pipe = self.redis.pipeline()
        pipe.hdel(key, *timed_out)
        kept = {f"{FORGOTTEN_PAUSE}{field}": spec
                for field, spec in zip(timed_out, specs, strict=True) if spec is not None}
        if kept:
            pipe.hset(self.keys.run(run_id), mapping=kept)
        # nor answered any longer: an answer sent before the step opens them again was
        # refused as "answered already, with another value"
        pipe.hdel(self.keys.answered(run_id), *timed_out)
        return pipe.execute()[0]

    @_op
    def waits_answered(self, run_id: str, kind: str, name: str) -> dict[str, str]:
        """The answers (JSON) of the run's waits of ``kind`` on ``name``, in any step, by
        wait key: those fields of its checkpoints only (HSCAN with MATCH: a look-back that
        read every checkpoint read the run's whole output each time)."""
        return dict(self.redis.hscan_iter(self.keys.checkpoints(run_id),
                                          match=_wait_fields(kind, name), count=1000))

    @_op
    def checkpoints_of(self, run_id: str, steps: list[str]) -> list[str | None]:
        return self.redis.hmget(self.keys.checkpoints(run_id), steps)

    @_op
    def checkpoints(self, run_id: str) -> dict[str, str]:
        return self.redis.hgetall(self.keys.checkpoints(run_id))

    @_op
    def save_checkpoint(self, run_id: str, step: str, output_json: str) -> str:
        """Checkpoint an inline call (a component called inside a step); first write wins."""
        key = self.keys.checkpoints(run_id)
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, step, output_json)
        pipe.hget(key, step)
        return pipe.execute()[1]  # no expiry: the run's own scripts give its keys theirs

    @_op
    def wait_open(self, run_id: str, wait_key: str) -> bool:
        """Whether the run has the wait ``wait_key`` open (paused on, not answered)."""
        return bool(self.redis.hexists(self.keys.waits(run_id), wait_key))

    @_op
    def spend_sub_step(self, run_id: str, key: str, attempts: int) -> None:
        """Record that sub-step ``key`` failed after ``attempts`` attempts in all (its
        checkpoint ``<key>!spent``): its step run again (a retry) numbers its attempts
        after them, so that they ask anew instead of replaying the refused ones."""
        self.redis.hset(self.keys.checkpoints(run_id), key + SPENT, attempts)

    @_op
    def retrying(
        self, run_id: str, step: str, gen: int, token: str, event: dict, now: float
    ) -> int | None:
        """Record a failed attempt about to be retried; returns the next attempt number."""
        attempt = self._run_script("retrying", run_id, [
            run_id, step, gen, token, dumps(event), now, self.settings.heartbeat_lapse,
            event["attempt"],
        ])
        return int(attempt) if attempt else None

    @_op
    def emit(
        self, run_id: str, gen: int, event: dict[str, Any], emit_id: str | None = None
    ) -> str | None:
        """Append an event from inside a step; None when the run stopped (or moved on).
        ``emit_id`` (default: a fresh one) names this call: resent after a lost reply,
        it returns the stream id of its first run instead of appending the event again."""
        return self._run_script("emit", run_id, [
            gen, dumps(event), event["step"], emit_id or _new_call(),
        ]) or None

    @_op
    def touch(self, run_id: str, worker: str, now: float) -> None:
        """A task without a lease (fan-out, finish) holds the run: record who, for the reaper."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.run(run_id), mapping={"worker": worker, "updated_at": now})
        pipe.zadd(self.keys.running(shard_of(run_id)), {run_id: now}, xx=True)
        pipe.execute()

    @_op
    def heartbeat(
        self, entries: list[tuple[str, str, str]], worker: str, now: float,
        node: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Renew the leases of the steps this process runs, and the worker's presence;
        ``node``: (name, what it announced: queues, pool, concurrency) for /healthz."""
        pipe = self.redis.pipeline(transaction=False)
        if node is not None:
            pipe.hset(self.keys.nodes, node[0], dumps(node[1]))
        for run_id, step, token in entries:
            self._run_script("heartbeat", run_id, [
                run_id, step, token, now, self.settings.heartbeat_lapse, worker,
            ], client=pipe)
        pipe.zadd(self.keys.workers, {worker: now})
        try:
            pipe.execute()
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot it: load it
            for run_id, step, token in entries:
                self._run_script("heartbeat", run_id, [
                    run_id, step, token, now, self.settings.heartbeat_lapse, worker])
            self.redis.zadd(self.keys.workers, {worker: now})
            if node is not None:
                self.redis.hset(self.keys.nodes, node[0], dumps(node[1]))

    @_op
    def handed_off(self, run_id: str, gen: int, now: float, queues: Iterable[str] = ()) -> None:
        """A message of the run's canvas went to the broker, to ``queues`` (handoff.lua)."""
        self._run_script("handoff", run_id, [gen, now, " ".join(queues)])

    @_op
    def handed_off_many(
        self, handoffs: list[tuple[str, int, float, Iterable[str]]]
    ) -> None:
        """``handed_off`` for each (run id, gen, when, queues), in one round trip."""
        calls = [(run_id, [gen, at, " ".join(queues)]) for run_id, gen, at, queues in handoffs]
        pipe = self.redis.pipeline(transaction=False)
        for run_id, args in calls:
            self._run_script("handoff", run_id, args, client=pipe)
        try:
            pipe.execute()
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot it: load it
            for run_id, args in calls:
                self._run_script("handoff", run_id, args)

    # -- waits (input, events, timers, delayed starts) --------------------------------------

    @_op
    def begin_wait(
        self, run_id: str, gen: int, step: str, token: str, wait_key: str,
        spec: dict[str, Any], due: float | None, now: float, event: dict[str, Any],
    ) -> tuple[WaitOutcome, str | None, int]:
        """A step pauses for ``spec`` (begin_wait.lua): (PAUSED, None, gen), (READY, the
        answer, 0) or (STOPPED, None, 0); gen > 0: the pause left nothing in flight of a
        run whose other waits were answered meanwhile, and opened that generation: its
        frontier is to be enqueued (it was not: the run sat queued, with no message)."""
        result = self._run_script("begin_wait", run_id, [
            run_id, gen, step, token, wait_key, dumps(spec), "" if due is None else due, now,
            self.settings.retention_seconds, dumps(event),
        ])
        outcome = WaitOutcome(result[0])
        if outcome == WaitOutcome.READY:
            return outcome, result[1], 0
        return outcome, None, int(result[2]) if len(result) > 2 else 0

    @_op
    def deliver(
        self, run_id: str, by: str, match: str, answer_json: str, now: float,
        event: dict[str, Any], step: str = "",
    ) -> tuple[WaitOutcome, int]:
        """Answer a wait (deliver.lua), by its wait key (``by="key"``) or by kind and name,
        of ``step`` only when given; returns the outcome and, when RESUMED, the generation
        whose frontier to enqueue."""
        result = self._run_script("deliver", run_id, [
            run_id, by, match, answer_json, now, self.settings.retention_seconds, dumps(event),
            step,
        ])
        return WaitOutcome(result[0]), (int(result[1]) if len(result) > 1 else 0)

    @_op
    def answers_given(self, run_id: str, kind: str, name: str, step: str = "") -> list[str]:
        """The answers (JSON) the answered waits of ``kind`` on ``name`` got (of ``step``
        only, when given): one per step that waited under that name."""
        keys = [wait_key for wait_key, spec in self.redis.hgetall(self.keys.answered(run_id)).items()
                if (doc := loads(spec)).get("kind") == kind and doc.get("name") == name
                and (not step or doc.get("step") == step)]
        return [given for given in (self.redis.hmget(self.keys.checkpoints(run_id), keys)
                                    if keys else []) if given is not None]

    @_op
    def fire_timer(self, run_id: str, key: str, now: float) -> tuple[WaitOutcome, int]:
        """A due timer: a wait's deadline, a sleep's end, a delayed start (fire_timer.lua)."""
        result = self._run_script("fire_timer", run_id, [
            run_id, key, now, self.settings.retention_seconds])
        return WaitOutcome(result[0]), (int(result[1]) if len(result) > 1 else 0)

    @_op
    def due_timers(self, now: float) -> list[tuple[str, str]]:
        """(run id, wait key or ``$start``) of the timers due by ``now``, the earliest due
        first: the shards were read one after another, and delayed starts of one
        concurrency key asked for their slots, and were admitted, in that scrambled order."""
        return [(m.partition(" ")[0], m.partition(" ")[2])
                for m in self._scan(self.keys.timers, now, earliest_first=True)]

    @_op
    def add_waker(self, event_key: str, run_id: str, wait_key: str, retention: float) -> None:
        """Index a wait for events sent under ``event_key`` (before the wait is recorded:
        a stale entry is harmless, a missing one would never wake the run)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.keys.wakers(event_key), f"{run_id} {wait_key}")
        pipe.expire(self.keys.wakers(event_key), int(retention))
        pipe.execute()

    @_op
    def keep_wakers(self, keep: float) -> int:
        """Index again every open event wait of a live run, and give its set ``keep``
        seconds more; returns how many waits. A set expired ``keep`` (the retention) after
        its last wait began: a run waiting longer (a payment confirmed after a week) was
        never woken by its event. Beat's retention task calls it more often than ``keep``.
        Every waiting, running and queued run is read: a branch may wait for an event while
        another runs (the run is ``running``), and when a run began waiting does not say
        when its event wait did."""
        waits = 0
        for shard, index in ((shard, index) for shard in range(SHARDS) for index in
                             (self.keys.waiting, self.keys.running, self.keys.queued)):
            run_ids = self.redis.zrange(index(shard), 0, -1)
            for start in range(0, len(run_ids), self.TRIM_BATCH):
                batch = run_ids[start:start + self.TRIM_BATCH]
                pipe = self.redis.pipeline(transaction=False)
                for run_id in batch:
                    pipe.hgetall(self.keys.waits(run_id))
                again = self.redis.pipeline(transaction=False)
                for run_id, open_waits in zip(batch, pipe.execute(), strict=True):
                    for wait_key, spec in open_waits.items():
                        spec = loads(spec)
                        if spec.get("kind") != WaitKind.EVENT.value:
                            continue
                        wakers = self.keys.wakers(spec["name"])
                        again.sadd(wakers, f"{run_id} {wait_key}")
                        again.expire(wakers, int(keep))
                        waits += 1
                again.execute()
        return waits

    @_op
    def wakers(self, event_key: str) -> list[tuple[str, str]]:
        """The waits indexed under ``event_key``: (run id, wait key). Each leaves the index
        once an event was delivered to it (:meth:`drop_waker`), not before: taken all at
        once, those a failing send had not reached yet waited for good."""
        return [(m.partition(" ")[0], m.partition(" ")[2])
                for m in self.redis.smembers(self.keys.wakers(event_key))]

    @_op
    def drop_waker(self, event_key: str, run_id: str, wait_key: str) -> None:
        self.redis.srem(self.keys.wakers(event_key), f"{run_id} {wait_key}")

    @_op
    def owe_resume(self, run_id: str, gen: int) -> None:
        """Generation ``gen`` of the run is open but its resume message did not reach the
        broker: beat's sweep sends it (:meth:`owed_resumes`)."""
        self.redis.sadd(self.keys.resumes_owed(), f"{run_id} {gen}")

    @_op
    def owed_resumes(self) -> list[tuple[str, int]]:
        return [(m.partition(" ")[0], int(m.partition(" ")[2]))
                for m in self.redis.smembers(self.keys.resumes_owed())]

    @_op
    def settle_resume(self, run_id: str, gen: int) -> None:
        self.redis.srem(self.keys.resumes_owed(), f"{run_id} {gen}")

    @_op
    def record_sent(self, event_key: str, data_json: str, now: float, keep: float) -> str:
        """Keep an event sent under ``event_key`` (its last ``SENT_KEPT``, for ``keep``
        seconds after the last one) for waits that look back; returns its stream id, the
        order events were sent in (Redis's one clock). Its time ``t`` is the sender's
        clock, the one ``sent_since`` bounds a look-back with."""
        key = self.keys.sent(event_key)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(key, {"d": data_json, "t": repr(now)}, maxlen=SENT_KEPT, approximate=True)
        pipe.expire(key, max(1, int(keep)))
        return pipe.execute()[0]

    @_op
    def last_sent_id(self, event_key: str) -> str:
        """The stream id of the last event sent under ``event_key`` still kept ("0-0": none)."""
        last = self.redis.xrevrange(self.keys.sent(event_key), count=1)
        return last[0][0] if last else "0-0"

    @_op
    def answered_specs(self, run_id: str, kind: str, name: str) -> dict[str, dict[str, Any]]:
        """The specs of the run's answered waits of ``kind`` on ``name`` (as they were
        opened), by wait key (HSCAN with MATCH: the others hold input schemas)."""
        return {key: loads(spec) for key, spec in self.redis.hscan_iter(
            self.keys.answered(run_id), match=_wait_fields(kind, name), count=1000)}

    @_op
    def step_failures(self, run_id: str, step: str) -> int:
        """How many attempts of ``step`` failed and were retried (retrying.lua counts them),
        over every execution of it: its retry budget's spent part."""
        return int(self.redis.hget(self.keys.run(run_id), f"failures|{step}") or 0)

    @_op
    def forget_failures(self, run_id: str) -> None:
        """A retry of the failed run: its steps get their whole retry budgets again."""
        spent = [field for field, _ in self.redis.hscan_iter(self.keys.run(run_id),
                                                              match="failures|*", count=1000)]
        if spent:
            self.redis.hdel(self.keys.run(run_id), *spent)

    @_op
    def pause_point(self, run_id: str, step: str, attempt: int) -> str | None:
        """The wait key where the latest attempt of ``step`` before ``attempt`` that paused
        paused (its wait answered since, or still open), or None: a resumed attempt replays
        the step's code up to there, and its text up to there is that attempt's, in the
        stream already.
        Waits answered without a pause (an event sent early: ``paused`` false) and those
        opened before waits said their attempt are no such point."""
        latest: tuple[int, str] | None = None
        # open waits too: a branch run again when a sibling's wait was answered pauses again
        # at its own, whose spec (and attempt) stays the first pause's (begin_wait.lua)
        pattern = _glob_escape(step) + "/*"
        found = itertools.chain(*(self.redis.hscan_iter(where, match=pattern, count=1000)
                                  for where in (self.keys.answered(run_id),
                                                self.keys.waits(run_id))))
        # and the waits a retry forgot as timed out (forget_timeouts), opened anew since
        forgotten = ((field[len(FORGOTTEN_PAUSE):], raw) for field, raw in self.redis.hscan_iter(
            self.keys.run(run_id), match=FORGOTTEN_PAUSE + pattern, count=1000))
        for key, raw in itertools.chain(found, forgotten):
            spec = loads(raw)
            paused_in = spec.get("attempt")
            if (spec.get("step") == step and spec.get("paused", True) and isinstance(paused_in, int)
                    and paused_in < attempt and (latest is None or paused_in > latest[0])):
                latest = (paused_in, key)
        return latest[1] if latest else None

    @_op
    def sent_since(self, event_key: str, since: float, taken: Collection[str] = (),
                   after_t: float = 0.0, floor: str | None = None,
                   ) -> tuple[str, float, str] | None:
        """The oldest event sent under ``event_key`` at ``since`` or later whose stream id
        is not in ``taken`` (for answers kept before ids were: sent after the time
        ``after_t``): its JSON, when it was sent, its stream id; or None. A run's waits on
        a key take its events in the order Redis received them, each once: the newest
        skipped those sent between two waits of a chat loop; a cursor past the last one
        taken skipped an older one that a concurrent sender's newer one overtook, or one
        of two sent in one millisecond. ``floor``: a stream id the run's waits are past (an
        earlier wait paused after it: events up to it are behind the run). Trimmed
        approximately, the stream may hold more than SENT_KEPT."""
        start = f"({floor}" if floor else "-"
        for entry_id, fields in self.redis.xrange(self.keys.sent(event_key), start, "+",
                                                  count=4 * SENT_KEPT):
            sent_at = float(fields["t"])
            if sent_at >= since and sent_at > after_t and entry_id not in taken:
                return fields["d"], sent_at, entry_id
        return None

    # -- concurrency groups (admission) -----------------------------------------------------

    @_op
    def slots(
        self, group: str, limit: int, now: float, add: str = "", order: float = 0.0,
        release: str = "", *, score: float | None = None, lapsed: float | None = None,
        index: str | None = None,
    ) -> tuple[bool, int, list[str]]:
        """Ask for a slot for ``add``, give back ``release``'s, take back slots scored below
        ``lapsed``, and hand free slots to the members in line (slots.lua); members given a
        slot are scored ``score`` (default ``now``). The group is indexed (with its limit)
        in ``index`` (default: the run concurrency groups) for beat's sweep. Returns (``add``
        holds a slot, slots taken, the other members given a slot by this call)."""
        active, pending = self.keys.slots(group)
        if add:
            self.redis.hset(index or self.keys.groups, group, limit)
        result = self._scripts["slots"](keys=[active, pending], args=[
            add, order, release, limit, now if score is None else score,
            "" if lapsed is None else lapsed])
        if add:  # again: a sweep may have dropped the group as idle before the script ran
            self.redis.hset(index or self.keys.groups, group, limit)
        return bool(result[0]), int(result[1]), list(result[2:])

    @_op
    def hold_slots(self, held: list[tuple[str, str]], until: float) -> None:
        """Keep the slots ``held`` ((group, member) pairs) until ``until`` (a heartbeat)."""
        pipe = self.redis.pipeline(transaction=False)
        for group, member in held:
            pipe.zadd(self.keys.slots(group)[0], {member: until}, xx=True)
        pipe.execute()

    @_op
    def step_owner(self, run_id: str, step: str) -> tuple[str | None, str | None]:
        """The run's generation, and the token of the attempt that holds ``step``'s lease
        (None when none does): whether an attempt is still the step's current one."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.run(run_id), "gen")
        pipe.hget(self.keys.inflight(run_id), step)
        gen, lease = pipe.execute()
        return gen, (loads(lease)["token"] if lease else None)

    @_op
    def waits_on(self, run_id: str, wait_key: str) -> bool:
        """Whether the run has the wait ``wait_key`` open."""
        return bool(self.redis.hexists(self.keys.waits(run_id), wait_key))

    @_op
    def lapsing_slots(self, group: str, now: float) -> list[str]:
        """The members of ``group`` whose slot lapses at ``now`` (scored below it)."""
        return self.redis.zrangebyscore(self.keys.slots(group)[0], "-inf", f"({now}")

    @_op
    def slot_holders(self, group: str) -> list[tuple[str, float]]:
        """(run id, admitted at) of the runs holding a slot of ``group``."""
        return self.redis.zrange(self.keys.slots(group)[0], 0, -1, withscores=True)

    @_op
    def set_group_limit(self, group: str, limit: int, index: str | None = None) -> None:
        """Index ``group`` (of runs, or of ``index``) with a limit changed since."""
        self.redis.hset(index or self.keys.groups, group, limit)

    @_op
    def in_line(self, group: str) -> int:
        return self.redis.zcard(self.keys.slots(group)[1])

    @_op
    def drop_idle_group(self, group: str, limit: int, index: str | None = None) -> bool:
        """Take ``group`` out of ``index`` (default: the run concurrency groups) when no
        member holds or waits for one of its slots; returns whether it went. The index kept
        every concurrency key ever used (one per tenant or user), and beat's sweep read
        each, every few seconds: 20,000 made a sweep longer than its interval. A member
        added meanwhile indexes its group again (:meth:`slots`); one added between the two
        reads below is indexed again here."""
        active, pending = self.keys.slots(group)
        index = index or self.keys.groups

        def idle() -> bool:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(active)
            pipe.zcard(pending)
            return not any(pipe.execute())

        if not idle():
            return False
        self.redis.hdel(index, group)
        if idle():
            return True
        self.redis.hset(index, group, limit)
        return False

    @_op
    def groups(self, index: str | None = None) -> dict[str, int]:
        """Every group in ``index`` (default: the run concurrency groups), with its limit."""
        found = self.redis.hgetall(index or self.keys.groups)
        return {group: int(limit) for group, limit in found.items()}

    @_op
    def hold(self, run_id: str, reason: str, now: float, event: dict[str, Any]) -> bool:
        """A run waits for a slot: out of the queued index, saying why (hold.lua)."""
        return bool(self._run_script("hold", run_id, [
            run_id, reason, now, self.settings.retention_seconds, dumps(event)]))

    @_op
    def admit(self, run_id: str, now: float, event: dict[str, Any]) -> bool:
        """A held run got its slot (admit.lua): True when this call admitted it."""
        return bool(self._run_script("admit", run_id, [
            run_id, now, self.settings.retention_seconds, dumps(event)]))

    @_op
    def runs_fields(self, run_ids: list[str], *names: str) -> list[list[str | None]]:
        """:meth:`run_fields` of each run, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), list(names))
        return pipe.execute()

    @_op
    def run_states(self, run_ids: list[str]) -> list[str | None]:
        pipe = self.redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hget(self.keys.run(run_id), "state")
        return pipe.execute()

    # -- schedules ----------------------------------------------------------------------

    @_op
    def put_schedule(self, definition: dict[str, Any], next_at: float | None) -> None:
        """Store a schedule; ``next_at`` None: paused (out of the due index)."""
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.schedules, definition["id"], dumps(definition))
        if next_at is None:
            pipe.zrem(self.keys.schedules_due, definition["id"])
        else:
            pipe.zadd(self.keys.schedules_due, {definition["id"]: next_at})
        pipe.execute()

    @_op
    def schedule(self, schedule_id: str) -> tuple[dict[str, Any] | None, float | None]:
        """A schedule's definition and next fire time (None when paused)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.schedules, schedule_id)
        pipe.zscore(self.keys.schedules_due, schedule_id)
        raw, next_at = pipe.execute()
        return (loads(raw) if raw else None), next_at

    @_op
    def schedules(self) -> list[tuple[dict[str, Any], float | None]]:
        """Every schedule with its next fire time (None when paused), by id."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.schedules)
        pipe.zrange(self.keys.schedules_due, 0, -1, withscores=True)
        defs, due = pipe.execute()
        next_at = dict(due)
        return [(loads(raw), next_at.get(sid)) for sid, raw in sorted(defs.items())]

    @_op
    def schedule_errors(self, *schedule_ids: str) -> dict[str, dict[str, Any]]:
        """Schedule id -> why its last tick started no run (``error``, ``at``, ``tick``),
        for the schedules whose last tick failed: of ``schedule_ids``, or of every one."""
        key = self.keys.schedule_errors
        found = (zip(schedule_ids, self.redis.hmget(key, schedule_ids), strict=True)
                 if schedule_ids else self.redis.hgetall(key).items())
        return {sid: loads(raw) for sid, raw in found if raw}

    @_op
    def schedule_fired(self, schedule_id: str, error: dict[str, Any] | None) -> str | None:
        """Record how a tick went: ``error`` (its record) or None (it started its run).
        Returns the error message recorded before an error, so a caller says a new one once."""
        if error is None:
            self.redis.hdel(self.keys.schedule_errors, schedule_id)
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.schedule_errors, schedule_id)
        pipe.hset(self.keys.schedule_errors, schedule_id, dumps(error))
        before = pipe.execute()[0]
        return loads(before)["error"] if before else None

    @_op
    def delete_schedule(self, schedule_id: str) -> bool:
        pipe = self.redis.pipeline()
        pipe.hdel(self.keys.schedules, schedule_id)
        pipe.zrem(self.keys.schedules_due, schedule_id)
        pipe.hdel(self.keys.schedule_errors, schedule_id)
        pipe.hdel(self.keys.schedule_runs, schedule_id)
        pipe.hdel(self.keys.schedule_buffered, schedule_id)
        return bool(pipe.execute()[0])

    @_op
    def schedule_started(self, schedule_id: str, run_id: str) -> None:
        """Keep the run the schedule's tick started (its last one)."""
        self.redis.hset(self.keys.schedule_runs, schedule_id, run_id)

    @_op
    def last_schedule_run(self, schedule_id: str) -> tuple[str, str | None] | None:
        """The run the schedule's last tick started and its state (None: it expired), or
        None when no tick started one yet."""
        run_id = self.redis.hget(self.keys.schedule_runs, schedule_id)
        if run_id is None:
            return None
        return run_id, self.redis.hget(self.keys.run(run_id), "state")

    @contextlib.contextmanager
    def schedule_firing(self, schedule_id: str) -> Iterator[bool]:
        """Hold the schedule's lock (redis-py's ``Lock``) while an ``overlap`` policy reads its
        last run and starts the next: two sweeps at once (two beats, or sweeps queued behind
        busy workers, each with a tick of its own) both read the last run ended, and both
        started one. Yields whether it holds the lock: another sweep that holds it longer
        than FIRING_WAIT_SECONDS (a start takes milliseconds) is starting a run of the
        schedule. A sweep that died holding it frees it after FIRING_LOCK_SECONDS."""
        lock = self._lock_firing(schedule_id)
        try:
            yield lock is not None
        finally:
            if lock is not None:
                self._unlock_firing(lock)

    @_op
    def _lock_firing(self, schedule_id: str) -> Lock | None:
        lock = self.redis.lock(self.keys.schedule_firing(schedule_id),
                               timeout=FIRING_LOCK_SECONDS, sleep=0.01,
                               blocking_timeout=FIRING_WAIT_SECONDS)
        return lock if lock.acquire() else None

    @_op
    def _unlock_firing(self, lock: Lock) -> None:
        with contextlib.suppress(LockError):  # held past its timeout: another took it since
            lock.release()

    @_op
    def buffer_tick(self, schedule_id: str, tick: float) -> None:
        """Hold ``tick`` back until the schedule's last run ends (``overlap="buffer"``): one
        tick is held, a later one replaces it."""
        self.redis.hset(self.keys.schedule_buffered, schedule_id, repr(tick))

    @_op
    def buffered_ticks(self) -> dict[str, float]:
        """Schedule id -> the tick it holds back, of every schedule holding one."""
        return {schedule_id: float(tick) for schedule_id, tick
                in self.redis.hgetall(self.keys.schedule_buffered).items()}

    @_op
    def take_buffered(self, schedule_id: str, tick: float) -> bool:
        """Take the tick the schedule holds back (take_buffered.lua): True for one caller,
        False when another took it or a later tick replaced it."""
        return bool(self._scripts["take_buffered"](keys=[self.keys.schedule_buffered],
                                                   args=[schedule_id, repr(tick)]))

    @_op
    def drop_buffered(self, schedule_id: str) -> None:
        """Forget the tick the schedule holds back (it was paused, or removed)."""
        self.redis.hdel(self.keys.schedule_buffered, schedule_id)

    @_op
    def due_schedules(self, now: float) -> list[tuple[str, float]]:
        """(schedule id, the fire time due) of the schedules due by ``now``."""
        return self.redis.zrangebyscore(self.keys.schedules_due, "-inf", now, withscores=True)

    @_op
    def claim_tick(self, schedule_id: str, due_at: float, next_at: float,
                   fires: float | None = None, now: float | None = None) -> bool:
        """Move a schedule past the tick ``due_at`` (claim_tick.lua): True for one caller.
        ``fires``: the tick whose run the claim owes, unsettled from ``now`` until
        :meth:`tick_settled` (None: it owes none, a missed tick)."""
        return bool(self._scripts["claim_tick"](
            keys=[self.keys.schedules_due, self.keys.schedule_claimed],
            args=[schedule_id, repr(due_at), next_at, "" if fires is None else repr(fires),
                  0.0 if now is None else now]))

    @_op
    def unsettled_ticks(self, claimed_before: float) -> list[tuple[str, float]]:
        """(schedule id, tick) of the ticks claimed before ``claimed_before`` whose run is
        still owed: their sweep died, or Redis refused the start."""
        return [(member.rpartition(" ")[0], float(member.rpartition(" ")[2])) for member
                in self.redis.zrangebyscore(self.keys.schedule_claimed, "-inf", claimed_before)]

    @_op
    def tick_settled(self, schedule_id: str, tick: float) -> None:
        """The claimed tick's fate is decided (its run started, skipped, held back, or why
        not kept): it is owed no more."""
        self.redis.zrem(self.keys.schedule_claimed, f"{schedule_id} {tick!r}")

    @_op
    def run_of_key(self, workflow: str, idempotency_key: str) -> str | None:
        """The run an idempotency key (without owner) started, if any."""
        return self.redis.get(self.keys.idempotency(workflow, idempotency_key, None))

    # -- leases and indexes (the reaper, draining) --------------------------------------

    @_op
    def leases(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(run id, step, lease) of every step that holds a lease now."""
        found = []
        for shard in range(SHARDS):
            for member in self.redis.zrange(self.keys.leases(shard), 0, -1):
                run_id, _, step = member.partition(" ")
                raw = self.redis.hget(self.keys.inflight(run_id), step)
                if raw:
                    found.append((run_id, step, loads(raw)))
        return found

    @_op
    def revoke_lease(self, run_id: str, step: str, token: str, now: float) -> bool:
        """Hand a step over: its lease lapses now if ``token`` still holds it (revoke.lua)."""
        return bool(self._run_script("revoke", run_id, [run_id, step, token, now, HANDED_OVER]))

    @_op
    def release_ended(self, run_id: str, step: str, token: str) -> bool:
        """Let go of ``step``'s lease held by ``token`` now that its run has ended (failed,
        cancelled): True when released (release.lua). A live run's lease is kept."""
        return bool(self._run_script("release", run_id, [
            run_id, step, token, self.settings.retention_seconds]))

    def _scan(self, index: Callable[[int], str], upto: float, earliest_first: bool = False
              ) -> list[str]:
        """Members of every shard of ``index`` scored up to ``upto`` (SCAN_BATCH of each);
        ``earliest_first``: across the shards, in the order of their scores."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zrangebyscore(index(shard), "-inf", upto, start=0, num=SCAN_BATCH,
                               withscores=earliest_first)
        found = pipe.execute()
        if not earliest_first:
            return [member for members in found for member in members]
        return [member for _, member in sorted(
            (score, member) for members in found for member, score in members)]

    @_op
    def lapsed_leases(self, now: float) -> list[tuple[str, str]]:
        """(run id, step) of leases that lapsed by ``now``."""
        return [(m.partition(" ")[0], m.partition(" ")[2]) for m in self._scan(self.keys.leases, now)]

    @_op
    def queued_before(self, before: float) -> list[str]:
        """Runs (re)queued before ``before`` and not started since."""
        return self._scan(self.keys.queued, before)

    @_op
    def quiet_since(self, before: float) -> list[str]:
        """Running runs with no sign of life (step boundary, heartbeat) since ``before``."""
        return self._scan(self.keys.running, before)

    @_op
    def active_runs(self) -> int:
        """How many runs are queued or running now."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zcard(self.keys.running(shard))
            pipe.zcard(self.keys.queued(shard))
        return sum(pipe.execute())

    @_op
    def trim_indexes(self, cutoff: float) -> int:
        """Drop the runs created before ``cutoff`` whose keys expired from the listing
        indexes, and workers not seen since; returns how many run entries went. A run made
        that long ago may live on (waiting for a person, a delayed start, one that ended
        within its retention): it stays listed while its record is there. Every run created
        before the cutoff went, live or not: it vanished from ``GET /runs``, ``flowkit runs``
        and the dashboard while ``GET /runs/<id>`` showed it waiting."""
        removed = self._trim_expired(self.keys.runs, cutoff)
        for key in self.redis.scan_iter(match=self.keys.runs_of("*"), count=200):
            removed += self._trim_expired(key, cutoff)
        self.redis.zremrangebyscore(self.keys.workers, "-inf", cutoff)
        alive = {worker.rpartition(":")[0] for worker in self.redis.zrange(self.keys.workers, 0, -1)}
        gone = [node for node in self.redis.hkeys(self.keys.nodes) if node not in alive]
        if gone:
            self.redis.hdel(self.keys.nodes, *gone)
        self._trim_waiting(cutoff)
        return removed

    def _trim_waiting(self, cutoff: float) -> None:
        """A run that waited untouched past its retention expired with its keys: its entry in
        the waiting index (flowkit.metrics counts it) goes too."""
        for shard in range(SHARDS):
            self._trim_expired(self.keys.waiting(shard), cutoff)

    #: Index entries read (and their runs looked up) per round trip while trimming.
    TRIM_BATCH = 500

    @_op
    def keep_claims(self, now: float, keep: float, ahead: float) -> int:
        """Keep the idempotency claim of each run as long as the run: ``keep`` seconds more
        while it is live, its record's time to live once it ended; returns how many claims.
        A claim expired ``keep`` (the retention) after its run was made, so a run still
        waiting (or scheduled) then was started again, under another id, by the same key.
        Read: the runs made before ``now - keep + ahead`` still listed (those whose claim
        lapses within ``ahead``, and the long-lived), not every run: beat's retention task
        calls it at least once every ``ahead / 2`` seconds, so no claim lapses between."""
        kept, start = 0, 0
        while True:
            old = self.redis.zrangebyscore(self.keys.runs, "-inf", now - keep + ahead,
                                           start=start, num=self.TRIM_BATCH)
            if not old:
                return kept
            start += len(old)
            pipe = self.redis.pipeline(transaction=False)
            for run_id in old:
                pipe.hmget(self.keys.run(run_id), "workflow", "owner", "idempotency_key")
                # in milliseconds, and a second short: in seconds, Redis rounded, and a claim
                # outlived its run by up to half a second, in which the key made a run under
                # the expired one's id (an ended run gone a second early is no harm)
                pipe.pttl(self.keys.run(run_id))
            found = pipe.execute()
            claims = []
            for run_id, (workflow, owner, key), ttl in zip(old, found[::2], found[1::2],
                                                           strict=True):
                if key and workflow and ttl != -2:  # -2: expired meanwhile
                    claim = self.keys.idempotency(workflow, key, owner or None)
                    claims.append((run_id, claim, int(keep * 1000) if ttl == -1
                                   else max(ttl - CLAIM_MARGIN_MS, 1)))
            if claims:
                pipe = self.redis.pipeline(transaction=False)
                for _, claim, _ in claims:
                    pipe.get(claim)
                again = self.redis.pipeline(transaction=False)
                for (run_id, claim, ttl), holder in zip(claims, pipe.execute(), strict=True):
                    if holder == run_id:
                        again.pexpire(claim, ttl)
                    elif holder is None:  # lapsed already: the run holds its key again
                        again.set(claim, run_id, nx=True, px=ttl)
                    else:
                        continue  # another run holds it since: not this one's to keep
                    kept += 1
                again.execute()
            if len(old) < self.TRIM_BATCH:
                return kept

    def _trim_expired(self, index: str, cutoff: float) -> int:
        """Remove from the sorted set ``index`` the runs scored before ``cutoff`` whose
        record no longer exists; returns how many went."""
        removed, start = 0, 0
        while True:
            old = self.redis.zrangebyscore(index, "-inf", cutoff, start=start,
                                           num=self.TRIM_BATCH)
            if not old:
                return removed
            pipe = self.redis.pipeline(transaction=False)
            for run_id in old:
                pipe.exists(self.keys.run(run_id))
            expired = [run_id for run_id, there in zip(old, pipe.execute(), strict=True)
                       if not there]
            if expired:
                removed += self.redis.zrem(index, *expired)
            start += len(old) - len(expired)  # the live ones stay ahead of the next batch
            if len(old) < self.TRIM_BATCH:
                return removed

    @_op
    def workers_seen_since(self, since: float) -> list[tuple[str, float]]:
        """(worker id, last heartbeat) of every worker process seen since ``since``."""
        return self.redis.zrangebyscore(self.keys.workers, since, "+inf", withscores=True)

    @_op
    def forget_node(self, node: str) -> None:
        """Take worker node ``node`` out of the deployment's view, its processes' beats and
        what it announced: a node that stopped for good (flowkit dev's, once dev stopped),
        which a run with no live worker named as the one to bring back."""
        members = [worker for worker in self.redis.zrange(self.keys.workers, 0, -1)
                   if worker.rpartition(":")[0] == node]
        pipe = self.redis.pipeline(transaction=False)
        if members:
            pipe.zrem(self.keys.workers, *members)
        pipe.hdel(self.keys.nodes, node)
        pipe.execute()

    @_op
    def nodes_seen_since(self, since: float) -> list[dict[str, Any]]:
        """Worker nodes with a process seen since ``since``: what each announced, with its
        ``name``, ``processes`` and ``last_beat`` (the newest of its processes)."""
        beats: dict[str, list[float]] = {}
        for worker, beat in self.workers_seen_since(since):
            beats.setdefault(worker.rpartition(":")[0], []).append(beat)
        if not beats:
            return []
        announced = self.redis.hmget(self.keys.nodes, list(beats))
        return [
            {"name": node, **(loads(raw) if raw else {}), "processes": len(seen),
             "last_beat": max(seen)}
            for (node, seen), raw in zip(beats.items(), announced, strict=True)
        ]

    # -- the deployment's health (flowkit doctor) -------------------------------------------

    @_op
    def record_sweep(self, now: float, interval: float) -> None:
        """The reaper finished a sweep at ``now``; beat sends one every ``interval`` s."""
        self.redis.set(self.keys.swept, dumps({"at": now, "interval": interval}))

    @_op
    def record_stuck_consumers(self, found: list[dict[str, Any]], ttl: float) -> None:
        """What the reaper found of consumers taking nothing (none: forget it); kept
        ``ttl`` seconds, so a reaper that stopped looking leaves no stale alarm."""
        if found:
            self.redis.set(self.keys.stuck, dumps(found), px=int(ttl * 1000))
        else:
            self.redis.delete(self.keys.stuck)

    @_op
    def stuck_consumers(self) -> list[dict[str, Any]]:
        """The consumers the reaper last found taking nothing (see record_stuck_consumers)."""
        raw = self.redis.get(self.keys.stuck)
        return loads(raw) if raw else []

    @_op
    def last_sweep(self) -> dict[str, float] | None:
        """``{at, interval}`` of the reaper's last finished sweep; None if none was recorded."""
        raw = self.redis.get(self.keys.swept)
        return loads(raw) if raw else None

    @_op
    def server_info(self) -> dict[str, Any]:
        """What this store's Redis says of itself: version, AOF, maxmemory and its policy."""
        return server.describe(self.redis)

    # -- the deployment's metrics (flowkit.metrics) -------------------------------------------

    @_op
    def metric_counts(self) -> dict[str, int]:
        """The counters the run scripts keep (lib.lua's ``count``), summed over the shards:
        ``started|<workflow>``, ``ended|<state>|<workflow>``, ``restarts|<cause>``."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.hgetall(self.keys.stats(shard))
        totals: dict[str, int] = {}
        for found in pipe.execute():
            for name, n in found.items():
                totals[name] = totals.get(name, 0) + int(n)
        return totals

    @_op
    def run_counts(self) -> dict[str, int]:
        """How many runs are queued (for a worker), running and waiting now (the indexes)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zcard(self.keys.queued(shard))
            pipe.zcard(self.keys.running(shard))
            pipe.zcard(self.keys.waiting(shard))
        found = pipe.execute()
        return {state: sum(found[i::3]) for i, state in enumerate(("queued", "running", "waiting"))}

    @_op
    def oldest_queued(self, per_shard: int) -> tuple[list[tuple[str, float, str]], bool]:
        """(run id, queued since, its queue) of the ``per_shard`` longest-queued runs of
        each shard, and whether that is every queued run."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zrange(self.keys.queued(shard), 0, per_shard - 1, withscores=True)
        shards = pipe.execute()
        found = [entry for entries in shards for entry in entries]
        complete = all(len(entries) < per_shard for entries in shards)
        pipe = self.redis.pipeline(transaction=False)
        for run_id, _ in found:
            pipe.hget(self.keys.run(run_id), "queue")
        queues = pipe.execute()
        return [(run_id, at, queue or "") for (run_id, at), queue in zip(found, queues,
                                                                       strict=True)], complete

    # -- events ------------------------------------------------------------------------

    @_op
    def history(self, run_id: str, after: str, count: int | None = None) -> list[Entry]:
        """Events after ``after`` (exclusive), oldest first: the archived ones (a compacted
        run), then the stream's."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command("GET", self.keys.archive(run_id), **{NEVER_DECODE: True})
        pipe.xrange(self.keys.events(run_id), min=f"({after}", count=count)
        blob, raw = pipe.execute()
        found = archive.events_after(blob, after, count) + _entries(raw)
        return found[:count] if count is not None else found

    @_op
    def read_new(self, run_id: str, after: str, block_ms: int, count: int = 500) -> list[Entry]:
        """Events after ``after``, waiting up to ``block_ms`` for the first one."""
        archived = archive.events_after(self._archive(run_id), after, count)
        if archived:
            return archived
        try:
            reply = self.redis.xread({self.keys.events(run_id): after}, count=count,
                                     block=block_ms)
        except redis.ResponseError as exc:
            if not connection.unblocked(exc):
                raise
            return []  # the caller reads again from ``after``, from the new primary
        return _entries(reply[0][1]) if reply else []

    @_op
    def last_event(self, run_id: str) -> Entry | None:
        """The newest event of the run (stream, else archive), or None for none (or unknown)."""
        last = _entries(self.redis.xrevrange(self.keys.events(run_id), count=1))
        if last:
            return last[0]
        archived = archive.unpack(self._archive(run_id))[0]
        return archived[-1] if archived else None

    def _archive(self, run_id: str) -> bytes | None:
        return self.redis.execute_command("GET", self.keys.archive(run_id),
                                          **{NEVER_DECODE: True})

    # -- compaction (a finished run's streams -> one archive) -----------------------------

    @_op
    def ended_before(self, before: float, limit: int) -> list[str]:
        """Runs that ended before ``before`` and are not compacted yet (oldest first, up to
        ``limit`` per shard)."""
        pipe = self.redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.zrangebyscore(self.keys.ended(shard), "-inf", before, start=0, num=limit)
        return [run_id for found in pipe.execute() for run_id in found]

    @_op
    def compact(self, run_id: str) -> bool:
        """Replace a finished run's event stream and trace with one archive (compact.lua);
        False when the run is live or gone. Read again if it changed meanwhile."""
        for _ in range(3):
            pipe = self.redis.pipeline(transaction=False)
            pipe.execute_command("GET", self.keys.archive(run_id), **{NEVER_DECODE: True})
            pipe.xrange(self.keys.events(run_id))
            pipe.xrange(self.keys.trace(run_id))
            blob, raw_events, raw_spans = pipe.execute()
            events, spans = archive.unpack(blob)
            events += _entries(raw_events)
            spans += [fields["s"] for _, fields in raw_spans]
            last = raw_events[-1][0] if raw_events else ""
            done = self._run_script("compact", run_id, [
                run_id, archive.pack(events, spans), last, len(raw_spans), len(blob or b"")])
            if done != -1:
                return done == 1
        return False

    def stream_reader(self, block_seconds: float) -> StreamReader | ClusterStreamReader:
        """A reader of many runs' streams on a connection of its own (the relay hub); on
        Redis Cluster one that polls each slot (streams.ClusterStreamReader)."""
        if isinstance(self.redis, RedisCluster):
            return ClusterStreamReader(self.redis, self.keys)
        return StreamReader(self.redis, self.keys, self.settings, block_seconds)

    # -- traces ----------------------------------------------------------------------------

    def _queue_trace(self, pipe: Any, records: Iterable[tuple[str, str]]) -> list[tuple]:
        """Queue trace.lua once per run of ``records``: the trace takes the run's expiry
        (none while it lives), also when a late span comes after compaction dropped it.
        Returns what was queued, for :meth:`_check_trace`."""
        by_run: dict[str, list[str]] = {}
        for run_id, doc in records:
            by_run.setdefault(run_id, []).append(doc)
        sha = self._scripts["trace"].sha
        queued = []
        for run_id, docs in by_run.items():
            keys = [self.keys.run(run_id), self.keys.trace(run_id)]
            pipe.execute_command("EVALSHA", sha, 2, *keys, *docs, **self._node_of(keys[0]))
            queued.append((keys, docs))
        return queued

    def _check_trace(self, queued: list[tuple], replies: list[Any]) -> None:
        """Raise a trace reply's error; a script Redis had not loaded runs again on its own."""
        for (keys, docs), reply in zip(queued, replies, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                self._scripts["trace"](keys=keys, args=docs)
            elif isinstance(reply, Exception):
                raise reply

    @_op
    def append_trace(self, records: Iterable[tuple[str, str]]) -> None:
        """Append span records (``(run_id, span JSON)``) to their runs' traces."""
        pipe = self.redis.pipeline(transaction=False)
        queued = self._queue_trace(pipe, records)
        self._check_trace(queued, pipe.execute(raise_on_error=False))

    @_op
    def read_trace(self, run_id: str) -> list[str]:
        """The run's span records (JSON), oldest first (archived ones first)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.execute_command("GET", self.keys.archive(run_id), **{NEVER_DECODE: True})
        pipe.xrange(self.keys.trace(run_id))
        blob, raw = pipe.execute()
        return archive.unpack(blob)[1] + [fields["s"] for _, fields in raw]

    # -- the component cache and rate limits ---------------------------------------------

    @_op
    def cache_get(self, component: str, version: str, digest: str) -> str | None:
        return self.redis.get(self.keys.cache(component, version, digest))

    @_op
    def cache_put(self, component: str, version: str, digest: str, value: str, ttl: float) -> None:
        self.redis.set(self.keys.cache(component, version, digest), value, px=int(ttl * 1000))

    @_op
    def take_rate(self, bucket: str, budget: list[float]) -> float:
        """Take a call's cost from the shared bucket named ``bucket`` (rate_acquire.lua's
        ARGV); returns 0, or the seconds to wait before asking again."""
        waited_ms = self._scripts["rate_acquire"](keys=[self.keys.rate(bucket)], args=budget)
        return int(waited_ms) / 1000

    @_op
    def settle_rate(self, bucket: str, delta: int) -> None:
        """Give back ``delta`` tokens (negative: take more) once a call's real cost is known."""
        self._scripts["rate_settle"](keys=[self.keys.rate(bucket)], args=[delta])
