"""API fixtures: a Flask app mounting flowkit, served by a real threaded HTTP server.

The server runs in this process (werkzeug's threaded server on a free loopback port),
so tests can mount apps with different settings; the worker is the session's real
``celery worker`` process (tests/conftest.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from flask import Flask
from werkzeug.serving import make_server

import flowkit
import tests.workflows  # noqa: F401 - the workflows the worker runs, served by every test app

API_KEY = "test-api-key"


@dataclass
class Served:
    app: Flask
    url: str

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http"):]

    def client(self, key: str | None = API_KEY, headers: dict | None = None) -> httpx.Client:
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers={**auth, **(headers or {})}, timeout=30)


def make_app(**options) -> Flask:
    app = Flask(f"flowkit-test-{id(options)}")
    app.config["FLOWKIT_API_SECRET"] = "test-signing-secret"
    options.setdefault("keys", [API_KEY])
    flowkit.FlowKit(app, **options)
    return app


def serve(app: Flask, host: str = "127.0.0.1", port: int = 0) -> Iterator[Served]:
    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(app, f"http://{host}:{server.port}")
    finally:
        server.shutdown()
        app.extensions["flowkit"].hub.stop()


@pytest.fixture(scope="session")
def api(flowkit_env, worker) -> Iterator[Served]:
    """The API with every test workflow, an API key, and a 64 KiB body limit."""
    yield from serve(make_app(max_body_bytes=64 * 1024))


@pytest.fixture
def client(api, store) -> Iterator[httpx.Client]:
    with api.client() as c:
        yield c
