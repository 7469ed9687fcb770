"""The worker ``flowkit dev`` runs: one Celery worker consuming every queue the user's
workflows route to.

A worker started as the tutorial once said (``celery -A myapp.flows worker``) consumes
the default queue only, and steps routed elsewhere (``.queue("llm")``) wait forever.
This entry point imports the app as ``celery -A`` does, asks every registered workflow
for its queues (``Workflow.queues``: its own, or the default, and its components'),
prints them, and runs Celery's worker on all of them (flowkit's own tasks, the
reaper's sweep and resume messages, go to the default queue, which is always among
them). ``flowkit dev`` starts it again after a code change, so the queues follow the code.

    python -m flowkit.cli.devworker -A myapp.flows [--concurrency 8]
    python -m flowkit.cli.devworker -A myapp.flows --beat SCHEDULE_FILE

With ``--beat`` it runs Celery's beat instead, on the same app: ``celery -A`` takes a
module's ``app`` attribute, which in a module that also holds the Flask app is the Flask
app (beat crashed on ``-A myapp.web`` while the worker ran), or none at all in a package.

(``flowkit.cli`` never imports this module: ``python -m`` runs it as a fresh module.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..engine.broker import get_app
from ..workflow import workflows
from .app import add_app_option, load_app, require_flowkit_app
from .routing import routed_queues
from .usage import UsageError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowkit.cli.devworker",
                                     description=__doc__.splitlines()[0])
    add_app_option(parser)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--hostname", default="dev@%h")
    parser.add_argument("--beat", metavar="SCHEDULE_FILE",
                        help="run beat (its schedule state in this file) instead of a worker")
    parser.add_argument("--quiet", action="store_true",
                        help="no Celery banner (flowkit dev's reloads: it was shown at start)")
    args = parser.parse_args(argv)
    who = "flowkit dev beat" if args.beat else "flowkit dev worker"
    try:
        load_app(args)
        require_flowkit_app(args)
    except UsageError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return 2
    app = get_app()
    if args.beat:
        return app.start([*(["--quiet"] if args.quiet else []), "beat", "--schedule", args.beat,
                          "--loglevel", "WARNING"]) or 0
    queues = routed_queues()
    names = ", ".join(sorted(workflows())) or "none"
    print(f"consuming queues {', '.join(queues)} (workflows: {names})", flush=True)
    # threads: one process to restart on a reload, and I/O-bound steps (LLM calls) overlap
    app.worker_main([
        *(["--quiet"] if args.quiet else []),
        "worker", "--pool", "threads", "--concurrency", str(args.concurrency),
        "--queues", ",".join(queues), "--hostname", args.hostname,
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
