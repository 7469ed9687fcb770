"""Workflows: a named composition of components with a marshmallow input schema."""

from __future__ import annotations

import time
from typing import Any

import marshmallow
from ulid import ULID

from . import events
from .celery_app import get_app
from .errors import ConfigError, IdempotencyConflict, ValidationError, WorkflowNotFound
from .nodes import Sequence, as_node
from .run import Run
from .serialization import dumps, dumps_bounded
from .store import get_store

_workflows: dict[str, Workflow] = {}

SchemaLike = type[marshmallow.Schema] | marshmallow.Schema | dict | None


def _schema(schema: SchemaLike, what: str) -> marshmallow.Schema | None:
    if schema is None:
        return None
    if isinstance(schema, marshmallow.Schema):
        return schema
    if isinstance(schema, type) and issubclass(schema, marshmallow.Schema):
        return schema()
    if isinstance(schema, dict):
        return marshmallow.Schema.from_dict(schema, name=what)()
    raise ConfigError(f"{what} must be a marshmallow Schema (class or instance) or a dict of fields.")


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
    ) -> None:
        if not name or "/" in name or ":" in name:
            raise ConfigError(f"Workflow name {name!r} must be non-empty, without '/' or ':'.")
        root = as_node(list(steps))
        assert isinstance(root, Sequence)
        self.name = name
        self.root = root
        self.input_schema = _schema(input_schema, f"{name}Input")
        self.output_schema = _schema(output_schema, f"{name}Output")
        self.version = str(version)
        self.description = description
        #: Queue of this workflow's runs; None: the default queue of the app starting it.
        self.queue = queue
        _workflows[name] = self

    def __repr__(self) -> str:
        return f"<Workflow {self.name} v{self.version}>"

    def validate(self, data: Any) -> Any:
        """The JSON form of ``data`` loaded by the input schema; raises ValidationError."""
        if self.input_schema is None:
            return data
        if not isinstance(data, dict):
            raise ValidationError({"_schema": ["Input must be a JSON object."]})
        try:
            loaded = self.input_schema.load(data)
        except marshmallow.ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            raise ValidationError(messages) from None
        return self.input_schema.dump(loaded)

    def check_output(self, output: Any) -> Any:
        if self.output_schema is None:
            return output
        try:
            return self.output_schema.dump(self.output_schema.load(output))
        except marshmallow.ValidationError as exc:
            raise ValidationError(exc.messages, "Workflow output failed its schema.") from None

    def start(
        self, input: Any = None, *, idempotency_key: str | None = None, owner: str | None = None
    ) -> Run:
        """Validate ``input``, store a queued run and enqueue its canvas.

        With ``idempotency_key``, a second start with the same key returns the
        first run (``run.created`` is False) and enqueues nothing.
        """
        payload = self.validate(input)
        input_json = dumps_bounded(payload, "the workflow input")
        store = get_store()
        run_id = str(ULID())
        now = time.time()
        record = {
            "id": run_id,
            "workflow": self.name,
            "version": self.version,
            "state": "queued",
            "input": input_json,
            "created_at": now,
            "updated_at": now,
            "gen": 0,
            "restarts": 0,
            "owner": owner or "",
            "idempotency_key": idempotency_key or "",
            "queue": self.queue or get_app().conf.task_default_queue,
        }
        queued = events.make(events.RUN_QUEUED, run_id, workflow=self.name, version=self.version)
        winner = store.create_run(record, queued, idempotency_key)
        if winner != run_id:
            existing = Run.load(winner)
            if dumps(existing.input) != dumps(payload):
                raise IdempotencyConflict(
                    f"Idempotency key {idempotency_key!r} was used for run {winner} with "
                    "another input; use a new key for a new run."
                )
            existing.created = False
            return existing
        run = Run.load(run_id)  # as created: queued (a worker may start it at once)
        self.enqueue(run_id, 0, payload, record["queue"])
        return run

    def enqueue(self, run_id: str, gen: int, payload: Any, queue: str | None = None) -> None:
        """Send generation ``gen`` of the run's canvas (to ``queue``, else the run's queue)."""
        from .canvas import compile_run

        queue = queue or get_store().run_queue(run_id)
        compile_run(self.root, self.name, run_id, gen, queue).apply_async(args=(payload,))

    def components(self):
        return list(self.root.components())


def get_workflow(name: str) -> Workflow:
    try:
        return _workflows[name]
    except KeyError:
        raise WorkflowNotFound(f"No workflow named {name!r}.") from None


def workflows() -> dict[str, Workflow]:
    return dict(_workflows)
