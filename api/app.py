"""The web process of the reference deployment: ``gunicorn -c api/gunicorn.conf.py api.app:app``.

Configuration comes from the environment (``FLOWKIT_REDIS_URL``, ``FLOWKIT_API_KEYS``,
``FLOWKIT_API_SECRET``, ``FLOWKIT_API_OPEN``...). The example workflows are served when
the ``examples`` package is importable.
"""

from __future__ import annotations

import importlib
import logging
import os

from flask import Flask, redirect

from flowkit import FlowKit
from flowkit.api.views.ui import ui_url

log = logging.getLogger(__name__)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("SECRET_KEY") or None
    for module in os.environ.get("FLOWKIT_WORKFLOW_MODULES", "examples").split(","):
        if module.strip():
            try:
                importlib.import_module(module.strip())
            except ModuleNotFoundError as exc:
                if exc.name != module.strip():
                    raise  # the module exists but is broken: say so rather than serve nothing
                log.warning("flowkit web: workflow module %r not found; serving none of it", module)
    FlowKit(app)

    @app.get("/")
    def home():
        # a person opening the web process lands on the dashboard (or the API's docs)
        return redirect(ui_url() or "/openapi.json")

    return app


app = create_app()
