"""What a worker checks before it takes any step: settings that would lose or repeat work.

How long the broker lets a step's message go unacknowledged depends on the broker: Redis
hands a message to a second worker after its visibility timeout (a setting of flowkit's,
so a step longer than it refuses the worker), RabbitMQ closes the channel after its
``consumer_timeout`` (a setting of the broker's, which the worker survives: a warning).
"""

from __future__ import annotations

from ..config import Settings, is_amqp
from ..engine.doctor import Finding, consumer_timeout, longest_step_seconds
from ..errors import ConfigError

__all__ = ["check_broker_timeout", "check_visibility_timeout", "longest_step_seconds"]


def check_broker_timeout(settings: Settings) -> list[Finding]:
    """Raises ConfigError when a step would run twice on a Redis broker; returns what to
    warn of on RabbitMQ."""
    if is_amqp(settings.broker):
        return [f for f in consumer_timeout(longest_step_seconds() or 0.0) if f.level != "ok"]
    check_visibility_timeout(settings)
    return []


def check_visibility_timeout(settings: Settings) -> None:
    longest = longest_step_seconds()
    if longest is not None and longest >= settings.visibility_timeout:
        raise ConfigError(
            f"A step may run for {longest:g}s (timeout x attempts + backoff), longer than the "
            f"broker visibility timeout of {settings.visibility_timeout}s: Redis would hand the "
            "same step to a second worker. Set FLOWKIT_VISIBILITY_TIMEOUT above "
            f"{int(longest) + 1} or shorten the component's timeout."
        )

