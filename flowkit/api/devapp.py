"""The web app ``flowkit dev`` serves when the user's project brings none of its own.

``gunicorn -c python:flowkit.api.gunicorn_config "flowkit.api.devapp:create_app()"``: a
Flask app with flowkit's API mounted, serving the workflows of the module named by
``FLOWKIT_APP`` (as ``celery -A`` names it: ``myapp.flows`` or ``myapp.flows:app``). The
reference deployment's ``api/app.py`` does the same for ``FLOWKIT_WORKFLOW_MODULES``, but
``api/`` is not part of the installed package, and a user's project needs this without
it. Importing the module registers its workflows; the modules its Celery app lists in
``imports=[...]`` are imported too, as a worker imports them.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from flask import Flask, redirect
from gunicorn.errors import AppImportError
from gunicorn.util import import_app

from ..defaults import DEV_API_PREFIX_VARIABLE
from ..errors import described
from .extension import FlowKit
from .views.ui import ui_url


def create_app(app_name: str | None = None) -> Flask:
    """A Flask app serving the workflows of ``app_name`` (default: ``$FLOWKIT_APP``)."""
    name = app_name or os.environ.get("FLOWKIT_APP")
    if not name:
        raise RuntimeError("FLOWKIT_APP is not set: name the module of your workflows "
                           "(flowkit dev -A myapp.flows sets it).")
    try:
        import_workflows(name)
    except Exception as exc:  # gunicorn printed its own 40-line traceback, the worker one line
        raise AppImportError(f"flowkit dev web: importing {name!r} raised "
                             f"{described(exc)}") from None
    app = Flask("flowkit.dev")
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY") or None
    FlowKit(app)

    @app.get("/")
    def home():
        # the URL flowkit dev prints first: a person lands on the dashboard
        return redirect(ui_url() or "/openapi.json")

    return app


def user_app(target: str) -> Any:
    """The WSGI app ``flowkit dev --web`` names (``myapp:app``, ``myapp:create_app()``, as
    gunicorn takes it), loaded as gunicorn loads it; an error importing it is one line, as
    :func:`create_app`'s (gunicorn printed its own 40-line traceback at each reload)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        app = import_app(target)
    except AppImportError:
        raise
    except Exception as exc:
        raise AppImportError(f"flowkit dev web: importing {target!r} raised "
                             f"{described(exc)}") from None
    _check_mounted(app, target)
    return app


def _check_mounted(app: Any, target: str) -> None:
    """The API where dev started it: an app edited so that it no longer mounts flowkit, or
    mounts it at another prefix, was served after a reload as "web reloaded", while the
    banner's FLOWKIT_URL (and every `flowkit run` at it) met 404s."""
    api = getattr(app, "extensions", {}).get("flowkit")
    if api is None:
        raise AppImportError(f"flowkit dev web: --web {target}: no Flask app with flowkit "
                             "mounted there now; call FlowKit(app) in it again.")
    started = os.environ.get(DEV_API_PREFIX_VARIABLE)
    now = api.url_prefix.rstrip("/")
    if started is not None and now != started:
        raise AppImportError(f"flowkit dev web: --web {target} mounts flowkit at {now or '/'!r} "
                             f"now, not {started or '/'!r} as when flowkit dev started (the "
                             "URL it printed): put the prefix back, or restart flowkit dev to "
                             "serve it there.")


def import_workflows(name: str) -> None:
    """Import ``module`` (or ``module:attribute``) from the current directory, as celery
    does, then the modules its Celery app imports (found as celery finds it: the named
    attribute, else ``app`` or ``celery``)."""
    module_name, _, attribute = name.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    for candidate in (attribute,) if attribute else ("app", "celery"):
        celery_app: Any = getattr(module, candidate, None)
        loader = getattr(celery_app, "loader", None)
        if loader is not None and hasattr(loader, "import_default_modules"):
            loader.import_default_modules()
            return
