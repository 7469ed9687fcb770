"""Schedules: runs started at every tick of a cron line or an interval, fired by beat.

A schedule lives in Redis: declared on a workflow with ``Workflow(..., schedules=[...])``
(beat, when it starts, makes the stored declarations its code's: :func:`store_declared`),
or created at run time with :func:`create`, REST ``/schedules`` or ``flowkit schedules``.
Beat's reaper sweep fires what is due: each tick is claimed once (claim_tick.lua) and its
run started (by the reaper) with the idempotency key ``schedule:<id>:<tick>``, so even two
beat processes started by mistake start one run per tick. The next tick comes from
Celery's own ``crontab`` in the schedule's time zone.

Missed ticks (beat was down): a tick later than ``GRACE`` seconds is skipped, unless the
schedule says ``catchup=True``: then the last one missed runs, once.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime
from typing import Any

from celery.schedules import ParseException, crontab

from ..errors import ConfigError, FlowkitError, InvalidState, NotFound, error_message
from ..flow import Schedule, zone
from ..serialization import comparable, loads
from ..store import Store, get_store
from ..workflow import SCHEDULE_ID_MAX_CHARS, get_workflow, workflows

log = logging.getLogger(__name__)
#: Every zone's offset from UTC is a whole number of quarter hours (seconds).
QUARTER = 900
#: A tick this late (seconds) still fires; an older one was missed.
GRACE = 60.0
#: What a stored definition this process cannot read raises when its next tick is asked: a
#: zone this host's tz database lacks (removed by a tzdata update, or newer than it), a cron
#: line an older release let through.
UNREADABLE = (ConfigError, ValueError, KeyError, IndexError, ParseException)
#: What makes two definitions of one schedule alike (``anchor`` is only when it was stored).
_SHAPE = ("workflow", "cron", "every", "input", "timezone", "catchup", "overlap")


def next_tick(definition: dict[str, Any], after: float) -> float:
    """The first tick of the schedule strictly after ``after`` (a Unix time)."""
    if definition.get("every"):
        every = float(definition["every"])
        anchor = float(definition.get("anchor", 0.0))
        return anchor + (int((after - anchor) // every) + 1) * every
    tz = zone(definition.get("timezone", "UTC"))
    minute, hour, day, month, weekday = definition["cron"].split()
    cron = crontab(minute=minute, hour=hour, day_of_month=day, month_of_year=month,
                   day_of_week=_sunday_as_0(weekday))
    # its zone the schedule's, not the Celery app's (UTC): Celery reads the days it tries in
    # the crontab's own zone, and west of UTC the 1st of a month read as UTC came before the
    # evening of the 31st, so `0 0 1 * *` in Los Angeles skipped a month
    cron.tz = tz
    tick = _celery_tick(cron, tz, after)
    if tick <= after:  # ``after`` is in a repeated hour: the wall clock answered its first pass
        end = int(after // 3600) * 3600 + 3600
        while datetime.fromtimestamp(end, tz).fold:
            end += 3600
        tick = _celery_tick(cron, tz, end - 1)
    if hour.startswith("*"):  # hourly or finer: the hour a fall-back repeats ticks too
        tick = _repeated_hour_tick(cron, tz, after, tick) or tick
    return tick


def _sunday_as_0(weekday: str) -> str:
    """The weekday field as Celery's ``crontab`` reads it: cron also calls Sunday 7
    (``0 9 * * 7``, ``1-7``, ``5-7``, ``1-7/2``, ``7-7``), which Celery refused ("Invalid end
    range: 7 > 6"): a range up to 7 is written out day by day, Sunday as 0."""
    parts = []
    for part in weekday.split(","):
        if part == "7":
            part = "0"
        elif ranged := re.fullmatch(r"([0-7])-7(?:/([0-9]+))?", part):
            first, step = int(ranged[1]), int(ranged[2] or 1)
            days = sorted({day % 7 for day in range(first, 8, step)}) if step else []
            part = ",".join(map(str, days)) or part  # a step of 0: Celery's own refusal
        parts.append(part)
    return ",".join(parts)


def _celery_tick(cron: crontab, tz: Any, after: float) -> float:
    start, delta, _ = cron.remaining_delta(datetime.fromtimestamp(after, tz), tz=tz)
    return (start + delta).timestamp()


def _repeated_hour_tick(cron: crontab, tz: Any, after: float, tick: float) -> float | None:
    """The first tick after ``after`` and before ``tick`` in an hour that daylight saving's
    end repeats, which Celery's wall-clock arithmetic skips: ``0 * * * *`` went two real hours
    without a run, ``*/30`` lost two ticks. As cron does, only a line whose hour is a
    wildcard ticks in the repeated hour; ``30 2 * * *`` runs once that night. A quarter of an
    hour at a time: in a zone half (St John's) or three quarters (Chatham) of an hour off UTC,
    the repeated hour begins within a UTC hour, whose start looked at alone is not in it."""
    quarter = int(after // QUARTER) * QUARTER
    while quarter < tick:  # only a repeated hour's minutes are looked at
        if datetime.fromtimestamp(quarter, tz).fold:
            for t in range(max(quarter, int(after // 60) * 60 + 60),
                           min(quarter + QUARTER, int(tick)), 60):
                local = datetime.fromtimestamp(t, tz)
                if (local.minute in cron.minute and local.hour in cron.hour
                        and local.day in cron.day_of_month and local.month in cron.month_of_year
                        and local.isoweekday() % 7 in cron.day_of_week):
                    return float(t)
        quarter += QUARTER
    return None


def definition_of(workflow: str, schedule: Schedule, *, declared: bool = False
                  ) -> dict[str, Any]:
    """The stored form of ``schedule``; ``declared``: it comes from the code (a workflow's
    ``schedules=``), so it goes when the code stops declaring it."""
    schedule_id = schedule.default_id(workflow)
    if len(schedule_id) > SCHEDULE_ID_MAX_CHARS:
        # a cron line of thousands of characters made an id as long: the API's paths could
        # not reach it (the web server's 414), while it went on starting runs. Its length
        # only: a workflow's name may be any text, and its ids are reached percent-encoded
        of = "cron line" if schedule.cron else "interval"
        raise ConfigError(f"This schedule's default id, the workflow's name and its {of} "
                          f"({schedule_id[:40]!r}..., {len(schedule_id)} characters), is over "
                          f"{SCHEDULE_ID_MAX_CHARS} characters: give the schedule an id "
                          "(id=..., --id, \"id\" in a POST).")
    definition = {
        "id": schedule_id, "workflow": workflow, "cron": schedule.cron,
        "every": schedule.every, "input": schedule.input, "timezone": schedule.timezone,
        "catchup": schedule.catchup, "anchor": time.time(), "declared": declared,
    }
    if schedule.overlap != "allow":  # stored only when set: older definitions stay alike
        definition["overlap"] = schedule.overlap
    try:
        next_tick(definition, time.time())  # a bad cron line or zone fails here, said clearly
    except (ValueError, KeyError, IndexError, ParseException) as exc:
        raise ConfigError(f"invalid cron line {schedule.cron!r}: {exc}") from None
    return definition



# -- the API ----------------------------------------------------------------------------


def create(workflow: str, *, cron: str | None = None, every: float | None = None,
           input: Any = None, timezone: str = "UTC", catchup: bool = False,
           id: str | None = None, overlap: str = "allow",
           store: Store | None = None) -> dict[str, Any]:
    """Create (or replace) a schedule of ``workflow``; returns it with ``next_at``. The
    same definition again (a ``create()`` at each deploy or start, a retried POST) leaves
    the stored schedule as it is: its next tick, and its pause. Made anew, it moved the
    next tick a whole interval past each call (one made more often than its interval never
    fired) and resumed a schedule an operator had paused."""
    wf = get_workflow(workflow)
    # its timing first: a bad cron line given without an input was said to be the input's
    schedule = Schedule(cron=cron, every=every, input=input, timezone=timezone,
                        catchup=catchup, id=id, overlap=overlap)
    definition = definition_of(wf.name, schedule)
    next_at = next_tick(definition, time.time())
    wf.schedule_input(input)  # a schedule that would start invalid runs is refused now
    store = store or get_store()
    stored, _ = store.schedule(definition["id"])
    if stored is not None and not stored.get("declared") and _shape(stored) == _shape(definition):
        return get(definition["id"], store)
    declarer = (stored.get("workflow") if stored is not None and stored.get("declared")
                else _declared_here(definition["id"]))
    if declarer is not None:  # it replaced the code's, which beat then refused to store
        # at its next start (also before beat stored it), saying so only in its log
        raise InvalidState(
            f"Schedule {_named(definition['id'])} is declared in the code of workflow "
            f"{declarer!r} (Workflow(..., schedules=[...])): change it there, "
            "or give this one another id.")
    store.put_schedule(definition, next_at)
    store.schedule_fired(definition["id"], None)  # a replaced schedule's old error is not its
    return {**definition, "paused": False, "next_at": next_at, "last_error": None}


def _declared_here(schedule_id: str) -> str | None:
    """The workflow of this process's code that declares ``schedule_id``, or None."""
    for name, wf in workflows().items():
        if any(schedule.default_id(name) == schedule_id for schedule in wf.schedules):
            return name
    return None


def get(schedule_id: str, store: Store | None = None) -> dict[str, Any]:
    """The schedule's definition, ``paused``, ``next_at``, and ``last_error``: why its last
    tick started no run (``error``, ``at``, ``tick``), or None."""
    store = store or get_store()
    definition, next_at = store.schedule(schedule_id)
    if definition is None:
        raise NotFound(f"No schedule {_named(schedule_id)}.")
    error = store.schedule_errors(schedule_id).get(schedule_id)
    return {**definition, "paused": next_at is None, "next_at": next_at, "last_error": error}


def list(store: Store | None = None) -> list[dict[str, Any]]:  # noqa: A001 - schedules.list()
    store = store or get_store()
    errors = store.schedule_errors()
    return [{**d, "paused": n is None, "next_at": n, "last_error": errors.get(d["id"])}
            for d, n in store.schedules()]


def delete(schedule_id: str, store: Store | None = None) -> None:
    if not (store or get_store()).delete_schedule(schedule_id):
        raise NotFound(f"No schedule {_named(schedule_id)}.")


def pause(schedule_id: str, store: Store | None = None) -> dict[str, Any]:
    store = store or get_store()
    definition = get(schedule_id, store)
    store.put_schedule(_stored(definition), None)
    store.drop_buffered(schedule_id)  # a paused schedule starts nothing, held back or not
    return {**definition, "paused": True, "next_at": None}  # last_error: from get()


def resume(schedule_id: str, store: Store | None = None) -> dict[str, Any]:
    store = store or get_store()
    definition = get(schedule_id, store)
    try:
        next_at = next_tick(definition, time.time())
    except UNREADABLE as exc:  # it was a 500 over REST
        raise InvalidState(f"Schedule {_named(schedule_id)} cannot resume: {_unreadable(exc)}; "
                           "delete it and create it again.") from None
    store.put_schedule(_stored(definition), next_at)
    return {**definition, "paused": False, "next_at": next_at}


def _stored(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in ("paused", "next_at", "last_error")}


# -- declaring (beat's start) and firing (beat's sweep) ---------------------------------------


def store_declared(store: Store | None = None) -> None:
    """Make the stored declared schedules of this process's workflows what its code
    declares: a new declaration is stored; a changed one (an explicit ``id`` with another
    cron line, interval, input, zone or catchup) replaces the stored one from its next
    tick, keeping its pause; one the code no longer declares (a removed declaration, or a
    cron line changed under the default id) is deleted. Beat calls it when it starts
    (:mod:`flowkit.worker.signals`): one process, the one a deploy restarts with the new
    code, so no worker still running the old code (or a recycled child of one) undoes it.

    Schedules made at run time (:func:`create`, REST, CLI) are never touched: a
    declaration whose id one already holds, of any workflow, is not stored (an error says
    so). The declared schedules of workflows this process does not serve are left, except
    one under an id this process's code declares: it is taken over, with a warning naming
    both workflows (a renamed workflow keeping its schedule's id, or two deployments
    declaring one id)."""
    store = store or get_store()
    served = workflows()
    every = {d["id"]: (d, n) for d, n in store.schedules()}
    stored = {i: held for i, held in every.items() if held[0].get("workflow") in served}
    now = time.time()
    for name, wf in served.items():
        declared, unreadable = _declared_of(name, wf)
        for said in unreadable.values():  # a mistake, not an outage: trying again won't help
            log.error("flowkit: %s; it is not stored: fix its declaration", said)
        for schedule_id, definition in declared.items():
            holder, next_at = every.get(schedule_id, (None, None))
            if holder is None:
                store.put_schedule(definition, _first_tick(definition, now))
            elif not holder.get("declared"):
                log.error("flowkit: Workflow %r declares schedule %r, which a schedule of "
                          "workflow %r made at run time holds: it is not stored. Delete that "
                          "one (flowkit schedules delete %s) or give the declaration "
                          "another Schedule(id=...).", name, schedule_id,
                          holder.get("workflow"), schedule_id)
            elif holder.get("workflow") not in served:
                log.warning("flowkit: schedule %r was declared by workflow %r, which this "
                            "process does not serve; workflow %r declares it now and takes "
                            "it over.", schedule_id, holder.get("workflow"), name)
                store.put_schedule(*_taken_over(holder, next_at, definition, now))
            elif _shape(holder) != _shape(definition):
                store.put_schedule(*_taken_over(holder, next_at, definition, now))
                log.info("flowkit: schedule %s changed in the code: replaced", schedule_id)
        for schedule_id, (current, _) in stored.items():
            if (current.get("declared") and current["workflow"] == name
                    and schedule_id not in declared and schedule_id not in unreadable):
                store.delete_schedule(schedule_id)
                log.info("flowkit: schedule %s is no longer declared: deleted", schedule_id)


def _taken_over(holder: dict[str, Any], next_at: float | None, definition: dict[str, Any],
                now: float) -> tuple[dict[str, Any], float | None]:
    """A declaration replacing a stored schedule under its id (changed in the code, or
    taken over from a workflow renamed with its schedule's id kept): the holder's pause
    stays, and so do its next tick and anchor when it ticks alike (its interval goes on,
    not started again: a changed input only takes effect at the next tick)."""
    if _timing(holder) == _timing(definition):
        # an old stored definition without one ticked from 0.0 (next_tick's default)
        definition = {**definition, "anchor": holder.get("anchor", 0.0)}
        return definition, next_at
    return definition, None if next_at is None else _first_tick(definition, now)


def _first_tick(definition: dict[str, Any], now: float) -> float:
    """A newly stored declaration's first tick: an ``every`` schedule's is one interval
    after its anchor, as :func:`create`'s (its anchor is stamped after ``now``, which made
    the first tick fall at once)."""
    return next_tick(definition, max(now, float(definition.get("anchor") or now)))


def _timing(definition: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(definition.get(key) for key in ("cron", "every", "timezone"))


def check_declared() -> None:
    """Every schedule this process's workflows declare, read as beat will store it: a cron
    line Celery cannot read (``'99 * * * *'``) is a ConfigError when a worker starts."""
    for name, wf in workflows().items():
        _, unreadable = _declared_of(name, wf)
        if unreadable:
            raise ConfigError(next(iter(unreadable.values())))


def _declared_of(name: str, wf: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The stored forms of ``wf``'s declared schedules, and what is wrong with each one
    that has none: one bad declaration leaves the others to be stored and fired."""
    declared: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}
    for schedule in getattr(wf, "schedules", ()):
        schedule_id = schedule.default_id(name)
        try:
            declared[schedule_id] = definition_of(name, schedule, declared=True)
        except ConfigError as exc:
            unreadable[schedule_id] = f"Workflow {name!r}: schedule {schedule_id!r}: {exc}"
    return declared, unreadable


def _shape(definition: dict[str, Any]) -> Any:
    # through JSON, as the store keeps it: a tuple in the code's input equals its stored list
    return loads(comparable([definition.get(key) for key in _SHAPE]))


def claim_due(now: float | None = None, store: Store | None = None
              ) -> list[tuple[dict[str, Any], float]]:
    """Claim every tick due by ``now`` (each once, however many sweeps run): the schedules
    and ticks whose runs to start (the reaper starts them, keyed by schedule and tick, and
    settles each: one it could not start is started by a later sweep)."""
    store, now = store or get_store(), time.time() if now is None else now
    claimed: list[tuple[dict[str, Any], float]] = []
    for schedule_id, due_at in store.due_schedules(now):
        definition, _ = store.schedule(schedule_id)
        if definition is None:
            continue
        try:
            _claim_ticks(store, definition, due_at, now, claimed)
        except UNREADABLE as exc:
            # one such schedule failed every sweep before its later passes (slots given
            # back, compaction, the sweep's record): it waits, saying why, for a fix
            tick_failed(store, schedule_id, due_at, ConfigError(
                f"its next tick cannot be computed: {_unreadable(exc)}"))
    return claimed


def _claim_ticks(store: Store, definition: dict[str, Any], due_at: float, now: float,
                 claimed: list[tuple[dict[str, Any], float]]) -> None:
    # a sweep later than the schedule's period (a busy beat, a short period) claims
    # each tick it passed, one by one: only ticks later than GRACE are missed
    schedule_id = definition["id"]
    while due_at <= now:
        late = now - due_at > GRACE  # beat was down: the ticks since are missed
        following = next_tick(definition, now if late else due_at)
        fires = (_last_tick_before(definition, due_at, now) if definition.get("catchup")
                 else None) if late else due_at
        if not store.claim_tick(schedule_id, due_at, following, fires, now):
            return  # another sweep claimed it, and goes on from there
        if fires is not None:
            claimed.append((definition, fires))
        if late:
            if fires is None:
                log.warning("flowkit: schedule %s skipped ticks missed since %s",
                            schedule_id, due_at)
            return
        due_at = following


def _unreadable(exc: Exception) -> str:
    """What an UNREADABLE error says, to go on a sentence (its own full stop dropped)."""
    said = error_message(exc) if isinstance(exc, FlowkitError) else f"{exc} ({type(exc).__name__})"
    return said.rstrip(".")


def tick_failed(store: Store, schedule_id: str, tick: float, exc: FlowkitError) -> None:
    """Keep why (``flowkit schedules list``, the doctor show it) and say it in one line, once
    per new reason: a schedule whose workflow was removed logged a traceback every tick."""
    message = error_message(exc)
    try:
        before = store.schedule_fired(schedule_id, {
            "error": message, "type": type(exc).__name__, "at": time.time(), "tick": tick})
    except FlowkitError:
        before = None
    if before != message:
        log.error("flowkit: schedule %s started no run: %s (each tick fails the same way until "
                  "this is fixed, or the schedule deleted: flowkit schedules delete %s)",
                  schedule_id, message, schedule_id)


def idempotency_key(definition: dict[str, Any], tick: float) -> str:
    """The key of a tick's run: two beats firing the same tick start one run."""
    return f"schedule:{definition['id']}:{tick:.3f}"


def _last_tick_before(definition: dict[str, Any], first: float, now: float) -> float:
    tick = first
    while (following := next_tick(definition, tick)) <= now:
        tick = following
    return tick


def _named(schedule_id: str) -> str:
    """The id for a message: an id past the 200 characters any schedule has, by its length
    (a 5,000-character one was echoed whole)."""
    if isinstance(schedule_id, str) and len(schedule_id) > 200:
        return f"with a {len(schedule_id)}-character id"
    return repr(schedule_id)
