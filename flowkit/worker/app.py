"""The worker's composition root: the Celery app flowkit runs on.

``create_celery_app`` configures the app for long work (:mod:`flowkit.engine.broker`),
registers flowkit's tasks on it as it finalizes (:mod:`.tasks`), connects the worker's
signals (:mod:`.signals`) and makes it the app this process sends with.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence

from celery import Celery

from ..config import Settings, get_settings
from ..engine import broker
from ..errors import ConfigError
from . import signals, tasks


def create_celery_app(
    main: str = "flowkit", settings: Settings | None = None, imports: Iterable[str] = ()
) -> Celery:
    """A Celery app for flowkit; ``imports`` are the modules defining your workflows
    (``celery -A yourapp worker`` imports them as the worker starts)."""
    app = Celery(main, set_as_current=True)
    try:
        config = broker.celery_config(settings or get_settings())
    except ConfigError as exc:
        program = _celery_program(sys.argv)
        if program is None:  # a library call: the caller's to handle
            raise
        # `celery -A yourapp worker` imports this module: Celery printed a 50-line
        # traceback ("Unable to load celery application") around the one line that matters
        print(f"flowkit: {program} refuses to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    app.conf.update(config)
    app.conf.imports = list(imports)
    tasks.register(app)
    signals.connect()
    return broker.use_app(app)


def _celery_program(argv: Sequence[str]) -> str | None:
    """What the ``celery`` command line is starting ("worker", "beat", or "celery" for its
    other commands), None when this process is not the ``celery`` command."""
    launcher = argv[0] if argv else ""
    if os.path.basename(launcher) != "celery" and not launcher.endswith(
            os.path.join("celery", "__main__.py")):
        return None
    return next((word for word in argv[1:] if word in ("worker", "beat")), "celery")
