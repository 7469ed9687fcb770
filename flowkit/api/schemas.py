"""marshmallow schemas of the API's query strings and responses (validation + OpenAPI)."""

from __future__ import annotations

import dataclasses

from marshmallow import INCLUDE, Schema, fields, validate

from ..engine.control import Run as RunRecord
from ..events import CURSOR_PATTERN
from ..states import RunState

STATES = [s.value for s in RunState]
_CURSOR = validate.Regexp(CURSOR_PATTERN, error="Not a stream event id like 1700000000000-0.")


class ListRunsArgs(Schema):
    workflow = fields.String(validate=validate.Length(1, 200))
    state = fields.String(validate=validate.OneOf(STATES))
    limit = fields.Integer(validate=validate.Range(1, 10_000))
    before = fields.String(validate=validate.Length(1, 64), metadata={
        "description": "Run id: the page of runs older than this one (the previous `next`)."})


class EventsArgs(Schema):
    after = fields.String(validate=_CURSOR, metadata={
        "description": "Event id: only events after it. `Last-Event-ID` does the same for SSE."})
    limit = fields.Integer(validate=validate.Range(1, 100_000))
    token = fields.String(metadata={"description": "A run token, for clients that cannot send headers."})


class StartArgs(Schema):
    wait = fields.Float(validate=validate.Range(0, 86_400), metadata={
        "description": "Hold the request up to this many seconds for the run to end."})


class StreamArgs(Schema):
    after = fields.String(validate=_CURSOR)
    token = fields.String()


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
    "Any": lambda: fields.Raw(allow_none=True),
    "RunState": lambda: fields.String(required=True, validate=validate.OneOf(STATES)),
    "dict[str, Any] | None": lambda: fields.Dict(allow_none=True),
    "dict[str, int] | None": lambda: fields.Dict(keys=fields.String(), values=fields.Integer(),
                                                 allow_none=True),
}


def _run_fields() -> dict[str, fields.Field]:
    """The run record's fields, read off the Run dataclass (its shape is written once)."""
    return {f.name: _RUN_FIELD_TYPES[str(f.type)]() for f in dataclasses.fields(RunRecord)
            if f.name != "created"}


class Run(Schema.from_dict({**_run_fields(), "urls": fields.Nested(RunUrls, required=True)})):
    class Meta:
        unknown = INCLUDE


class StartedRun(Run):
    created = fields.Boolean(required=True, metadata={"description": "False: an idempotent replay."})
    token = fields.String(required=True, metadata={"description": "Run-scoped read token."})
    token_expires_in = fields.Integer(required=True)


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


class Health(Schema):
    status = fields.String(required=True)
    redis = fields.Boolean(required=True)
    workers = fields.Integer(required=True)
