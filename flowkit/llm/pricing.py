"""Estimated cost of a call, from a configurable price table (USD per million tokens)."""

from __future__ import annotations

import re

from ..config import get_settings, parse_prices, price_pair
from ..locks import ForkSafeLock

_overrides: dict[str, tuple[float, ...]] = {}
_parsed: dict[str, dict[str, tuple[float, ...]]] = {}
_lock = ForkSafeLock()


def set_prices(prices: dict[str, tuple[float, ...] | list[float]]) -> None:
    """Add or replace prices: ``{"model": (input_per_million, output_per_million)}``."""
    checked = {model: price_pair(model, pair) for model, pair in prices.items()}
    with _lock:
        _overrides.update(checked)


def _table() -> dict[str, tuple[float, ...]]:
    raw = get_settings().llm_prices
    table = _parsed.get(raw)
    if table is None:
        table = _parsed[raw] = parse_prices(raw)  # checked as the settings were read
    return {**table, **_overrides}


def price_of(*models: str | None) -> tuple[float, ...] | None:
    """The price of the first of ``models`` in the table: its exact name, else the model
    it is a dated snapshot of (``gpt-4o-mini-2024-07-18``, ``gpt-4-0613``: the longest
    name followed by a dash and digits). Any longer name was taken for a snapshot, and
    ``gpt-4.1-nano`` cost ``gpt-4.1``'s price, 20 times its own."""
    table = _table()
    for model in models:
        if not model:
            continue
        if model in table:
            return table[model]
        prefixes = [name for name in table
                    if model.startswith(name) and _SNAPSHOT.fullmatch(model[len(name):])]
        if prefixes:
            return table[max(prefixes, key=len)]
    return None


#: What follows a model's name in one of its dated snapshots.
_SNAPSHOT = re.compile(r"-\d[\d-]*")


def cost(prompt_tokens: int, completion_tokens: int, *models: str | None,
         cached_tokens: int = 0) -> float | None:
    """USD for a call, or None when no model of ``models`` has a price. ``cached_tokens``
    of the prompt (the provider's prompt cache) cost the model's cached-input price, its
    third one (the input price without it): they were charged at the full input price,
    up to twice the spend (ten times for a 90% discount)."""
    price = price_of(*models)
    if price is None:
        return None
    cached = min(max(cached_tokens or 0, 0), prompt_tokens)
    cached_price = price[2] if len(price) > 2 else price[0]
    return round(((prompt_tokens - cached) * price[0] + cached * cached_price
                  + completion_tokens * price[1]) / 1e6, 8)
