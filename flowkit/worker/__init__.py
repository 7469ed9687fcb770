"""The compute plane's entry point: the Celery app, its tasks and its signals.

``celery -A yourapp worker`` runs an app made by :func:`create_celery_app`; every
task's body is in :mod:`flowkit.engine`.
"""

from .app import create_celery_app

__all__ = ["create_celery_app"]
