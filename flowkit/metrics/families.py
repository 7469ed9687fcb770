"""The process-local metric objects, made once per process (and again when a prefork worker
switches to multiprocess mode before it forks).

They are registered in no registry: :mod:`.serving` exposes them beside the default
registry's (a host app's own metrics, the process collector) in single-process mode, and
through prometheus_client's ``MultiProcessCollector`` (which reads every process's files)
in multiprocess mode. So a second :func:`families` after :func:`reset` never collides with
the first in a registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import Metric

from ..locks import ForkSafeLock

#: Steps last from milliseconds (a lookup) to an hour (a long LLM job).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0, 600.0, 1800.0, 3600.0)
#: An LLM call: a cached answer (ms) to a long generation (minutes).
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


def multiprocess() -> bool:
    """Whether metric values live in files (PROMETHEUS_MULTIPROC_DIR was set in time)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Families:
    """flowkit's process-local metrics; see :mod:`flowkit.metrics` for the list."""

    def __init__(self) -> None:
        none = {"registry": None}
        self.step_duration = Histogram(
            "flowkit_step_duration_seconds",
            "Duration of step attempts run by this process, by component and outcome "
            "(ok, error, paused: waits for input/event/timer/slot, stopped: run cancelled "
            "or restarted).",
            ["component", "outcome"], buckets=STEP_BUCKETS, **none)
        self.step_retries = Counter(
            "flowkit_step_retries_total",
            "Step attempts that failed and were retried by their component's policy.",
            ["component"], **none)
        self.llm_calls = Counter(
            "flowkit_llm_calls_total",
            "Logical LLM calls of flowkit.llm (failovers and retries inside one call count "
            "once), by provider (cache: answered from the component cache), model, operation "
            "and status (ok, error).",
            ["provider", "model", "operation", "status"], **none)
        self.llm_duration = Histogram(
            "flowkit_llm_call_duration_seconds",
            "Duration of LLM calls, retries and rate-limit waits included.",
            ["provider", "model"], buckets=LLM_BUCKETS, **none)
        self.llm_retries = Counter(
            "flowkit_llm_retries_total",
            "Requests of LLM calls sent again after a transient provider error.",
            ["provider", "model"], **none)
        self.llm_tokens = Counter(
            "flowkit_llm_tokens_total",
            "Tokens the providers reported, by kind (prompt, completion).",
            ["provider", "model", "kind"], **none)
        self.llm_cost = Counter(
            "flowkit_llm_cost_usd_total",
            "Estimated cost of LLM calls in USD (FLOWKIT_LLM_PRICES).",
            ["provider", "model"], **none)
        self.stream_subscribers = Gauge(
            "flowkit_stream_subscribers",
            "Clients following a run's stream from this process (WebSocket, SSE, "
            "synchronous invocations).",
            multiprocess_mode="livesum", **none)

    def collect(self) -> Iterator[Metric]:
        for metric in (self.step_duration, self.step_retries, self.llm_calls,
                       self.llm_duration, self.llm_retries, self.llm_tokens, self.llm_cost,
                       self.stream_subscribers):
            yield from metric.collect()


_families: Families | None = None
_lock = ForkSafeLock()


def families() -> Families:
    global _families
    if _families is None:
        with _lock:
            if _families is None:
                _families = Families()
    return _families


def reset() -> None:
    """Forget the metric objects: the next :func:`families` makes them again (with the
    value class now in force)."""
    global _families
    with _lock:
        _families = None
