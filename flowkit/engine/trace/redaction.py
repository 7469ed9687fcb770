"""Keeping secrets out of traces and events.

Values under secret keys (``api_key``, ``authorization``, ... and the fields a component
marks with ``.secret(...)``) are replaced, and so is every occurrence of a provider API
key (:func:`remember_secret`) or of a secret input value anywhere else in a span (an
echo in the output, an error message).
"""

from __future__ import annotations

from typing import Any

from ...component import registered
from ...config import get_settings
from ...locks import ForkSafeLock
from ...serialization import dumps
from ...workflow import workflows

REDACTED = "[redacted]"
#: Keys whose values are secret wherever they appear (compared case-insensitively).
SECRET_KEYS = frozenset({
    "api_key", "apikey", "api-key", "x-api-key", "authorization", "password", "secret",
    "client_secret", "access_token", "refresh_token", "openai_api_key",
})
#: Shorter strings are never scrubbed as secret values: that would mangle ordinary text.
MIN_SECRET_LENGTH = 8

_known_secrets: set[str] = set()
_secret_fields: dict[str, frozenset[str]] = {}
_lock = ForkSafeLock()


def remember_secret(value: str | None) -> None:
    """Scrub ``value`` from every span this process records (provider API keys)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _known_secrets.add(value)


def redact(value: Any, fields: frozenset[str] = frozenset(), values: frozenset[str] = frozenset()) -> Any:
    """``value`` with secret keys' values and known secret strings replaced by ``[redacted]``."""
    scrub = sorted(values | _known_secrets, key=len, reverse=True)

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: REDACTED if _is_secret_key(k, fields) else walk(item) for k, item in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(item) for item in v]
        if isinstance(v, str):
            for secret in scrub:
                if secret in v:
                    v = v.replace(secret, REDACTED)
            return v
        return v

    return walk(value)


def _is_secret_key(key: Any, fields: frozenset[str]) -> bool:
    return isinstance(key, str) and (key in fields or key.lower() in SECRET_KEYS)


def secret_values(value: Any, fields: frozenset[str]) -> frozenset[str]:
    """The strings stored under secret keys in ``value`` (so their echoes can be scrubbed)."""
    found: set[str] = set()

    def walk(v: Any, secret: bool) -> None:
        if isinstance(v, dict):
            for k, item in v.items():
                walk(item, secret or _is_secret_key(k, fields))
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item, secret)
        elif secret and isinstance(v, (str, int)) and len(str(v)) >= MIN_SECRET_LENGTH:
            found.add(str(v))

    walk(value, False)
    return frozenset(found)


def secret_fields_of(component: str) -> frozenset[str]:
    """Fields marked secret on any configuration of ``component`` (registered or in a workflow)."""
    cached = _secret_fields.get(component)
    if cached is None:
        names: set[str] = set()
        candidates = [c for c in registered().values() if c.name == component]
        for wf in workflows().values():
            candidates.extend(c for c in wf.components() if c.name == component)
        for comp in candidates:
            names.update(comp.policy.secret_fields)
        cached = _secret_fields[component] = frozenset(names)
    return cached


def bounded(value: Any) -> Any:
    """``value`` itself, or a truncated preview when its JSON exceeds TRACE_MAX_FIELD_CHARS."""
    limit = get_settings().trace_max_field_chars
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"... [{len(value)} chars]"
    try:
        text = dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:limit]
    if len(text) <= limit:
        return value
    return {"truncated": True, "chars": len(text), "preview": text[:limit]}


# -- storage ------------------------------------------------------------------------------
