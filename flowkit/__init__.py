"""flowkit: long-running, resilient AI workflows on Celery and Redis.

This module is the facade: it re-exports the public API (pinned by
``tests/test_public_api.py``) and wires the layers together. The layers, whose imports
only point down (checked by import-linter, see ``setup.cfg``)::

    worker | api | cli | llm    entry planes (the Celery app and tasks; the Flask blueprint;
        |                      the command line; the LLM client)
    engine                     executor, canvas, heartbeat, reaper, drain, trace;
        |                      control: the one door that starts, cancels and retries runs
    store                      the only code that talks to Redis
        |
    definitions                the modules of this folder: component, policy, nodes,
                               workflow, events, states, errors, config, context, hooks

``import flowkit`` loads no Flask: ``FlowKit`` and ``create_blueprint`` are imported
from :mod:`flowkit.api` when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import workflow as _workflow
from .component import Component, component, continue_with
from .config import Settings, configure, get_settings
from .context import (
    context,
    emit,
    is_cancelled,
    progress,
    sleep,
    sleep_until,
    wait_for_event,
    wait_for_input,
)
from .engine import control as _control
from .engine import schedules
from .engine.broker import get_app
from .engine.control import (
    Run,
    cancel,
    follow,
    get_run,
    history,
    list_runs,
    retry,
    send_event,
    send_input,
    wait,
)
from .engine.step import StepContext
from .errors import (
    BrokerUnavailable,
    ConfigError,
    EventTimeout,
    FlowkitError,
    IdempotencyConflict,
    InputTimeout,
    InvalidState,
    NotFound,
    PayloadTooLarge,
    RunCancelled,
    RunNotFound,
    StepError,
    StepTimeout,
    StoreUnavailable,
    ValidationError,
    WaitTimeout,
    WorkflowNotFound,
)
from .events import Event
from .flow import Concurrency, Schedule
from .nodes import fan_out, parallel
from .policy import exponential
from .version import __version__ as __version__
from .worker import create_celery_app
from .workflow import Workflow, get_workflow, workflows

if TYPE_CHECKING:
    from .api import FlowKit, create_blueprint

# Workflow.start (a definition) hands its runs to the engine's door.
_workflow.install_launcher(_control)

__all__ = [
    "Component",
    "Concurrency",
    "ConfigError",
    "Event",
    "EventTimeout",
    "FlowKit",
    "FlowkitError",
    "IdempotencyConflict",
    "InputTimeout",
    "InvalidState",
    "NotFound",
    "PayloadTooLarge",
    "Run",
    "RunCancelled",
    "RunNotFound",
    "Schedule",
    "Settings",
    "StepContext",
    "StepError",
    "StepTimeout",
    "StoreUnavailable",
    "BrokerUnavailable",
    "ValidationError",
    "WaitTimeout",
    "Workflow",
    "WorkflowNotFound",
    "cancel",
    "component",
    "configure",
    "context",
    "continue_with",
    "create_blueprint",
    "create_celery_app",
    "emit",
    "exponential",
    "fan_out",
    "follow",
    "get_app",
    "get_run",
    "get_settings",
    "get_workflow",
    "history",
    "is_cancelled",
    "list_runs",
    "parallel",
    "progress",
    "retry",
    "schedules",
    "send_event",
    "send_input",
    "sleep",
    "sleep_until",
    "wait",
    "wait_for_event",
    "wait_for_input",
    "workflows",
]

_FROM_API = {"FlowKit", "create_blueprint"}


def __getattr__(name: str) -> Any:
    # The host app's side: Flask is loaded when it asks for it, never by a worker.
    if name in _FROM_API:
        from . import api

        return getattr(api, name)
    if name == "llm":  # `import flowkit` then flowkit.llm.client_from_env(), as the README
        # writes it, was an AttributeError; loaded only when asked for (the openai SDK).
        # import_module: `from . import llm` asks this function for llm again, for ever
        import importlib

        return importlib.import_module(".llm", __name__)
    raise AttributeError(f"module 'flowkit' has no attribute {name!r}")
