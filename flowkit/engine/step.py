"""The context of one attempt of a step: what the running component can read and send.

The executor makes it the current step of the attempt's thread
(:func:`flowkit.context.activate`); ``flowkit.progress``, ``emit``, ``is_cancelled``
and components called inside the step reach it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import events
from ..config import get_settings
from ..coroutines import call_with_policy
from ..errors import (
    ConfigError,
    EventTimeout,
    FlowkitError,
    InputTimeout,
    NotFound,
    RunCancelled,
    StepSuspended,
    StoreUnavailable,
    describe_error,
    mark_final,
)
from ..policy import call_with_timeout
from ..schemas import SchemaLike, as_schema, check_event_key, json_schema
from ..serialization import dumps, dumps_bounded, loads
from ..states import LIVE_STATES, WaitKind, WaitOutcome
from ..store import SPENT, Store
from ..version import __version__
from . import cache
from .paths import ATTEMPT_KEYS, NESTED_KEYS

log = logging.getLogger(__name__)

#: A step's ETA is estimated from its pace once it has run this long: from the first
#: milliseconds it says "done in 0.001 s" of a step that has minutes to go.
ETA_AFTER_SECONDS = 1.0


class _SubStepAttempt:
    """One attempt of a sub-step (a component called inside a step), as its code sees it.

    What it calls (and waits for) is checkpointed under its own key, numbered by its own
    count (``0:step/0:research/0:search``), in runs made by this release (see
    :attr:`StepContext.sub_step_keys`); its 2nd attempt's under ``0:step/0:research@2``, so that
    a retry makes its calls anew (it replayed those its failed attempt had checkpointed: a
    sub-step validating an LLM's answer got the same answer each attempt), and a restarted
    step replays each attempt as it went. On the step's count, a sub-step replayed from its
    checkpoint, whose body does not run again, no longer took the numbers its calls had
    taken: the step's later calls and waits got other keys on replay (a wait asked its
    person again; a call got another call's output), and sub-steps gathered together took
    theirs in whatever order their I/O finished.

    With a ``.timeout()``, an attempt runs in a thread (or task) of its own, which Python
    cannot stop once it timed out: it runs on, and what it still sends (events, sub-steps,
    waits, an LLM stream's text) is refused; the step that called it goes on (it retries
    the sub-step, or catches its StepTimeout). Marking the whole step's attempt abandoned
    instead dropped the step's own outcome, and its run hung until the reaper restarted it.
    It is made before its thread starts, so a timeout that fires first still marks it."""

    def __init__(self, key: str, number: int = 1) -> None:
        self.outer = _SUB_STEP.get()  # a sub-step inside another one
        self.key = key
        self.number = number  # from 1, counting a failed step's attempts before (``!spent``)
        #: Where its calls are keyed.
        self.prefix = key if number == 1 else f"{key}@{number}"
        self.calls = 0
        self.timed_out = False

    @property
    def abandoned(self) -> bool:
        return self.timed_out or (self.outer is not None and self.outer.abandoned)

    @property
    def ident(self) -> str:
        """How readers name this attempt, ``<key>@<number>``: a ``sub_step.retrying`` names
        the one that failed, and the chunks it streamed, which carry its ident, are dropped."""
        return f"{self.key}@{self.number}"

    def idents(self) -> list[str]:
        """The idents of this attempt and of the sub-step attempts it runs inside (outermost
        first): a chunk's ``sub_steps``, dropped when any of them failed and ran again."""
        return [*(self.outer.idents() if self.outer else ()), self.ident]

    def time_out(self) -> None:
        self.timed_out = True

    def run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """``fn(*args, **kwargs)`` as this attempt, in the calling thread (its context is
        restored after: a timed attempt's thread has a copy of its own anyway)."""
        token = _SUB_STEP.set(self)
        try:
            return fn(*args, **kwargs)
        finally:
            _SUB_STEP.reset(token)

    async def run_async(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        _SUB_STEP.set(self)  # in the attempt's own task's context only
        return await fn(*args, **kwargs)


#: Not read yet (StepContext.replaying).
_UNREAD: Any = object()
#: A chunk sent from the sub-step attempt this thread runs (StepContext.emit).
_THIS_THREAD: Any = object()


def _holds(key: str, wait_key: str) -> bool:
    """Whether passing ``key`` (a wait, or a sub-step: its calls are keyed under it, its
    later attempts' under ``key@N``) passes ``wait_key``."""
    return wait_key == key or wait_key.startswith((key + "/", key + "@"))


#: The sub-step attempt whose code runs here (None: the step's own).
_SUB_STEP: contextvars.ContextVar[_SubStepAttempt | None] = contextvars.ContextVar(
    "flowkit_sub_step", default=None)


def current_sub_step() -> _SubStepAttempt | None:
    """The sub-step attempt running here, if any (an LLM stream made here is dropped with
    it when it times out: :meth:`StepContext.abandoned_for`)."""
    return _SUB_STEP.get()


@dataclass
class StepContext:
    """What a running step knows about its run. Read it with :func:`flowkit.context`."""

    run_id: str
    step: str
    gen: int
    attempt: int
    token: str
    component: str
    store: Store = field(repr=False)
    #: The worker process running it (``celery-node:pid``).
    worker: str = ""
    started: float = field(default_factory=time.monotonic)
    #: Set when this attempt timed out: whatever it still sends is refused (see abandoned).
    _abandoned: bool = field(default=False, repr=False)
    #: What the attempt's code raised, once it has: a stream it left open ends with it.
    failure: BaseException | None = field(default=None, repr=False)
    _calls: int = field(default=0, repr=False)
    _sub_step_keys: str | None = field(default=None, repr=False)
    _input: Any = field(default=None, repr=False)
    #: LLM tokens used by the step's calls so far, over all its attempts (``prompt``,
    #: ``completion``, ``total``); ``step.completed`` reports them.
    tokens: dict[str, int] = field(default_factory=dict, repr=False)
    #: The step's secrets (its ``.secret()`` fields' values, provider keys) redacted from
    #: what it shows: what the executor redacts a ``step.retrying``'s error with.
    redact: Callable[[Any], Any] = field(default=lambda shown: shown, repr=False)
    #: What :meth:`is_cancelled` found: the run ended (``"cancelled"``) or was restarted
    #: (``"superseded"``: another attempt runs the step). An attempt that returns after
    #: seeing it was traced and counted as a success.
    stopped: str | None = field(default=None, repr=False)
    #: What must end with the attempt (an LLM stream the step stopped reading without
    #: closing it: its span and the text it read); :meth:`finish` calls them.
    _finishers: list[Any] = field(default_factory=list, repr=False)
    #: (component name, coroutine) of each async component called in this attempt.
    _async_calls: list[tuple[str, Any]] = field(default_factory=list, repr=False)
    #: Sub-steps that failed for good in this attempt: {key: attempts in all} (_spend).
    _spent: dict[str, int] = field(default_factory=dict, repr=False)
    #: The asyncio tasks its async sub-steps and LLM calls ran in (see :meth:`end_with_attempt`).
    _tasks: list[asyncio.Task] = field(default_factory=list, repr=False)
    #: The wait an earlier attempt paused at, while this one replays up to it (None: it
    #: does not; _UNREAD until its first chunk), and the waits it went past (see replaying).
    _replay_until: Any = field(default=_UNREAD, repr=False)
    _waits_passed: set[str] = field(default_factory=set, repr=False)
    #: Set when the attempt ended (:meth:`finish`): a call made after, from a task or a
    #: thread it left running, is refused.
    _ended: bool = field(default=False, repr=False)

    def at_end(self, finish: Any) -> None:
        """Call ``finish()`` when this attempt ends, unless it was called before."""
        self._finishers.append(finish)

    def end_with_attempt(self, task: asyncio.Task | None) -> None:
        """Cancel ``task`` if it still runs when this attempt ends. An async sub-step or LLM
        call awaited by the step itself runs in the step's own task, done by then; one
        ``asyncio.gather`` (or ``create_task``) wrapped goes on after a sibling's failure
        ended the attempt, spending and billing for an attempt that is over."""
        if task is not None:
            self._tasks.append(task)

    def finish(self) -> None:
        """The attempt ended: call what :meth:`at_end` was given (each may fail alone)."""
        self._ended = True
        finishers, self._finishers = self._finishers, []
        self.unawaited_calls()  # a failed attempt's: not the next attempt's to answer for
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if not task.done():
                with contextlib.suppress(RuntimeError):  # its loop closed: it ended with it
                    task.get_loop().call_soon_threadsafe(task.cancel)
        for finish in finishers:
            try:
                finish()
            except Exception:  # noqa: BLE001 - a span's bookkeeping must not fail the step
                log.exception("flowkit: finishing an attempt's open stream failed")

    @property
    def input(self) -> Any:
        """The run's validated input."""
        if self._input is None:
            [raw] = self.store.run_fields(self.run_id, "input")
            self._input = loads(raw) if raw else None
        return self._input

    def output_of(self, step: str) -> Any:
        """Output of an earlier step, by step key (``"0:research"``) or component name."""
        checkpoints = self.store.checkpoints(self.run_id)
        if step in checkpoints:
            return loads(checkpoints[step])
        matches = [k for k in checkpoints if k.partition(":")[2] == step]
        if len(matches) == 1:
            return loads(checkpoints[matches[0]])
        if matches:
            raise FlowkitError(f"{step!r} ran as several steps ({', '.join(matches)}); use a step key.")
        raise NotFound(f"No completed step {step!r} in run {self.run_id}.")

    def send(self, type_: str, **fields: Any) -> str:
        if self.abandoned:
            raise RunCancelled(f"attempt {self.attempt} of step {self.step} was abandoned")
        event = events.make(type_, self.run_id, step=self.step, attempt=self.attempt, **fields)
        dumps_bounded(event, f"a {type_} event")
        event_id = self.store.emit(self.run_id, self.gen, event)
        if event_id is None:
            raise RunCancelled(f"Run {self.run_id} was cancelled or restarted; stop step {self.step}.")
        return event_id

    def progress(self, message: str, fraction: float | None = None, eta: float | None = None) -> str:
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
            elapsed = time.monotonic() - self.started
            if eta is None and fraction > 0 and elapsed >= ETA_AFTER_SECONDS:
                eta = round(elapsed * (1 - fraction) / fraction, 3)
        return self.send(events.STEP_PROGRESS, message=message, fraction=fraction, eta=eta)

    def emit(self, chunk: Any, call: _SubStepAttempt | None | object = _THIS_THREAD) -> str:
        """Send a chunk of the step's output; "" for one a replay makes again (see
        :meth:`replaying`): the stream holds it from the attempt that paused. ``call``: the
        sub-step attempt it comes from, when not this thread's (an LLM stream's flusher)."""
        if self.replaying():
            if self.abandoned:  # as send() refuses it: the attempt timed out
                raise RunCancelled(f"attempt {self.attempt} of step {self.step} was abandoned")
            return ""
        sub = _SUB_STEP.get() if call is _THIS_THREAD else call
        # a sub-step's retry runs in place, inside the step's attempt: its chunks name their
        # attempt, so readers drop a failed one's (a client showed its half answer, then the
        # whole one after it)
        return self.send(events.STEP_OUTPUT, chunk=chunk,
                         sub_steps=sub.idents() if isinstance(sub, _SubStepAttempt) else None)

    def replaying(self) -> bool:
        """Whether this attempt runs again what an earlier one ran before it paused: a
        resumed step runs from its start, and the chunks it sent then are in the stream
        (readers keep a paused attempt's text); sent again, a reader showed them twice,
        and one that dropped the paused attempt's instead lost the text of the sub-steps
        (an LLM call) that replay from their checkpoints without streaming it again. Read
        once, at the attempt's first chunk: most steps never pause."""
        if self._replay_until is _UNREAD:
            until = (self.store.pause_point(self.run_id, self.step, self.attempt)
                     if self.attempt > 1 else None)
            self._replay_until = (None if until is None or any(
                _holds(key, until) for key in self._waits_passed) else until)
        return self._replay_until is not None

    def _passed(self, key: str) -> None:
        """The step goes on past ``key``: a wait answered, or a sub-step replayed from its
        checkpoint. A replay up to that wait, or to one inside that sub-step (a wait in a
        sub-step that has completed since is never met again: the replay went on for the
        whole attempt, and its text was lost), is over."""
        self._waits_passed.add(key)
        until = self._replay_until
        if isinstance(until, str) and _holds(key, until):
            self._replay_until = None

    def is_cancelled(self) -> bool:
        if self.stopped is None:
            state, gen = self.store.run_fields(self.run_id, "state", "gen")
            if state not in LIVE_STATES:
                self.stopped = "cancelled"
            elif gen != str(self.gen):
                self.stopped = "superseded"
        return self.stopped is not None

    def call(self, component: Any, args: tuple, kwargs: dict) -> Any:
        """A component called inside this step: a durable sub-step, checkpointed under
        ``<step>/<call index>:<name>`` (a restarted step replays it from there)."""
        key = self._next_key(component.name)
        stored, spent = self.store.checkpoints_of(self.run_id, [key, key + SPENT])
        if stored is not None:
            self._passed(key)
            return loads(stored)
        cache_key = _cache_key(component, args, kwargs)
        if cache_key and (hit := cache.get(self.store, cache_key)) is not None:
            return self._save_sub_step(key, loads(hit))
        pol = component.policy
        numbers = itertools.count(int(spent or 0) + 1)
        made: list[_SubStepAttempt] = []

        def attempt() -> Any:
            made.append(_SubStepAttempt(key, next(numbers)))
            return call_with_timeout(made[-1].run, (component.fn, args, kwargs), {},
                                     pol.timeout, made[-1].time_out)

        try:
            value = pol.call(attempt, before=self._stop_retrying(key),
                             before_sleep=self._retrying_sub_step(made))
        except Exception as exc:
            self._spend(key, made, exc)
            raise
        return self._cache_put(cache_key, component, self._save_sub_step(key, value))

    def _spend(self, key: str, made: list[_SubStepAttempt], exc: Exception) -> None:
        """Note a sub-step that failed for good (a cancel, or a step attempt timed out or
        abandoned, is no failure of the sub-step); :meth:`keep_spent` keeps it if the step
        attempt fails too."""
        if made and not isinstance(exc, RunCancelled) and not self.abandoned_for(made[-1].outer):
            self._spent[key] = made[-1].number

    def keep_spent(self) -> None:
        """The step attempt failed: its sub-steps that failed for good count their attempts
        (:meth:`Store.spend_sub_step`), in runs whose record says ``sub_step_keys:
        attempts``, so the step run again (its retry, a retry of its run) numbers their
        attempts after them and asks anew: it replayed every refused attempt and failed
        alike, for ever. Only then: a step that caught its sub-step's failure and went on
        replays it as it went after a wait or a restart (the sub-step, run anew, succeeded
        and the step took another path: its later calls and waits got other keys)."""
        try:
            if self._spent and not self._abandoned and self.sub_step_keys == ATTEMPT_KEYS:
                for key, attempts in self._spent.items():
                    self.store.spend_sub_step(self.run_id, key, attempts)
        except StoreUnavailable as exc:  # the step's own failure is what to report
            log.warning("flowkit: step %s of run %s: its spent sub-steps not kept (%s): a "
                        "retry replays their refused attempts", self.step, self.run_id, exc)

    def _cache_put(self, cache_key: cache.CacheKey | None, component: Any, value: Any) -> Any:
        if cache_key:
            cache.put(self.store, cache_key, dumps(value), component.policy.cache_ttl)
        return value

    def _stop_retrying(self, key: str) -> Callable[[Any], None]:
        """tenacity's ``before`` hook of a sub-step's retries: after a backoff, a run
        cancelled (or restarted) meanwhile gets no next attempt, as a step's retries do
        (a sub-step's ran on after the cancel, each a side effect)."""
        def before(retry_state: Any) -> None:
            if retry_state.attempt_number > 1 and self.is_cancelled():
                raise RunCancelled(f"run {self.run_id} stopped while sub-step {key} waited "
                                   "to retry")
        return before

    def _retrying_sub_step(self, made: list[_SubStepAttempt]) -> Callable[[Any], None]:
        """tenacity's ``before_sleep`` hook of a sub-step's retries: ``sub_step.retrying``
        names the attempt that failed, whose streamed chunks readers drop (see
        :func:`flowkit.events.superseded_sub_steps`). Not sent by an abandoned attempt,
        whose step attempt is superseded anyway."""
        def before_sleep(retry_state: Any) -> None:
            failed = made[-1]
            if self.abandoned_for(failed.outer):
                return
            said = self.redact(describe_error(retry_state.outcome.exception()))
            self.send(events.SUB_STEP_RETRYING, sub_step=failed.ident, error=said,
                      delay=round(retry_state.upcoming_sleep, 3))
        return before_sleep

    def _save_sub_step(self, key: str, value: Any) -> Any:
        """Checkpoint a sub-step's output (the first one stored wins), unless this attempt
        was abandoned (it timed out, and runs on): its late output, made from its own
        input, was the checkpoint the next attempt then replayed."""
        if self.abandoned:
            raise RunCancelled(f"attempt {self.attempt} of step {self.step} was abandoned; "
                               f"its sub-step {key} is not kept")
        if self.stopped:  # it ran after is_cancelled() said so: may have returned early
            raise RunCancelled(f"run {self.run_id} was {self.stopped} while step {self.step} "
                               f"ran; its sub-step {key} is not kept (nor cached)")
        output = dumps_bounded(value, f"output of {key}")
        return loads(self.store.save_checkpoint(self.run_id, key, output))

    def call_async(self, component: Any, args: tuple, kwargs: dict) -> Any:
        """An async component called inside this step: a coroutine of the same durable
        sub-step. Its key is taken now, when called, so sub-steps started together
        (``asyncio.gather``) keep the order they were called in."""
        key = self._next_key(component.name)
        call = self._sub_step_async(key, component, args, kwargs)
        # what Python's "never awaited" warning names: it said StepContext._sub_step_async
        call.__qualname__ = f"{component.name} (a component's call: await it)"
        self._async_calls.append((component.name, call))
        return call

    def unawaited_calls(self) -> list[str]:
        """The async components called in this attempt whose call never ran (called without
        ``await``): closed now, their names returned."""
        names = []
        for name, call in self._async_calls:
            if inspect.getcoroutinestate(call) == inspect.CORO_CREATED:
                call.close()
                names.append(name)
        self._async_calls.clear()
        return names

    def _refuse_if_ended(self, name: str) -> None:
        """A call made once the attempt ended (by a task or a thread it left running) runs
        no body and keeps no checkpoint: one ran, and checkpointed into a run that had
        succeeded meanwhile."""
        if self._ended:
            raise RunCancelled(f"attempt {self.attempt} of step {self.step} has ended; its call "
                               f"{name}, made by a task or thread it left running, is refused")

    async def _sub_step_async(self, key: str, component: Any, args: tuple, kwargs: dict) -> Any:
        self._refuse_if_ended(key)  # called during the attempt, awaited after it
        self.end_with_attempt(asyncio.current_task())
        stored, spent = self.store.checkpoints_of(self.run_id, [key, key + SPENT])
        if stored is not None:
            self._passed(key)
            return loads(stored)
        cache_key = _cache_key(component, args, kwargs)
        if cache_key and (hit := cache.get(self.store, cache_key)) is not None:
            return self._save_sub_step(key, loads(hit))
        numbers = itertools.count(int(spent or 0) + 1)
        attempts: list[_SubStepAttempt] = []

        def attempt(*args: Any, **kwargs: Any) -> Any:
            # each attempt's coroutine, made in this task, run in its own
            attempts.append(_SubStepAttempt(key, next(numbers)))
            return attempts[-1].run_async(component.fn, args, kwargs)

        try:
            value = await call_with_policy(attempt, args, kwargs, component.policy,
                                           lambda: attempts[-1].time_out(),
                                           before=self._stop_retrying(key),
                                           before_sleep=self._retrying_sub_step(attempts))
        except Exception as exc:
            self._spend(key, attempts, exc)
            raise
        return self._cache_put(cache_key, component, self._save_sub_step(key, value))

    # -- waits ------------------------------------------------------------------------

    def wait_for_input(self, name: str, schema: SchemaLike, prompt: str | None,
                       timeout: float | None) -> Any:
        """See :func:`flowkit.wait_for_input`."""
        loaded = as_schema(schema, f"{name}Input")
        spec = {"prompt": prompt, "schema": json_schema(loaded)}

        def refused(answer: dict[str, Any]) -> dict[str, Any] | None:
            """Why this step's schema refuses an answer: a deploy changed it while the run
            waited (the answer fit the schema of then), or marshmallow's own validators,
            past the published JSON Schema, refuse it."""
            if loaded is None or "input" not in answer:
                return None
            try:
                loaded.load(answer["input"])
            except Exception as exc:
                return getattr(exc, "messages", None) or {"_schema": [str(exc)]}
            return None

        answer = self._wait(WaitKind.INPUT, name, spec, _deadline(timeout), refused=refused)
        if "timeout" in answer:
            raise InputTimeout(f"no input {name!r} within {timeout:g}s (step {self.step})")
        value = answer["input"]
        return value if loaded is None else loaded.dump(loaded.load(value))

    def wait_for_event(self, key: str, timeout: float | None, lookback: float | None) -> Any:
        """See :func:`flowkit.wait_for_event`."""
        check_event_key(key)  # a key nothing could send would wait until its timeout
        answer = self._wait(WaitKind.EVENT, key, {"key": key}, _deadline(timeout),
                            lookback=lookback)
        if "timeout" in answer:
            raise EventTimeout(f"no event {key!r} within {timeout:g}s (step {self.step})")
        return answer["event"]

    def sleep_until(self, deadline: float) -> None:
        """See :func:`flowkit.sleep_until`."""
        self._wait(WaitKind.SLEEP, "sleep", {}, deadline)

    def _wait(self, kind: WaitKind, name: str, spec: dict[str, Any], due: float | None,
              lookback: float | None = None,
              refused: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
              ) -> dict[str, Any]:
        """The answer of this wait (``{"input": ...}``, ``{"event": ...}``, ``{"timeout":
        true}``, ``{"slept": true}``); pauses the step (StepSuspended) until there is one.
        An answer ``refused`` finds fault with is dropped and the wait opened again, saying
        why (``refused`` in its spec): failing the run kept the answer, so a retry failed
        the same way and no other answer was taken ("the first answer stands")."""
        key = self._next_key(f"wait:{kind}:{name}")
        answer = self._answer(key, kind, name, spec, due, lookback)
        self._passed(key)
        value = loads(answer)
        while refused is not None and (errors := refused(value)) is not None:
            if not self.store.forget_answer(self.run_id, key, answer):
                answer = self._answer(key, kind, name, spec, due, lookback)  # another came
            else:
                again = {**spec, "refused": {
                    "answer": value.get("input"), "errors": errors,
                    "message": f"The answer to {name!r} does not fit the schema this step "
                               "now has (changed since it was given, or checked further by "
                               "its validators): answer again."}}
                answer = self._pause(key, kind, name, again, due)
            value = loads(answer)
        return value

    def _answer(self, key: str, kind: WaitKind, name: str, spec: dict[str, Any],
                due: float | None, lookback: float | None) -> str:
        """The answer checkpointed under ``key`` (JSON), an event sent within ``lookback``,
        or none yet: the step pauses (StepSuspended)."""
        answer = self.store.checkpoint(self.run_id, key)
        if (answer is None and kind == WaitKind.SLEEP and due is not None and due <= time.time()
                and not self.store.wait_open(self.run_id, key) and not self.is_cancelled()):
            # due already (sleep(0), a deadline past): slept, without a pause, which held
            # the run until beat fired its timer; its key is kept all the same, so that a
            # replay (where a computed deadline may have passed meanwhile) numbers alike.
            # A sleep that paused before (its timer not fired yet) waits for beat's sweep,
            # which closes its wait and timer: passed here, they stayed open
            return self.store.save_checkpoint(self.run_id, key, dumps({"slept": True}))
        if answer is None and kind == WaitKind.EVENT:
            # what was sent before this wait began, should it pause: read before its waker is
            # indexed, so that an event sent between the two, not delivered to it, is not
            # put behind the run (see _unseen_event)
            floor = self.store.last_sent_id(name)
            # indexed before anything else: an event sent from now on answers it (early, if
            # need be: deliver.lua), one sent before is found by the look-back below
            self.store.add_waker(name, self.run_id, key, get_settings().retention_seconds)
            sent = self._unseen_event(name, lookback) if lookback else None
            if sent is not None:  # sent before the wait began, within its look-back
                data, sent_at, sent_id = sent
                found = dumps({"event": loads(data), "sent_at": sent_at, "sent_id": sent_id})
                answer = self.store.save_checkpoint(self.run_id, key, found)
                early = loads(answer).get("sent_id") if answer != found else None
                if (early and _stream_order(early) > _stream_order(sent_id)
                        and self.store.swap_answer(self.run_id, key, answer, found)):
                    # a newer event answered it early as it looked back: one sender's
                    # events came out of order; the older one is this wait's, the newer
                    # one stays unseen for the run's next wait
                    answer = found
            else:  # it pauses: events sent before it began are behind the run's later waits
                spec = {**spec, "floor": floor}
        if answer is None:
            answer = self._pause(key, kind, name, spec, due)
        return answer

    def _unseen_event(self, name: str, lookback: float) -> tuple[str, float, str] | None:
        """The oldest event sent under ``name`` within ``lookback`` seconds that no earlier
        wait of this run took: one event answered every later wait of a run on its key (a
        loop of ``wait_for_event("chat:42", lookback=60)`` took the same message again and
        again), and the newest skipped those sent while the loop's step worked. An answer
        records which event it was (``sent_id``, its stream id) and when it was sent
        (``sent_at``: answers kept before stream ids were have only that, and the look-back
        goes on after the last of them)."""
        answers = {key: loads(answer) for key, answer in self.store.waits_answered(
            self.run_id, WaitKind.EVENT.value, name).items()}
        ids = {a["sent_id"] for a in answers.values() if a.get("sent_id")}
        times = [0.0, *(a.get("sent_at") or 0.0 for a in answers.values() if not a.get("sent_id"))]
        # what an earlier wait that paused found sent already is behind the run (a wait that
        # does not look back ignores it; a look-back after it handed out stale events), up
        # to the event that wait took: of two sent at once, it may have taken the older,
        # and the newer, never delivered, is the run's still
        floors = []
        for key, spec in self.store.answered_specs(self.run_id, WaitKind.EVENT.value,
                                                   name).items():
            floor, took = spec.get("floor"), (answers.get(key) or {}).get("sent_id")
            if floor and took:
                floor = min(floor, took, key=_stream_order)
            if floor:
                floors.append(floor)
        return self.store.sent_since(name, time.time() - lookback, taken=ids,
                                     after_t=max(times), floor=max(floors, key=_stream_order,
                                                                   default=None))

    def _pause(self, key: str, kind: WaitKind, name: str, spec: dict[str, Any],
               due: float | None) -> str:
        if self.abandoned:
            raise RunCancelled(f"attempt {self.attempt} of step {self.step} was abandoned")
        now = time.time()
        spec = {"kind": kind.value, "name": name, "step": self.step, "attempt": self.attempt,
                "expires_at": due, "since": now, **spec}
        waiting = events.make(events.RUN_WAITING, self.run_id, step=self.step, **{
            k: v for k, v in spec.items() if k not in ("step", "since", "floor")})
        outcome, answer, resume_gen = self.store.begin_wait(
            self.run_id, self.gen, self.step, self.token, key, spec, due, now, waiting)
        if outcome == WaitOutcome.READY:
            return answer
        if outcome == WaitOutcome.PAUSED:
            raise StepSuspended(f"step {self.step} waits for {kind} {name!r}", resume_gen)
        raise RunCancelled(f"Run {self.run_id} was cancelled or restarted; stop step {self.step}.")

    def abandon(self) -> None:
        """This attempt timed out: its further events raise RunCancelled in its thread."""
        self._abandoned = True

    @property
    def abandoned(self) -> bool:
        """Whether what this thread sends is refused: the step's attempt timed out, or this
        is the thread (or task) of a sub-step's attempt that did."""
        return self.abandoned_for(_SUB_STEP.get())

    def abandoned_for(self, call: _SubStepAttempt | None) -> bool:
        """Whether the step's attempt, or the sub-step attempt ``call``, timed out."""
        return self._abandoned or (call is not None and call.abandoned)

    def _next_key(self, name: str) -> str:
        """The checkpoint key of the next component call (or wait) made here: the step's
        next, or, inside a sub-step, that sub-step's next. One made by an attempt that
        timed out is refused before it runs (its side effects with it)."""
        call = _SUB_STEP.get()
        if self.abandoned_for(call):
            raise RunCancelled(f"attempt {self.attempt} of step {self.step} (or its sub-step) "
                               f"timed out; its call {name} is refused")
        self._refuse_if_ended(name)
        keying = self.sub_step_keys if call is not None else ""
        if keying not in ("", NESTED_KEYS, ATTEMPT_KEYS):  # a later release's: not flat
            refused = ConfigError(
                f"run {self.run_id} keys its sub-steps' calls as {keying!r}, which a later "
                f"flowkit than this worker's ({__version__}) made; this worker would key them "
                "elsewhere and make them again: finish the deploy (every worker on the new "
                "release), then retry the run.")
            mark_final(refused, "a later release's run")  # no retry can help on this worker
            raise refused
        if keying not in (NESTED_KEYS, ATTEMPT_KEYS):
            key = f"{self.step}/{self._calls}:{name}"
            self._calls += 1
        else:
            key = f"{call.prefix if keying == ATTEMPT_KEYS else call.key}/{call.calls}:{name}"
            call.calls += 1
        return key

    @property
    def sub_step_keys(self) -> str:
        """How this run keys a sub-step's calls, as it checkpointed them: under the sub-step's
        attempt (:class:`_SubStepAttempt`; runs made by this release: ``attempts``), under
        the sub-step alike for every attempt (``nested``), or on the step's flat count (a
        run made before either: ``""``). Read once a step attempt, at its first call inside
        a sub-step."""
        if self._sub_step_keys is None:
            self._sub_step_keys = self.store.run_fields(self.run_id, "sub_step_keys")[0] or ""
        return self._sub_step_keys


def _stream_order(entry_id: str) -> tuple[int, int]:
    """A stream id's order: by its numbers (as text, ``...-10`` sorted before ``...-2``)."""
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _cache_key(component: Any, args: tuple, kwargs: dict) -> cache.CacheKey | None:
    """A sub-step's entry in its component's cache (None without ``.cache()``): keyed as a
    step's, by its one argument, so a step and a sub-step of one component share outputs.
    ``.cache()`` was ignored on a component called inside a step, without a word.
    Arguments JSON cannot hold exactly (objects keyed by their ``str()`` would share one
    entry) are not cached: the call runs."""
    pol = component.policy
    if not pol.cache_ttl:
        return None
    value = (args[0] if len(args) == 1 and not kwargs
             else ["flowkit:args", list(args), kwargs])  # no one argument looks like it
    try:  # exactly: what JSON reads back as it was (``{1: x}`` came back ``{"1": x}``)
        if json.loads(json.dumps(value, allow_nan=False)) != value:
            return None
    except (TypeError, ValueError):
        return None
    return cache.key(component.name, pol.cache_version or component.version, value)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.time() + float(timeout)
