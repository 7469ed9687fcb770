"""``FlowKit(app)``: mount flowkit's API on a Flask app, following Flask's extension conventions.

    from flowkit import FlowKit
    FlowKit(app)                      # or: kit = FlowKit(); kit.init_app(app)

Settings come from ``app.config`` (``FLOWKIT_API_KEYS``, ``FLOWKIT_API_URL_PREFIX``, ...),
then from flowkit's settings (``FLOWKIT_*`` env vars); keywords given here win.
The app's state lives in ``app.extensions["flowkit"]``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from .blueprint import create_blueprint
from .options import ApiOptions
from .state import EXTENSION, ApiState


class FlowKit:
    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        prefix = ApiOptions.resolve(app.config, **self.options).url_prefix
        app.register_blueprint(create_blueprint(**self.options), url_prefix=prefix or None)

    @staticmethod
    def state(app: Flask) -> ApiState:
        return app.extensions[EXTENSION]

    @staticmethod
    def end_streams(app: Flask) -> int:
        """End every WebSocket/SSE stream this process serves for ``app`` (call it when the
        process is told to stop): clients reconnect at once, with their last event id, to a
        process that stays, instead of holding the shutdown open. Returns how many ended."""
        state = app.extensions.get(EXTENSION)
        return state.hub.end_all() if state is not None else 0

    @staticmethod
    def run_token(run_id: str, app: Flask | None = None) -> str:
        """A run token for ``run_id``, as ``POST .../runs`` answers with: it reads that run's
        record, events and stream and answers its waits, for ``FLOWKIT_API_TOKEN_TTL``.
        Hand it to a page your app let see the run (a run it started with
        ``workflow.start``), and again when the page's token expired. ``app``: default the
        current app."""
        target = app if app is not None else current_app
        state = target.extensions.get(EXTENSION)
        if state is None:
            raise RuntimeError("flowkit's API is not mounted on this app: call FlowKit(app) first.")
        return state.auth.issue(run_id)

    def authorizer(self, fn):
        """Decorator: ``fn(request)`` authorises requests of apps initialised after this."""
        self.options["authorize"] = fn
        return fn
