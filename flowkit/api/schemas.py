"""marshmallow schemas of the API's query strings and responses (validation + OpenAPI).

The views load their query strings with the ``*Args`` schemas, and the OpenAPI document
(:mod:`.openapi`) publishes the same schemas as the operations' query parameters, so the
constraints a client reads are the ones the server enforces. The run token (``?token=``)
is a credential, not a parameter: the document describes it as a security scheme.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate, validates_schema

from ..engine.control import MAX_OWNER_CHARS
from ..engine.control import Run as RunRecord
from ..flow import CRON_LINE, MAX_DELAY, MAX_EVERY, OVERLAPS, SCHEDULE_ID, SCHEDULE_ID_RULE
from ..states import RunState

STATES = [s.value for s in RunState]


def _at_most(bound: int) -> str:
    """A regex of the decimal numbers from 0 to ``bound`` (ASCII digits, as many leading
    zeros as fit in ``bound``'s width)."""
    digits = str(bound)
    width = len(digits)
    alternatives = [f"[0-9]{{1,{width - 1}}}"]
    for i, digit in enumerate(digits):
        rest = width - i - 1
        if digit != "0":
            lower = "0" if digit == "1" else f"[0-{int(digit) - 1}]"
            alternatives.append(digits[:i] + lower + (f"[0-9]{{{rest}}}" if rest else ""))
    return "(" + "|".join([*alternatives, digits]) + ")"


_U64 = _at_most(2**64 - 1)
#: A cursor as a query parameter: ``0`` (the start) or an event id, as Redis takes it: two
#: unsigned 64-bit integers (Redis refuses a larger part, and no id follows the largest).
CURSOR_PATTERN = rf"^(0|{_U64}-{_U64})$"
_LAST_ID = f"{2**64 - 1}-{2**64 - 1}"


#: A run id (a ULID: 26 characters of Crockford's base 32, case-insensitive, whose first
#: character keeps its time within 48 bits).
RUN_ID_PATTERN = "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"


class Whole(validate.Regexp):
    """The whole value matches the pattern: marshmallow's ``Regexp`` uses ``re.match``, and
    Python's ``$`` matches before a trailing newline (the published JSON Schema's does not)."""

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class _Cursor(Whole):
    """The whole value matches :data:`CURSOR_PATTERN` (ASCII digits, no trailing newline),
    and is not the largest id (nothing comes after it)."""

    def __init__(self) -> None:
        super().__init__(CURSOR_PATTERN, error="Not a stream event id like 1700000000000-0.")

    def __call__(self, value: str) -> str:
        if value == _LAST_ID:
            raise ValidationError(self._format_error(value))
        return super().__call__(value)


_CURSOR = _Cursor()


def is_cursor(value: str) -> bool:
    """Whether ``value`` is a cursor the API takes (a header's, held to the query's rule)."""
    try:
        _CURSOR(value)
    except ValidationError:
        return False
    return True

#: Numbers as a query string writes them (ASCII), which is what the document's ``integer``
#: and ``number`` allow; ``int()`` and ``float()`` alone would take " 5", "1_0" or "٥" too.
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class _QueryInteger(fields.Integer):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if not isinstance(value, str) or _INTEGER.fullmatch(value) is None:
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class _QueryNumber(fields.Float):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if not isinstance(value, str) or _NUMBER.fullmatch(value) is None:
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


#: An offset whose ``+`` a query string decoded to a space (``?start_at=...T09:00:00+01:00``
#: unencoded): no other reading of a space there.
_DECODED_PLUS = re.compile(r"(.+T[0-9:.]+) ([0-9]{2}(?::?[0-9]{2})?)")


class _QueryAwareDateTime(fields.AwareDateTime):
    """An ISO 8601 date-time with a time zone, from a query string: an offset's ``+`` left
    unencoded arrives as a space, and the 400 said "not a date-time" of what its own hint
    ("+01:00 for an offset") had the caller write."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and (found := _DECODED_PLUS.fullmatch(value.strip())):
            value = f"{found[1]}+{found[2]}"
        return super()._deserialize(value, attr, data, **kwargs)


class ListRunsArgs(Schema):
    workflow = fields.String(validate=validate.Length(1, 200))
    state = fields.String(validate=validate.OneOf(STATES))
    owner = fields.String(validate=validate.Length(1, MAX_OWNER_CHARS))
    # its maximum is the deployment's FLOWKIT_API_MAX_PAGE_SIZE, checked (and published)
    # by the view: one message whatever the number
    limit = _QueryInteger(validate=validate.Range(min=1))
    before = fields.String(validate=Whole(
        RUN_ID_PATTERN, error="Not a run id: pass the previous page's `next`."), metadata={
        "description": "Run id: the page of runs older than this one (the previous `next`); "
                       "its run may have expired since."})


#: The ``status`` query parameter of a run's event streams (SSE and WebSocket alike).
_STATUS = ("`true`: also tell the client when the server cannot read the run's events from "
           "Redis (`{\"status\": \"degraded\", ...}`, SSE `event: status`) and when it can "
           "again (`{\"status\": \"live\"}`): events are late then, not lost. Not an event: "
           "it has no id.")


class EventsArgs(Schema):
    after = fields.String(validate=_CURSOR, metadata={
        "description": "Event id: only events after it (`0`: from the start). `Last-Event-ID` "
                       "does the same for SSE."})
    limit = _QueryInteger(validate=validate.Range(1, 100_000))
    status = fields.Boolean(metadata={"description": _STATUS})


#: The longest wait a start may ask for (?wait= and Prefer: wait= alike), before the
#: deployment's own cap (FLOWKIT_API_MAX_WAIT).
MAX_WAIT_QUERY = 86_400


class StartArgs(Schema):
    wait = _QueryNumber(validate=validate.Range(0, MAX_WAIT_QUERY), metadata={
        "description": "Hold the request up to this many seconds for the run to end."})
    priority = _QueryInteger(validate=validate.Range(0, 9), metadata={
        "description": "0 (the default) to 9: higher priorities are admitted (concurrency "
                       "keys) and dispatched first on the same queue."})
    delay = _QueryNumber(validate=validate.Range(0, MAX_DELAY, error=(
        "Must be from {min} to {max} seconds (366 days); for a later start, give start_at "
        "(ISO 8601 with a time zone).")), metadata={
        "description": "Start the run this many seconds from now (it is `scheduled` until "
                       "then, visible and cancellable)."})
    start_at = _QueryAwareDateTime(error_messages={
        "invalid": "Not a date-time flowkit can hold: ISO 8601 with a time zone, before the "
                   "year 10000 (e.g. 2026-12-24T09:00:00+00:00).",
        "invalid_awareness": "Give its time zone: e.g. 2026-12-24T09:00:00Z, or +01:00 for "
                             "an offset."}, metadata={
        "description": "Start the run at this time (ISO 8601 with a time zone); it is "
                       "`scheduled` until then. Given with `delay`, `start_at` wins; a time "
                       "past starts the run now."})


class InputArgs(Schema):
    step = fields.String(validate=validate.Length(1, 1000), metadata={
        "description": "The key of the step whose wait this answers (`1[0]:review`, as the "
                       "run's `waits` and its `run.waiting` events name it): needed when "
                       "several steps wait under one name at once (fan-out items, parallel "
                       "branches), a `400` under `step` without it."})


class StreamArgs(Schema):
    after = fields.String(validate=_CURSOR, metadata={
        "description": "Event id: only events after it (`0`: from the start)."})
    status = fields.Boolean(metadata={"description": _STATUS})


class ErrorBody(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    fields = fields.Dict(required=True)


class Error(Schema):
    error = fields.Nested(ErrorBody, required=True)


class RunUrls(Schema):
    self = fields.String(required=True)
    output = fields.String(required=True)
    events = fields.String(required=True)
    stream = fields.String(required=True)
    watch = fields.String(required=True)


#: The response field of each annotation of :class:`flowkit.engine.control.Run`.
_RUN_FIELD_TYPES = {
    "str": lambda: fields.String(required=True),
    "str | None": lambda: fields.String(allow_none=True),
    "float": lambda: fields.Float(required=True),
    "float | None": lambda: fields.Float(allow_none=True),
    "int": lambda: fields.Integer(required=True),
    "int | None": lambda: fields.Integer(allow_none=True),
    "Any": lambda: fields.Raw(allow_none=True),
    "RunState": lambda: fields.String(required=True, validate=validate.OneOf(STATES)),
    "dict[str, Any] | None": lambda: fields.Dict(allow_none=True),
    "dict[str, int] | None": lambda: fields.Dict(keys=fields.String(), values=fields.Integer(),
                                                 allow_none=True),
    "list[dict[str, Any]] | None": lambda: fields.List(fields.Dict(), allow_none=True),
}


def _run_fields() -> dict[str, fields.Field]:
    """The run record's fields, read off the Run dataclass (its shape is written once)."""
    return {f.name: _RUN_FIELD_TYPES[str(f.type)]() for f in dataclasses.fields(RunRecord)
            if f.name != "created"}


class Run(Schema.from_dict({**_run_fields(), "urls": fields.Nested(RunUrls, required=True)})):
    class Meta:
        unknown = INCLUDE


class StartedRun(Run):
    created = fields.Boolean(required=True,
                             metadata={"description": "False: an idempotent replay."})
    token = fields.String(required=True, metadata={
        "description": "Run-scoped read token (bearer, or ?token=): the run's record, output, "
                       "events, stream and trace."})
    token_expires_in = fields.Integer(required=True, metadata={"description": "Seconds."})


class RunToken(Schema):
    run_id = fields.String(required=True)
    token = fields.String(required=True, metadata={
        "description": "A fresh run token, as a start answers with: the run's record, "
                       "output, events, stream and trace, and answering its waits."})
    token_expires_in = fields.Integer(required=True, metadata={"description": "Seconds."})


class RunPage(Schema):
    runs = fields.List(fields.Nested(Run), required=True)
    next = fields.String(allow_none=True, required=True)


class Event(Schema):
    class Meta:
        unknown = INCLUDE

    id = fields.String(required=True)
    type = fields.String(required=True)
    ts = fields.Float()
    run = fields.String()


class EventPage(Schema):
    events = fields.List(fields.Nested(Event), required=True)
    next = fields.String(required=True)
    done = fields.Boolean(required=True)


class Output(Schema):
    output = fields.Raw(allow_none=True, required=True)


class WorkflowInfo(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    description = fields.String(required=True)
    input_schema = fields.Dict(allow_none=True, required=True)
    output_schema = fields.Dict(allow_none=True, required=True)
    runs_url = fields.String(required=True)


class WorkflowList(Schema):
    workflows = fields.List(fields.Nested(WorkflowInfo), required=True)


class Trace(Schema):
    spans = fields.List(fields.Dict(), required=True)


class Worker(Schema):
    """A live worker node, as it announced itself when ready (more fields may follow)."""

    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True)
    queues = fields.List(fields.String())
    pool = fields.String()
    concurrency = fields.Integer()
    processes = fields.Integer(required=True)
    last_beat = fields.Float(required=True)
    seconds_since_beat = fields.Float(required=True)


class Health(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded"]), metadata={
        "description": "`degraded` (still 200): no live worker, or a served workflow's queue "
                       "that no live worker consumes; `problems` says which."})
    redis = fields.Boolean(required=True)
    workers = fields.List(fields.Nested(Worker), metadata={
        "description": "Only to a caller with full access (API key): hosts, pids, queues."})
    problems = fields.List(fields.String(), metadata={
        "description": "Only to a caller with full access (API key): they name workflows, "
                       "queues and workers."})


class Delivered(Schema):
    outcome = fields.String(required=True, validate=validate.OneOf(
        ["resumed", "delivered", "same"]), metadata={
        "description": "`resumed`: the run continues now; `delivered`: it still waits for "
                       "another wait or for steps in flight; `same`: this value was accepted "
                       "before (nothing changed)."})
    run = fields.Nested(Run, required=True)


class EventSent(Schema):
    woken = fields.Integer(required=True, metadata={
        "description": "How many waiting runs the event answered."})


class ScheduleBody(Schema):
    """What ``POST /schedules`` takes."""

    workflow = fields.String(required=True, validate=validate.Length(1, 200))
    cron = fields.String(validate=Whole(
        CRON_LINE,
        error="5 fields (minute hour day month weekday) of digits and * / , -, "
              "e.g. '0 9 * * 1-5'."))
    every = fields.Float(validate=validate.Range(1, MAX_EVERY))
    input = fields.Raw(allow_none=True)
    timezone = fields.String(load_default="UTC", validate=validate.Length(1, 64))
    catchup = fields.Boolean(load_default=False)
    id = fields.String(validate=Whole(SCHEDULE_ID, error=SCHEDULE_ID_RULE + "."))
    overlap = fields.String(load_default="allow", validate=validate.OneOf(OVERLAPS))

    @validates_schema
    def _one_clock(self, data: dict, **_: Any) -> None:
        if ("cron" in data) == ("every" in data):
            raise ValidationError("Give cron or every, one of them.", "cron")


class ScheduleError(Schema):
    error = fields.String(required=True)
    type = fields.String(required=True)
    at = fields.Float(required=True)
    tick = fields.Float(required=True)


class ScheduleInfo(Schema):
    class Meta:
        unknown = INCLUDE

    id = fields.String(required=True)
    workflow = fields.String(required=True)
    cron = fields.String(allow_none=True)
    every = fields.Float(allow_none=True)
    input = fields.Raw(allow_none=True)
    timezone = fields.String(required=True)
    catchup = fields.Boolean(required=True)
    #: Declared in the code (a workflow's ``schedules=``): deleted when the code drops it.
    declared = fields.Boolean(metadata={"description": "Declared in the code (Workflow("
                                        "schedules=...)): beat deletes it once the code "
                                        "no longer declares it."})
    overlap = fields.String(metadata={"description": "A tick while the schedule's last run "
                                      "is live: \"skip\" starts none, \"buffer\" starts it "
                                      "once that run ends (one held back), \"cancel\" "
                                      "cancels that run; absent: \"allow\" (starts it)."})
    paused = fields.Boolean(required=True)
    next_at = fields.Float(allow_none=True, required=True)
    last_error = fields.Nested(ScheduleError, allow_none=True, metadata={
        "description": "Why its last tick started no run (its workflow removed from the "
                       "code, an input its schema refuses now), or null: each tick fails the "
                       "same way until this is fixed."})


class ScheduleList(Schema):
    schedules = fields.List(fields.Nested(ScheduleInfo), required=True)
