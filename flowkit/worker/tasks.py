"""flowkit's Celery tasks, registered on an app by :func:`register` (as Celery's builtins are).

Their bodies live in the engine; here they only get their names and options:

- ``flowkit.step.<component>``: one per component, registered as components are
  (also those defined after the app, e.g. in modules the worker imports at start)
- ``flowkit.fan_out``, ``flowkit.fan_out_batch``, ``flowkit.gather``: fan-outs;
  ``flowkit.merge``: joins stored outputs with those that ran (a continued run)
- ``flowkit.finish``: the last task of every canvas; ``flowkit.resume``: a restarted run
- ``flowkit.reaper``, ``flowkit.retention``: beat's periodic tasks, on a queue of their
  own that every worker consumes (:func:`flowkit.engine.broker.reaper_queue`)

Every task reports to monitors such as Flower (:mod:`.requests`). Step, finish, batch
and gather tasks ignore their results: checkpoints and the run record hold the outputs
(see :func:`flowkit.engine.canvas.result_options`).
"""

from __future__ import annotations

import re
from typing import Any

from celery import Celery

from ..component import Component, registered, registered_hooks
from ..engine import executor, fanout, reaper
from .requests import FlowkitRequest

#: Options of every flowkit task: defined on this app only; ignored tasks (replaced, waiting,
#: stopped, failed runs) still reach monitors as succeeded (:mod:`.requests`).
OPTIONS: dict[str, Any] = {"shared": False, "Request": FlowkitRequest}


def register(app: Celery) -> None:
    """Define flowkit's tasks on ``app``, and a step task for every component, now and later."""

    @app.task(name="flowkit.finish", bind=True, ignore_result=True, **OPTIONS)
    def finish(task, output=None, *, run_id: str, gen: int, workflow: str):
        executor.finish_run(output, run_id=run_id, gen=gen, workflow=workflow)

    @app.task(name="flowkit.resume", bind=True, **OPTIONS)
    def resume(task, *, run_id: str, gen: int):
        executor.resume_run(run_id=run_id, gen=gen)

    @app.task(name="flowkit.fan_out", bind=True, **OPTIONS)
    def fan_out(task, items=None, **kwargs: Any):
        return fanout.fan_out(task, items, **kwargs)

    @app.task(name="flowkit.fan_out_batch", ignore_result=True, **OPTIONS)
    def fan_out_batch(items: list, **kwargs: Any) -> list:
        return fanout.fan_out_batch(items, **kwargs)

    # The joins carry run_id and gen only so that publishing them records the run's hand-off
    # (worker.signals.handed_off): they read nothing of the run.

    @app.task(name="flowkit.gather", ignore_result=True, **OPTIONS)
    def gather(batches: list, known: dict | None = None, order: list | None = None,
               **_run: Any) -> list:
        return fanout.gather(batches, known, order)

    @app.task(name="flowkit.value", ignore_result=True, **OPTIONS)
    def value(given, **_run: Any):
        return given  # a continued run's frontier hands a stored output on (engine.frontier)

    @app.task(name="flowkit.merge", ignore_result=True, **OPTIONS)
    def merge(results: list, known: dict, order: list, **_run: Any) -> list:
        return fanout.merge(results, known, order)

    @app.task(name="flowkit.reaper", ignore_result=True, **OPTIONS)
    def reap() -> dict[str, list[str]]:
        return reaper.sweep()

    @app.task(name="flowkit.retention", ignore_result=True, **OPTIONS)
    def retention() -> int:
        return reaper.trim_indexes()

    def register_step(comp: Component) -> None:
        app.task(name=comp.task_name, bind=True, ignore_result=True, **OPTIONS)(
            _step_body(comp.name))

    for comp in registered().values():
        register_step(comp)
    registered_hooks.append(register_step)


def _step_body(name: str):
    def run(task, value=None, *, run_id: str, key: str, gen: int, policy: dict | None = None):
        return executor.run_step(task, name, value, run_id=run_id, key=key, gen=gen, policy=policy)

    # Celery execs a ``def <__name__>(...)`` to check call signatures: a component name like
    # "send-email" or a lambda's default "m.<lambda>" must become an identifier first.
    run.__name__ = run.__qualname__ = "step_" + re.sub(r"[^0-9A-Za-z_]", "_", name)
    return run
