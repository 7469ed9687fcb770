"""What one Flask app's flowkit API holds: its options, authenticator and stream hub.

Kept in ``app.extensions["flowkit"]`` so two apps in one process share nothing.
"""

from __future__ import annotations

from flask import Flask, current_app

from ..store import Store, get_store
from ..workflow import Workflow, did_you_mean, get_workflow, workflows
from .auth import Authenticator
from .errors import ApiError
from .options import ApiOptions
from .relay import Hub

EXTENSION = "flowkit"


class ApiState:
    def __init__(self, app: Flask, options: ApiOptions, url_prefix: str, blueprint: str) -> None:
        self.options = options
        self.url_prefix = url_prefix.rstrip("/")
        self.blueprint = blueprint
        self.auth = Authenticator(options, app.config.get("SECRET_KEY"))
        self.hub = Hub(lambda: self.store, page=options.events_page,
                       buffer=options.subscriber_buffer,
                       streams_per_caller=options.streams_per_caller)
        #: The OpenAPI document, with the served workflows it was built for (see docs.py).
        self.spec: tuple[tuple[tuple[str, int], ...], dict] | None = None
        #: A run's URLs with a stand-in for its id, per script root (representations.py).
        self.url_templates: dict[str, dict[str, str]] = {}

    @property
    def store(self) -> Store:
        """The API's store: it gives up on an unreachable Redis after
        FLOWKIT_API_REDIS_RETRY_SECONDS (a 503), where workers ride a restart out."""
        return get_store(retry_seconds=self.options.redis_retry_seconds)

    def owns(self, path: str) -> bool:
        """Whether a request path falls under this API (for 404/405 outside any view)."""
        return not self.url_prefix or path == self.url_prefix or path.startswith(self.url_prefix + "/")

    def workflows(self) -> list[Workflow]:
        return [wf for name, wf in sorted(workflows().items()) if self.options.serves(name)]

    def workflow(self, name: str) -> Workflow:
        if not self.options.serves(name) or name not in workflows():
            served = [wf.name for wf in self.workflows()]
            raise ApiError(404, "not_found", f"No workflow named {name!r}."
                           f"{did_you_mean(name, served)} {self._served()}")
        return get_workflow(name)

    def _served(self) -> str:
        """What this process serves, said for someone who asked for another workflow."""
        names = [wf.name for wf in self.workflows()]
        if not names:  # the usual cause: the Flask app never imported the workflows
            return ("This web process serves no workflow: import your workflows' module in "
                    "the module of your Flask app, as your worker imports it.")
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        return f"Served here: {shown}."


def state() -> ApiState:
    """The API state of the current app."""
    return current_app.extensions[EXTENSION]
