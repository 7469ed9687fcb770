"""``GET /metrics``: the Prometheus metrics of this web process and of the deployment.

Metrics describe the whole deployment (every workflow, every tenant), so a caller needs
full access: an API key (Prometheus sends it with ``authorization`` in its scrape
config), or the host app's ``authorize`` callback granting everything; a run token or a
caller scoped to an owner gets 403. ``FLOWKIT_API_METRICS_OPEN`` opens it to scrapers
without credentials (a private network). See :mod:`flowkit.metrics`.
"""

from __future__ import annotations

from flask import Blueprint, Response, request
from flask_sock import Sock

from ...metrics import render
from ...metrics.deployment import DeploymentCollector
from ..state import state


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/metrics")(metrics)


def metrics() -> Response:
    current = state()
    if not current.options.metrics_open:
        current.auth.authenticate(request).require_full("Metrics cover the whole deployment")
    deployment = DeploymentCollector(lambda: current.store, current.workflows)
    body, content_type = render(request.headers.get("Accept"), deployment)
    return Response(body, content_type=content_type)

