"""Workflows: a named composition of components with a marshmallow input schema.

A workflow is a definition: it validates input and output and names its steps, and
touches neither Redis nor Celery. Starting a run is the engine's job
(:func:`flowkit.engine.control.start`); ``Workflow.start`` hands the call to the
:class:`Launcher` that ``import flowkit`` installs, so the dependency points from the
engine to the definitions and never back.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Protocol

import marshmallow

from .component import Component
from .defaults import OUTPUT_ERROR_MAX_CHARS
from .errors import ConfigError, ValidationError, WorkflowNotFound
from .flow import Concurrency, Schedule
from .nodes import Sequence, as_node
from .schemas import SchemaLike, as_schema, schema_errors
from .serialization import MAX_DEPTH, dumps, loads, nested_too_deeply

_workflows: dict[str, Workflow] = {}
#: Longest default schedule id: ``schedule:<id>:<tick>`` stays within an idempotency key's 255.
SCHEDULE_ID_MAX_CHARS = 200
log = logging.getLogger("flowkit")

#: What a workflow's name may be: it is a path segment of the API and a part of Redis keys.
WORKFLOW_NAME = r"[^\s/:\x00-\x1f\x7f]{1,200}"
WORKFLOW_NAME_RULE = "1 to 200 characters, without spaces, '/' or ':'"


class Workflow:
    """A named workflow. ``steps`` is a list of components, ``parallel(...)`` and ``fan_out(...)``.

    The first step receives the validated input (a dict); each step receives the
    previous step's output; the last output is the run's output.
    """

    def __init__(
        self,
        name: str,
        steps: list[Any],
        *,
        input_schema: SchemaLike = None,
        output_schema: SchemaLike = None,
        version: str = "1",
        description: str = "",
        queue: str | None = None,
        concurrency: Concurrency | None = None,
        schedules: Iterable[Schedule] = (),
    ) -> None:
        if not (isinstance(name, str) and re.fullmatch(WORKFLOW_NAME, name)):
            raise ConfigError(f"Workflow name {name!r} must be {WORKFLOW_NAME_RULE}.")
        if isinstance(steps, Component):
            raise ConfigError(f"Workflow({name!r}, steps) takes a list of steps: write "
                              f"[{steps.fn.__name__}], not {steps.fn.__name__} alone.")
        if not isinstance(steps, (list, tuple)):
            raise ConfigError(f"Workflow({name!r}, steps) takes a list of steps, not "
                              f"{type(steps).__name__}.")
        if queue is not None and not (isinstance(queue, str) and queue.strip()):
            raise ConfigError(f"Workflow(queue=...) is the name of a Celery queue, not {queue!r}.")
        root = as_node(list(steps))
        assert isinstance(root, Sequence)
        self.name = name
        self.root = root
        self.input_schema = as_schema(input_schema, f"{name}Input")
        self.output_schema = as_schema(output_schema, f"{name}Output")
        self.version = str(version)
        self.description = description
        #: Queue of this workflow's runs; None: the default queue of the app starting it.
        self.queue = queue
        if concurrency is not None and not isinstance(concurrency, Concurrency):
            raise ConfigError("Workflow(concurrency=...) takes a flowkit.Concurrency(limit, key).")
        #: At most ``limit`` active runs per key (see flowkit.Concurrency).
        self.concurrency = concurrency
        self.schedules = tuple(schedules)
        if not all(isinstance(s, Schedule) for s in self.schedules):
            raise ConfigError("Workflow(schedules=[...]) takes flowkit.Schedule(...) items.")
        #: The module that defined it (a redefinition from another one is told: see below).
        self.module = sys._getframe(1).f_globals.get("__name__", "")
        _check_schedule_ids(name, self.schedules, self.module)
        for schedule in self.schedules:  # every tick would fail, logged by beat only
            try:
                self.schedule_input(schedule.input)
            except ValidationError as exc:
                raise ConfigError(f"Workflow {name!r}: schedule {schedule.default_id(name)!r} "
                                  f"has an input its runs would refuse: {exc.fields}.") from None
        earlier = _workflows.get(name)
        if earlier is not None and earlier.module != self.module:
            # a redefinition is a reload (flowkit dev, a notebook); from another module it
            # is two workflows under one name, or a module run as __main__ and imported
            log.warning("flowkit: Workflow %r defined in %s replaces the one defined in %s: "
                        "runs of %r run this one; give one of them another name.",
                        name, self.module, earlier.module, name)
        _workflows[name] = self

    def __repr__(self) -> str:
        return f"<Workflow {self.name} v{self.version}>"

    def validate(self, data: Any) -> Any:
        """The JSON form of ``data`` loaded by the input schema; raises ValidationError."""
        if nested_too_deeply(data):
            raise ValidationError({"_schema": [
                f"Input nested more than {MAX_DEPTH} levels deep; flatten it."]})
        if self.input_schema is None:
            return data
        if data is None:  # not given (start(), schedules.create(), the CLI without --input)
            raise ValidationError({"_schema": [
                "Input must be a JSON object, not null: give one ({} when every field has a "
                "default)."]})
        if not isinstance(data, dict):
            raise ValidationError({"_schema": ["Input must be a JSON object."]})
        try:
            loaded = self.input_schema.load(data)
        except marshmallow.ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            raise ValidationError(messages) from None
        # then what marshmallow let through the published schema refuses (7.9 for an
        # Integer, which it makes 7): held to the schema as the API holds it, as JSON
        try:
            as_json = loads(dumps(data))
        except (TypeError, ValueError):
            as_json = None  # not JSON as given (a datetime): marshmallow's word is the one
        if as_json is not None:
            refused = schema_errors(self.input_schema, as_json)
            if refused:
                raise ValidationError(refused)
        return self.input_schema.dump(loaded)

    def schedule_input(self, input: Any) -> Any:
        """``input`` as a schedule's runs would start with it (``validate``d, and holding
        the field its concurrency key reads); raises ValidationError, as a start would at
        every tick."""
        payload = self.validate(input)
        if self.concurrency is not None and not callable(self.concurrency.key):
            self.concurrency.key_of(payload, None)
        return payload

    def check_output(self, output: Any) -> Any:
        if self.output_schema is None:
            return output
        try:
            return self.output_schema.dump(self.output_schema.load(output))
        except marshmallow.ValidationError as exc:
            # the run's error keeps only this message: the fields go in it, or no one sees
            # them; the first ones only, as 100,000 bad items would make megabytes of it
            said = json.dumps(exc.messages, default=str, ensure_ascii=False)
            if len(said) > OUTPUT_ERROR_MAX_CHARS:  # at a ", ", never inside an escape
                cut = said[:OUTPUT_ERROR_MAX_CHARS]
                boundary = cut.rfind(", ")
                said = (cut[:boundary] if boundary > 0 else cut) + ", ..."
            raise ValidationError(exc.messages, f"Workflow output failed its schema: {said}."
                                  ) from None

    def start(
        self, input: Any = None, *, idempotency_key: str | None = None, owner: str | None = None,
        **options: Any,
    ) -> Any:
        """Validate ``input``, store a queued run and enqueue its canvas; returns the
        :class:`flowkit.Run` (a snapshot of its record).

        With ``idempotency_key``, a second start with the same key (and the same
        ``owner``: each owner's keys are its own) returns the first run
        (``run.created`` is False) and enqueues nothing.
        """
        if _launcher is None:
            raise ConfigError("No launcher installed: `import flowkit` installs the engine's.")
        return _launcher.start(self, input, idempotency_key=idempotency_key, owner=owner, **options)

    def components(self):
        return list(self.root.components())

    def queues(self, default_queue: str) -> set[str]:
        """The Celery queues this workflow's tasks go to: its own (``default_queue`` when it
        names none) and those its components name with ``.queue(...)``."""
        return {self.queue or default_queue} | {
            c.policy.queue for c in self.components() if c.policy.queue}


def get_workflow(name: str) -> Workflow:
    try:
        return _workflows[name]
    except KeyError:
        raise WorkflowNotFound(f"No workflow named {name!r}.") from None


def workflows() -> dict[str, Workflow]:
    return dict(_workflows)


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` Did you mean 'greet'?`` for a workflow name one typo away from one of ``names``,
    else ``""``."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.75)
    return f" Did you mean {close[0]!r}?" if close else ""


class Launcher(Protocol):
    """What starts runs (:mod:`flowkit.engine.control`)."""

    def start(
        self, workflow: Workflow, input: Any, *, idempotency_key: str | None, owner: str | None,
        **options: Any,
    ) -> Any: ...


_launcher: Launcher | None = None


def install_launcher(launcher: Launcher) -> None:
    """Make ``launcher`` start the runs of ``Workflow.start`` (``import flowkit`` does)."""
    global _launcher
    _launcher = launcher


def _check_schedule_ids(name: str, schedules: tuple[Schedule, ...], module: str) -> None:
    """Each of ``name``'s schedules is stored under its own id, which the API can name and
    whose ticks' idempotency keys fit; two schedules under one id, in this workflow or
    another, would leave one of them lost. Between two workflows of ``__main__`` (a
    notebook or REPL, where a renamed workflow's old one stays registered) it is a warning:
    no beat serves them there."""
    ids = [schedule.default_id(name) for schedule in schedules]
    for schedule, schedule_id in zip(schedules, ids, strict=True):
        if schedule.id is None and len(schedule_id) > SCHEDULE_ID_MAX_CHARS:
            shown = schedule_id if len(schedule_id) <= 60 else schedule_id[:60] + "..."
            raise ConfigError(f"Workflow {name!r}: the schedule's default id {shown!r} is over "
                              f"{SCHEDULE_ID_MAX_CHARS} characters (its ticks' idempotency "
                              "keys would be too long); give it its own Schedule(id=...).")
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"Workflow {name!r}: two schedules are both {twice[0]!r}; give "
                          "each its own Schedule(id=...).")
    for other in _workflows.values():
        if other is None or other.name == name:  # None: a test's placeholder; name: redefined
            continue
        shared = set(ids) & {s.default_id(other.name) for s in other.schedules}
        if shared and module == other.module == "__main__":
            log.warning("flowkit: Workflows %r and %r both declare a schedule %r; a beat "
                        "serving both would keep one of them.", other.name, name, min(shared))
        elif shared:
            raise ConfigError(f"Workflows {other.name!r} and {name!r} both declare a schedule "
                              f"{min(shared)!r}; give each its own Schedule(id=...).")
