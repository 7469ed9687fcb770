"""Run traces (owned by the LLM/traces work; see issue 5). Placeholder API the API plane calls."""

from __future__ import annotations

from typing import Any


def read(run_id: str) -> list[dict[str, Any]]:
    """Every span recorded for ``run_id``, oldest first."""
    return []
