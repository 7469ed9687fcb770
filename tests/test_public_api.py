"""The public API, pinned: a name added or removed here is a decision, not an accident."""

from __future__ import annotations

import flowkit
import flowkit.api
import flowkit.llm

CORE = {
    # building blocks
    "component", "Component", "continue_with", "Workflow", "parallel", "fan_out", "exponential",
    # inside a step
    "context", "StepContext", "progress", "emit", "is_cancelled",
    # runs
    "Run", "Event", "get_run", "list_runs", "wait", "cancel", "retry", "get_workflow", "workflows",
    # deployment and settings
    "create_celery_app", "get_app", "Settings", "configure", "get_settings",
    "FlowKit", "create_blueprint",
    # errors
    "FlowkitError", "ConfigError", "ValidationError", "PayloadTooLarge", "NotFound",
    "WorkflowNotFound", "RunNotFound", "InvalidState", "IdempotencyConflict", "StepError",
    "RunCancelled", "StoreUnavailable", "StepTimeout",
}


def test_flowkit_exports_exactly_its_public_api():
    assert set(flowkit.__all__) == CORE
    assert all(hasattr(flowkit, name) for name in CORE)


def test_api_and_llm_packages_export_their_surface():
    assert set(flowkit.api.__all__) == {"FlowKit", "create_blueprint"}
    assert {"OpenAI", "wrap", "Provider", "RateLimit", "RetryPolicy", "client_from_env",
            "default_model", "set_prices"} <= set(flowkit.llm.__all__)
    assert all(hasattr(flowkit.llm, name) for name in flowkit.llm.__all__)


def test_every_error_derives_from_the_root():
    errors = [getattr(flowkit, n) for n in CORE if n.endswith(("Error", "Found", "State",
              "Conflict", "Large", "Cancelled", "Unavailable", "Timeout"))]
    assert len(errors) == 13
    assert all(issubclass(e, flowkit.FlowkitError) for e in errors)
    assert issubclass(flowkit.StepTimeout, TimeoutError)
