"""The worker's composition root: the Celery app flowkit runs on.

``create_celery_app`` configures the app for long work (:mod:`flowkit.engine.broker`),
registers flowkit's tasks on it as it finalizes (:mod:`.tasks`), connects the worker's
signals (:mod:`.signals`) and makes it the app this process sends with.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from ..config import Settings, get_settings
from ..engine import broker
from . import signals, tasks


def create_celery_app(
    main: str = "flowkit", settings: Settings | None = None, imports: Iterable[str] = ()
) -> Celery:
    """A Celery app for flowkit; ``imports`` are the modules defining your workflows
    (``celery -A yourapp worker`` imports them as the worker starts)."""
    app = Celery(main, set_as_current=True)
    app.conf.update(broker.celery_config(settings or get_settings()))
    app.conf.imports = list(imports)
    tasks.register(app)
    signals.connect()
    return broker.use_app(app)
