"""``flowkit workers``: the live workers and the steps they run; ``flowkit drain``: drain
named workers from anywhere, through Celery's remote control.

``workers`` reads what each worker announces with its heartbeats (queues, pool, versions)
and the leases of running steps, all from Redis: it needs no ``-A`` and no broker round trip.

The workers stop consuming every queue at once (``cancel_consumer``); the command
waits until they run nothing, or until the grace period ends, when the steps they
still hold are handed over (their runs restart from checkpoints on other workers;
the old attempts see ``is_cancelled()`` and stop). ``--shutdown`` then asks them to
exit. A worker's own SIGTERM does the same for one process (flowkit.drain).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..config import get_settings
from ..engine import control, dispatch, doctor
from ..engine.broker import get_app, reaper_queue
from ..engine.drain import hand_over, held_by
from ..errors import FlowkitError
from .app import add_app_option, load_app
from .output import add_json_option, emit, human_duration, human_time
from .render import plural, show, table
from .usage import UsageError, seconds


def _workers_view(data: dict[str, Any]) -> list[Any]:
    now = time.time()
    running: dict[str, int] = {}
    for step in data["running"]:
        running[step["node"]] = running.get(step["node"], 0) + 1
    if not data["workers"]:
        return ["No live worker: start one (celery -A <your app> worker --queues "
                "<the queues your workflows route to>)."]
    rows = [(w["name"], "draining" if w.get("draining") else ",".join(w.get("queues") or ()) or "-",
             f"{w.get('pool') or '?'} x {w.get('concurrency') or '?'}", w.get("processes"),
             running.get(w["name"], 0), w.get("flowkit"), f"{human_duration(now - w['last_beat'])} ago")
            for w in data["workers"]]
    out: list[Any] = [table(("WORKER", "QUEUES", "POOL", "PROCESSES", "RUNNING", "FLOWKIT",
                             "LAST BEAT"), rows, title=plural(len(rows), "live worker"))]
    if data["running"]:
        out.append("")
        out.append(table(
            ("RUN", "WORKFLOW", "STEP", "ATTEMPT", "WORKER", "LEASE LAPSES"),
            [(s["run"], s["workflow"], s["step"], s["attempt"], s["worker"],
              human_time(s["lease_expires"], now)) for s in data["running"]],
            title=plural(len(data["running"]), "running step")))
    else:
        out.append("No step is running.")
    return out


def workers(args: argparse.Namespace) -> int:
    data = {"workers": sorted(control.live_workers(), key=lambda w: w["name"]),
            "running": doctor.running_steps()}
    if args.json:
        emit(args, data)
    else:
        show(*_workers_view(data))
    return 0


def _app(args: argparse.Namespace):
    load_app(args)  # with the workflows a handed-over run is enqueued with
    return get_app()


def _busy(app, names: list[str]) -> dict[str, int]:
    """The steps each worker still runs (beat's sweeps, which it keeps taking, are none)."""
    housekeeping = reaper_queue(app.conf.task_default_queue)
    active = app.control.inspect(destination=names, timeout=1.0).active() or {}
    steps = {name: [t for t in tasks
                    if (t.get("delivery_info") or {}).get("routing_key") != housekeeping]
             for name, tasks in active.items()}
    return {name: len(tasks) for name, tasks in steps.items() if tasks}


def _wait_idle(app, names: list[str], seconds: float) -> dict[str, int]:
    deadline = time.monotonic() + seconds
    while (busy := _busy(app, names)) and time.monotonic() < deadline:
        time.sleep(0.5)  # remote control has no push notification for "idle"
    return busy


def drain(args: argparse.Namespace) -> int:
    if not all(name.strip() for name in args.workers):  # `flowkit drain ""`: a blank name
        raise UsageError("a worker name is empty: name each worker as `flowkit workers` "
                         "lists it (e.g. worker1@host).")
    # the broker out of reach (or refusing the password): the CLI's one line about it
    return dispatch.send(lambda: _drain(args))


def _drain(args: argparse.Namespace) -> int:
    app = _app(args)
    names: list[str] = args.workers
    queues = app.control.inspect(destination=names, timeout=2.0).active_queues() or {}
    missing = sorted(set(names) - set(queues))
    if missing:
        raise FlowkitError(f"no answer from worker(s) {', '.join(missing)}; check the names "
                           "(`flowkit workers` lists them).")
    housekeeping = reaper_queue(app.conf.task_default_queue)
    for name, consumed in queues.items():
        for queue in consumed:  # beat's sweeps stay: were every worker drained, none ran
            if queue["name"] != housekeeping:
                app.control.cancel_consumer(queue["name"], destination=[name], reply=True,
                                            timeout=2.0)
    grace = get_settings().drain_grace if args.grace is None else args.grace
    busy = _wait_idle(app, names, grace)
    handed: list[str] = []
    if busy:
        for name in busy:
            handed += hand_over(held_by(name), f"worker {name} drained: grace of {grace:g}s ran out")
        busy = _wait_idle(app, names, args.stop_wait)  # the old attempts stop cooperatively
    if args.shutdown:
        app.control.shutdown(destination=names)
    emit(args, {"workers": names, "idle": not busy, "handed_over": handed}, _drained)
    return 0 if not busy else 1


def _drained(data: dict[str, Any]) -> str:
    names = ", ".join(data["workers"])
    said = f"Drained {names}: " + ("idle." if data["idle"] else "still running steps.")
    if data["handed_over"]:
        said += (f" Handed over {plural(len(data['handed_over']), 'run')} (they restart from "
                 f"their checkpoints on other workers): {', '.join(data['handed_over'])}.")
    return said


def register(subs) -> None:
    p = subs.add_parser("workers", help="list live workers, their queues and running steps")
    add_json_option(p)
    p.set_defaults(func=workers)

    p = subs.add_parser("drain", help="stop named workers taking steps and wait until they are idle")
    p.add_argument("workers", nargs="+", metavar="WORKER", help="Celery node names, e.g. worker@host")
    add_app_option(p)
    p.add_argument("--grace", type=seconds, default=None,
                   help="seconds to let running steps finish before handing them over "
                        "(default: FLOWKIT_DRAIN_GRACE)")
    p.add_argument("--stop-wait", type=seconds, default=10.0,
                   help="seconds handed-over attempts get to notice and stop (default: 10)")
    p.add_argument("--shutdown", action="store_true", help="ask the workers to exit afterwards")
    add_json_option(p)
    p.set_defaults(func=drain)
