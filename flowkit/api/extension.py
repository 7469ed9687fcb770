"""``FlowKit(app)``: mount flowkit's API on a Flask app, following Flask's extension conventions.

    from flowkit import FlowKit
    FlowKit(app)                      # or: kit = FlowKit(); kit.init_app(app)

Settings come from ``app.config`` (``FLOWKIT_API_KEYS``, ``FLOWKIT_API_URL_PREFIX``, ...),
then from flowkit's settings (``FLOWKIT_*`` env vars); keywords given here win.
The app's state lives in ``app.extensions["flowkit"]``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

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

    def authorizer(self, fn):
        """Decorator: ``fn(request)`` authorises requests of apps initialised after this."""
        self.options["authorize"] = fn
        return fn
