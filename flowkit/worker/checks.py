"""What a worker checks before it takes any step: settings that would lose or repeat work."""

from __future__ import annotations

from ..component import registered
from ..config import Settings
from ..errors import ConfigError
from ..workflow import workflows


def longest_step_seconds() -> float | None:
    """Worst-case duration of any configured step (all attempts, all waits); None if unbounded."""
    comps = list(registered().values())
    for wf in workflows().values():
        comps.extend(wf.components())
    longest = 0.0
    for comp in comps:
        pol = comp.policy
        if pol.timeout is None:
            continue
        longest = max(longest, pol.timeout * pol.attempts + pol.backoff.maximum * (pol.attempts - 1))
    return longest or None


def check_visibility_timeout(settings: Settings) -> None:
    longest = longest_step_seconds()
    if longest is not None and longest >= settings.visibility_timeout:
        raise ConfigError(
            f"A step may run for {longest:g}s (timeout x attempts + backoff), longer than the "
            f"broker visibility timeout of {settings.visibility_timeout}s: Redis would hand the "
            "same step to a second worker. Set FLOWKIT_VISIBILITY_TIMEOUT above "
            f"{int(longest) + 1} or shorten the component's timeout."
        )
