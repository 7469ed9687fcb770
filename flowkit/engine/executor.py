"""Running steps: the bodies of flowkit's Celery tasks (registered in flowkit.worker.tasks).

A step task is idempotent: ``begin_step`` (one atomic script) either hands back
the step's checkpoint, tells a stale or duplicate message to stop, or takes the
step's lease and opens a new attempt. Attempts follow the component's retry
policy; the first checkpoint written wins and is what the chain carries on with.
"""

from __future__ import annotations

import contextlib
import logging
import random
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import billiard
from billiard import common as billiard_common
from celery.exceptions import Ignore, Reject

from .. import defaults, events, hooks
from ..component import Component, Continue, lookup
from ..config import get_settings
from ..context import activate, deactivate
from ..coroutines import run_coroutine
from ..errors import (
    ATTEMPT_SIGNALS,
    ComponentExit,
    PayloadTooLarge,
    RunCancelled,
    StepSuspended,
    StoreUnavailable,
    WorkflowNotFound,
    describe_error,
    error_message,
    error_origin,
    mark_final,
)
from ..policy import Policy, call_with_timeout
from ..serialization import MAX_DEPTH, dumps_bounded, loads
from ..states import RunState, StepStart
from ..store import Begin, Ended, Store, get_store
from ..workflow import get_workflow, workflows
from . import admission, cache, canvas, frontier, limits, notify
from .control import Run, default_queue, resume, serving
from .drain import draining, hand_over
from .heartbeat import heartbeat, this_node, worker_id
from .paths import CONTINUE, continuation_key, continuation_of
from .step import StepContext
from .trace import redaction, spans
from .trace.writer import writer

log = logging.getLogger(__name__)


def run_step(
    task, name: str, value: Any, *, run_id: str, key: str, gen: int, policy: dict | None,
    begun: tuple[str, Begin] | None = None,
) -> Any:
    """The body of a step's task. An item of a batched fan-out has no ``task`` of its own
    and comes ``begun``: its lease token and what ``begin_step`` decided for it. A task
    then runs the steps that follow in its chain itself, within its time budget
    (:func:`_run_following`)."""
    began = time.monotonic()
    try:
        ends = _end_next(task) if begun is None else None
        output, completed = _run_step(task, name, value, run_id=run_id, key=key, gen=gen,
                                      policy=policy, begun=begun, ends=ends)
        if completed is _ENDED:
            return None
        if task is not None and begun is None:
            output = _run_following(task, output, began, completed)
        return output
    except StoreUnavailable as exc:
        # Redis stayed away past FLOWKIT_REDIS_RETRY_SECONDS: hand the message back rather
        # than lose it; begin_step makes its redelivery harmless (and replays the steps it
        # ran itself from their checkpoints)
        log.warning("flowkit: Redis unreachable in step %s of run %s; requeued", key, run_id)
        raise Reject(exc, requeue=True) from exc


def _run_following(task, output: Any, began: float, completed: bool) -> Any:
    """Run the next steps of the task's chain here, back to back, while the task has run
    less than FLOWKIT_INLINE_STEPS_SECONDS: each is a step like any other (begin_step, its
    lease, checkpoint, events), minus the broker's round trip. It stops at a step bound
    for another queue, at anything but a plain step or the run's end (a join, a fan-out),
    and when the worker drains; Celery sends what remains of the chain as usual. A step
    that stops its run (failed, paused, stale) raises Ignore, and nothing more is sent.
    ``completed``: the step before ran here and its completion just recorded this worker
    as the run's holder (complete.lua), so the run's end need not record it again.
    A step followed by the run's end ends the run with its own completion when it can
    (:func:`_end_next`)."""
    chain = task.request.chain
    deadline = began + get_settings().inline_steps_seconds
    here = (task.request.delivery_info or {}).get("routing_key")
    while chain and time.monotonic() < deadline and not draining():
        name = canvas.inline_step(chain[-1], here)
        if name is None:
            break
        kwargs = chain.pop()["kwargs"]
        if name == canvas.FINISH:  # the run's end: nothing follows it
            finish_run(output, **kwargs, held=completed)
            return None
        output, completed = _run_step(task, name, output, run_id=kwargs["run_id"],
                                      key=kwargs["key"], gen=kwargs["gen"],
                                      policy=kwargs.get("policy"), begun=None,
                                      ends=_end_next(task))
        if completed is _ENDED:
            return None
    return output


#: What ``_run_step`` says of a step whose completion ended its run as well.
_ENDED = "ended"


def _end_next(task) -> dict[str, Any] | None:
    """The run's end (its finish task's kwargs) when it comes next in the task's chain and
    may run here: the step's completion then ends the run in the same round trip
    (``Store.complete_last_step``), and the chain's last message is never sent."""
    chain = task.request.chain if task is not None else None
    if not chain:
        return None
    here = (task.request.delivery_info or {}).get("routing_key")
    if canvas.inline_step(chain[-1], here) != canvas.FINISH:
        return None
    return chain[-1]["kwargs"]


def _run_step(
    task, name: str, value: Any, *, run_id: str, key: str, gen: int, policy: dict | None,
    begun: tuple[str, Begin] | None, ends: dict[str, Any] | None = None,
) -> tuple[Any, bool | str]:
    """The step's output, and whether it ran here (rather than replayed its checkpoint),
    or :data:`_ENDED` when its completion ended the run too (``ends``: the run's end
    comes next; the finish message is taken off the task's chain)."""
    store = get_store()
    comp = lookup(name)
    pol = Policy.from_dict(policy) if policy else comp.policy
    if begun is None:
        if draining():  # received after SIGTERM: another worker takes it (engine.drain)
            raise Reject("worker is draining", requeue=True)
        token = uuid.uuid4().hex
        begin = store.begin_step(run_id, key, gen, token, worker_id(), time.time(), name)
    else:
        token, begin = begun
    ran = begin.status == StepStart.RUN
    if begin.status == StepStart.CHECKPOINT:
        output = loads(begin.checkpoint)
    elif ran:
        output, ended = _run_attempts(store, comp, pol, value, run_id, key, gen, token,
                                      begin.attempt, ends)
        if ended:
            task.request.chain.pop()
            return output, _ENDED
    else:
        log.info("flowkit: step %s of run %s not run (%s)", key, run_id, begin.status)
        raise Ignore()
    if continuation_of(output) is not None:
        if task is None:
            fail_run(run_id, gen, key, f"{name} continues with another step, which an item of a "
                     "batched fan_out cannot do: fan it out with batch=1")
            raise Ignore()
        return _continue(task, store, continuation_of(output), run_id, key, gen), False
    return output, ran


def _run_attempts(
    store: Store, comp: Component, pol: Policy, value: Any,
    run_id: str, key: str, gen: int, token: str, attempt: int,
    ends: dict[str, Any] | None = None,
) -> tuple[Any, bool]:
    """The step's output (the checkpoint that won), and whether its completion ended the
    run too (``ends``: the run's end comes next)."""
    history: list[dict[str, Any]] = []
    started = time.monotonic()
    state = {"attempt": attempt}
    tokens: dict[str, int] = {}  # shared by the attempts: the step's LLM usage
    worker = worker_id()

    def new_context() -> StepContext:
        return StepContext(run_id, key, gen, state["attempt"], token, comp.name, store,
                           worker=worker, tokens=tokens, redact=secretless)

    def secretless(shown: Any) -> Any:
        return _secretless(pol, value, shown)

    def before_sleep(retry_state) -> None:
        exc = retry_state.outcome.exception()
        failed = state["attempt"]
        said = secretless(describe_error(exc))
        history.append({"attempt": failed, "error": said, "at": time.time()})
        event = events.make(
            events.STEP_RETRYING, run_id, step=key, attempt=failed, error=said,
            delay=round(retry_state.upcoming_sleep, 3), next_attempt=failed + 1,
        )
        nxt = store.retrying(run_id, key, gen, token, event, time.time())
        if nxt is None:
            raise RunCancelled(f"run {run_id} stopped while step {key} was retrying")
        hooks.call(hooks.step_retrying, run_id, key, comp.name, failed, exc,
                   retry_state.upcoming_sleep)
        state["attempt"] = nxt

    def before(retry_state) -> None:
        # after a retry's backoff: a run cancelled meanwhile gets no next attempt (the
        # check before the backoff let one run up to its length, 30 s, after the cancel)
        if retry_state.attempt_number > 1 and new_context().is_cancelled():
            raise RunCancelled(f"run {run_id} stopped while step {key} waited to retry")

    heartbeat.track(run_id, key, token)
    try:
        output_json, cached = _produce(store, comp, _budget_left(store, pol, run_id, key, attempt),
                                       value, new_context,
                                       {"before_sleep": before_sleep, "before": before}, key)
    except StepSuspended as paused:
        # the step waits (its lease let go in begin_wait): the worker slot is free now
        log.info("flowkit: %s", paused)
        if paused.resume_gen:  # its run's other waits were answered while it ran: go on
            resume(Run.load(run_id, store), paused.resume_gen)
        raise Ignore() from None
    except RunCancelled:
        log.info("flowkit: step %s of run %s stopped: run cancelled or restarted", key, run_id)
        with contextlib.suppress(StoreUnavailable):  # else it lapses, as it did always
            if store.release_ended(run_id, key, token):  # a retry need not wait for its lapse
                admission.released(run_id, store)  # its slot, kept while the step ran
        raise Ignore() from None
    except StoreUnavailable as exc:
        # not the step's fault: its lease lapses and the reaper restarts the run
        log.warning("flowkit: step %s of run %s abandoned: %s", key, run_id, exc)
        raise Ignore() from None
    except SystemExit:
        if _terminated():  # a SIGTERM reached this prefork child (a signal to the whole
            # process group): its step ended with it; handed over, it restarts elsewhere
            # now, not once its lease lapses
            log.warning("flowkit: step %s of run %s: this pool process was sent SIGTERM; "
                        "handed over to restart on another worker", key, run_id)
            with contextlib.suppress(Exception):  # else its lease lapses, as it did
                hand_over([(run_id, key, token)], f"worker {worker_id()} drained: its pool "
                          "process was sent SIGTERM")
        raise
    except Exception as exc:
        if _program_signalled(exc) and (draining() or _begins_to_drain()):
            # a signal to the worker's whole process group (systemd's default KillMode, a
            # Ctrl-C) reached the programs the step runs too: their deaths failed the run
            log.warning("flowkit: step %s of run %s: a program it ran was ended by a signal "
                        "as this worker began to drain (%s); not failed: handed over to "
                        "restart on another worker", key, run_id,
                        secretless(describe_error(exc)))
            with contextlib.suppress(StoreUnavailable):  # else its lease lapses
                hand_over([(run_id, key, token)], f"worker {worker_id()} drained: a program "
                          "of the step ended by its signal")
            raise Ignore() from None
        history.append({"attempt": state["attempt"], "error": secretless(describe_error(exc)),
                        "at": time.time()})
        _fail(store, run_id, gen, key, token, state["attempt"], exc, history, secretless)
        raise Ignore() from None
    finally:
        heartbeat.untrack(run_id, key, token)
    try:
        shown = _shown(loads(output_json), value, pol)
    except RecursionError:  # nested past the stack (JSON takes more): the run fails, says why
        what = "output (or input: searched for its secret fields)" if pol.secret_fields \
            else "output"
        exc = ValueError(f"the {what} of step {key} nests objects and arrays too deeply to "
                         f"report (keep it under {MAX_DEPTH} levels)")
        history.append({"attempt": state["attempt"], "error": secretless(describe_error(exc)),
                        "at": time.time()})
        _fail(store, run_id, gen, key, token, state["attempt"], exc, history, secretless)
        raise Ignore() from None
    completed = events.make(
        events.STEP_COMPLETED, run_id, step=key, attempt=state["attempt"],
        duration=round(time.monotonic() - started, 4), cached=cached or None,
        tokens=tokens or None, output=shown,
    )
    run_end = _run_end(ends, run_id, output_json) if ends is not None else None
    now = time.time()
    # the attempt's trace records and the checkpoint (and the run's end) in one round trip
    if run_end is None:
        ended: Ended | None = None
        won, resume_gen, over = writer.flush_with(store, lambda records: store.complete_step(
            run_id, key, token, output_json, now, completed, worker, trace=records))
    else:
        run_output_json, run_event = run_end
        won, resume_gen, over, ended = writer.flush_with(
            store, lambda records: store.complete_last_step(
                run_id, key, token, output_json, now, completed, worker, gen=ends["gen"],
                run_output_json=run_output_json, run_event=run_event, trace=records))
    if resume_gen:  # the last step in flight of a run whose waits were answered meanwhile
        resume(Run.load(run_id, store), resume_gen)
    if over:  # it ran on after its run ended (cancelled, failed): its slot, kept meanwhile
        admission.released(run_id, store)
    if ended:
        _ended(run_id, store, ended)
    return loads(won), ended is not None


def _run_end(ends: dict[str, Any], run_id: str, output_json: str) -> tuple[str, dict] | None:
    """The run's output (JSON) and its run.succeeded event, if the step's output is one
    its workflow accepts; None leaves the run's end to :func:`finish_run`, which says why
    (and to an agent loop's step that continues, its next step)."""
    value = loads(output_json)
    if continuation_of(value) is not None:
        return None
    try:
        output = _checked_output(ends["workflow"], value)
    except Exception:
        return None
    return output, events.make(events.RUN_SUCCEEDED, run_id, output=loads(output))


def _checked_output(workflow: str, output: Any) -> str:
    """The run's output as JSON, as its workflow checks it (a worker may import only the
    components, and then it goes unchecked)."""
    wf = workflows().get(workflow)
    if wf is not None:
        output = wf.check_output(output)
    return dumps_bounded(output, "the run's output")


def _ended(run_id: str, store: Store, ended: Ended) -> None:
    """The run succeeded in this process: its concurrency slot goes to the next in line,
    its workflow span to the exporters."""
    admission.released(run_id, store, ended)
    spans.run_ended(run_id, store)


def _shown(output: Any, value: Any, pol: Policy) -> Any:
    """The output as events show it: secret fields and known secrets (API keys) redacted.
    The checkpoint keeps the real value, which the next step needs."""
    return _secretless(pol, value, output)


def _secretless(pol: Policy, value: Any, shown: Any) -> Any:
    """``shown`` (an output, an error, a log line) with the step's secrets redacted: the
    values of its component's ``.secret(...)`` fields in its input ``value``, wherever they
    are echoed, and known secrets (provider API keys)."""
    fields = frozenset(pol.secret_fields)
    values = redaction.secret_values(value, fields) if fields else frozenset()
    return redaction.redact(shown, fields, values)


def _budget_left(store: Store, pol: Policy, run_id: str, key: str, attempt: int) -> Policy:
    """The step's policy with the attempts its retry budget has left: the failures of its
    earlier executions count (a worker killed mid-backoff, a resume after a wait). Each
    execution had the whole budget: a step allowed 3 attempts ran 5 times across a crash,
    each a paid call or a side effect. Only a step started before (``attempt`` > 1) reads
    them; at least one attempt is left (its last failure fails the run, uncounted)."""
    if attempt == 1 or pol.attempts == 1:
        return pol
    failed = store.step_failures(run_id, key)
    return replace(pol, attempts=max(1, pol.attempts - failed)) if failed else pol


def _produce(
    store: Store, comp: Component, pol: Policy, value: Any, new_context,
    retry_hooks: dict[str, Any], key: str,
) -> tuple[str, bool]:
    """The step's output as JSON, and whether it came from the cache."""
    # the version of the code that runs here (``comp`` is this worker's): the starter's, in
    # the message, gave a worker of version 2 version 1's cached outputs in a rolling deploy
    cache_key = (cache.key(comp.name, pol.cache_version or comp.version, value)
                 if pol.cache_ttl else None)
    if cache_key and (hit := cache.get(store, cache_key)) is not None:
        return hit, True
    held = None
    if pol.concurrency or pol.rate:
        held_by = new_context()
        held = limits.enter(held_by, pol, value)  # may pause the step (StepSuspended)
    try:
        if held:
            heartbeat.hold(held.group, held.member)
        output_json = pol.call(lambda: _attempt(comp, pol, value, new_context(),
                                                lambda result: _kept(result, key)),
                               **retry_hooks)
    finally:
        if held:
            heartbeat.let_go(held.group, held.member)
            limits.leave(store, held, owner=(held_by.gen, held_by.token))
    if cache_key:
        cache.put(store, cache_key, output_json, pol.cache_ttl)
    return output_json, False


def _kept(result: Any, key: str) -> str:
    """The step's output as its checkpoint keeps it (JSON); raises what cannot be kept."""
    if isinstance(result, Continue):
        result = {CONTINUE: _continuation_spec(result)}
    elif isinstance(result, dict) and CONTINUE in result:
        # the continuation's mark in a checkpoint: an output holding it (an echo of the run's
        # input, an LLM's JSON) was taken for a continue_with, and ran what it named
        raise ValueError(f"the output of step {key} holds the key {CONTINUE!r}, which marks "
                         "a continue_with(...) in a step's checkpoint: rename that key")
    return dumps_bounded(result, f"the output of step {key}")


def _attempt(comp: Component, pol: Policy, value: Any, ctx: StepContext,
             keep: Callable[[Any], str]) -> str:
    """One attempt of the step: its output as ``keep`` makes it (JSON). An output that
    cannot be kept (not JSON, too large) ends the attempt as an error, not retried by the
    default ``retry_on``: its span, metrics and hooks said ``ok`` while its step failed."""
    reset = activate(ctx)
    _observe(spans.attempt_started, hooks.attempt_started, ctx, value)
    began = time.monotonic()
    try:
        if comp.is_async:  # on an event loop; a timeout or a cancel cancels the coroutine
            result = run_coroutine(comp.fn, (value,), {}, pol.timeout, ctx.abandon,
                                   ctx.is_cancelled)
        else:
            result = call_with_timeout(comp.fn, (value,), {}, pol.timeout, ctx.abandon)
    except BaseException as raised:
        if isinstance(raised, SystemExit) and _terminated():
            raise  # the process ends, the step did not fail: the reaper restarts it
        exc = _signal_within(raised)
        ctx.failure = exc
        if not isinstance(exc, (*ATTEMPT_SIGNALS, RunCancelled)):  # the attempt failed
            ctx.keep_spent()
        _observe(spans.attempt_finished, hooks.attempt_finished, ctx, value, None, exc,
                 time.monotonic() - began)
        if _exits(exc):
            said = error_message(exc)
            raise ComponentExit(f"the step's code raised {type(exc).__name__}"
                                f"{f'({said})' if said else ''}: it would end the worker's "
                                "thread or process, not the step; raise an exception "
                                "instead") from exc
        if exc is not raised:
            raise exc from None
        raise
    else:
        forgotten = ctx.unawaited_calls()
        if forgotten:  # its call never ran, and the step succeeded without it
            fix = (f"write `await {forgotten[0].rpartition('.')[2]}(...)`" if comp.is_async
                   else "make the calling step `async def` and await it")
            exc = TypeError(f"async component {forgotten[0]!r} called without await, so "
                            f"that call never ran: {fix}")
            _observe(spans.attempt_finished, hooks.attempt_finished, ctx, value, None, exc,
                     time.monotonic() - began)
            raise exc
        if ctx.stopped:  # it returned after seeing its run cancelled or restarted
            stopped = RunCancelled(f"attempt {ctx.attempt} of step {ctx.step} returned after "
                                   f"its run was {'restarted' if ctx.stopped == 'superseded' else 'cancelled'}")
            _observe(spans.attempt_finished, hooks.attempt_finished, ctx, value, None, stopped,
                     time.monotonic() - began)
            # not its output: returned early, it was cached (later runs got it) on its way to
            # a completion the run refuses
            raise stopped
        try:
            kept = keep(result)
        except (TypeError, ValueError, PayloadTooLarge) as refused:
            mark_final(refused, "the step's output cannot be kept as it is")
            _observe(spans.attempt_finished, hooks.attempt_finished, ctx, value, None, refused,
                     time.monotonic() - began)
            raise
        _observe(spans.attempt_finished, hooks.attempt_finished, ctx, value, result, None,
                 time.monotonic() - began)
        return kept
    finally:
        ctx.finish()  # a stream it stopped reading unclosed: its span and text, now
        deactivate(reset)


def _signal_within(exc: BaseException) -> BaseException:
    """The engine's signal inside ``exc`` when ``exc`` is a group (``asyncio.TaskGroup`` wraps
    what its tasks raise), else ``exc`` itself. A pause first (its wait is open, and the
    generation it may have opened must be enqueued), then a stop (the run was cancelled or
    restarted), then an outage (the reaper restarts the run): a wait in a task of a group
    failed its step as ComponentExit, and a short Redis outage there failed the run."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    for signal in (StepSuspended, RunCancelled, StoreUnavailable):
        caught = exc.subgroup(lambda e, signal=signal: isinstance(e, signal))
        if caught is not None:
            # of pauses, the one that opened a generation (its number), if one did
            return max(_leaves(caught), key=lambda e: getattr(e, "resume_gen", 0))
    return exc


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


#: How long a step whose program died of a signal waits for its worker's own shutdown to
#: show: one signal to the process group reaches both, the program's death may come first.
SIGNAL_RACE_SECONDS = 1.0


def _program_signalled(exc: BaseException) -> bool:
    """The step failed because a program it ran was killed by a signal (``subprocess``'s
    negative return code, a process pool's broken worker), said anywhere in its causes."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, subprocess.CalledProcessError) and exc.returncode < 0:
            return True
        if isinstance(exc, BrokenProcessPool):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _begins_to_drain() -> bool:
    deadline = time.monotonic() + SIGNAL_RACE_SECONDS
    while not draining():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _terminated() -> bool:
    """A SIGTERM reached this prefork child itself (a signal to the worker's whole process
    group: systemd's default ``KillMode=control-group``, ``kill -TERM -PGID``):
    billiard's handler raised SystemExit in whatever ran. The step did not end it: failed as
    ComponentExit, it failed its run at a deploy. Re-raised, billiard counts the job lost
    with its process; the step is handed over (:func:`_run_attempts`) to restart elsewhere."""
    fired = getattr(billiard_common, "terminate_handler_fired", None)  # billiard >= 4.3
    return bool(fired() if fired else billiard_common._should_have_exited[0])


def _exits(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a component's code, is no Exception and no signal: it
    fails its step as ComponentExit rather than escaping into Celery's pool."""
    if isinstance(exc, (Exception, *ATTEMPT_SIGNALS)):
        return False
    if type(exc).__module__.split(".")[0] in ("gevent", "greenlet", "eventlet"):
        return False  # a green pool's own: GreenletExit kills a greenlet, Timeout is its
        # hard time limit (caught by the pool, which raises TimeLimitExceeded)
    # Ctrl-C reaches the main thread of the worker's own process only: there it stops the
    # worker (a solo pool); a prefork child (ForkPoolWorker-N) ignores SIGINT, so one
    # raised there is the step's own
    return not (isinstance(exc, KeyboardInterrupt)
                and threading.current_thread() is threading.main_thread()
                and billiard.current_process().name == "MainProcess")


def _observe(traced, user_hooks: list, *args: Any) -> None:
    """The trace's record of an attempt, then the user's hooks: neither may fail the step."""
    hooks.call([traced, *user_hooks], *args)


def _fail(
    store: Store, run_id: str, gen: int, key: str, token: str, attempt: int,
    exc: BaseException, history: list[dict[str, Any]], secretless: Callable[[Any], Any],
) -> None:
    """Fail the run at the step's last attempt; ``secretless`` redacts the step's secrets
    from the error as the record, events, trace and log keep it (an error echoing a secret
    input was redacted in the step's span only)."""
    error = {"type": type(exc).__name__, "message": error_message(exc), "step": key,
             "attempts": history}
    where = error_origin(exc)
    if where is not None:  # the line of the app's code that raised it (a helper's too)
        error["where"] = where
    error = secretless(error)
    step_event = events.make(events.STEP_FAILED, run_id, step=key, attempt=attempt, error=error)
    run_event = events.make(events.RUN_FAILED, run_id, step=key, error=error)
    writer.flush()  # the failed attempt's span before the run's failure
    if store.fail(run_id, gen, key, token, time.time(), error, step_event, run_event):
        admission.released(run_id, store)
        notify.run_failed(run_id)
        # where in the step's code, with the lines that led there
        log.warning("flowkit: run %s failed at step %s: %s\n%s", run_id, key,
                    secretless(describe_error(exc)),
                    secretless("".join(traceback.format_exception(exc)).rstrip()))
    else:  # a superseded attempt's (a handover, a restart) or a cancelled run's: not a failure
        if _has_ended(store, run_id):  # the slot it kept while this step ran (fail.lua let
            admission.released(run_id, store)  # go of its lease): waited for beat's sweep
        log.info("flowkit: an attempt of step %s of run %s ended with %s after its run had "
                 "moved on (cancelled, or restarted elsewhere)", key, run_id,
                 secretless(describe_error(exc)))


def _has_ended(store: Store, run_id: str) -> bool:
    [state] = store.run_fields(run_id, "state")
    return state is not None and RunState(state).terminal


def fail_run(run_id: str, gen: int, key: str, message: str, kind: str = "WorkflowError") -> None:
    """Fail a run for a reason found outside a component (bad fan-out input, loop limit)."""
    error = {"type": kind, "message": message, "step": key, "attempts": []}
    run_event = events.make(events.RUN_FAILED, run_id, step=key, error=error)
    if get_store().fail(run_id, gen, key, "", time.time(), error, None, run_event):
        admission.released(run_id)
        notify.run_failed(run_id)


# -- agent loops -------------------------------------------------------------------------


def _continuation_spec(cont: Continue) -> dict[str, Any]:
    base = lookup(cont.component.name)
    spec = {"component": cont.component.name, "input": cont.input}
    if cont.component.policy != base.policy:
        spec["policy"] = cont.component.policy.to_dict()
    return spec


def _continue(task, store: Store, spec: dict, run_id: str, key: str, gen: int) -> Any:
    next_key, depth = continuation_key(key, spec["component"])
    limit = get_settings().max_continuations
    if depth > limit:
        fail_run(
            run_id, gen, key,
            f"agent loop ran {limit} continuations; end the loop sooner or raise "
            "FLOWKIT_MAX_CONTINUATIONS",
        )
        raise Ignore()
    [queue] = store.run_fields(run_id, "queue")
    sig = canvas.step_signature(spec["component"], run_id, next_key, gen, spec.get("policy"),
                                (spec["input"],), run_queue=queue or None)
    sig = canvas.with_priority(sig, task.request.delivery_info)
    return task.replace(canvas.replacement(sig, task.request))


# -- the ends of a canvas ---------------------------------------------------------------------


def finish_run(output: Any, *, run_id: str, gen: int, workflow: str, held: bool = False) -> None:
    """Last task of every run: validate the output and mark the run succeeded. ``held``:
    this worker is already recorded as holding the run (the step it just completed)."""
    store = get_store()
    if not held:
        store.touch(run_id, worker_id(), time.time())
    try:
        output_json = _checked_output(workflow, output)
    except Exception as exc:  # a bad output fails the run with a reason, never hangs it
        fail_run(run_id, gen, "", f"output rejected: {exc}", kind=type(exc).__name__)
        raise Ignore() from None
    event = events.make(events.RUN_SUCCEEDED, run_id, output=loads(output_json))
    if ended := store.finish(run_id, gen, time.time(), output_json, event):
        _ended(run_id, store, ended)


def resume_run(*, run_id: str, gen: int) -> None:
    """Enqueue the frontier of generation ``gen`` of a run (what remains, at the continued
    priority), built by a worker of the run's own deployment (its queue), so a restarted
    run continues on the code that started it."""
    run = Run.load(run_id)
    if run.gen != gen or run.done:
        return  # restarted again, or finished, since this was sent
    try:
        wf = get_workflow(run.workflow)
    except WorkflowNotFound:
        others = serving(run.workflow, run.queue or default_queue(), but=this_node())
        if others:
            # a rolling deploy: this worker runs the release before the workflow existed;
            # the resume goes back to the queue for the new release's workers (it failed
            # the run as WorkflowNotFound)
            log.warning("flowkit: this worker has no workflow %r (run %s); its resume goes "
                        "back to queue %s, which %s serve", run.workflow, run_id,
                        run.queue or default_queue(), ", ".join(others))
            # not at once (the next taker may be old code too), nor on a beat: this worker's
            # consumer waits on the queue meanwhile, and Redis gives a message to the client
            # that has waited longest, which a fixed pause would make this one every time
            time.sleep(random.uniform(0.5, 1.5) * defaults.HAND_BACK_SECONDS)
            resume(run, gen)
            raise Ignore() from None
        # renamed or removed since the run started: the task raised, its message was gone,
        # and the run sat queued, saying nothing, until the reaper sent it again (5 min)
        message = (f"this worker has no workflow {run.workflow!r}, which the run started "
                   "with (renamed or removed since?); define it again and retry the run")
        log.warning("flowkit: run %s failed: %s", run_id, message)
        fail_run(run_id, gen, "", message, kind="WorkflowNotFound")
        raise Ignore() from None
    if wf.version != run.version:
        fail_run(
            run_id, gen, "",
            f"run started with {run.workflow} version {run.version}, but this worker has version "
            f"{wf.version}; give each version its own queue (FLOWKIT_DEFAULT_QUEUE) and workers",
        )
        raise Ignore()
    checkpoints = get_store().checkpoints(run_id)
    changed = frontier.unknown_steps(wf, checkpoints)
    if changed:  # resumed on a step list that moved: it would redo steps and ask again
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        message = (
            f"the steps of {run.workflow} version {run.version} changed since the run started: "
            f"this worker's workflow has no step {shown}, which the run checkpointed (steps "
            "are keyed by their place), so it would run steps again and ask again for answers "
            f"given. Deploy a changed workflow as a new version on its own queue "
            f"(Workflow(version=..., queue=...)) while workers of version {run.version} finish "
            "its runs, or restore the steps and retry the run")
        log.warning("flowkit: run %s failed: %s", run_id, message)  # a deploy's mistake
        fail_run(run_id, gen, "", message)
        raise Ignore()
    remaining, first_input = frontier.compile_frontier(
        wf, run_id, gen, run.input, checkpoints, run.queue)
    remaining.apply_async(args=(first_input,))
