"""The hooks that move the process-local metrics, and :func:`install`, which appends them to
:mod:`flowkit.hooks`.

Installed on purpose, never by importing: a worker does it as it starts (when
FLOWKIT_METRICS_PORT is set), ``FlowKit(app)`` does it for the web process, any other
process calls :func:`install`. A hook that raises is logged and skipped by
``hooks.call``: a metric never fails a step.
"""

from __future__ import annotations

from typing import Any

from .. import hooks
from ..errors import RunCancelled, StepSuspended
from .families import families


def outcome(error: BaseException | None) -> str:
    """The ``outcome`` label of an attempt."""
    if error is None:
        return "ok"
    if isinstance(error, StepSuspended):
        return "paused"
    if isinstance(error, RunCancelled):
        return "stopped"
    return "error"


def attempt_finished(ctx: Any, value: Any, output: Any, error: BaseException | None,
                     duration: float) -> None:
    families().step_duration.labels(ctx.component, outcome(error)).observe(duration)


def step_retrying(run_id: str, step: str, component: str, attempt: int,
                  error: BaseException, delay: float) -> None:
    families().step_retries.labels(component).inc()


def llm_call(span: dict[str, Any]) -> None:
    f = families()
    provider = span.get("provider") or ("cache" if span.get("cached") else "none")
    model = str(span.get("model") or "unknown")
    f.llm_calls.labels(provider, model, span.get("operation") or "", span.get("status") or "").inc()
    if span.get("duration") is not None:
        f.llm_duration.labels(provider, model).observe(span["duration"])
    # each provider its own retries: those made before a failover are the failed one's
    elsewhere = 0
    for failed in span.get("failovers") or ():
        if failed.get("retries"):
            f.llm_retries.labels(failed["provider"], model).inc(failed["retries"])
            elsewhere += failed["retries"]
    if (span.get("retries") or 0) > elsewhere:
        f.llm_retries.labels(provider, model).inc(span["retries"] - elsewhere)
    if span.get("cached"):
        return  # answered from the cache: nothing spent
    for kind in ("prompt", "completion"):
        if span.get(f"{kind}_tokens"):
            f.llm_tokens.labels(provider, model, kind).inc(span[f"{kind}_tokens"])
    if span.get("cost"):
        f.llm_cost.labels(provider, model).inc(span["cost"])


def stream_subscribers(delta: int) -> None:
    families().stream_subscribers.inc(delta)


_HOOKS = (
    (hooks.attempt_finished, attempt_finished),
    (hooks.step_retrying, step_retrying),
    (hooks.llm_call, llm_call),
    (hooks.stream_subscribers, stream_subscribers),
)


def install() -> None:
    """Count this process's steps, retries, LLM calls and stream subscribers (idempotent)."""
    families()
    for hook_list, listener in _HOOKS:
        if listener not in hook_list:
            hook_list.append(listener)


def uninstall() -> None:
    for hook_list, listener in _HOOKS:
        while listener in hook_list:
            hook_list.remove(listener)
