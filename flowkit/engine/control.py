"""The door to runs from outside a worker: start, cancel, retry and resume them, and read them.

The API, the CLI and Python callers use this module and nothing else of the engine; it
is the only code outside the worker that sends Celery messages. A :class:`Run` is a
snapshot of a run's record.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ulid import ULID

from .. import defaults, events
from ..config import get_settings
from ..coroutines import on_shared_loop
from ..errors import (
    BrokerUnavailable,
    ConfigError,
    FlowkitError,
    IdempotencyConflict,
    InvalidState,
    RunCancelled,
    RunNotFound,
    StepError,
    StoreUnavailable,
    ValidationError,
)
from ..flow import MAX_DELAY, check_priority
from ..numbers import LAST_TIME, is_number, is_whole
from ..schemas import check_event_key, check_input_name, json_errors
from ..serialization import (
    MAX_DEPTH,
    canonical,
    comparable,
    dumps,
    dumps_bounded,
    loads,
    nested_too_deeply,
)
from ..states import RunState, WaitKind, WaitOutcome
from ..store import HANDED_OVER, Entry, Store, get_store
from ..workflow import Workflow, workflows
from . import admission, canvas, publish
from . import schedules as schedules  # the door to schedules too (the API's)
from . import trace as traces
from .broker import get_app
from .dispatch import send, send_resume
from .paths import ATTEMPT_KEYS

log = logging.getLogger(__name__)


def _num(value: str | None) -> float | None:
    return float(value) if value else None


@dataclass
class Run:
    """A snapshot of a run's record: the one place its shape is written down.
    ``refresh()`` reads it again."""

    id: str
    workflow: str
    version: str
    state: RunState
    input: Any
    created_at: float
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    failed_step: str | None = None
    gen: int = 0
    restarts: int = 0
    owner: str = ""
    idempotency_key: str = ""
    heartbeat_at: float | None = None
    worker: str | None = None
    #: Celery queue of the run's tasks (the deployment that started it).
    queue: str | None = None
    #: Attempts started per step key (retries and restarts included); None in listings.
    attempts: dict[str, int] | None = None
    #: What a queued run, or a running one between steps, waits for when no live worker
    #: can take it (``get_run`` says).
    waiting_for: str | None = None
    #: The open waits of a paused run: kind, name, step, prompt, schema, expires_at.
    waits: list[dict[str, Any]] | None = None
    #: Restarts in a row that the run made no progress after (FLOWKIT_MAX_RESTARTS).
    stuck_restarts: int = 0
    #: When a scheduled run is due (a delayed start).
    start_at: float | None = None
    #: 0-9, 9 first: admitted and dispatched ahead of lower priorities.
    priority: int = 0
    #: ``<workflow>:<key>`` of a workflow with a concurrency key, and its limit.
    concurrency_group: str | None = None
    concurrency_limit: int | None = None
    #: What a run held by its concurrency key waits for ("2 of 2 runs of acme active").
    held_for: str | None = None
    #: False when ``start`` found an existing run for the idempotency key.
    created: bool = field(default=True, compare=False)

    @classmethod
    def from_record(cls, h: dict[str, str]) -> Run:
        return cls(
            id=h["id"],
            workflow=h["workflow"],
            version=h.get("version", "1"),
            state=RunState(h["state"]),
            input=loads(h["input"]) if h.get("input") else None,
            created_at=float(h["created_at"]),
            updated_at=_num(h.get("updated_at")),
            started_at=_num(h.get("started_at")),
            finished_at=_num(h.get("finished_at")),
            output=loads(h["output"]) if h.get("output") else None,
            error=loads(h["error"]) if h.get("error") else None,
            failed_step=h.get("failed_step") or None,
            gen=int(h.get("gen", 0)),
            restarts=int(h.get("restarts", 0)),
            owner=h.get("owner", ""),
            idempotency_key=h.get("idempotency_key", ""),
            heartbeat_at=_num(h.get("heartbeat_at")),
            worker=h.get("worker") or None,
            queue=h.get("queue") or None,
            stuck_restarts=int(h.get("stuck_restarts", 0)),
            start_at=_num(h.get("start_at")),
            priority=int(h.get("priority", 0)),
            concurrency_group=h.get("concurrency_group") or None,
            concurrency_limit=int(h["concurrency_limit"]) if h.get("concurrency_limit") else None,
            held_for=h.get("held_for") or None,
        )

    @staticmethod
    def new_record(
        run_id: str, workflow: Workflow, input_json: str, now: float, owner: str | None,
        idempotency_key: str | None, queue: str, start_at: float | None = None,
    ) -> dict[str, Any]:
        """The record a new run is stored with (queued, or scheduled; generation 0)."""
        record = {
            "id": run_id, "workflow": workflow.name, "version": workflow.version,
            "state": (RunState.QUEUED if start_at is None else RunState.SCHEDULED).value,
            "input": input_json, "created_at": now, "updated_at": now, "gen": 0, "restarts": 0,
            "owner": owner or "", "idempotency_key": idempotency_key or "", "queue": queue,
            "sub_step_keys": ATTEMPT_KEYS,  # see flowkit.engine.paths
        }
        if start_at is not None:
            record["start_at"] = start_at
        return record

    @classmethod
    def load(cls, run_id: str, store: Store | None = None) -> Run:
        record, attempts, waits = (store or get_store()).load_run(check_run_id(run_id))
        if not record:
            raise not_found(run_id)
        run = cls.from_record(record)
        run.attempts = {step: int(n) for step, n in attempts.items()}
        run.waits = [{k: v for k, v in wait.items() if k != "floor"} for wait in waits]
        return run

    @classmethod
    def ended(cls, record: dict[str, str], attempts: dict[str, str]) -> Run:
        """The run as its end's message carried it (its waits are gone: the end drops them)."""
        run = cls.from_record(record)
        run.attempts = {step: int(n) for step, n in attempts.items()}
        run.waits = []
        return run

    @property
    def done(self) -> bool:
        return self.state.terminal

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "created"}

    def refresh(self) -> Run:
        return Run.load(self.id)

    def events(self, after: str = events.START, limit: int | None = None) -> list[events.Event]:
        return history(self.id, after, limit)

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run is terminal (or ``timeout`` s pass) and return its record."""
        return wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The run's output; raises StepError if it failed, RunCancelled if cancelled."""
        return self._outcome(self.wait(timeout), timeout)

    async def wait_async(self, timeout: float | None = None) -> Run:
        """:meth:`wait` for async code (an async step, an async web handler): it waits in a
        thread, and the event loop goes on (the child run's async steps may run on it)."""
        return await asyncio.to_thread(wait, self.id, timeout)

    async def result_async(self, timeout: float | None = None) -> Any:
        """:meth:`result` for async code (see :meth:`wait_async`)."""
        return self._outcome(await self.wait_async(timeout), timeout)

    @staticmethod
    def _outcome(run: Run, timeout: float | None) -> Any:
        if run.state == RunState.SUCCEEDED:
            return run.output
        if run.state == RunState.FAILED:
            err = run.error or {}
            raise StepError(err.get("message", "run failed"), err.get("step"), err.get("attempts"))
        if run.state == RunState.CANCELLED:
            raise RunCancelled(f"Run {run.id} was cancelled.")
        try:  # no worker, or none on a queue it needs; a TimeoutError whatever happens
            why = get_run(run.id).waiting_for
        except FlowkitError:  # the run expired meanwhile, Redis went away
            why = None
        waited = max(timeout, 0) if timeout is not None else timeout  # a negative one: none
        raise TimeoutError(f"Run {run.id} is still {run.state} after {waited}s"
                           + (f": {why}." if why else "."))

    def cancel(self) -> Run:
        return cancel(self.id)

    def retry(self) -> Run:
        return retry(self.id)


def check_run_id(run_id: Any) -> str:
    """``run_id`` if it is one (a string); a TypeError saying what to pass otherwise: a
    Run, None or a number reached Redis and failed there, as an AttributeError."""
    if isinstance(run_id, str):
        return run_id
    hint = " (pass run.id)" if isinstance(run_id, Run) else ""
    raise TypeError(f"A run id is a string like '01J...'{hint}, not {type(run_id).__name__}.")


def canonical_run_id(text: str) -> str:
    """A run id as it is stored, upper-case. Run ids are ULIDs, whose letters are
    case-insensitive: one pasted in lower case (from a log, a URL a tool lower-cased) was
    "no run" on every path, though ``?before=`` took it. Anything else is left as given,
    to be refused or not found as it is."""
    if len(text) == 26 and text.isascii() and text.isalnum():
        return text.upper()
    return text


def not_found(run_id: str) -> RunNotFound:
    # a run id has 26 characters: a longer one is said by its length, not echoed whole
    named = repr(run_id) if len(run_id) <= 60 else f"with a {len(run_id)}-character id"
    return RunNotFound(f"No run {named} (unknown, or expired after its retention).")


# -- starting ------------------------------------------------------------------------


def start(
    workflow: Workflow, input: Any = None, *, idempotency_key: str | None = None,
    owner: str | None = None, delay: float | None = None, start_at: datetime | float | None = None,
    priority: int = 0, store: Store | None = None,
) -> Run:
    """Validate ``input``, store a queued run and enqueue its canvas (``Workflow.start``).

    With ``idempotency_key`` (``""`` is none), a second start with the same key and
    ``owner`` returns the first run (``run.created`` is False) and enqueues nothing
    (another owner's same key is another run). With ``delay`` (seconds) or ``start_at``
    (a datetime, or a Unix time) the run is ``scheduled``: beat starts it then (visible
    and cancellable meanwhile).
    ``priority`` (0-9, 9 first): admitted and dispatched ahead of lower priorities on the
    same queue. A workflow with a concurrency key holds the run in Redis while its key has
    no free slot (engine.admission).
    ``store``: the store to use (the API passes its own, with a short retry budget); by
    default this process's.
    """
    store = store or get_store()
    priority = check_priority(priority)
    if idempotency_key == "":  # as a keyless run's ``run.idempotency_key`` reads
        idempotency_key = None
    if idempotency_key is not None and not (isinstance(idempotency_key, str)
                                            and len(idempotency_key) <= 255):
        raise ConfigError(f"start(idempotency_key=...) is up to 255 characters of text, not "
                          f"{_shown(idempotency_key)}.")
    if owner is not None and not (isinstance(owner, str) and len(owner) <= MAX_OWNER_CHARS):
        raise ConfigError(f"start(owner=...) is text (who started the run) of up to "
                          f"{MAX_OWNER_CHARS} characters, not {_shown(owner)}.")
    payload = workflow.validate(input)
    input_json = dumps_bounded(payload, "the workflow input")
    queue = workflow.queue or get_app().conf.task_default_queue
    # the id says the millisecond the run was made, and the listings order by it (store)
    now = time.time()
    run_id = str(ULID.from_timestamp(now))
    due = _due(now, delay, start_at)
    record = Run.new_record(run_id, workflow, input_json, now, owner, idempotency_key, queue, due)
    record["priority"] = priority
    # where its messages go, for a reaper that does not import the workflow (reaper._lost);
    # the hand-offs of its messages add any other (a step reached by continue_with)
    record["handoff_queues"] = " ".join(sorted(workflow.queues(queue)))
    if workflow.concurrency is not None:
        key = workflow.concurrency.key_of(payload, owner)
        record["concurrency_group"] = f"{workflow.name}:{key}"
        record["concurrency_limit"] = workflow.concurrency.limit
    if due is None:
        first = events.make(events.RUN_QUEUED, run_id, workflow=workflow.name,
                            version=workflow.version)
    else:
        first = events.make(events.RUN_SCHEDULED, run_id, workflow=workflow.name,
                            version=workflow.version, start_at=due)
    messages = None
    if due is None and workflow.concurrency is None:  # sent with the run, when it can be
        messages = send(lambda: publish.first_messages(store, run_id, *canvas.first_canvas(
            workflow, run_id, payload, queue, priority)))
    winner, created = store.create_run(record, first, idempotency_key, start_at=due,
                                       messages=messages)
    if not created:
        existing = Run.load(winner, store)
        if comparable(existing.input) != comparable(payload):
            raise IdempotencyConflict(
                f"Idempotency key {idempotency_key!r} was used for run {winner} with "
                "another input; use a new key for a new run."
            )
        existing.created = False
        return existing
    # a claim whose maker stopped before storing its run (or has not stored it yet) made
    # the run under the claim's id: this caller was handed its own, which named no run
    record = {**record, "id": winner}
    if due is None and _admitted(record, store):
        if messages is None or not messages.pushed:
            try:
                send(lambda: canvas.enqueue(workflow, winner, 0, payload, queue, priority))
            except BrokerUnavailable as exc:
                exc.run_id = winner  # stored: the caller must not start it again
                raise
        # as created: queued (a worker may have started it already; no read to say so)
        return Run.from_record({k: str(v) for k, v in record.items()})
    return Run.load(winner, store)  # scheduled, or held with the reason


def _shown(value: Any) -> str:
    """``value`` for a message, at most about 60 characters of it."""
    text = repr(value)
    if len(text) <= 60:
        return text
    return f"str of {len(value)} characters" if isinstance(value, str) else text[:57] + "..."


def _admitted(record: dict[str, Any], store: Store) -> bool:
    """Whether a run may be enqueued now: always, unless its concurrency key is full."""
    if "concurrency_group" not in record:
        return True
    return admission.request(record["id"], record["concurrency_group"],
                             record["concurrency_limit"], record["priority"], store)


def _due(now: float, delay: float | None, start_at: datetime | float | None) -> float | None:
    """When a delayed start is due (None: start now)."""
    if delay is not None and start_at is not None:
        raise ConfigError("start(...) takes delay= or start_at=, not both.")
    if delay is not None:
        if not is_number(delay) or delay < 0:
            raise ConfigError(f"start(delay=...) is a number of seconds >= 0, not {delay!r}.")
        if delay > MAX_DELAY:  # as the REST API's `delay`
            raise ConfigError(f"start(delay=...) is at most {MAX_DELAY} seconds (366 days), "
                              f"not {delay!r}: pass start_at= for a later start.")
        return now + float(delay) if delay > 0 else None
    if start_at is None:
        return None
    given = start_at
    if isinstance(start_at, datetime):
        if start_at.tzinfo is None:
            raise ConfigError("start(start_at=...) needs a timezone-aware datetime.")
        start_at = start_at.timestamp()
    elif not is_number(start_at):
        raise ConfigError(f"start(start_at=...) is a timezone-aware datetime or a Unix time, "
                          f"not {start_at!r}.")
    if start_at > LAST_TIME:  # 9999-12-31T23:59-23:59 too: the year 10000 in UTC
        raise ConfigError(f"start(start_at={given!r}) is after the year 9999 (UTC): pass a "
                          "Unix time in seconds (not milliseconds), or an earlier datetime.")
    return float(start_at) if float(start_at) > now else None


# -- reading ---------------------------------------------------------------------------


def get_run(run_id: str, store: Store | None = None) -> Run:
    """The run's record; a queued run that no live worker can take says why (waiting_for),
    as does a running one between steps (none holds a lease): its next step may sit in a
    queue no live worker consumes (a ``.queue("llm")`` the workers were not started on)."""
    store = store or get_store()
    return say_why_it_waits(Run.load(run_id, store), store)


def say_why_it_waits(run: Run, store: Store) -> Run:
    """``run`` with ``waiting_for`` set, as :func:`get_run` gives it."""
    if run.state == RunState.QUEUED:
        run.waiting_for = waiting_for(run, store)
    elif run.state == RunState.RUNNING:
        if not store.steps_in_flight(run.id):
            run.waiting_for = waiting_for(run, store)
        elif time.time() - (run.heartbeat_at or 0) > get_settings().heartbeat_lapse:
            # no worker beat for it lately: which step's lease lapsed (its leases are read
            # only then: a fan-out holds a thousand, and a record is read every few seconds)
            run.waiting_for = lost_steps(store.leases_in_flight(run.id), store)
    return run


def lost_steps(held: dict[str, dict[str, Any]], store: Store | None = None) -> str | None:
    """What a running run waits for when a step's lease lapsed (its worker killed or frozen):
    the reaper's restart, which needs beat and a live worker. Such a run looked like it ran
    on, its step "running", for as long as no worker came back."""
    now = time.time()
    lapsed = {step: lease for step, lease in held.items()  # a handed-over one is in line
              if float(lease.get("expires") or 0) <= now and lease.get("token") != HANDED_OVER}
    if not lapsed:
        return None
    step, lease = min(lapsed.items(), key=lambda item: float(item[1].get("expires") or 0))
    said = (f"step {step}'s worker ({lease.get('worker') or '?'}) stopped beating: its lease "
            f"lapsed {max(0.0, now - float(lease.get('expires') or now)):.0f}s ago; the reaper "
            "restarts it")
    if not live_workers(store):
        said += " once a worker is up (no live worker: start one)"
    return said


def default_queue() -> str:
    """The queue of runs whose workflow names none (this process's Celery app's default)."""
    return get_app().conf.task_default_queue


def live_workers(store: Store | None = None) -> list[dict[str, Any]]:
    """Worker nodes with a process that beat recently: name, queues, pool, concurrency,
    processes and last_beat (what each announced when ready)."""
    settings = get_settings()
    recent = time.time() - max(settings.heartbeat_lapse, 3 * settings.heartbeat_interval)
    return (store or get_store()).nodes_seen_since(recent)


def serving(workflow: str, queue: str, but: str = "", store: Store | None = None) -> list[str]:
    """The live workers, other than ``but``, that take steps from ``queue`` and announce
    ``workflow`` (a worker lists the workflows its code defines when it is ready): during
    a rolling deploy, the new release's workers, where this one runs the old code."""
    return sorted(w["name"] for w in live_workers(store)
                  if w["name"] != but and queue in consumes(w)
                  and workflow in (w.get("workflows") or {}))


def no_worker(store: Store | None = None) -> str:
    """What a deployment with no live worker needs. Under ``flowkit dev`` (its last worker
    was dev's) that is a fix of the code: dev's worker stopped on it (an import that
    fails) and starts again when a file is saved; "start one (celery ...)" sent the user
    to start a second worker on the same broken code."""
    seen = (store or get_store()).nodes_seen_since(0)
    last = max(seen, key=lambda node: node["last_beat"], default=None)
    if last is not None and re.match(defaults.DEV_NODE_PATTERN, last["name"]):
        return ("no live worker: flowkit dev's worker is down (its log, in the flowkit dev "
                "terminal, says why); it starts again when you save a fix")
    return "no live worker: start one (celery -A <your app> worker)"


def consumes(worker: dict[str, Any]) -> list[str]:
    """The queues a live worker takes steps from: none while it drains (SIGTERM), none
    that ``flowkit drain`` cancelled (it counted as their consumer until it exited)."""
    return [] if worker.get("draining") else list(worker.get("queues") or ())


def unconsumed(queues: set[str], workers: list[dict[str, Any]]) -> list[str]:
    """The queues no live worker consumes (by what the workers announce with each beat)."""
    consumed = {q for w in workers for q in consumes(w)}
    return sorted(queues - consumed)


def undefined_on(workflow: str, queues: Iterable[str], workers: list[dict[str, Any]]) -> list[str]:
    """The queues among ``queues`` that live workers consume, every one of which says which
    workflows its code defines, and none defines ``workflow`` (a worker app that does not
    import its module): its steps there are dropped as unknown tasks, and its runs fail."""
    found = []
    for queue in sorted(set(queues)):
        takers = [w for w in workers if queue in consumes(w)]
        if takers and all(isinstance(w.get("workflows"), dict) for w in takers) and not any(
                workflow in w["workflows"] for w in takers):
            found.append(queue)
    return found


def waiting_for(run: Run, store: Store | None = None) -> str | None:
    """Why no worker takes this queued run, or None when a live worker consumes its queues."""
    workers = live_workers(store)
    if not workers:
        return no_worker(store)
    wf = workflows().get(run.workflow)
    if wf is not None:
        queues = wf.queues(run.queue or default_queue())
    else:  # this process lacks its code (the CLI without -A): the workers announce its routes
        queues = {run.queue or default_queue()} | {
            queue for w in workers for queue, names in (w.get("routes") or {}).items()
            if run.workflow in names}
    missing = unconsumed(queues, workers)
    if missing:
        return f"no live worker consumes queue {', '.join(missing)}: start one with " \
               f"--queues {','.join(missing)}"
    return None


def list_runs(
    workflow: str | None = None,
    state: str | None = None,
    limit: int = 50,
    before: str | None = None,
    store: Store | None = None,
    owner: str | None = None,
) -> list[Run]:
    """Runs newest first, optionally of one workflow, in one state and of one owner;
    ``before`` a run id: the runs created before it, also when that run has expired (a
    pager's cursor outlives it; a run id says when it was made). ValidationError when
    ``before`` is not a run id."""
    if state is not None and state not in {s.value for s in RunState}:
        message = (f"{state!r} is not a run state: one of "
                   f"{', '.join(s.value for s in RunState)}.")
        raise ValidationError({"state": [message]}, message)
    _check_limit(limit)
    since = None
    if before is not None:
        before = canonical_run_id(before)  # the index holds it upper-case
        try:
            since = ULID.from_str(before).timestamp
        except ValueError:
            message = (f"{before!r} is not a run id: pass the previous page's `next` (the "
                       "last run's id), or nothing for the newest runs.")
            raise ValidationError({"before": [message]}, message) from None
    records = (store or get_store()).list_runs(workflow, state, limit, before, owner, since)
    return [Run.from_record(r) for r in records]


def wait(run_id: str, timeout: float | None = None) -> Run:
    """Block until the run is terminal (or ``timeout`` s pass) and return its record.

    It sleeps on the run's end (a message when it ends), woken once rather than by each
    of its events (a token stream has thousands), and re-reads the run every
    FLOWKIT_WAIT_RECHECK_SECONDS in case the message was lost (Redis restarted).
    """
    if is_whole(timeout):
        timeout = max(-1, min(timeout, 10**9))  # 10**400 overflowed a float
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or math.isnan(timeout)):
        raise TypeError(f"wait(timeout=...) is a number of seconds, or None to wait until the "
                        f"run ends; not {timeout!r}.")
    if timeout is not None and math.isinf(timeout):
        timeout = None if timeout > 0 else 0.0
    if timeout is not None and timeout < 0:  # as threading's waits: no wait ("after -1s")
        timeout = 0.0
    deadline = None if timeout is None else time.monotonic() + timeout
    check_run_id(run_id)
    recheck = get_settings().wait_recheck_seconds
    with get_store().watch_end(run_id) as watch:
        run = Run.load(run_id)  # read after subscribing: no end can slip between
        if not run.done and timeout != 0 and on_shared_loop():
            # an async step waiting so for a child run held up the loop the child's async
            # steps run on: it waited out its whole timeout, "still running"
            raise RuntimeError(f"waiting for run {run_id} here would block the event loop of "
                               "this process's async steps until it ends (its own async "
                               "steps may need that very loop): await run.wait_async() or "
                               "run.result_async() instead.")
        while not run.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return run
            watch.wait(recheck if left is None else min(left, recheck))
            # the end's message carries the ended run (one read less on the way back)
            run = Run.ended(*watch.ended) if watch.ended else Run.load(run_id)
        return run


def history(
    run_id: str, after: str = events.START, limit: int | None = None, store: Store | None = None
) -> list[events.Event]:
    """The run's events after ``after`` (exclusive), oldest first. An unknown run (or one
    expired after its retention) raises RunNotFound: every run has its ``run.queued``; a
    cursor past the run's last event raises ValidationError, as :func:`follow` does (a
    mistyped cursor read as "no events")."""
    if limit is not None:
        _check_limit(limit)
    store = store or get_store()
    cursor = _cursor(after)
    found = events.parse(store.history(check_run_id(run_id), cursor, limit))
    if not found:
        tail = None if cursor == events.START else store.last_event(run_id)
        if tail is None:
            Run.load(run_id, store)  # nothing at all: unknown, or expired
        else:
            _check_not_past(run_id, cursor, tail)
    return found


def _check_not_past(run_id: str, cursor: str, tail: Entry) -> None:
    ended = events.parse([tail])[0].terminal
    beyond = events.past_the_end(cursor, tail[0], live=not ended)
    if beyond:
        message = (f"Cursor {cursor} is past run {run_id}'s events ({beyond}): resume from an "
                   "id its stream gave you, or from the start.")
        raise ValidationError({"after": [message]}, message)


def _check_limit(limit: Any) -> None:
    if not (is_whole(limit) and limit >= 1):
        message = f"limit is a whole number >= 1, not {limit!r}."
        raise ValidationError({"limit": [message]}, message)


def _cursor(after: str) -> str:
    """``after`` as a stream id (``0`` and "" the start); ValidationError when it is none."""
    cursor = events.parse_cursor(after) if isinstance(after, str) else None
    if cursor is None:
        message = (f"{after!r} is not an event id: pass an id the run's events gave you "
                   "(e.g. 1700000000000-0), or 0 for the start.")
        raise ValidationError({"after": [message]}, message)
    return cursor


def follow(run_id: str, after: str = events.START, block_ms: int = 1000) -> Iterator[events.Event]:
    """Every event after ``after``: history first, then the live tail. Ends at the run's
    latest terminal event (:func:`flowkit.events.stream_ends`): a retried run's earlier
    ``run.failed`` is followed by the rest; a cursor at the final one ends at once; one past
    the run's last event raises :class:`ValidationError`, at this call (not at the first
    event: a caller says so before it shows anything). A run whose events leave Redis while
    followed (its retention ran out, it was deleted) raises :class:`RunNotFound` within a
    second or ``block_ms`` (it waited for ever)."""
    after = _cursor(after)
    if not (is_whole(block_ms) and block_ms >= 1):  # Redis reads BLOCK 0 as for ever
        raise ValueError(f"follow(block_ms=...) is a whole number of milliseconds >= 1, not "
                         f"{block_ms!r}.")
    store = get_store()
    tail = store.last_event(check_run_id(run_id))
    if tail is None:  # a run has its run.queued from its creation on: unknown, or expired
        Run.load(run_id, store)
    ended = tail is not None and events.parse([tail])[0].terminal
    if tail is not None:
        _check_not_past(run_id, after, tail)
    done = ended and events.cursor_order(tail[0]) <= events.cursor_order(after)
    return _tail(store, run_id, after, block_ms, done)


#: What a follower is told when the run's events leave Redis while it follows (as the
#: API's streams say it, ``event: not_found``).
GONE = "This run no longer exists (its retention ran out, or it was deleted)."
#: Least seconds between two looks, while nothing comes, at whether the run is gone.
VANISHED_CHECK = 1.0


def _tail(store: Store, run_id: str, cursor: str, block_ms: int, done: bool
          ) -> Iterator[events.Event]:
    count, looked = 500, time.monotonic()
    while not done:
        batch = events.parse(store.read_new(run_id, cursor, block_ms, count=count))
        if not batch and time.monotonic() - looked >= VANISHED_CHECK:
            # a run whose events left Redis (its retention ran out while it waited, it was
            # deleted) sends no more: XREAD of its missing stream blocked for ever
            looked = time.monotonic()
            if store.last_event(run_id) is None:
                raise RunNotFound(f"run {run_id}: {GONE}")
        for event in batch:
            yield event
            cursor = event.id
        if batch and batch[-1].terminal:
            done = events.stream_ends(True, more_may_follow=len(batch) == count) \
                or not store.history(run_id, cursor, 1)


def trace(run_id: str, store: Store | None = None) -> list[dict[str, Any]]:
    """The run's trace: the workflow span first, then every span recorded, oldest first."""
    return traces.read(check_run_id(run_id), store)


# -- changing ---------------------------------------------------------------------------


def cancel(run_id: str, store: Store | None = None, *, reason: str | None = None) -> Run:
    """Cancel a queued or running run; a running step sees it at its next event or check.
    ``reason``, when given, is the ``run.cancelled`` event's (who cancelled it, and why)."""
    if reason is not None and not isinstance(reason, str):  # its event said 5, or a dict
        raise TypeError(f"A cancel's reason is text, not {type(reason).__name__}.")
    store = store or get_store()
    said = {"reason": reason} if reason else {}
    result = store.cancel(check_run_id(run_id), time.time(),
                          events.make(events.RUN_CANCELLED, run_id, **said))
    if result < 0:
        raise not_found(run_id)
    if result > 0:
        admission.released(run_id, store)
        traces.run_ended(run_id, store)
    run = Run.load(run_id, store)
    if result == 0:
        raise InvalidState(f"Run {run_id} already {run.state}; only a run that has not ended "
                           "(queued, scheduled, running or waiting) cancels.")
    return run


def retry(run_id: str, store: Store | None = None) -> Run:
    """Resume a failed run from its failed step; completed steps keep their checkpoints."""
    store = store or get_store()
    run = Run.load(run_id, store)
    if run.state != RunState.FAILED:
        raise InvalidState(f"Run {run_id} is {run.state}; only failed runs can be retried.")
    # a parallel branch may still run after another failed the run: retried now, it ran
    # again beside itself (a failed run starts no step, so none can begin after this read)
    running = store.live_leases(run_id, time.time())
    if running:
        step, lease = next(iter(sorted(running.items())))
        raise InvalidState(f"Run {run_id} failed, but its step {step} still runs (attempt "
                           f"{lease.get('attempt')} on {lease.get('worker')}): retry once it "
                           "ends; its output is then kept, not made again.")
    if (run.error or {}).get("type") in ("InputTimeout", "EventTimeout"):
        # a wait's timeout failed it: retried, its steps wait anew, with fresh deadlines
        # (a checkpointed timeout raised again at once: a retry that could never work)
        store.forget_timeouts(run_id)
    store.forget_failures(run_id)  # asked for: each step's whole retry budget again
    gen, why = store.restart(
        run_id, expected_state=RunState.FAILED, reason="retry requested", now=time.time()
    )
    if not gen:
        raise InvalidState(f"Run {run_id} could not be retried ({why}).")
    admitted = not run.concurrency_group or admission.request(
        run_id, run.concurrency_group, run.concurrency_limit or 1, run.priority, store)
    # the run as the retry left it (queued), read before the resume: read after, a worker
    # quick to take it made the answer "running" or even its end, by chance
    retried = Run.load(run_id, store)
    if admitted:
        resume(run, gen)  # else it waits in line for its slot, like a new run
    return retried


def resume(run: Run, gen: int) -> None:
    """Ask a worker of the run's own queue to enqueue the frontier of generation ``gen``
    (it has the workflow version the run started with; this process may not).

    The generation is open already (an answer, an event, a timer, a restart took it): a
    broker out of reach leaves the resume owed, in Redis, and beat's sweep sends it once the
    broker is back (:func:`send_owed_resumes`). It raised, and the caller told to try again
    found its answer taken ("same"), or its event's waits gone, and sent nothing: the run
    waited for the reaper to take it for stranded. A broker that refused flowkit (its
    credentials) still raises, after owing it: a setting to fix."""
    try:
        send_resume(run.id, gen, run.queue)
    except BrokerUnavailable as exc:
        get_store().owe_resume(run.id, gen)
        log.warning("flowkit: run %s resumes (generation %s) once the broker is back: %s",
                    run.id, gen, exc)
        if exc.refused:
            raise


def send_owed_resumes(store: Store | None = None) -> list[str]:
    """Send the resumes the broker could not take when they were decided (beat's sweep
    calls it); returns the runs resumed. A run restarted or ended since needs none."""
    store = store or get_store()
    sent: list[str] = []
    for run_id, gen in store.owed_resumes():
        try:
            run = Run.load(run_id, store)
        except RunNotFound:  # expired since
            run = None
        except StoreUnavailable:
            raise
        except Exception:  # a record it cannot read: dropped, or every sweep stopped here
            log.exception("flowkit: the resume owed to run %s (generation %s) is dropped: "
                          "its record cannot be read", run_id, gen)
            run = None
        if run is not None and run.gen == gen and not run.done:
            try:
                send_resume(run.id, gen, run.queue)
            except BrokerUnavailable as exc:  # still away: the next sweep tries again
                log.warning("flowkit: resumes still owed, the broker is away: %s", exc)
                break
            sent.append(run_id)
        store.settle_resume(run_id, gen)
    return sent


# -- answering waits ----------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What answering a wait did: ``outcome`` (a WaitOutcome) and, when the run resumed,
    its new generation (whose frontier was enqueued)."""

    outcome: WaitOutcome
    gen: int = 0

    @property
    def accepted(self) -> bool:
        return self.outcome in (WaitOutcome.RESUMED, WaitOutcome.DELIVERED, WaitOutcome.SAME)


#: The longest owner a run may have: one longer (an authorize() returning a whole
#: profile) was stored, but no listing (``?owner=``, 200 characters) could name it.
MAX_OWNER_CHARS = 1000


def send_input(run_id: str, name: str, value: Any, store: Store | None = None, *,
               step: str | None = None) -> Delivery:
    """Deliver input ``name`` to a run waiting for it (``flowkit.wait_for_input``); with
    ``step``, to that step's wait only (its key, as ``run.waits`` and ``run.waiting``
    name it: ``1[0]:review``), which a run whose steps wait under one name at once
    (fan-out items, parallel branches) needs.

    Raises ValidationError (field messages) when ``value`` breaks the schema the wait
    published, or when several steps wait for ``name`` and ``step`` names none of them;
    InvalidState when the run does not wait for ``name`` (or another value was accepted
    first); the same value sent again is accepted (SAME) and changes nothing.
    """
    check_input_name(name)
    _shallow_enough(value, "_schema", f"input {name!r}")
    step = step or None  # "" names no step (it slipped past both checks below)
    store = store or get_store()
    run = Run.load(run_id, store)
    named = [w for w in run.waits or () if w["kind"] == WaitKind.INPUT and w["name"] == name]
    wait = _the_wait(run_id, name, named, step)
    if wait is not None:
        expires = wait.get("expires_at")
        if expires is not None and time.time() > expires:
            # past its timeout the answer is the timeout's, whenever beat's sweep fires it
            # (an answer up to a sweep late was taken or refused by chance)
            raise InvalidState(f"Run {run_id}'s wait for input {name!r} timed out "
                               f"{time.time() - expires:.1f}s ago: its step gets "
                               "InputTimeout; no answer is taken past the timeout.")
        errors = json_errors(wait.get("schema"), value)
        if errors:
            raise ValidationError(errors, f"Invalid input {name!r}.")
    answer = dumps_bounded({"input": value}, f"input {name!r}")
    step = wait["step"] if wait else step
    resumed = events.make(events.RUN_RESUMED, run_id, by="input", name=name, step=step)
    outcome, gen = store.deliver(run_id, WaitKind.INPUT, name, answer, time.time(), resumed,
                                 step=step or "")
    if outcome == WaitOutcome.TIMED_OUT:  # beat's sweep fired the timeout already
        raise InvalidState(f"Run {run_id}'s wait for input {name!r} timed out: its step got "
                           "InputTimeout; no answer is taken past the timeout.")
    if outcome == WaitOutcome.ANSWERED and _same_answer(store, run_id, name, answer, step):
        # the same value with its keys in another order (a client that re-serialised on
        # retry got 409 "answered already, with another value"); the step gets the first
        outcome = WaitOutcome.SAME
    if outcome == WaitOutcome.ANSWERED:  # also when another answer won a race just now
        raise InvalidState(f"Run {run_id}'s input {name!r} was answered already, with another "
                           "value: the first answer stands (to ask again, the step waits "
                           "under another name).")
    if outcome == WaitOutcome.NOT_WAITING:
        # the steps that do wait (the one asked for may have stopped since the run was read:
        # a cancel, a restart; then it is the 409 below, not "step X does not, X does")
        others = sorted({w["step"] for w in named} - {step})
        if step is not None and others:  # "it waits for input 'x'" of a wait for 'x'
            said = (f"Step {step} of run {run_id} does not wait for input {name!r}: "
                    f"{'steps' if len(others) > 1 else 'step'} {', '.join(others)} "
                    f"{'do' if len(others) > 1 else 'does'}; pass one of them.")
            raise ValidationError({"step": [said]}, said)
        waiting = sorted(w["name"] for w in run.waits or () if w["kind"] == WaitKind.INPUT)
        what = (f"it waits for input {', '.join(map(repr, waiting))}" if waiting
                else "it waits for no input")
        raise InvalidState(f"Run {run_id} is {run.state} and does not wait for input "
                           f"{name!r}: {what}.")
    if outcome == WaitOutcome.RESUMED:
        resume(run, gen)
    return Delivery(outcome, gen)


def _shallow_enough(value: Any, field: str, what: str) -> None:
    """Refuse ``value`` nested past MAX_DEPTH, as the API refuses such a body: delivered,
    it failed the run whose step then reported it (the CLI and Python senders took it)."""
    if nested_too_deeply(value):
        said = f"nests objects and arrays more than {MAX_DEPTH} levels deep; flatten it."
        raise ValidationError({field: [said[0].upper() + said[1:]]}, f"{what[0].upper()}{what[1:]} {said}")


def _same_answer(store: Store, run_id: str, name: str, answer: str, step: str | None) -> bool:
    return any(canonical(given) == canonical(answer) for given in
               store.answers_given(run_id, WaitKind.INPUT.value, name, step or ""))


def _the_wait(run_id: str, name: str, named: list[dict[str, Any]],
              step: str | None) -> dict[str, Any] | None:
    """The open wait of input ``name`` an answer is for, among ``named`` (the run's open
    waits of that name): ``step``'s, or the only one. Several steps waiting under one name
    and no ``step`` is a ValidationError: the answer went to whichever wait Redis listed
    first (the dashboard's form for item 0 answered item 1)."""
    if step is not None:
        return next((w for w in named if w["step"] == step), None)
    steps = sorted({w["step"] for w in named})
    if len(steps) > 1:
        said = (f"Several steps of run {run_id} wait for input {name!r}: "
                f"{', '.join(steps)}; pass the step whose wait this answers.")
        raise ValidationError({"step": [said]}, said)
    return named[0] if named else None


def send_event(key: str, data: Any = None, store: Store | None = None) -> int:
    """Send an event under ``key``: every run waiting for it (``flowkit.wait_for_event``)
    wakes with ``data``; returns how many. It is kept FLOWKIT_EVENT_LOOKBACK_SECONDS for
    waits that begin later and look back."""
    check_event_key(key)
    store = store or get_store()
    now, settings = time.time(), get_settings()
    _shallow_enough(data, "data", f"the data of event {key!r}")
    data_json = dumps_bounded(data, f"the data of event {key!r}")
    # a stream per key, about 4.5 KB however small (Redis preallocates its first node), for
    # an hour after its last event; 0 keeps none, for senders of many keys no wait looks
    # back on (and then no look-back finds one)
    sent_id = (store.record_sent(key, data_json, now, settings.event_lookback_seconds)
               if settings.event_lookback_seconds > 0 else None)
    # which: a later wait of the run looks back past it
    answer = dumps({"event": data, "sent_at": now, "sent_id": sent_id})
    woken = 0
    for run_id, wait_key in store.wakers(key):
        resumed = events.make(events.RUN_RESUMED, run_id, by="event", name=key)
        outcome, gen = store.deliver(run_id, "key", wait_key, answer, now, resumed)
        store.drop_waker(key, run_id, wait_key)  # answered (or no longer waiting)
        if outcome == WaitOutcome.RESUMED:
            resume(Run.load(run_id, store), gen)
        woken += outcome in (WaitOutcome.RESUMED, WaitOutcome.DELIVERED)
    return woken


def fire_due_timers(now: float | None = None, store: Store | None = None) -> list[str]:
    """Fire every due timer (a wait's timeout, a sleep's end, a delayed start): each is one
    atomic claim, so two sweeps never fire one twice. Returns the runs it resumed."""
    store, now = store or get_store(), time.time() if now is None else now
    resumed: list[str] = []
    for run_id, key in store.due_timers(now):
        outcome, gen = store.fire_timer(run_id, key, now)
        if outcome != WaitOutcome.RESUMED:
            continue
        run = Run.load(run_id, store)
        held = key == "$start" and run.concurrency_group and not admission.request(
            run.id, run.concurrency_group, run.concurrency_limit or 1, run.priority, store)
        if held:  # a delayed start asks for its slot when due: it waits in line
            continue
        resume(run, gen)
        resumed.append(run_id)
    return resumed


