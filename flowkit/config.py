"""Settings: the values of :mod:`flowkit.defaults`, overridden by ``FLOWKIT_*`` env vars.

``get_settings()`` is what every part of flowkit reads; ``configure(...)`` replaces
values for this process (tests and host apps use it). Settings are immutable: a part
that derives state from them (the store's connections) keeps the object it was built
from and rebuilds when ``get_settings()`` returns another.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from . import defaults
from .errors import ConfigError
from .numbers import is_number, is_whole
from .urls import amqp_options_read, redacted

ENV_PREFIX = "FLOWKIT_"
#: FLOWKIT_* variables read outside :class:`Settings`: by the web server's settings
#: (gunicorn_config), the CLI and the reference deployment (api/app.py). With the settings'
#: own, every name flowkit reads: ``flowkit doctor`` warns of any other (a typo is ignored).
OTHER_VARIABLES = frozenset({
    "FLOWKIT_APP", "FLOWKIT_URL", "FLOWKIT_API_KEY", "FLOWKIT_WORKFLOW_MODULES",
    "FLOWKIT_WEB_BIND", "FLOWKIT_WEB_THREADS", "FLOWKIT_WEB_WORKERS", "FLOWKIT_WEB_ACCESS_LOG",
    "FLOWKIT_WEB_CONTROL_SOCKET",
})


def variables() -> frozenset[str]:
    """Every FLOWKIT_* environment variable flowkit reads."""
    return OTHER_VARIABLES | {ENV_PREFIX + f.name.upper() for f in fields(Settings)}


def unread_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """The FLOWKIT_* variables of ``environ`` flowkit does not read (FLOWKIT_TEST_* are the
    tests'), each with the setting it is a near miss of, if any: a misspelling is ignored
    without a word, its setting's default used instead (the doctor and the CLI say so)."""
    known = sorted(variables())
    return {name: next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None)
            for name in sorted(environ)
            if name.startswith(ENV_PREFIX) and not name.startswith("FLOWKIT_TEST_")
            and name not in known}


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


#: Broker URL schemes flowkit runs on: a Redis (Celery's ``sentinel://`` too) or RabbitMQ.
BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "unix", "sentinel", "redis+sentinel",
                  "redis+cluster", "amqp", "amqps", "pyamqp", "librabbitmq")


#: Result backend URL schemes: Redis's (chords join through it; Celery has none on RabbitMQ,
#: and another scheme, `amqp://` or a typo, passed this check and killed the worker at start).
RESULT_BACKEND_SCHEMES = ("redis", "rediss", "redis+socket", "unix", "sentinel", "redis+sentinel",
                          "redis+cluster")
#: Store URL schemes: redis-py's, and flowkit's Sentinel and Cluster forms (:mod:`flowkit.urls`).
STORE_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
#: Settings that must be more than 0 (every number setting must be at least 0): a timeout,
#: interval, size or count of 0 would stop what it paces or bounds.
_POSITIVE = ("redis_socket_timeout", "wait_recheck_seconds", "retention_seconds",
             "max_payload_bytes", "heartbeat_interval", "reaper_interval", "visibility_timeout",
             "connection_pool_size", "retry_attempts", "llm_retry_attempts", "llm_timeout",
             "llm_connection_pools", "api_token_ttl", "api_max_body_bytes", "api_ping_interval",
             "api_page_size", "api_max_page_size", "api_events_page", "api_subscriber_buffer",
             "trace_max_field_chars", "queued_timeout", "stall_timeout")


def is_amqp(url: str) -> bool:
    """A RabbitMQ broker URL (kombu's AMQP transports)."""
    return _scheme(url) in ("amqp", "amqps", "pyamqp", "librabbitmq")


def _default(name: str) -> Any:
    return field(default=getattr(defaults, name.upper()))


@dataclass(frozen=True)
class Settings:
    redis_url: str = _default("redis_url")
    broker_url: str = _default("broker_url")
    result_backend: str = _default("result_backend")
    redis_socket_timeout: float = _default("redis_socket_timeout")
    redis_retry_seconds: float = _default("redis_retry_seconds")
    wait_recheck_seconds: float = _default("wait_recheck_seconds")
    key_prefix: str = _default("key_prefix")
    retention_seconds: int = _default("retention_seconds")
    max_payload_bytes: int = _default("max_payload_bytes")
    heartbeat_interval: float = _default("heartbeat_interval")
    heartbeat_lapse: float = _default("heartbeat_lapse")
    heartbeat_keeper: bool = _default("heartbeat_keeper")
    heartbeat_stall: float = _default("heartbeat_stall")
    reaper_interval: float = _default("reaper_interval")
    max_restarts: int = _default("max_restarts")
    queued_timeout: float = _default("queued_timeout")
    stall_timeout: float = _default("stall_timeout")
    visibility_timeout: int = _default("visibility_timeout")
    default_queue: str = _default("default_queue")
    connection_pool_size: int = _default("connection_pool_size")
    max_continuations: int = _default("max_continuations")
    compact_after_seconds: float = _default("compact_after_seconds")
    inline_steps_seconds: float = _default("inline_steps_seconds")
    retry_attempts: int = _default("retry_attempts")
    retry_initial: float = _default("retry_initial")
    retry_maximum: float = _default("retry_maximum")
    drain_grace: float = _default("drain_grace")
    event_lookback_seconds: float = _default("event_lookback_seconds")
    failure_webhook: str = _default("failure_webhook")
    failure_webhook_timeout: float = _default("failure_webhook_timeout")
    llm_retry_attempts: int = _default("llm_retry_attempts")
    llm_retry_initial: float = _default("llm_retry_initial")
    llm_retry_maximum: float = _default("llm_retry_maximum")
    llm_max_retry_after: float = _default("llm_max_retry_after")
    llm_timeout: float = _default("llm_timeout")
    llm_connection_pools: int = _default("llm_connection_pools")
    llm_rate_max_wait: float = _default("llm_rate_max_wait")
    llm_completion_estimate: int = _default("llm_completion_estimate")
    llm_stream_flush_chars: int = _default("llm_stream_flush_chars")
    llm_stream_flush_seconds: float = _default("llm_stream_flush_seconds")
    llm_fake_url: str = _default("llm_fake_url")
    llm_model: str = _default("llm_model")
    llm_prices: str = _default("llm_prices")
    trace_max_field_chars: int = _default("trace_max_field_chars")
    trace_flush_seconds: float = _default("trace_flush_seconds")
    api_keys: str = _default("api_keys")
    api_open: bool = _default("api_open")
    api_secret: str = _default("api_secret")
    api_token_ttl: int = _default("api_token_ttl")
    api_url_prefix: str = _default("api_url_prefix")
    api_workflows: str = _default("api_workflows")
    api_max_body_bytes: int = _default("api_max_body_bytes")
    api_redis_retry_seconds: float = _default("api_redis_retry_seconds")
    api_max_wait: float = _default("api_max_wait")
    api_ping_interval: float = _default("api_ping_interval")
    api_page_size: int = _default("api_page_size")
    api_max_page_size: int = _default("api_max_page_size")
    api_events_page: int = _default("api_events_page")
    api_subscriber_buffer: int = _default("api_subscriber_buffer")
    api_streams_per_caller: int = _default("api_streams_per_caller")
    api_metrics_open: bool = _default("api_metrics_open")
    api_trusted_origins: str = _default("api_trusted_origins")
    api_ui: bool = _default("api_ui")
    api_ui_path: str = _default("api_ui_path")
    metrics_port: int = _default("metrics_port")
    metrics_addr: str = _default("metrics_addr")
    metrics_deployment: bool = _default("metrics_deployment")

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        """Celery's result backend (chords join through it): the broker when it is a Redis,
        else the store's Redis (Celery has no result backend on RabbitMQ's ``amqp://``)."""
        if self.result_backend:
            return self.result_backend
        return self.broker if _scheme(self.broker).startswith(("redis", "rediss", "unix")) \
            else self.redis_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.name, raw, type(f.default))
        return cls(**values).checked()

    def replace(self, **changes: Any) -> Settings:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"Unknown flowkit setting(s): {', '.join(sorted(unknown))}.")
        return replace(self, **changes).checked()

    def checked(self) -> Settings:
        for f in fields(self):
            _check_value(f.name, getattr(self, f.name), type(f.default))
        if "://" in self.redis_url and _scheme(self.redis_url) == "sentinel":
            # Celery's spelling of a Sentinel URL was told first to be written redis://
            raise ConfigError(
                f"FLOWKIT_REDIS_URL={redacted(self.redis_url)} is Celery's spelling of sentinels "
                "(sentinel://, a broker's); write flowkit's: redis+sentinel://host:port,"
                "host:port/service/db.")
        if "://" not in self.redis_url or _scheme(self.redis_url) not in STORE_SCHEMES:
            raise ConfigError(  # the CLI's words for a URL redis-py refuses, said sooner
                f"FLOWKIT_REDIS_URL={redacted(self.redis_url)} is not a Redis URL; write it "
                f"as redis://host:port/db, e.g. redis://localhost:6379/0.")
        if self.heartbeat_lapse <= self.heartbeat_interval:
            raise ConfigError(
                f"FLOWKIT_HEARTBEAT_LAPSE ({self.heartbeat_lapse}s) must be longer than "
                f"FLOWKIT_HEARTBEAT_INTERVAL ({self.heartbeat_interval}s), or every run "
                "would look lost between two heartbeats."
            )
        if self.heartbeat_stall <= self.heartbeat_lapse:
            raise ConfigError(
                f"FLOWKIT_HEARTBEAT_STALL ({self.heartbeat_stall}s) must be longer than "
                f"FLOWKIT_HEARTBEAT_LAPSE ({self.heartbeat_lapse}s): a worker process silent "
                "for it is wedged, one silent for a lapse may only hold the GIL a while."
            )
        if self.broker_url and (_scheme(self.broker_url) not in BROKER_SCHEMES
                                or "://" not in self.broker_url):
            raise ConfigError(
                f"FLOWKIT_BROKER_URL={redacted(self.broker_url)!r} is not a broker URL; write a "
                "Redis one (redis://host:6379/0) or RabbitMQ's (amqp://user:password@host:5672/"
                "vhost), or unset it to use FLOWKIT_REDIS_URL."
            )
        if self.broker_url:
            amqp_options_read(self.broker_url)
        if self.result_backend and ("://" not in self.result_backend or _scheme(
                self.result_backend) not in RESULT_BACKEND_SCHEMES):
            raise ConfigError(
                f"FLOWKIT_RESULT_BACKEND={redacted(self.result_backend)!r} is not a Redis URL; "
                "write one (redis://host:6379/0: Celery's result backend, through which chords "
                "join, is a Redis; RabbitMQ has none), or unset it to use the broker's Redis."
            )
        if self.metrics_port > 65535:  # the server then failed with OverflowError, logged
            raise ConfigError(f"FLOWKIT_METRICS_PORT is a TCP port, 1 to 65535 (0: off), not "
                              f"{self.metrics_port}.")
        parse_prices(self.llm_prices)  # at start, not after a paid call (its cost failed)
        if self.max_payload_bytes <= 0 or self.retention_seconds <= 0:
            raise ConfigError("FLOWKIT_MAX_PAYLOAD_BYTES and FLOWKIT_RETENTION_SECONDS must be > 0.")
        for name, url in (("REDIS_URL", self.redis_url), ("BROKER_URL", self.broker_url),
                          ("RESULT_BACKEND", self.result_backend)):
            if url and _scheme(url) in ("redis", "rediss") and not _database_ok(url):
                raise ConfigError(
                    f"{ENV_PREFIX}{name}={redacted(url)!r}: the database after the port must "
                    "be a number, as in redis://host:6379/0 (or none: database 0)."
                )
        return self


def parse_prices(raw: str | None) -> dict[str, tuple[float, ...]]:
    """FLOWKIT_LLM_PRICES read: ``{"model": [input_usd, output_usd]}`` per million tokens,
    and a third, the price of cached input tokens, where the provider discounts them; each
    price a finite number, 0 or more. Read at the first call's cost, after the
    provider answered (and billed), a bad table failed every LLM call, and NaN (which JSON
    reads) made the cost counter NaN for good."""
    try:
        data = json.loads(raw or "{}")
    except ValueError as exc:
        raise ConfigError(f"FLOWKIT_LLM_PRICES is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError('FLOWKIT_LLM_PRICES must be a JSON object like {"gpt-4o-mini": [0.15, 0.6]}.')
    try:
        return {model: price_pair(model, pair) for model, pair in data.items()}
    except ConfigError as exc:
        raise ConfigError(f"FLOWKIT_LLM_PRICES: {exc}") from None


def price_pair(model: str, pair: object) -> tuple[float, ...]:
    """One model's price, checked: two (or three) finite numbers, 0 or more (numbers in
    quotes too, ``"0.15"``, as they were read before they were checked)."""
    read = [_number_in_quotes(p) for p in pair] if isinstance(pair, (list, tuple)) else pair
    if (not isinstance(read, list) or len(read) not in (2, 3)
            or not all(is_number(p) and p >= 0 for p in read)):
        raise ConfigError(
            f"price of {model!r} must be [input_usd_per_million, output_usd_per_million] "
            "(and a third, cached_input_usd_per_million, if its cached input costs less), "
            f"finite numbers 0 or more, got {pair!r}")
    return tuple(float(p) for p in read)


def _number_in_quotes(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_value(name: str, value: Any, kind: type) -> None:
    """A setting of the type its default has (a number for a float), finite, at least 0
    (more than 0 for :data:`_POSITIVE`): ``configure(retry_attempts="3")`` was taken and
    failed far away, at the first step."""
    said = f"{ENV_PREFIX}{name.upper()} ({name}=)"
    if kind is str:
        ok = value is None or isinstance(value, str)  # None: unset, as ""
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = is_whole(value)
    else:
        ok = is_number(value)
    if not ok:
        what = {str: "a string", bool: "True or False", int: "a whole number"}.get(
            kind, "a finite number")
        raise ConfigError(f"{said} is {what}, not {value!r}; give a value like "
                          f"{getattr(defaults, name.upper())!r}.")
    if kind in (int, float) and (value < 0 or (value == 0 and name in _POSITIVE)):
        least = "more than 0" if name in _POSITIVE else "0 or more"
        raise ConfigError(f"{said} is {least}, not {value!r}.")
    if kind is float and value > threading.TIMEOUT_MAX:  # a socket's or a lock's timeout
        raise ConfigError(f"{said} is at most {threading.TIMEOUT_MAX:.0f} (about 292 years, "
                          f"the longest Python can wait), not {value!r}.")


def _database_ok(url: str) -> bool:
    """Whether a redis:// URL's path names a database as redis-py and Celery read it: none,
    or a number (redis-py ignores any other, Celery's backend fails on it)."""
    database = urlsplit(url).path.strip("/")
    return database == "" or database.isdigit()


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_bool(value: Any, name: str) -> bool:
    """A setting's boolean: a bool, or one of the usual spellings (bool("false") is True)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use true or false.")


def _coerce(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        return parse_bool(raw, ENV_PREFIX + name.upper())
    try:
        value = kind(raw)
        if kind is float and not math.isfinite(value):
            raise ValueError(raw)  # nan, inf: no duration or size is either
        return value
    except ValueError:
        raise ConfigError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}; "
            f"unset it or give a value like {getattr(defaults, name.upper())!r}."
        ) from None


_settings: Settings | None = None


def get_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def configure(**changes: Any) -> Settings:
    """Override settings for this process; returns the new settings."""
    global _settings
    _settings = get_settings().replace(**changes)
    return _settings


def reset() -> None:
    """Forget overrides and re-read the environment on next use."""
    global _settings
    _settings = None
