"""What a worker checks before it takes any step: settings that would lose or repeat work."""

from __future__ import annotations

from ..config import Settings
from ..engine.doctor import longest_step_seconds
from ..errors import ConfigError

__all__ = ["check_visibility_timeout", "longest_step_seconds"]


def check_visibility_timeout(settings: Settings) -> None:
    longest = longest_step_seconds()
    if longest is not None and longest >= settings.visibility_timeout:
        raise ConfigError(
            f"A step may run for {longest:g}s (timeout x attempts + backoff), longer than the "
            f"broker visibility timeout of {settings.visibility_timeout}s: Redis would hand the "
            "same step to a second worker. Set FLOWKIT_VISIBILITY_TIMEOUT above "
            f"{int(longest) + 1} or shorten the component's timeout."
        )
