"""Runs: the record of one execution of a workflow, and what can be done to it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from . import events
from .config import get_settings
from .errors import InvalidState, RunCancelled, RunNotFound, StepError
from .serialization import loads
from .store import Store, get_store

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)


def _num(value: str | None) -> float | None:
    return float(value) if value else None


@dataclass
class Run:
    """A snapshot of a run's record. ``refresh()`` reads it again."""

    id: str
    workflow: str
    version: str
    state: str
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
    #: False when ``start`` found an existing run for the idempotency key.
    created: bool = field(default=True, compare=False)

    @classmethod
    def from_record(cls, h: dict[str, str]) -> Run:
        return cls(
            id=h["id"],
            workflow=h["workflow"],
            version=h.get("version", "1"),
            state=h["state"],
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
        )

    @classmethod
    def load(cls, run_id: str, store: Store | None = None) -> Run:
        store = store or get_store()
        pipe = store.redis.pipeline(transaction=False)
        pipe.hgetall(store.keys.run(run_id))
        pipe.hgetall(store.keys.attempts(run_id))
        record, attempts = pipe.execute()
        if not record:
            raise not_found(run_id)
        run = cls.from_record(record)
        run.attempts = {step: int(n) for step, n in attempts.items()}
        return run

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "created"}
        return data

    def refresh(self) -> Run:
        return Run.load(self.id)

    def events(self, after: str = events.START, limit: int | None = None) -> list[events.Event]:
        return events.history(self.id, after, limit)

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run is terminal (or ``timeout`` s pass) and return its record."""
        return wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The run's output; raises StepError if it failed, RunCancelled if cancelled."""
        run = self.wait(timeout)
        if run.state == SUCCEEDED:
            return run.output
        if run.state == FAILED:
            err = run.error or {}
            raise StepError(err.get("message", "run failed"), err.get("step"), err.get("attempts"))
        if run.state == CANCELLED:
            raise RunCancelled(f"Run {run.id} was cancelled.")
        raise TimeoutError(f"Run {run.id} is still {run.state} after {timeout}s.")

    def cancel(self) -> Run:
        return cancel(self.id)

    def retry(self) -> Run:
        return retry(self.id)


def not_found(run_id: str) -> RunNotFound:
    return RunNotFound(f"No run {run_id!r} (unknown, or expired after its retention).")


def get_run(run_id: str) -> Run:
    return Run.load(run_id)


def wait(run_id: str, timeout: float | None = None) -> Run:
    """Block until the run is terminal (or ``timeout`` s pass) and return its record.

    It sleeps on the run's done channel, woken once when the run ends rather than by
    each of its events (a token stream has thousands), and re-reads the run every
    FLOWKIT_WAIT_RECHECK_SECONDS in case the message was lost (Redis restarted).
    """
    store = get_store()
    deadline = None if timeout is None else time.monotonic() + timeout
    recheck = get_settings().wait_recheck_seconds
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(store.keys.done(run_id))
        run = Run.load(run_id, store)  # read after subscribing: no end can slip between
        while not run.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return run
            pubsub.get_message(timeout=recheck if left is None else min(left, recheck))
            run = Run.load(run_id, store)
        return run
    finally:
        pubsub.close()


def list_runs(
    workflow: str | None = None,
    state: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> list[Run]:
    """Runs newest first, optionally of one workflow and in one state; ``before`` a run id."""
    store = get_store()
    index = store.keys.runs_of(workflow) if workflow else store.keys.runs
    found: list[Run] = []
    start = 0
    page = max(limit * 2, 50)
    bound = "+inf"
    if before:
        score = store.redis.zscore(index, before)
        bound = f"({score}" if score is not None else "+inf"
    while len(found) < limit:
        ids = store.redis.zrevrangebyscore(index, bound, "-inf", start=start, num=page)
        if not ids:
            break
        pipe = store.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(store.keys.run(run_id))
        for record in pipe.execute():
            if record and (state is None or record.get("state") == state):
                found.append(Run.from_record(record))
                if len(found) == limit:
                    break
        start += page
    return found


def cancel(run_id: str) -> Run:
    """Cancel a queued or running run; a running step sees it at its next event or check."""
    store = get_store()
    result = store.cancel(run_id, time.time(), events.make(events.RUN_CANCELLED, run_id))
    if result < 0:
        raise not_found(run_id)
    run = Run.load(run_id, store)
    if result == 0:
        raise InvalidState(f"Run {run_id} already {run.state}; only queued or running runs cancel.")
    return run


def retry(run_id: str) -> Run:
    """Resume a failed run from its failed step; completed steps keep their checkpoints."""
    store = get_store()
    run = Run.load(run_id, store)
    if run.state != FAILED:
        raise InvalidState(f"Run {run_id} is {run.state}; only failed runs can be retried.")
    gen, why = store.restart(
        run_id, expected_state=FAILED, reason="retry requested", now=time.time()
    )
    if not gen:
        raise InvalidState(f"Run {run_id} could not be retried ({why}).")
    send_resume(run, gen)
    return Run.load(run_id, store)


def send_resume(run: Run, gen: int) -> None:
    """Ask a worker of the run's own queue to enqueue generation ``gen`` of its canvas
    (it has the workflow version the run started with; this process may not)."""
    from .celery_app import get_app

    get_app().send_task("flowkit.resume", kwargs={"run_id": run.id, "gen": gen}, queue=run.queue)
