"""The public API, pinned: a name added or removed here is a decision, not an accident."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import flowkit
import flowkit.api
import flowkit.llm

CORE = {
    # building blocks
    "component", "Component", "continue_with", "Workflow", "parallel", "fan_out", "exponential",
    # inside a step
    "context", "StepContext", "progress", "emit", "is_cancelled",
    # pausing without a worker, and answering a paused run
    "wait_for_input", "wait_for_event", "sleep", "sleep_until", "send_input", "send_event",
    # runs
    "Run", "Event", "get_run", "list_runs", "wait", "cancel", "retry", "get_workflow", "workflows",
    "history", "follow",
    # flow control
    "Concurrency", "Schedule", "schedules",
    # deployment and settings
    "create_celery_app", "get_app", "Settings", "configure", "get_settings",
    "FlowKit", "create_blueprint",
    # errors
    "FlowkitError", "ConfigError", "ValidationError", "PayloadTooLarge", "NotFound",
    "WorkflowNotFound", "RunNotFound", "InvalidState", "IdempotencyConflict", "StepError",
    "RunCancelled", "StoreUnavailable", "BrokerUnavailable", "StepTimeout", "WaitTimeout", "InputTimeout",
    "EventTimeout",
}


def test_flowkit_exports_exactly_its_public_api():
    assert set(flowkit.__all__) == CORE
    assert all(hasattr(flowkit, name) for name in CORE)


def test_api_and_llm_packages_export_their_surface():
    assert set(flowkit.api.__all__) == {"ApiError", "FlowKit", "create_blueprint"}
    assert {"OpenAI", "AsyncOpenAI", "run_tool_loop", "arun_tool_loop", "tool", "wrap", "Provider",
            "RateLimit", "RetryPolicy", "client_from_env",
            "default_model", "set_prices"} <= set(flowkit.llm.__all__)
    assert all(hasattr(flowkit.llm, name) for name in flowkit.llm.__all__)


def test_every_error_derives_from_the_root():
    errors = [getattr(flowkit, n) for n in CORE if n.endswith(("Error", "Found", "State",
              "Conflict", "Large", "Cancelled", "Unavailable", "Timeout"))]
    assert len(errors) == 17
    assert all(issubclass(e, flowkit.FlowkitError) for e in errors)
    assert issubclass(flowkit.StepTimeout, TimeoutError)


def every_module():
    for info in pkgutil.walk_packages(flowkit.__path__, "flowkit."):
        if info.name.endswith("__main__"):
            continue  # running it is the CLI
        yield importlib.import_module(info.name)


def test_every_exception_class_in_the_package_derives_from_the_root():
    """Not only the exported ones: every exception a flowkit module defines."""
    defined = [
        cls for module in every_module() for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == module.__name__
    ]
    assert {c.__name__ for c in defined} >= {"ApiError", "RateLimitWait", "StepTimeout"}
    strays = [f"{c.__module__}.{c.__qualname__}" for c in defined
              if not issubclass(c, flowkit.FlowkitError)]
    # the two that stand apart, drawn at the top of errors.py
    assert strays == ["flowkit.cli.supervisor.Stopped", "flowkit.errors.StepSuspended"]
    assert "├── StepSuspended" in flowkit.errors.__doc__
    assert "└── Stopped" in flowkit.errors.__doc__


def test_import_flowkit_loads_no_flask():
    """A worker imports flowkit; the web stack stays out of it until the host app asks."""
    code = ("import sys, flowkit; "
            "web = [m for m in ('flask', 'flask_sock', 'wsproto', 'simple_websocket') "
            "if m in sys.modules]; "
            "assert not web, web; flowkit.FlowKit; assert 'flask' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_flowkit_llm_is_reached_from_import_flowkit_alone():
    """The README writes ``flowkit.llm.client_from_env()`` after ``import flowkit``: an
    AttributeError, as the subpackage was not imported. It loads when asked for, not before
    (the openai SDK stays out of a worker that calls no LLM)."""
    code = ("import sys, flowkit; assert 'flowkit.llm' not in sys.modules; "
            "assert callable(flowkit.llm.client_from_env); assert 'flowkit.llm' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
