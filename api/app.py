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
from flowkit.config import get_settings

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
    settings = get_settings()
    if not (settings.api_keys.strip() or settings.api_open):  # no one could call it
        # a run token (signed with a shared secret) still reads its run, and /healthz
        # answers: "every API call answers 401" sent operators after tokens that worked
        log.warning("flowkit web: no FLOWKIT_API_KEYS (and FLOWKIT_API_OPEN is off): every API "
                    "call that needs a key, /metrics too, answers 401 until you set the keys "
                    "your callers send (run tokens still read their runs where "
                    "FLOWKIT_API_SECRET or SECRET_KEY is set; /healthz answers)")

    @app.get("/")
    def home():
        # a person opening the web process lands on the dashboard (or the API's docs)
        return redirect(ui_url() or "/openapi.json")

    return app


app = create_app()
