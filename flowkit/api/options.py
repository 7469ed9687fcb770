"""The API plane's settings for one app: ``FLOWKIT_*`` keys of ``app.config`` over flowkit's.

Each setting of :mod:`flowkit.defaults` named ``API_*`` can be set three ways, the first
found wins: a keyword of ``FlowKit(app, ...)``/``create_blueprint(...)``, the Flask
config key ``FLOWKIT_API_*``, then flowkit's settings (env ``FLOWKIT_API_*``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from ..config import ENV_PREFIX, Settings, get_settings, parse_bool
from ..errors import ConfigError

#: ``authorize(request)`` -> falsy (deny), True (full access) or an owner/tenant string.
Authorize = Callable[[Any], Any]


def _split_keys(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(k.strip() for k in value or () if k and k.strip())


def _origin(value: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin`` (lowercase, no path)."""
    split = urlsplit(value.strip())
    if (split.scheme not in ("http", "https") or not split.hostname or "@" in split.netloc
            or split.path not in ("", "/") or split.query or split.fragment):
        raise ConfigError(f"{ENV_PREFIX}API_TRUSTED_ORIGINS: {value!r} is not an origin; write "
                          "scheme://host[:port], e.g. https://app.example.com.")
    netloc = split.netloc.lower()
    default = {"http": ":80", "https": ":443"}[split.scheme]
    if netloc.endswith(default):  # browsers never send the default port
        netloc = netloc[: -len(default)]
    return f"{split.scheme}://{netloc}"


@dataclass(frozen=True)
class ApiOptions:
    keys: tuple[str, ...] = ()
    open: bool = False
    secret: str = ""
    token_ttl: int = 0
    url_prefix: str = ""
    max_body_bytes: int = 0
    redis_retry_seconds: float = 0.0
    max_wait: float = 0.0
    ping_interval: float = 0.0
    page_size: int = 0
    max_page_size: int = 0
    events_page: int = 0
    subscriber_buffer: int = 0
    streams_per_caller: int = 0
    metrics_open: bool = False
    #: Origins (``scheme://host[:port]``) besides the API's own whose pages may send it
    #: writes and open its WebSockets (flowkit.api.origins).
    trusted_origins: tuple[str, ...] = ()
    #: Names of the workflows served; None serves every registered workflow.
    workflows: frozenset[str] | None = None
    authorize: Authorize | None = field(default=None, compare=False)

    @classmethod
    def resolve(
        cls,
        config: Mapping[str, Any] | None = None,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> ApiOptions:
        config = config or {}
        settings = settings or get_settings()
        values: dict[str, Any] = {}
        given: dict[str, Any] = {}  # numbers given as a keyword or in app.config
        for f in fields(cls):
            if f.name in ("workflows", "authorize"):
                continue
            key = f"{ENV_PREFIX}API_{f.name.upper()}"
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
            elif key in config:
                values[f.name] = config[key]
            else:
                values[f.name] = getattr(settings, f"api_{f.name}")
                continue
            if type(f.default) in (int, float):
                given[f"api_{f.name}"] = values[f.name]
        if given:  # checked as the environment's are: ping_interval=0 spun every SSE stream
            settings.replace(**given)  # writing pings as fast as its socket took them
        values["keys"] = _split_keys(values["keys"])
        values["trusted_origins"] = tuple(
            _origin(o) for o in _split_keys(values["trusted_origins"]))
        values["open"] = parse_bool(values["open"], f"{ENV_PREFIX}API_OPEN")
        values["metrics_open"] = parse_bool(values["metrics_open"], f"{ENV_PREFIX}API_METRICS_OPEN")
        values["url_prefix"] = (values["url_prefix"] or "").rstrip("/")
        selected = overrides.get("workflows", config.get(f"{ENV_PREFIX}API_WORKFLOWS",
                                                          settings.api_workflows or None))
        if isinstance(selected, str):
            selected = [w.strip() for w in selected.split(",") if w.strip()]
        values["workflows"] = frozenset(selected) if selected is not None else None
        values["authorize"] = overrides.get("authorize")
        options = cls(**values)
        if options.max_wait < 0 or options.page_size < 1 or options.max_page_size < options.page_size:
            raise ConfigError(
                "FLOWKIT_API_MAX_WAIT must be >= 0 and 1 <= FLOWKIT_API_PAGE_SIZE <= "
                "FLOWKIT_API_MAX_PAGE_SIZE."
            )
        return options

    def serves(self, workflow: str) -> bool:
        return self.workflows is None or workflow in self.workflows
