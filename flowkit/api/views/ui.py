"""The dashboard: static pages (runs, a run, workers) served by the blueprint at
``FLOWKIT_API_UI_PATH`` (``/ui``), unless ``FLOWKIT_API_UI`` is off.

Every dashboard URL answers the same small HTML shell; its ES modules route on the path,
so a deep link or a refresh lands on the same view. The shell is public and holds no run
data: the modules read everything through the API with the API's own credentials, so the
dashboard adds no way in. The URLs the modules need (the API's base, the static files)
are written into ``<meta>`` tags, HTML-escaped, because the blueprint's prefix is the host
app's choice.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, url_for
from flask.blueprints import BlueprintSetupState
from flask_sock import Sock
from markupsafe import escape

from ...config import ENV_PREFIX, get_settings, parse_bool
from ...errors import ConfigError
from ..state import state

SHELL = Path(__file__).resolve().parent.parent / "static" / "ui" / "shell.html"
#: The endpoint name of every dashboard page (public in blueprint.PUBLIC).
ENDPOINT = "ui"
#: The pages' (the dashboard's, the watch page's) Content-Security-Policy: they are modules
#: and a stylesheet of this origin, so nothing inline and nothing foreign runs in them.
PAGE_POLICY = ("default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
               "base-uri 'none'; form-action 'self'")


def register(bp: Blueprint, sock: Sock) -> None:
    @bp.record_once
    def _mount(setup: BlueprintSetupState) -> None:
        settings = get_settings()
        config = setup.app.config
        enabled = config.get(f"{ENV_PREFIX}API_UI", settings.api_ui)
        if not parse_bool(enabled, f"{ENV_PREFIX}API_UI"):
            return
        given = str(config.get(f"{ENV_PREFIX}API_UI_PATH", settings.api_ui_path))
        path = "/" + given.strip("/")
        if path == "/":  # its links were //runs/<id> (another host), its pages the API's routes
            raise ConfigError(
                f"{ENV_PREFIX}API_UI_PATH={given!r} would put the dashboard's pages over the "
                "API's own routes (/runs/<id> is both): give it a path of its own, like /ui "
                f"(the default), or turn it off with {ENV_PREFIX}API_UI=false.")
        setup.app.config["FLOWKIT_UI_MOUNTED"] = path
        setup.add_url_rule(path, ENDPOINT, page, defaults={"rest": ""})
        setup.add_url_rule(path + "/", ENDPOINT, page, defaults={"rest": ""})
        setup.add_url_rule(path + "/<path:rest>", ENDPOINT, page)


def ui_url() -> str | None:
    """The dashboard's URL in the current app, or None when it is turned off."""
    path = current_app.config.get("FLOWKIT_UI_MOUNTED")
    return None if path is None else state().url_prefix + path


def page(rest: str) -> Response:
    current = state()
    html = SHELL.read_text(encoding="utf-8")
    values = {
        "{{api}}": current.url_prefix,
        "{{ui}}": ui_url() or "",
        "{{static}}": url_for(f"{current.blueprint}.static", filename="").rstrip("/"),
    }
    for placeholder, value in values.items():
        html = html.replace(placeholder, str(escape(value)))
    response = Response(html, mimetype="text/html")
    # the shell is the same for every path and holds no data; its modules read the API
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = PAGE_POLICY + "; frame-ancestors 'none'"
    response.headers["Referrer-Policy"] = "same-origin"
    return response
