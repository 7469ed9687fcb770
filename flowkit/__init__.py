"""flowkit: long-running, resilient AI workflows on Celery and Redis."""

from .api import FlowKit, create_blueprint
from .celery_app import create_celery_app, get_app
from .component import Component, component, continue_with
from .config import Settings, configure, get_settings
from .context import StepContext, context, emit, is_cancelled, progress
from .errors import (
    ConfigError,
    FlowkitError,
    IdempotencyConflict,
    InvalidState,
    NotFound,
    PayloadTooLarge,
    RunCancelled,
    RunNotFound,
    StepError,
    StepTimeout,
    StoreUnavailable,
    ValidationError,
    WorkflowNotFound,
)
from .events import Event
from .nodes import fan_out, parallel
from .policy import exponential
from .run import Run, cancel, get_run, list_runs, retry, wait
from .workflow import Workflow, get_workflow, workflows

__version__ = "0.1.0"

__all__ = [
    "Component",
    "ConfigError",
    "Event",
    "FlowKit",
    "FlowkitError",
    "IdempotencyConflict",
    "InvalidState",
    "NotFound",
    "PayloadTooLarge",
    "Run",
    "RunCancelled",
    "RunNotFound",
    "Settings",
    "StepContext",
    "StepError",
    "StepTimeout",
    "StoreUnavailable",
    "ValidationError",
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
    "get_app",
    "get_run",
    "get_settings",
    "get_workflow",
    "is_cancelled",
    "list_runs",
    "parallel",
    "progress",
    "retry",
    "wait",
    "workflows",
]
