"""Estimated cost of a call, from a configurable price table (USD per million tokens)."""

from __future__ import annotations

import json

from ..config import get_settings
from ..errors import ConfigError
from ..locks import ForkSafeLock

_overrides: dict[str, tuple[float, float]] = {}
_parsed: dict[str, dict[str, tuple[float, float]]] = {}
_lock = ForkSafeLock()


def set_prices(prices: dict[str, tuple[float, float] | list[float]]) -> None:
    """Add or replace prices: ``{"model": (input_per_million, output_per_million)}``."""
    checked = {model: _pair(model, pair) for model, pair in prices.items()}
    with _lock:
        _overrides.update(checked)


def _pair(model: str, pair: object) -> tuple[float, float]:
    try:
        inp, out = pair  # type: ignore[misc]
        return float(inp), float(out)
    except (TypeError, ValueError):
        raise ConfigError(
            f"price of {model!r} must be [input_usd_per_million, output_usd_per_million], got {pair!r}"
        ) from None


def _table() -> dict[str, tuple[float, float]]:
    raw = get_settings().llm_prices
    table = _parsed.get(raw)
    if table is None:
        try:
            data = json.loads(raw or "{}")
        except ValueError as exc:
            raise ConfigError(f"FLOWKIT_LLM_PRICES is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError('FLOWKIT_LLM_PRICES must be a JSON object like {"gpt-4o-mini": [0.15, 0.6]}.')
        table = _parsed[raw] = {m: _pair(m, p) for m, p in data.items()}
    return {**table, **_overrides}


def price_of(*models: str | None) -> tuple[float, float] | None:
    """The price of the first of ``models`` in the table (exact name, then longest prefix)."""
    table = _table()
    for model in models:
        if not model:
            continue
        if model in table:
            return table[model]
        prefixes = [name for name in table if model.startswith(name)]
        if prefixes:
            return table[max(prefixes, key=len)]
    return None


def cost(prompt_tokens: int, completion_tokens: int, *models: str | None) -> float | None:
    """USD for a call, or None when no model of ``models`` has a price."""
    price = price_of(*models)
    if price is None:
        return None
    return round((prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6, 8)
