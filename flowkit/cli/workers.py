"""``flowkit drain``: drain named workers from anywhere, through Celery's remote control.

The workers stop consuming every queue at once (``cancel_consumer``); the command
waits until they run nothing, or until the grace period ends, when the steps they
still hold are handed over (their runs restart from checkpoints on other workers;
the old attempts see ``is_cancelled()`` and stop). ``--shutdown`` then asks them to
exit. A worker's own SIGTERM does the same for one process (flowkit.drain).
"""

from __future__ import annotations

import argparse
import json
import time

from ..config import get_settings
from ..engine.broker import get_app
from ..engine.drain import hand_over, held_by
from ..errors import FlowkitError
from .app import add_app_option, load_app


def _app(args: argparse.Namespace):
    load_app(args)  # with the workflows a handed-over run is enqueued with
    return get_app()


def _busy(app, names: list[str]) -> dict[str, int]:
    active = app.control.inspect(destination=names, timeout=1.0).active() or {}
    return {name: len(tasks) for name, tasks in active.items() if tasks}


def _wait_idle(app, names: list[str], seconds: float) -> dict[str, int]:
    deadline = time.monotonic() + seconds
    while (busy := _busy(app, names)) and time.monotonic() < deadline:
        time.sleep(0.5)  # remote control has no push notification for "idle"
    return busy


def drain(args: argparse.Namespace) -> int:
    app = _app(args)
    names: list[str] = args.workers
    queues = app.control.inspect(destination=names, timeout=2.0).active_queues() or {}
    missing = sorted(set(names) - set(queues))
    if missing:
        raise FlowkitError(f"no answer from worker(s) {', '.join(missing)}; check the names "
                           "(`celery -A APP inspect ping` lists them).")
    for name, consumed in queues.items():
        for queue in consumed:
            app.control.cancel_consumer(queue["name"], destination=[name], reply=True, timeout=2.0)
    grace = get_settings().drain_grace if args.grace is None else args.grace
    busy = _wait_idle(app, names, grace)
    handed: list[str] = []
    if busy:
        for name in busy:
            handed += hand_over(held_by(name), f"worker {name} drained: grace of {grace:g}s ran out")
        busy = _wait_idle(app, names, args.stop_wait)  # the old attempts stop cooperatively
    if args.shutdown:
        app.control.shutdown(destination=names)
    print(json.dumps({"workers": names, "idle": not busy, "handed_over": handed}))
    return 0 if not busy else 1


def register(subs) -> None:
    p = subs.add_parser("drain", help="stop named workers taking steps and wait until they are idle")
    p.add_argument("workers", nargs="+", metavar="WORKER", help="Celery node names, e.g. worker@host")
    add_app_option(p)
    p.add_argument("--grace", type=float, default=None,
                   help="seconds to let running steps finish before handing them over "
                        "(default: FLOWKIT_DRAIN_GRACE)")
    p.add_argument("--stop-wait", type=float, default=10.0,
                   help="seconds handed-over attempts get to notice and stop (default: 10)")
    p.add_argument("--shutdown", action="store_true", help="ask the workers to exit afterwards")
    p.set_defaults(func=drain)
