"""Prometheus metrics of a flowkit deployment: ``GET /metrics`` on the web process, a port on
each worker.

Operators need to see, without reading run records, whether work flows: how many runs
start and how they end, how long steps take, what retries and restarts cost, whether a
queue backs up, what LLM calls spend. Two kinds of numbers answer that, kept apart so a
sum over every scraped process counts each process-local thing once (the deployment's
numbers are the same from every web instance: aggregate those with ``max``):

- **process-local** metrics count what this process did (its steps, its LLM calls, its
  stream subscribers), through the hook lists of :mod:`flowkit.hooks` that :func:`install`
  appends to. A prefork worker's children write them to files (prometheus_client's
  multiprocess mode, set up by the worker's main process before it forks), so the main
  process serves every child's samples, those of children already replaced included.
- **deployment** metrics are read from Redis and the broker at scrape time
  (:mod:`.deployment`): runs by state, queue depth and the age of the oldest queued run,
  consumers per queue, and the counters of runs started, ended and restarted that the
  store's scripts keep in Redis (exact, whichever process started or ended a run: web,
  worker, beat or CLI). The web endpoint serves them; a worker only with
  FLOWKIT_METRICS_DEPLOYMENT (a deployment without a web process).

Every metric (labels are low-cardinality: never a run id):

========================================  =========  ===========================  =========
name                                      type       labels                       where
========================================  =========  ===========================  =========
flowkit_runs_started_total                counter    workflow                     deployment
flowkit_runs_ended_total                  counter    workflow, state              deployment
flowkit_run_restarts_total                counter    reason                       deployment
flowkit_runs_active                       gauge      state (queued/running/        deployment
                                                     waiting)
flowkit_queue_depth                       gauge      queue                        deployment
flowkit_queue_oldest_run_age_seconds      gauge      queue                        deployment
flowkit_queue_consumers                   gauge      queue                        deployment
flowkit_redis_up, flowkit_broker_up       gauge      -                            deployment
flowkit_step_duration_seconds             histogram  component, outcome           process
flowkit_step_retries_total                counter    component                    process
flowkit_llm_calls_total                   counter    provider, model, operation,  process
                                                     status
flowkit_llm_call_duration_seconds         histogram  provider, model              process
flowkit_llm_retries_total                 counter    provider, model              process
flowkit_llm_tokens_total                  counter    provider, model, kind        process
flowkit_llm_cost_usd_total                counter    provider, model              process
flowkit_stream_subscribers                gauge      -                            process
========================================  =========  ===========================  =========

The README's "Metrics" section says what each means and how to scrape them.
"""

from __future__ import annotations

from .listeners import install, uninstall
from .serving import (
    child_exited,
    prepare_worker,
    render,
    serve_worker,
    stop_worker,
)

__all__ = [
    "child_exited", "install", "prepare_worker", "render", "serve_worker", "stop_worker",
    "uninstall",
]
