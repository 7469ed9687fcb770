"""Names of flowkit's Redis keys, laid out so the store spreads over Redis Cluster.

Every run belongs to one of ``SHARDS`` shards (a hash of its id). Its keys and its
shard's indexes (``running``, ``queued``, ``leases``) carry the shard's hash tag, so
every key one run script touches hashes to the same Cluster slot::

    flowkit:{s07}:run:<id>              HASH    the run record
    flowkit:{s07}:run:<id>:events       STREAM  its events (the stream ids are the resume cursors)
    flowkit:{s07}:run:<id>:ckpt         HASH    step key -> output JSON (the checkpoints)
    flowkit:{s07}:run:<id>:attempts     HASH    step key -> attempts started
    flowkit:{s07}:run:<id>:inflight     HASH    step key -> lease JSON {token, worker, attempt, expires}
    flowkit:{s07}:run:<id>:emits        HASH    step key -> "<emit id> <stream id>" of its last emit
    flowkit:{s07}:run:<id>:waits        HASH    wait key -> spec JSON of an open wait
    flowkit:{s07}:run:<id>:answered     HASH    wait key -> spec JSON of an answered wait
    flowkit:{s07}:run:<id>:trace        STREAM  trace span records
    flowkit:{s07}:run:<id>:archive      STRING  a finished run's events and trace, compacted
                                                (zlib JSON: flowkit.store.archive)
    flowkit:{s07}:run:<id>:notified     STRING  the failure notification's claim: the end it notified
    flowkit:{s07}:running               ZSET    run id -> last sign of life
    flowkit:{s07}:queued                ZSET    run id -> when it was (re)queued
    flowkit:{s07}:leases                ZSET    "<run id> <step>" -> when the lease lapses
    flowkit:{s07}:timers                ZSET    "<run id> <wait key>" -> when it fires
                                                ("<run id> $start": a delayed start)
    flowkit:{s07}:ended                 ZSET    run id -> when it ended (to compact)
    flowkit:{s07}:waiting               ZSET    run id -> since when it waits (input, event, timer)
    flowkit:{s07}:stats                 HASH    counters of the shard's runs (flowkit.metrics):
                                                ``started|<workflow>``, ``ended|<state>|<workflow>``,
                                                ``restarts|<cause>``

Keys that no run script touches live outside the shards, each a single-key operation:
``flowkit:runs`` and ``flowkit:runs:wf:<name>`` (listing indexes), ``flowkit:idem:<wf>:<key>``
and ``flowkit:idem-of:["<wf>","<owner>","<key>"]`` (idempotency claims, an owner's apart),
``flowkit:wakers:<event key>`` (the runs waiting for an event) and
``flowkit:sent:<event key>`` (events sent, for a wait's look-back),
``flowkit:resumes:owed`` (resumes the broker could not take when they were decided),
``flowkit:{schedules}:defs``, ``:due``, ``:errors``, ``:runs``, ``:buffered``, ``:claimed`` and
``:firing:<id>`` (schedules, one slot of their own),
``flowkit:{cc:<digest>}:active`` and ``:pending`` (a concurrency group's slots and line, one
slot per group) and ``flowkit:cc:groups``,
``flowkit:workers`` and ``flowkit:nodes`` (worker presence), ``flowkit:reaper:swept``,
``flowkit:reaper:stuck`` (consumers that take nothing), ``flowkit:cache-of:...``,
``flowkit:rate:...`` and the relay's wake streams.

``SHARDS`` is part of the data layout: changing it moves every run to other keys.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass

#: Shards of the run keyspace (each one Redis Cluster slot). Fixed: see the module doc.
SHARDS = 16


def shard_of(run_id: str) -> int:
    return zlib.crc32(run_id.encode()) % SHARDS


@dataclass(frozen=True)
class Keys:
    prefix: str

    # -- one run ------------------------------------------------------------------

    def tag(self, shard: int) -> str:
        return f"{self.prefix}:{{s{shard:02d}}}"

    def run(self, run_id: str) -> str:
        return f"{self.tag(shard_of(run_id))}:run:{run_id}"

    def events(self, run_id: str) -> str:
        return f"{self.run(run_id)}:events"

    def checkpoints(self, run_id: str) -> str:
        return f"{self.run(run_id)}:ckpt"

    def attempts(self, run_id: str) -> str:
        return f"{self.run(run_id)}:attempts"

    def inflight(self, run_id: str) -> str:
        return f"{self.run(run_id)}:inflight"

    def emits(self, run_id: str) -> str:
        return f"{self.run(run_id)}:emits"

    def waits(self, run_id: str) -> str:
        return f"{self.run(run_id)}:waits"

    def answered(self, run_id: str) -> str:
        return f"{self.run(run_id)}:answered"

    def trace(self, run_id: str) -> str:
        return f"{self.run(run_id)}:trace"

    def archive(self, run_id: str) -> str:
        return f"{self.run(run_id)}:archive"

    def notified(self, run_id: str) -> str:
        return f"{self.run(run_id)}:notified"

    def done(self, run_id: str) -> str:
        """Pub/sub channel told the run's terminal state when it ends (lib.lua's end_run)."""
        return f"{self.run(run_id)}:done"

    # -- a shard's indexes -----------------------------------------------------------

    def running(self, shard: int) -> str:
        return f"{self.tag(shard)}:running"

    def queued(self, shard: int) -> str:
        return f"{self.tag(shard)}:queued"

    def leases(self, shard: int) -> str:
        return f"{self.tag(shard)}:leases"

    def timers(self, shard: int) -> str:
        return f"{self.tag(shard)}:timers"

    def ended(self, shard: int) -> str:
        return f"{self.tag(shard)}:ended"

    def waiting(self, shard: int) -> str:
        return f"{self.tag(shard)}:waiting"

    def stats(self, shard: int) -> str:
        return f"{self.tag(shard)}:stats"

    def script_keys(self, run_id: str) -> list[str]:
        """The KEYS every run script receives, in lib.lua's order."""
        shard = shard_of(run_id)
        run = self.run(run_id)
        return [
            run, f"{run}:events", f"{run}:ckpt", f"{run}:attempts", f"{run}:inflight",
            f"{run}:emits", f"{run}:waits", f"{run}:answered",
            self.running(shard), self.queued(shard), self.leases(shard), self.timers(shard),
            f"{run}:archive", f"{run}:trace", self.ended(shard), self.waiting(shard),
            self.stats(shard),
        ]

    # -- outside the shards ----------------------------------------------------------------

    @property
    def runs(self) -> str:
        return f"{self.prefix}:runs"

    def runs_of(self, workflow: str) -> str:
        return f"{self.prefix}:runs:wf:{workflow}"

    def idempotency(self, workflow: str, key: str, owner: str | None = None) -> str:
        """An owner's keys are its own: another owner's same key is another run (and
        must not name it). JSON keeps the parts apart whatever characters they hold."""
        if owner:
            return f"{self.prefix}:idem-of:{json.dumps([workflow, owner, key])}"
        return f"{self.prefix}:idem:{workflow}:{key}"

    @property
    def workers(self) -> str:
        """ZSET worker id (``node:pid``) -> last heartbeat of the worker process."""
        return f"{self.prefix}:workers"

    @property
    def nodes(self) -> str:
        """HASH Celery node name -> what it announced when ready (queues, pool, concurrency)."""
        return f"{self.prefix}:nodes"

    @property
    def swept(self) -> str:
        """STRING JSON {at, interval}: when the reaper's last sweep ended (is beat alive?)."""
        return f"{self.prefix}:reaper:swept"

    @property
    def stuck(self) -> str:
        """STRING JSON list: the workers the reaper last found taking nothing from queues
        that hold messages (flowkit.engine.consumers); expires unless found again."""
        return f"{self.prefix}:reaper:stuck"

    def cache(self, component: str, version: str, digest: str) -> str:
        """STRING: a component's cached output. JSON keeps the name and version apart
        whatever characters they hold: ``billing:charge`` of version 1 and ``billing`` of
        version ``charge:1`` shared one entry, the second answered with the first's output."""
        return f"{self.prefix}:cache-of:{json.dumps([component, version])}:{digest}"

    def rate(self, bucket: str) -> str:
        """HASH of one shared rate-limit bucket: ``llm:<provider>:<model>`` (flowkit.llm),
        ``step:<component>:<key>`` (a component's rate_limit)."""
        return f"{self.prefix}:rate:{bucket}"

    def wakers(self, event_key: str) -> str:
        """SET "<run id> <wait key>" of the waits for events sent under ``event_key``."""
        return f"{self.prefix}:wakers:{event_key}"

    def resumes_owed(self) -> str:
        """SET "<run id> <gen>" of the resumes a run's state took but the broker did not
        (it was away): beat's sweep sends them."""
        return f"{self.prefix}:resumes:owed"

    def sent(self, event_key: str) -> str:
        """STREAM of the events sent under ``event_key`` lately (a wait's look-back)."""
        return f"{self.prefix}:sent:{event_key}"

    def slots(self, group: str) -> tuple[str, str]:
        """(active, pending) ZSETs of a concurrency group, sharing a slot of their own."""
        tag = f"{self.prefix}:{{cc:{hashlib.sha1(group.encode()).hexdigest()[:16]}}}"
        return f"{tag}:active", f"{tag}:pending"

    @property
    def groups(self) -> str:
        """HASH concurrency group -> its limit: the groups the reaper reconciles."""
        return f"{self.prefix}:cc:groups"

    @property
    def step_groups(self) -> str:
        """HASH component slot group (``step:<component>:<key>``) -> its limit."""
        return f"{self.prefix}:cc:step-groups"

    @property
    def schedules(self) -> str:
        """HASH schedule id -> its definition (JSON); shares a slot with ``schedules_due``."""
        return f"{self.prefix}:{{schedules}}:defs"

    @property
    def schedules_due(self) -> str:
        """ZSET schedule id -> when it next fires (a paused schedule is not in it)."""
        return f"{self.prefix}:{{schedules}}:due"

    @property
    def schedule_runs(self) -> str:
        """HASH schedule id -> the run its last tick started (an ``overlap`` policy asks it)."""
        return f"{self.prefix}:{{schedules}}:runs"

    @property
    def schedule_buffered(self) -> str:
        """HASH schedule id -> the tick it holds back until its last run ends
        (``overlap="buffer"``)."""
        return f"{self.prefix}:{{schedules}}:buffered"

    @property
    def schedule_claimed(self) -> str:
        """ZSET ``"<schedule id> <tick>"`` -> when a sweep claimed that tick: a tick whose
        run is owed until the sweep settles it (one that died first leaves it to the next)."""
        return f"{self.prefix}:{{schedules}}:claimed"

    def schedule_firing(self, schedule_id: str) -> str:
        """STRING a lock (redis-py's): held while an ``overlap`` policy reads the schedule's
        last run and starts the next."""
        return f"{self.prefix}:{{schedules}}:firing:{schedule_id}"

    @property
    def schedule_errors(self) -> str:
        """HASH schedule id -> why its last tick started no run (JSON), until one does."""
        return f"{self.prefix}:{{schedules}}:errors"

    def relay_wake(self, name: str) -> str:
        """A relay hub's private stream: an entry wakes its blocked XREAD."""
        return f"{self.prefix}:relay:wake:{name}"
