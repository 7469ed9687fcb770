"""Sending a run's messages from outside its canvas: the resume message that has a worker of
the run's own deployment enqueue its frontier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import amqp.exceptions
from kombu.exceptions import OperationalError

from ..config import get_settings
from ..errors import BrokerUnavailable
from ..store import lost_connection
from ..urls import redacted
from .broker import continued_priority, get_app


def send(publish: Callable[[], Any]) -> Any:
    """Publish to the broker (returns what ``publish`` does); a broker out of reach is
    BrokerUnavailable (the run is stored: the reaper sends it again once
    FLOWKIT_QUEUED_TIMEOUT passes)."""
    try:
        return publish()
    except OperationalError as exc:
        settings = get_settings()  # the broker is the store's Redis unless set apart
        name = "FLOWKIT_BROKER_URL" if settings.broker_url else "FLOWKIT_REDIS_URL"
        raise BrokerUnavailable(f"the Celery broker at {redacted(settings.broker)} is "
                                f"unreachable ({exc}); start it, or point {name} at "
                                "yours") from exc
    except amqp.exceptions.AMQPError as exc:
        # RabbitMQ answered and refused: a wrong password or vhost, a queue declared with
        # other arguments (it was a traceback in the CLI and a 500 from the API)
        raise BrokerUnavailable(f"the Celery broker at {redacted(get_settings().broker)} "
                                f"refused flowkit: {exc}; fix the user, password or vhost in "
                                "FLOWKIT_BROKER_URL (or the queue it names)",
                                refused=True) from exc
    except RuntimeError as exc:
        # Celery's Redis result backend, which a canvas subscribes to while it is sent,
        # gives up reconnecting with a bare RuntimeError ("Retry limit exceeded")
        if not lost_connection(exc):
            raise
        raise BrokerUnavailable("the Celery result backend is unreachable: "
                                f"{exc.__cause__ or exc}", "FLOWKIT_RESULT_BACKEND") from exc


def send_resume(run_id: str, gen: int, queue: str | None) -> None:
    """Ask a worker of the run's own queue to enqueue the frontier of generation ``gen``
    (it has the workflow version the run started with; this process may not)."""
    send(lambda: get_app().send_task(
        "flowkit.resume", kwargs={"run_id": run_id, "gen": gen}, queue=queue,
        priority=continued_priority(), ignore_result=True))  # no subscription to its result
